"""UDML's weighting arithmetic: inverse-variance quality, dependency correction, the switch
rule's multipliers and calibrated gates (pure functions of tensors)."""

from __future__ import annotations

import torch
from torch import Tensor


def udml_weights(sigma_hat: Tensor | None, dependency: Tensor | None, mask: Tensor) -> Tensor:
    """Bias-corrected UDML fusion weights for M modalities, ``[B, M]``.

    u_m = M'·(1/σ̂_m²) / Σ_k (1/σ̂_k²) (inverse-variance quality; all 1 when ``sigma_hat`` is None),
    w_m = M'·(u_m/D_m) / Σ_k (u_k/D_k) (dependency correction; skipped when ``dependency`` is None),
    where sums and M' run over the modalities present in that sample (``mask``), so an absent
    modality is excluded from both sums and gets weight 0. For M = 2 with both present this is the
    reference's u_a = 2σ̂_v²/(σ̂_a² + σ̂_v²) and w_a + w_v = 2.
    """
    mask = mask.float()
    n_present = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if sigma_hat is None:
        u = mask.clone()
    else:
        inv = mask / sigma_hat.clamp(min=1e-3) ** 2
        u = n_present * inv / inv.sum(dim=1, keepdim=True).clamp(min=1e-12)
    if dependency is None:
        return u * mask
    r = u / dependency.clamp(min=1e-6)[None, :]
    return n_present * r / r.sum(dim=1, keepdim=True).clamp(min=1e-12) * mask


def effective_multipliers(w: Tensor, mask: Tensor, rule: str) -> Tensor:
    """The factor scaling each stream's features in the fused logits, ``[B, M]``.

    ``residual`` (the paper's): 1 + w, never below 1, so a broken stream keeps at least a quarter
    of the total for M = 2. ``switch`` (the product's): w itself, which reaches 0 as σ̂ grows.
    Absent streams get 0 under both rules.
    """
    return (w if rule == "switch" else 1.0 + w) * mask.float()


def gate_weights(w: Tensor, sigma_hat: Tensor, clean: Tensor, broken: Tensor,
                 mask: Tensor) -> Tensor:
    """The switch rule's calibrated gate on σ̂, ``[B, M]``.

    Inverse-variance weights leave a pure-noise stream a share of about (σ̂_clean/σ̂_broken)²,
    and a regression estimator compresses that ratio (it is pulled toward the mean level). The
    gate g_m = clamp((broken_m − σ̂_m)/(broken_m − clean_m), 0, 1) closes linearly from the σ̂
    of clean validation input to that of information-free validation input, and the gated
    weights are renormalised over the present streams (sum M′). A modality whose calibration is
    unset (broken ≤ clean) keeps its gate open; when every present stream is closed the ungated
    weights stand, so an answer never comes from nothing."""
    return apply_gate(w, gate_openness(sigma_hat, clean, broken), mask)


def gate_openness(stat: Tensor, clean: Tensor, broken: Tensor) -> Tensor:
    """``[B, M]``: 1 up to ``clean``, falling linearly to 0 at ``broken`` (per modality, for a
    statistic that grows with damage); 1 where a modality's calibration is unset (broken ≤
    clean)."""
    span = (broken - clean)[None, :]
    return torch.where(span > 0, ((broken[None, :] - stat) / span.clamp(min=1e-6)).clamp(0.0, 1.0),
                       torch.ones_like(stat))


def apply_gate(w: Tensor, g: Tensor, mask: Tensor) -> Tensor:
    """``w`` scaled by the openness ``g`` and renormalised over the present streams (sum M′);
    where every present stream is closed the ungated ``w`` stands, and so does a row the gate
    leaves fully open (bit for bit: renormalising it would change the last digits, so an
    uncalibrated gate fuses as if it were not there). ``where``s, not branches: no host sync
    under CUDA graphs."""
    gw = w * g * mask.float()
    total = gw.sum(dim=1, keepdim=True)
    n_present = mask.float().sum(dim=1, keepdim=True)
    closing = (g < 1.0).any(dim=1, keepdim=True) & (total > 1e-6)
    return torch.where(closing, n_present * gw / total.clamp(min=1e-6), w)


