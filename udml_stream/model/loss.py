"""Training losses of every fusion method, from a ``FusionOutput`` and the batch targets.

Each fusion rule owns its loss (``udml_stream.model.rules``); this module is the one entry
point the training loop and the tools call.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from udml_stream.model.fusion import FusionNet, FusionOutput
from udml_stream.model.rules.base import LossTerms
from udml_stream.model.rules.udml import kl_to_level_prior

# Re-exported: callers import these from here.
__all__ = ["LossTerms", "compute_loss", "kl_to_level_prior"]


def compute_loss(
    model: FusionNet,
    out: FusionOutput,
    y: Tensor,
    levels: Mapping[str, Tensor],
    history: Mapping[str, Tensor] | None = None,
) -> LossTerms:
    """The method's training loss for one batch (its rule's ``loss``).

    UDML and its ablations: CE(fused) + γ·Σ CE(unimodal) + β·KL + λ·MSE(σ̂, L).
    QMF: CE(fused) + Σ CE(unimodal) + ranking regulariser on the energy confidence (when
    ``history``, each sample's running unimodal loss, is given).
    PDF: CE(fused) + Σ CE(unimodal) + Σ MSE(confidence, true-class probability).
    Static concat: CE(fused).
    """
    return model.rule.loss(model, out, y, levels, history)
