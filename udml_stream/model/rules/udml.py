"""UDML and its ablations: quality- and dependency-weighted early fusion of μ/σ embeddings.

Options: where the quality (σ̂) comes from (a learned estimator, the raw σ of the embedding, the
true level for the oracle, or none), whether the weights are divided by the modality dependency
D_m, and how the weights scale each stream (the paper's residual (1 + w)·z, or the product's
switch w·z with calibrated gates). Loss: CE(fused) + γ·Σ CE(unimodal) + β·KL + λ·MSE(σ̂, L).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udml_stream.errors import ConfigError
from udml_stream.model.rules.base import (
    FusionOutput,
    FusionRule,
    TensorMap,
    Term,
    block_logits,
    masked_mean,
    shared_head,
)
from udml_stream.model.rules.weighting import (
    apply_gate,
    dependency_statistic,
    effective_multipliers,
    gate_openness,
    relative_openness,
    resolve_conflicts,
    udml_weights,
)

if TYPE_CHECKING:
    from udml_stream.model.fusion import FusionNet

#: Estimator heads (see ``ModelConfig.estimator``).
ESTIMATORS = ("mlp", "linear")
#: Where σ̂ comes from: nowhere (weights all 1), a learned estimator on σ, σ itself, the truth.
QUALITY_SOURCES = ("none", "estimator", "raw_sigma", "oracle")


def kl_to_level_prior(maps: Tensor, level: Tensor) -> Tensor:
    """Per-sample KL(N(μ, σ²) ‖ N(0, L)) summed over the feature map; ``maps`` = stack(μ, logvar)."""
    mu, logvar = maps[0], maps[1]
    prior = level.float().view(-1, 1, 1, 1)
    kl = 0.5 * ((logvar.exp() + mu**2) / prior - 1.0 - logvar + torch.log(prior))
    return kl.sum(dim=(1, 2, 3))


#: Side of the grid an encoder map is average-pooled to for the pretext head (the map's layout
#: is what tells which way up an input is; pooled to one cell it is gone).
PRETEXT_GRID = 3
#: Transforms the pretext head tells apart (index 0: the input as it came).
PRETEXT_CLASSES = 4
#: The pretext head names a transform for the diagnostics when it is at least this sure of it,
#: on a stream the σ̂ and confidence gates keep at least this open (``aux["looks/<m>"]``).
LOOKS_PROB, LOOKS_OPEN = 0.5, 0.5


class PretextHead(nn.Module):
    """Which of ``PRETEXT_CLASSES`` known transforms (rotations of a frame, time and frequency
    flips of a spectrogram: ``train.pregate``) an input went through, from the encoder's map
    pooled to a ``PRETEXT_GRID``² grid. Fitted after training on clean input with the encoder
    frozen (self-supervised: the labels are the transforms). At serving it reads the input as
    it came: −log p(untransformed) grows as the input stops looking like natural input the
    right way up (a tilted or mirrored camera, a shaking shutter), with no model of the
    damage."""

    def __init__(self, n_features: int, hidden: int = 128) -> None:
        super().__init__()
        # A fixed standardiser: its running statistics are set from the fitting data.
        self.norm = nn.BatchNorm1d(n_features, affine=False)
        self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, PRETEXT_CLASSES))

    @staticmethod
    def pool(fmap: Tensor) -> Tensor:
        """An encoder map ``[B, C, H, W]`` as the head reads it: ``[B, C·PRETEXT_GRID²]``."""
        return F.adaptive_avg_pool2d(fmap.float(), PRETEXT_GRID).flatten(1)

    @staticmethod
    def n_features(channels: int) -> int:
        """The head's input width for an encoder with ``channels`` output channels."""
        return channels * PRETEXT_GRID**2

    def forward(self, x: Tensor) -> Tensor:
        """Pooled maps ``[B, n_features]`` → transform logits ``[B, PRETEXT_CLASSES]``."""
        return self.head(self.norm(x))

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, PRETEXT_CLASSES]``: log p(each transform), fp32."""
        return F.log_softmax(self(x).float(), dim=1)

    def surprise(self, x: Tensor) -> Tensor:
        """``[B]``: −log p(the input is untransformed)."""
        return -self.log_probs(x)[:, 0]


class LinearEstimator(nn.Module):
    """The reference's estimator head (Linear → Dropout → Linear, no activation) on log σ (and
    μ) standardised by running statistics (σ spans orders of magnitude across degradations; raw,
    it saturates the head), plus the valid share of the window as one more input, left as is:
    σ cannot see a gap (missing frames read as silence), the measured share can, and a column
    that is constant in training must not be standardised by a zero variance."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(n_features, affine=False)
        self.head = nn.Sequential(nn.Linear(n_features + 1, hidden), nn.Dropout(0.1),
                                  nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` = [features | valid share] ``[B, n_features + 1]`` → ``[B, 1]``."""
        return self.head(torch.cat([self.norm(x[:, :-1]), x[:, -1:]], dim=1))


@dataclass(frozen=True)
class Udml(FusionRule):
    """UDML with one quality source, optional dependency correction, residual or switch rule."""

    quality: str = "estimator"
    dependency: bool = True
    # "residual" (False) is the paper's (1 + w)·z, whose multiplier never falls below 1;
    # "switch" (True) is w·z, whose multiplier reaches 0 for a stream the estimator calls broken
    # (the product's rule, see docs/method.md).
    switch: bool = False

    probabilistic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.quality not in QUALITY_SOURCES:
            raise ConfigError(f"Udml(quality={self.quality!r}); expected one of "
                              f"{list(QUALITY_SOURCES)}")

    @property
    def needs_levels(self) -> bool:
        """The oracle weighs by the true levels."""
        return self.quality == "oracle"

    @property
    def has_estimator(self) -> bool:
        """σ̂ from a learned estimator head."""
        return self.quality == "estimator"

    @property
    def has_gates(self) -> bool:
        """The switch rule's gates are calibrated on the estimator's σ̂."""
        return self.switch and self.quality == "estimator"

    @property
    def reads_pooled(self) -> bool:
        """The switch rule's pretext gate reads each stream's pooled encoder map."""
        return self.has_gates

    @property
    def tracks_dependency(self) -> bool:
        """Every UDML variant updates the dependency EMA in training."""
        return True

    # ---- parameters ----------------------------------------------------------------------

    def build(self, net: FusionNet) -> None:
        """The shared head, the estimator heads and the switch rule's gate buffers."""
        cfg = net.cfg
        d, n = cfg.embed_dim, len(cfg.modalities)
        shared_head(net)
        if self.quality == "estimator":
            net.estimator = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(d // 2, 1)) if cfg.estimator == "mlp"
                else LinearEstimator(d, d // 2)
                for m in cfg.modalities
            })
        if self.switch:
            # The switch rule's gate: σ̂ of clean and of information-free input per modality,
            # calibrated on the validation split after training (``calibrate_gate``); while
            # both are 0 the gate is open (training, and checkpoints without a calibration).
            net.register_buffer("gate_clean", torch.zeros(n))
            net.register_buffer("gate_broken", torch.zeros(n))
            # Its second gate, on the stream's own confidence (the top softmax probability of
            # its unimodal logits): open from the confidence of clean validation input down,
            # closed at that of information-free input (``calibrate_confidence_gate``). σ̂
            # measures the degradations the estimator was trained on; a stream broken in a way
            # it never saw (a tilted camera, a rolling shutter) may keep a clean-looking σ̂ and
            # still lose its confidence. Open while both are 0.
            net.register_buffer("conf_clean", torch.zeros(n))
            net.register_buffer("conf_broken", torch.zeros(n))
            # Its third gate, on typicality: the Mahalanobis distance of the stream's embedding
            # to the nearest class centre of clean validation input (shared covariance, fitted
            # with the thresholds by ``calibrate_typicality_gate``). A stream that is confident
            # and clean-looking to σ̂ can still sit far from everything the encoder saw (a
            # mirrored camera, a high-passed microphone). Open while the thresholds are 0.
            c = cfg.num_classes
            net.register_buffer("typ_means", torch.zeros(n, c, d))
            net.register_buffer("typ_prec", torch.zeros(n, d, d))
            net.register_buffer("typ_clean", torch.zeros(n))
            net.register_buffer("typ_broken", torch.zeros(n))
            # Its fourth, on the pretext head's surprise at the input as it came (``PretextHead``,
            # fitted with its thresholds by ``train.pregate``): closes, relative like the
            # typicality gate, a stream whose input no longer looks the right way up. Open
            # while the thresholds are 0.
            # Built on a forked generator: ``fit_head`` draws their weights afresh, and a model
            # built with them must train exactly as one built before they existed (same seed).
            with torch.random.fork_rng(devices=[]):
                net.pretext = nn.ModuleDict({
                    m: PretextHead(PretextHead.n_features(net.enc[m].out_channels))
                    for m in cfg.modalities
                })
            # Fitted after training only: frozen in it (no gradient, so distributed training
            # finds no unused parameter and the optimiser has nothing to decay).
            net.pretext.requires_grad_(False)
            net.register_buffer("pre_clean", torch.zeros(n))
            net.register_buffer("pre_broken", torch.zeros(n))

    # ---- fusion --------------------------------------------------------------------------

    @staticmethod
    def typicality(net: FusionNet, z: TensorMap) -> Tensor:
        """Per stream, the Mahalanobis distance of its embedding to the nearest clean class
        centre, ``[B, M]`` (all 0 before ``calibrate_typicality_gate`` fitted the centres)."""
        ms = net.cfg.modalities
        out = []
        ref = z[ms[0]]
        # fp32 even under a bf16 autocast: the gate's ramp spans a few distance units, and a
        # bf16 quadratic form errs by ~0.6%, enough to move the gate by ~2%.
        with torch.autocast(device_type=ref.device.type, enabled=False):
            for i, m in enumerate(ms):
                diff = z[m].float()[:, None, :] - net.typ_means[i][None]  # [B, C, d]
                d2 = torch.einsum("bcd,de,bce->bc", diff, net.typ_prec[i], diff)
                # A class without fitting samples has its centre at infinity: inf − inf in the
                # quadratic form reads NaN, which must not be the nearest (nor reach the weights).
                d2 = torch.nan_to_num(d2, nan=float("inf"))
                out.append(d2.amin(dim=1).clamp(min=0.0).sqrt())
        return torch.stack(out, dim=1)

    def _estimator_inputs(self, net: FusionNet, sig: TensorMap, valid: TensorMap,
                          b: int, dev: torch.device) -> TensorMap:
        """What each estimator head reads: the detached σ (mlp), or log σ and the valid share
        of the window (linear)."""
        ms = net.cfg.modalities
        if net.cfg.estimator == "mlp":
            return {m: sig[m].detach() for m in ms}
        est: TensorMap = {}
        for m in ms:
            v = valid.get(m, torch.ones(b, device=dev))[:, None]
            est[m] = torch.cat([torch.log(sig[m].detach().clamp(min=1e-6)), v], dim=1)
        return est

    def fuse(self, net: FusionNet, z: TensorMap, sig: TensorMap, pres: TensorMap,
             levels: Mapping[str, Tensor] | None, quality_on: bool,
             valid: TensorMap, pooled: TensorMap | None = None) -> FusionOutput:
        """Weights from σ̂ and D, the gates when serving, then the shared head."""
        cfg, ms = net.cfg, net.cfg.modalities
        ref = z[ms[0]]
        est = (self._estimator_inputs(net, sig, valid, ref.shape[0], ref.device)
               if self.quality == "estimator" else {})
        uni = {m: block_logits(net, i, z[m]) for i, m in enumerate(ms)}
        mask = torch.stack([pres[m] for m in ms], dim=1).float()  # [B, M]

        sigma_hat: dict[str, Tensor] = {}
        aux: dict[str, Tensor] = {}
        if self.quality == "estimator":
            for m in ms:
                o = net.estimator[m](est[m]).squeeze(1)
                aux[f"estimator_out/{m}"] = o
                sigma_hat[m] = torch.exp(0.5 * o)
        elif self.quality == "raw_sigma":
            sigma_hat = {m: sig[m].detach().mean(dim=1) for m in ms}
        elif self.quality == "oracle":
            if levels is None:
                raise ConfigError("the oracle method needs the true noise levels in forward()")
            sigma_hat = {m: levels[m].to(mask).float() for m in ms}

        q = (torch.stack([sigma_hat[m] for m in ms], dim=1) if sigma_hat and quality_on
             else None)
        if (q is not None and cfg.gap_floor and not net.training
                and self.quality == "estimator" and cfg.estimator != "mlp"):
            # A window with a share v missing is at least at the `gap` family's level for that
            # share, 1 + 10·(1 − v), whatever σ̂ says: σ cannot see a gap (missing frames read
            # as silence), the share is measured. Serving only, like the gate: training is the
            # same with or without it.
            v = torch.stack([est[m][:, -1] for m in ms], dim=1)
            q = torch.maximum(q, 1.0 + 10.0 * (1.0 - v))
        if net.training:
            with torch.no_grad():
                dep_now = dependency_statistic([uni[m] for m in ms], mask)
                mom = cfg.dependency_momentum
                net.dependency_ema.mul_(mom).add_((1 - mom) * dep_now)
            dep = dep_now  # the reference recomputes D every step; the EMA serves evaluation
        else:
            dep = net.dependency_ema
        w = udml_weights(q, dep if self.dependency else None, mask)
        if self.switch and q is not None and not net.training:
            g_sig = gate_openness(q, net.gate_clean, net.gate_broken)
            w = apply_gate(w, g_sig, mask)
            # The confidence gate, as the σ̂ gate on "badness" = −confidence.
            conf = torch.stack([F.softmax(uni[m].float(), dim=1).amax(dim=1) for m in ms], dim=1)
            g_conf = gate_openness(-conf, -net.conf_clean, -net.conf_broken)
            w = apply_gate(w, g_conf, mask)
            # The typicality gate closes a stream only as far as another is healthy under all
            # the gates: atypical is a relative cue (validation, both streams degraded at
            # once: an absolute gate cost 0.6 pt there).
            typ = self.typicality(net, z)
            g_atyp = gate_openness(typ, net.typ_clean, net.typ_broken)
            if pooled is not None:
                # The pretext gate joins the typicality gate: both say "unlike clean input",
                # neither says how badly, so both close only as far as another stream is healthy.
                # fp32 even under a bf16 autocast, as the typicality gate (a ramp of ~1 nat).
                with torch.autocast(device_type=ref.device.type, enabled=False):
                    logp = torch.stack([net.pretext[m].log_probs(pooled[m]) for m in ms], dim=1)
                pre = -logp[:, :, 0]  # [B, M] surprise
                g_atyp = g_atyp * gate_openness(pre, net.pre_clean, net.pre_broken)
                aux.update({f"pretext/{m}": pre[:, i] for i, m in enumerate(ms)})
                # Which transform the head says the input went through, for the node's
                # diagnostics ("the camera looks turned", ``serve.diagnose``): only where the
                # head is sure, its gate is calibrated, and the σ̂ and confidence gates keep the
                # stream open, since on input with nothing in it the head's pick means nothing
                # (a blank frame reads as a quarter turn). −1: nothing to say.
                probs = logp.exp()
                p_top, k_top = probs.max(dim=2)
                judge = ((g_sig * g_conf >= LOOKS_OPEN) & mask.bool()
                         & (net.pre_broken > net.pre_clean)[None, :])
                looks = torch.where(judge & (p_top >= LOOKS_PROB), k_top.float(),
                                    torch.full_like(p_top, -1.0))
                aux.update({f"looks/{m}": looks[:, i] for i, m in enumerate(ms)})
                # What an ensemble combines into its own ``looks`` (the mean of the members'
                # transform posteriors where enough of them may judge): ``model.ensemble``.
                aux.update({f"transform_p/{m}": probs[:, i] for i, m in enumerate(ms)})
                aux.update({f"may_judge/{m}": judge[:, i] for i, m in enumerate(ms)})
            g_rel = relative_openness(g_atyp, g_sig * g_conf * g_atyp, mask)
            w = apply_gate(w, g_rel, mask)
            health = g_sig * g_conf * g_rel  # each stream's openness under all the gates
            aux.update({f"gate/{m}": health[:, i] for i, m in enumerate(ms)})
            aux.update({f"typicality/{m}": typ[:, i] for i, m in enumerate(ms)})
            aux.update({f"embedding/{m}": z[m] for m in ms})  # what the centres are fitted on
        mult = effective_multipliers(w, mask, "switch" if self.switch else "residual")
        scaled = torch.cat([mult[:, i : i + 1] * z[m] for i, m in enumerate(ms)], dim=1)
        logits = net.head(scaled)
        if self.switch and q is not None and not net.training:
            # On a conflict (present streams whose own heads name different classes) the answer
            # is the product of the streams' posteriors, each as far as the gates keep it open:
            # the fused head learnt from streams that agree (validation: docs/method.md). Off
            # until a gate is calibrated (so training's validation scores the head, as before),
            # decided on the device: no host sync.
            calibrated = torch.cat([net.gate_broken > net.gate_clean,
                                    net.conf_clean > net.conf_broken,
                                    net.typ_broken > net.typ_clean,
                                    net.pre_broken > net.pre_clean]).any()
            aux["head_logits"] = logits
            logits, aux["conflict"] = resolve_conflicts(logits, [uni[m] for m in ms], health,
                                                        mask, on=calibrated)
        return FusionOutput(
            logits, uni, {m: w[:, i] for i, m in enumerate(ms)}, pres,
            {m: mult[:, i] for i, m in enumerate(ms)}, sigma_hat,
            {m: dep[i] for i, m in enumerate(ms)}, aux,
        )

    # ---- loss ----------------------------------------------------------------------------

    def modality_terms(self, net: FusionNet, out: FusionOutput, m: str, ce: Tensor,
                       mask: Tensor, y: Tensor, levels: Mapping[str, Tensor],
                       history: Mapping[str, Tensor] | None) -> Iterator[Term]:
        """γ·CE(unimodal), β·KL to the level prior, λ·MSE(σ̂, level) for the estimator."""
        cfg = net.cfg
        yield "ce", cfg.gamma, ce
        maps = out.aux.get("embedding_maps", {})
        if m in maps and cfg.beta > 0:
            yield "kl", cfg.beta, masked_mean(kl_to_level_prior(maps[m], levels[m]), mask)
        if self.quality == "estimator":
            err = (out.sigma_hat[m] - levels[m].float()) ** 2
            yield "est", cfg.estimator_weight, masked_mean(err, mask)
