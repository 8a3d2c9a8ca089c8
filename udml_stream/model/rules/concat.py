"""Static concatenation: one linear head on the concatenated embeddings, no weighting."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from udml_stream.model.rules.base import (
    FusionOutput,
    FusionRule,
    TensorMap,
    Term,
    block_logits,
    shared_head,
)

if TYPE_CHECKING:
    from udml_stream.model.fusion import FusionNet


@dataclass(frozen=True)
class StaticConcat(FusionRule):
    """Early fusion with fixed weights; its loss is the fused cross-entropy alone."""

    def build(self, net: FusionNet) -> None:
        """The shared head."""
        shared_head(net)

    def fuse(self, net: FusionNet, z: TensorMap, sig: TensorMap, pres: TensorMap,
             levels: Mapping[str, Tensor] | None, quality_on: bool, valid: TensorMap) -> FusionOutput:
        """Concatenate and classify; weight 1 per present stream."""
        ms = net.cfg.modalities
        logits = net.head(torch.cat([z[m] for m in ms], dim=1))
        uni = {m: block_logits(net, i, z[m]) for i, m in enumerate(ms)}
        weights = {m: pres[m].float() for m in ms}
        return FusionOutput(logits, uni, weights, pres, multipliers=dict(weights))

    def modality_terms(self, net: FusionNet, out: FusionOutput, m: str, ce: Tensor,
                       mask: Tensor, y: Tensor, levels: Mapping[str, Tensor],
                       history: Mapping[str, Tensor] | None) -> Iterator[Term]:
        """None: the unimodal logits are reported, not trained."""
        yield from ()
