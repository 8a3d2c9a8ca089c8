"""What every fusion rule implements, and the pieces rules share.

A rule is a small frozen object holding its options. It builds its parameters as attributes of
the ``FusionNet`` it serves (so state-dict names stay ``head.weight``, ``estimator.image.…``),
fuses the per-modality embeddings into a ``FusionOutput`` and computes its own loss terms. What
the training loop or the server must do for it is declared here as flags, never inferred from a
method's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from udml_stream.model.fusion import FusionNet

#: Modality name → tensor.
TensorMap = dict[str, Tensor]


@dataclass
class FusionOutput:
    """Named outputs of one forward pass (per-sample tensors have a leading batch axis)."""

    logits: Tensor  # [B, K] fused
    unimodal_logits: dict[str, Tensor]  # [B, K] per modality
    weights: dict[str, Tensor]  # [B] fusion weight per modality (0 where absent)
    present: dict[str, Tensor]  # [B] bool
    # [B] the factor that actually scales each stream's contribution to the fused logits
    # ((1 + w) for the residual rule, w for the switch rule, the weight itself for the late-
    # fusion peers, 1 for static concat; 0 where absent): weight shares are reported from these.
    multipliers: dict[str, Tensor] = field(default_factory=dict)
    sigma_hat: dict[str, Tensor] = field(default_factory=dict)  # [B] predicted noise scale
    dependency: dict[str, Tensor] = field(default_factory=dict)  # scalar D_m used
    aux: dict[str, Tensor] = field(default_factory=dict)  # method-specific terms for the loss


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


#: One loss term of one modality: (part name, weight in the total, unweighted value).
Term = tuple[str, float, Tensor]


def masked_ce(logits: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy averaged over the samples where ``mask`` is 1, and per sample (detached)."""
    per = F.cross_entropy(logits, y, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1), per.detach()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the samples where ``mask`` is 1 (0 when none is)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def shared_head(net: FusionNet) -> None:
    """One linear head on the concatenated embeddings (early fusion: concat and UDML)."""
    net.head = nn.Linear(net.cfg.embed_dim * len(net.cfg.modalities), net.cfg.num_classes)


def late_heads(net: FusionNet) -> None:
    """One linear classifier per modality (late fusion: QMF and PDF)."""
    d, k = net.cfg.embed_dim, net.cfg.num_classes
    net.heads = nn.ModuleDict({m: nn.Linear(d, k) for m in net.cfg.modalities})


def block_logits(net: FusionNet, m_index: int, z: Tensor) -> Tensor:
    """The shared head's logits from modality ``m_index``'s block alone (others zeroed)."""
    d = net.cfg.embed_dim
    w = net.head.weight[:, m_index * d : (m_index + 1) * d]
    return z @ w.t() + net.head.bias


class FusionRule(ABC):
    """Base of every fusion rule (subclasses are frozen dataclasses of their options).

    Declarations (read by the model, the training loop and the server):
      * ``probabilistic``: the embeddings are μ/σ heads (σ and the μ/log-variance maps reach
        ``fuse`` and the loss).
      * ``needs_history``: the loss reads each sample's running unimodal loss, which the training
        loop keeps on the device only for rules that declare it.
      * ``needs_levels``: ``forward`` needs the true noise levels, so the model cannot serve.
      * ``has_estimator``: a σ̂ health estimator (``net.estimator``) that ``udml adapt`` can fit.
      * ``has_gates``: calibrated gates (buffers ``gate_*``, ``conf_*``, ``typ_*``, ``pre_*``
        and the ``pretext`` heads) set after training.
      * ``tracks_dependency``: training forward passes update ``net.dependency_ema``.
    """

    probabilistic: ClassVar[bool] = False
    needs_history: ClassVar[bool] = False

    @property
    def needs_levels(self) -> bool:
        """Whether ``forward`` needs the true noise levels (then the model cannot serve)."""
        return False

    @property
    def has_estimator(self) -> bool:
        """Whether the rule has a σ̂ estimator head (``net.estimator``)."""
        return False

    @property
    def has_gates(self) -> bool:
        """Whether the rule has gates calibrated on validation data after training."""
        return False

    @property
    def tracks_dependency(self) -> bool:
        """Whether training forward passes update ``net.dependency_ema``."""
        return False

    @abstractmethod
    def build(self, net: FusionNet) -> None:
        """Create the rule's parameters and buffers as attributes of ``net``."""

    @property
    def reads_pooled(self) -> bool:
        """Whether ``fuse`` takes the serving-time ``pooled`` maps (the switch rule's pretext
        gate); rules that do not keep the plain signature."""
        return False

    @abstractmethod
    def fuse(self, net: FusionNet, z: TensorMap, sig: TensorMap, pres: TensorMap,
             levels: Mapping[str, Tensor] | None, quality_on: bool, valid: TensorMap
             ) -> FusionOutput:
        """Fuse embeddings ``z`` (``[B, D]`` per modality, zero where absent) into an output.

        ``sig``: σ ``[B, D]`` per modality (probabilistic rules only); ``pres``: bool ``[B]``;
        ``levels``: the injected noise levels, when known; ``quality_on``: the loop's switch for
        quality weighting; ``valid``: the share of each window that holds measurements ``[B]``.
        A rule whose ``reads_pooled`` is true also gets, when serving, ``pooled=``: each
        stream's encoder map pooled to a small grid ``[B, F]`` (zeros where absent).
        """

    def modality_terms(self, net: FusionNet, out: FusionOutput, m: str, ce: Tensor,
                       mask: Tensor, y: Tensor, levels: Mapping[str, Tensor],
                       history: Mapping[str, Tensor] | None) -> Iterator[Term]:
        """Modality ``m``'s loss terms, given its masked unimodal cross-entropy ``ce``.

        Yielded lazily, one at a time, so each is added to the total before the next one is
        computed (the autograd graph, and so the gradients, keep one fixed order)."""
        yield "ce", 1.0, ce

    def loss(self, net: FusionNet, out: FusionOutput, y: Tensor, levels: Mapping[str, Tensor],
             history: Mapping[str, Tensor] | None = None) -> LossTerms:
        """CE(fused) plus every modality's ``modality_terms``."""
        total = F.cross_entropy(out.logits, y)
        parts = {"ce_fused": total.detach()}
        uni_ps: dict[str, Tensor] = {}
        for m in net.cfg.modalities:
            mask = out.present[m].float()
            ce, per = masked_ce(out.unimodal_logits[m], y, mask)
            uni_ps[m] = per
            for name, weight, value in self.modality_terms(net, out, m, ce, mask, y, levels,
                                                           history):
                total = total + weight * value
                parts[f"{name}_{m}"] = value.detach()
        return LossTerms(total, parts, uni_ps)
