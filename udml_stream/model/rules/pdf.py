"""PDF (predictive dynamic fusion): late fusion weighted by co-belief from learned
confidences, relatively calibrated at evaluation.

Loss: CE(fused) + Σ CE(unimodal) + Σ MSE(confidence, true-class probability)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udml_stream.model.rules.base import (
    FusionOutput,
    FusionRule,
    TensorMap,
    Term,
    late_heads,
    masked_mean,
)

if TYPE_CHECKING:
    from udml_stream.model.fusion import FusionNet


@dataclass(frozen=True)
class Pdf(FusionRule):
    """Late fusion by co-belief; the confidence heads learn the true-class probability."""

    def build(self, net: FusionNet) -> None:
        """The per-modality heads and confidence heads."""
        late_heads(net)
        d = net.cfg.embed_dim
        net.confidence = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, 1))
            for m in net.cfg.modalities
        })

    def fuse(self, net: FusionNet, z: TensorMap, sig: TensorMap, pres: TensorMap,
             levels: Mapping[str, Tensor] | None, quality_on: bool,
             valid: TensorMap) -> FusionOutput:
        """Co-belief weights (softmax over present streams) on the unimodal logits."""
        ms, k = net.cfg.modalities, net.cfg.num_classes
        uni = {m: net.heads[m](z[m]) for m in ms}
        conf = {m: torch.sigmoid(net.confidence[m](z[m].detach())).squeeze(1) for m in ms}
        c = torch.stack([conf[m].detach() for m in ms], dim=1).clamp(1e-4, 1 - 1e-4)
        mask = torch.stack([pres[m] for m in ms], dim=1)
        if not net.training:
            # Relative calibration: shrink a modality's confidence when its prediction is more
            # uniform (less certain) than the most certain other modality's.
            probs = torch.stack([F.softmax(uni[m], dim=1) for m in ms], dim=1)
            du = (probs - 1.0 / k).abs().sum(dim=2) * mask
            others = torch.stack([
                torch.cat([du[:, :i], du[:, i + 1 :]], dim=1).max(dim=1).values
                for i in range(len(ms))
            ], dim=1)
            c = c * torch.where(others > 0, (du / others.clamp(min=1e-6)).clamp(max=1.0),
                                torch.ones_like(du))
        logc = torch.log(c.clamp(min=1e-4)) * mask
        total = logc.sum(dim=1, keepdim=True)
        holo = (total - logc) / total.clamp(max=-1e-6)  # log Π_{k≠m} c_k / log Π_k c_k
        co_belief = (c + holo).masked_fill(~mask, float("-inf"))
        wt = torch.softmax(co_belief, dim=1).nan_to_num(0.0) * mask
        logits = sum(wt[:, i : i + 1] * uni[m] for i, m in enumerate(ms))
        aux = {f"confidence/{m}": conf[m] for m in ms}
        weights = {m: wt[:, i] for i, m in enumerate(ms)}
        return FusionOutput(logits, uni, weights, pres, multipliers=dict(weights), aux=aux)

    def modality_terms(self, net: FusionNet, out: FusionOutput, m: str, ce: Tensor,
                       mask: Tensor, y: Tensor, levels: Mapping[str, Tensor],
                       history: Mapping[str, Tensor] | None) -> Iterator[Term]:
        """CE(unimodal) and the confidence head's MSE to the true-class probability."""
        yield "ce", 1.0, ce
        tcp = F.softmax(out.unimodal_logits[m], dim=1).gather(1, y[:, None]).squeeze(1)
        err = (out.aux[f"confidence/{m}"] - tcp.detach()) ** 2
        yield "conf", 1.0, masked_mean(err, mask)
