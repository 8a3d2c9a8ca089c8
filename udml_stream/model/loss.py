"""Training losses of every fusion method, from a ``FusionOutput`` and the batch targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from udml_stream.model.fusion import FusionNet, FusionOutput


@dataclass
class LossTerms:
    """The total loss, its named parts (detached 0-dim tensors on the loss's device, for logging)
    and per-sample unimodal losses."""

    total: Tensor
    part_tensors: dict[str, Tensor]
    unimodal_per_sample: dict[str, Tensor]

    @property
    def parts(self) -> dict[str, float]:
        """The named parts as floats (each read waits for the device: a GPU loop that logs every
        step sums ``part_tensors`` on the device instead)."""
        return {k: float(v) for k, v in self.part_tensors.items()}


def _masked_ce(logits: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    per = F.cross_entropy(logits, y, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1), per.detach()


def kl_to_level_prior(maps: Tensor, level: Tensor) -> Tensor:
    """Per-sample KL(N(μ, σ²) ‖ N(0, L)) summed over the feature map; ``maps`` = stack(μ, logvar)."""
    mu, logvar = maps[0], maps[1]
    prior = level.float().view(-1, 1, 1, 1)
    kl = 0.5 * ((logvar.exp() + mu**2) / prior - 1.0 - logvar + torch.log(prior))
    return kl.sum(dim=(1, 2, 3))


def _rank_loss(conf: Tensor, history: Tensor, mask: Tensor) -> Tensor:
    """QMF: a sample whose running unimodal loss is lower should get higher confidence."""
    j = torch.roll(torch.arange(conf.shape[0], device=conf.device), 1)
    target = torch.sign(history[j] - history)  # +1: i had the lower loss → conf_i > conf_j
    pair = mask & mask[j] & (target != 0)
    if not pair.any():
        return conf.sum() * 0.0
    return F.margin_ranking_loss(conf[pair], conf[j][pair], target[pair], margin=0.0)


def compute_loss(
    model: FusionNet,
    out: FusionOutput,
    y: Tensor,
    levels: Mapping[str, Tensor],
    history: Mapping[str, Tensor] | None = None,
) -> LossTerms:
    """The method's training loss for one batch.

    UDML and its ablations: CE(fused) + γ·Σ CE(unimodal) + β·KL + λ·MSE(σ̂, L).
    QMF: CE(fused) + Σ CE(unimodal) + ranking regulariser on the energy confidence.
    PDF: CE(fused) + Σ CE(unimodal) + Σ MSE(confidence, true-class probability).
    Static concat: CE(fused).
    """
    cfg, spec = model.cfg, model.cfg.spec
    total = F.cross_entropy(out.logits, y)
    parts = {"ce_fused": total.detach()}
    uni_ps: dict[str, Tensor] = {}
    for m in cfg.modalities:
        mask = out.present[m].float()
        ce, per = _masked_ce(out.unimodal_logits[m], y, mask)
        uni_ps[m] = per
        if spec.fusion == "concat":
            continue
        gamma = cfg.gamma if spec.fusion == "udml" else 1.0
        total = total + gamma * ce
        parts[f"ce_{m}"] = ce.detach()
        if spec.fusion == "udml":
            maps = out.aux.get("embedding_maps", {})
            if m in maps and cfg.beta > 0:
                kl = (kl_to_level_prior(maps[m], levels[m]) * mask).sum() / mask.sum().clamp(min=1)
                total = total + cfg.beta * kl
                parts[f"kl_{m}"] = kl.detach()
            if spec.quality == "estimator":
                err = (out.sigma_hat[m] - levels[m].float()) ** 2
                mse = (err * mask).sum() / mask.sum().clamp(min=1)
                total = total + cfg.estimator_weight * mse
                parts[f"est_{m}"] = mse.detach()
        elif spec.fusion == "qmf" and history is not None:
            rank = _rank_loss(out.aux[f"confidence/{m}"], history[m], out.present[m])
            total = total + cfg.rank_weight * rank
            parts[f"rank_{m}"] = rank.detach()
        elif spec.fusion == "pdf":
            tcp = F.softmax(out.unimodal_logits[m], dim=1).gather(1, y[:, None]).squeeze(1)
            err = (out.aux[f"confidence/{m}"] - tcp.detach()) ** 2
            mse = (err * mask).sum() / mask.sum().clamp(min=1)
            total = total + mse
            parts[f"conf_{m}"] = mse.detach()
    return LossTerms(total, parts, uni_ps)
