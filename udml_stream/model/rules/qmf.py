"""QMF (quality-aware multimodal fusion): late fusion weighted by each stream's energy
confidence, with a ranking regulariser that ties confidence to each sample's running loss.

Loss: CE(fused) + Σ CE(unimodal) + λ·rank(confidence, running unimodal loss)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from udml_stream.model.rules.base import FusionOutput, FusionRule, TensorMap, Term, late_heads

if TYPE_CHECKING:
    from udml_stream.model.fusion import FusionNet


def rank_loss(conf: Tensor, history: Tensor, mask: Tensor) -> Tensor:
    """A sample whose running unimodal loss is lower should get higher confidence."""
    j = torch.roll(torch.arange(conf.shape[0], device=conf.device), 1)
    target = torch.sign(history[j] - history)  # +1: i had the lower loss → conf_i > conf_j
    pair = mask & mask[j] & (target != 0)
    if not pair.any():
        return conf.sum() * 0.0
    return F.margin_ranking_loss(conf[pair], conf[j][pair], target[pair], margin=0.0)


@dataclass(frozen=True)
class Qmf(FusionRule):
    """Late fusion by energy confidence; needs each sample's running unimodal loss."""

    needs_history: ClassVar[bool] = True

    def build(self, net: FusionNet) -> None:
        """The per-modality heads."""
        late_heads(net)

    def fuse(self, net: FusionNet, z: TensorMap, sig: TensorMap, pres: TensorMap,
             levels: Mapping[str, Tensor] | None, quality_on: bool,
             valid: TensorMap) -> FusionOutput:
        """Sum of unimodal logits weighted by their (detached, non-negative) confidence."""
        ms = net.cfg.modalities
        uni = {m: net.heads[m](z[m]) for m in ms}
        # Energy-based confidence: the negative free energy logsumexp(logits), scaled.
        conf = {m: torch.logsumexp(uni[m], dim=1) / 10.0 for m in ms}
        weights = {m: conf[m].detach().clamp(min=0.0) * pres[m] for m in ms}
        logits = sum(weights[m][:, None] * uni[m] for m in ms)
        aux = {f"confidence/{m}": conf[m] for m in ms}
        return FusionOutput(logits, uni, weights, pres, multipliers=dict(weights), aux=aux)

    def modality_terms(self, net: FusionNet, out: FusionOutput, m: str, ce: Tensor,
                       mask: Tensor, y: Tensor, levels: Mapping[str, Tensor],
                       history: Mapping[str, Tensor] | None) -> Iterator[Term]:
        """CE(unimodal) and, when the loop passes the running losses, the ranking term."""
        yield "ce", 1.0, ce
        if history is not None:
            rank = rank_loss(out.aux[f"confidence/{m}"], history[m], out.present[m])
            yield "rank", net.cfg.rank_weight, rank