def relative_openness(g: Tensor, health: Tensor, mask: Tensor) -> Tensor:
    """A gate that closes a stream only as far as another present stream is healthy,
    ``[B, M]``: 1 − (1 − g_m)·max_{k≠m} health_k (``health``: each stream's openness under
    every gate, in [0, 1]). For a relative cue: when the other streams are doubtful too (a
    noisy room and a dim frame at once) switching one off would leave the answer to an
    equally doubtful other."""
    m = g.shape[1]
    others = health.masked_fill(~mask.bool(), 0.0)
    best_other = torch.stack([
        torch.cat([others[:, :i], others[:, i + 1 :]], dim=1).amax(dim=1) if m > 1
        else torch.zeros_like(g[:, 0]) for i in range(m)], dim=1)
    return 1.0 - (1.0 - g) * best_other


def heads_disagree(top: Tensor, present: Tensor) -> Tensor:
    """``[B]`` bool: the present streams' own classes ``top`` ``[B, M]`` are not all one
    (``present`` ``[B, M]`` bool; an absent stream's class does not count)."""
    first = torch.where(present, top, -1).amax(dim=1, keepdim=True)  # any present stream's class
    return (present & (top != first)).any(dim=1)


def resolve_conflicts(logits: Tensor, unimodal: list[Tensor], health: Tensor, mask: Tensor,
                      on: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The fused logits ``[B, C]``, but where present streams' unimodal heads name different
    classes, the gated product of their posteriors, Σ_m (health_m / max_k health_k) ·
    log softmax(unimodal_m); and ``[B]`` bool, the rows answered that way.

    The fused head learnt from streams that agree, up to noise; on a conflict each stream's
    own posterior, as far as the gates keep the stream open (``health`` ``[B, M]`` in [0, 1]),
    is the better witness (independent experts). Dividing by the row's largest openness changes
    no answer, and keeps the probabilities those of the open streams: two nearly closed streams
    do not flatten them to uniform. A stream the gates close has no say, even when it is the
    one that dissents. Rows without a conflict, rows whose present streams are all closed (as
    ``apply_gate``: ≤ 1e-6), and every row while ``on`` (a bool tensor, e.g. "the gates are
    calibrated") is False keep the fused logits. The answer is fp32 whatever ``logits``' dtype
    (a bf16 product would turn near-ties into ties). ``where``s, not branches: no host sync."""
    present = mask.bool()
    logp = torch.stack([torch.log_softmax(u.float(), dim=1) for u in unimodal], dim=1)  # [B,M,C]
    conflict = heads_disagree(logp.argmax(dim=2), present)
    # where(), not a product: an absent stream's openness may be NaN.
    h = torch.where(present, health.float(), torch.zeros_like(health, dtype=torch.float32))
    top_h = h.amax(dim=1, keepdim=True)
    joint = (h[:, :, None] / top_h.clamp(min=1e-6)[:, :, None] * logp).sum(dim=1)
    use = conflict & (top_h[:, 0] > 1e-6)
    if on is not None:
        use = use & on
    return torch.where(use[:, None], joint, logits.float()), use


def dependency_statistic(unimodal_logits: list[Tensor], mask: Tensor) -> Tensor:
    """D_m = Σ_classes mean over the batch (samples where m is present) of |z_m|, ``[M]``.

    ``z_m`` are the logits of the shared fusion head with every other modality's features zeroed,
    so D_m measures how strongly the head responds to modality m alone.
    """
    mask = mask.float()
    return torch.stack([
        (z.abs().sum(dim=1) * mask[:, i]).sum() / mask[:, i].sum().clamp(min=1)
        for i, z in enumerate(unimodal_logits)
    ])
