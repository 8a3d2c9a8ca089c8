"""UDML for M ≥ 2 modalities, and its peers, behind one model class with named outputs.

``FusionNet`` owns the preprocessing, one encoder per modality, the embedding heads and one
fusion rule chosen by ``ModelConfig.method`` (see ``METHODS``). Its forward takes sensor-domain
tensors (pixels, waveform samples, MFCC frames), a per-sample presence mask and, for training and
the oracle, the injected noise level; it returns a ``FusionOutput``. Schedules (clean epochs,
when quality weighting switches on) stay in the training loop and arrive as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from udml_stream.errors import ConfigError
from udml_stream.model import encoders
from udml_stream.model.preprocess import MISSING_ABSENT_FRACTION, build_prep, valid_fraction
from udml_stream.model.rules import METHODS, FusionOutput, FusionRule, MethodSpec
from udml_stream.model.rules.udml import ESTIMATORS, PretextHead
from udml_stream.model.rules.weighting import (
    dependency_statistic,
    effective_multipliers,
    gate_weights,
    udml_weights,
)

# Re-exported: callers import these from here.
__all__ = ["ESTIMATORS", "METHODS", "FusionNet", "FusionOutput", "MethodSpec", "ModelConfig",
           "dependency_statistic", "effective_multipliers", "gate_weights", "udml_weights"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a ``FusionNet`` (stored as JSON in checkpoints)."""

    modalities: tuple[str, ...]
    encoders: dict[str, str]
    preprocess: dict[str, dict[str, Any]]
    num_classes: int
    method: str = "udml"
    embed_dim: int = 64
    gamma: float = 1.0  # weight of the auxiliary unimodal losses
    beta: float = 1e-5  # weight of the KL term
    estimator_weight: float = 0.1
    rank_weight: float = 0.1  # QMF ranking regulariser
    dependency_momentum: float = 0.9  # EMA of the per-step dependency statistic
    # "mlp": Linear-ReLU-Dropout-Linear on the pooled σ (checkpoints before the field model);
    # "linear": the reference's Linear-Dropout-Linear on standardised log σ and the share of the
    # stream's window that holds measurements.
    estimator: str = "mlp"
    # Quality weights use max(σ̂, the gap family's level for the window's missing share).
    gap_floor: bool = False

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.method not in METHODS:
            raise ConfigError(f"model.method = {self.method!r}; expected one of {list(METHODS)}")
        if len(self.modalities) < 2:
            raise ConfigError(f"model.modalities = {list(self.modalities)}; expected at least 2")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"model.estimator = {self.estimator!r}; expected one of "
                              f"{list(ESTIMATORS)}")
        for m in self.modalities:
            if m not in self.encoders:
                raise ConfigError(f"model.encoders.{m} is missing; expected one of "
                                  f"{encoders.available()}")
            if m not in self.preprocess:
                raise ConfigError(f"model.preprocess.{m} is missing")

    @property
    def spec(self) -> MethodSpec:
        """The method's ``MethodSpec``."""
        return METHODS[self.method]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``."""
        return cls(**dict(d))


class _Embed(nn.Module):
    """1×1 conv + BatchNorm heads on a feature map: μ (and log-variance when probabilistic)."""

    def __init__(self, cin: int, dim: int, probabilistic: bool) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.logvar = (
            nn.Sequential(nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim))
            if probabilistic else None
        )


class FusionNet(nn.Module):
    """Multimodal classifier: preprocessing → encoders → embeddings → one fusion rule.

    The rule (``self.rule``, from ``udml_stream.model.rules``) adds its own parameters and
    buffers here (``head`` or ``heads``, ``estimator``, ``confidence``, the switch rule's
    gate buffers and ``pretext`` heads), runs the fusion and owns the loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rule, d = cfg.spec.fusion, cfg.embed_dim
        self.prep = nn.ModuleDict({m: build_prep(cfg.preprocess[m]) for m in cfg.modalities})
        in_ch = {"image": 1, "logmel": 1, "mfcc": 13}
        self.enc = nn.ModuleDict({
            m: encoders.create(cfg.encoders[m], in_channels=in_ch[cfg.preprocess[m]["kind"]])
            for m in cfg.modalities
        })
        self.embed = nn.ModuleDict({
            m: _Embed(self.enc[m].out_channels, d, rule.probabilistic) for m in cfg.modalities
        })
        # Channels-last convolutions run 1.4-2x faster on CPU (oneDNN) and suit tensor cores on
        # GPU. A 1-channel input is already both layouts, so the weights must carry the format.
        # load_state_dict copies into these tensors and keeps it; checkpoints store contiguous.
        self.enc.to(memory_format=torch.channels_last)
        self.embed.to(memory_format=torch.channels_last)
        # Dependency statistics are model state: saved in and restored from the checkpoint.
        # (Registered before the rule's buffers, so the state dict keeps its order.)
        self.register_buffer("dependency_ema", torch.ones(len(cfg.modalities)))
        rule.build(self)

    @property
    def rule(self) -> FusionRule:
        """The fusion rule of ``cfg.method``."""
        return self.cfg.spec.fusion

    # ---- helpers -------------------------------------------------------------------------

    def _embed(self, m: str, x: Tensor, preprocessed: bool
               ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        fmap = self.enc[m](x if preprocessed else self.prep[m](x))
        head = self.embed[m]
        mu = head.mu(fmap)
        if head.logvar is None:
            return mu.mean(dim=(2, 3)), None, None, fmap
        logvar = head.logvar(fmap)
        sigma = torch.exp(0.5 * logvar)
        # torch.randn, not randn_like: on a channels-last map randn_like is ~7x slower on CPU.
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device) if self.training else None
        z = mu + eps * sigma if eps is not None else mu
        # KL(N(μ, σ²) ‖ N(0, L)) is computed by the loss from these maps.
        return z.mean(dim=(2, 3)), sigma.mean(dim=(2, 3)), torch.stack([mu, logvar]), fmap

    def input_valid(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per modality, ``[B]`` share of a sensor-domain input that holds measurements.

        Missing samples are NaN (gaps in a stream). Call this on raw inputs (before ``prep``)
        and pass the result to ``forward(valid=...)`` when the inputs are preprocessed apart."""
        return {m: valid_fraction(x) for m, x in inputs.items() if m in self.prep}

    # ---- forward -------------------------------------------------------------------------

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None = None,
        levels: Mapping[str, Tensor] | None = None,
        quality_on: bool = True,
        preprocessed: bool = False,
        valid: Mapping[str, Tensor] | None = None,
    ) -> FusionOutput:
        """Fuse one batch.

        Args:
            inputs: modality → sensor-domain tensor; a modality left out is absent for the batch.
            present: modality → bool ``[B]``; absent samples get weight 0 and a zero embedding.
            levels: modality → injected noise level ``[B]`` (training targets; the oracle's weights).
            quality_on: the training loop's switch; when False the quality weights are all 1.
            preprocessed: the inputs already went through ``self.prep`` (serving times it apart).
            valid: modality → share of the window holding measurements ``[B]``; computed from
                the NaN in ``inputs`` unless they are preprocessed (then from ``input_valid``).
                Above ``MISSING_ABSENT_FRACTION`` missing, a stream is absent for that sample.
        """
        cfg, rule = self.cfg, self.rule
        ref = next((inputs[m] for m in cfg.modalities if m in inputs), None)
        if ref is None:
            raise ConfigError(f"no input for any modality of {list(cfg.modalities)}")
        b, dev = ref.shape[0], ref.device
        # A stream whose window is mostly missing (NaN) is absent, in training as in serving.
        if valid is None:
            valid = {} if preprocessed else self.input_valid(inputs)
        valid = {m: v.to(dev).float() for m, v in valid.items()}
        pres: dict[str, Tensor] = {}
        z: dict[str, Tensor] = {}
        sig: dict[str, Tensor] = {}
        maps: dict[str, Tensor] = {}
        # The pretext gate's input (serving only): each stream's encoder map on a small grid.
        pooled: dict[str, Tensor] | None = (
            {} if not self.training and rule.reads_pooled else None)
        for m in cfg.modalities:
            p = torch.zeros(b, dtype=torch.bool, device=dev) if m not in inputs else (
                present[m].to(dev).bool() if present is not None and m in present
                else torch.ones(b, dtype=torch.bool, device=dev))
            if m in valid:
                p = p & (valid[m] >= 1.0 - MISSING_ABSENT_FRACTION)
            pres[m] = p
            if m in inputs:
                zm, sm, mp, fmap = self._embed(m, inputs[m], preprocessed)
                # where() not a product: an all-missing window may embed to non-finite values.
                z[m] = torch.where(p[:, None], zm, torch.zeros_like(zm))
                if sm is not None:
                    sig[m], maps[m] = sm, mp
                if pooled is not None:
                    g = PretextHead.pool(fmap)
                    pooled[m] = torch.where(p[:, None], g, torch.zeros_like(g))
            else:
                z[m] = torch.zeros(b, cfg.embed_dim, device=dev)
                if rule.probabilistic:
                    sig[m] = torch.ones(b, cfg.embed_dim, device=dev)
                if pooled is not None:
                    n_feat = PretextHead.n_features(self.enc[m].out_channels)
                    pooled[m] = torch.zeros(b, n_feat, device=dev)
        if pooled is None:
            out = rule.fuse(self, z, sig, pres, levels, quality_on, valid)
        else:
            out = rule.fuse(self, z, sig, pres, levels, quality_on, valid, pooled=pooled)
        if maps:
            out.aux["embedding_maps"] = maps  # type: ignore[assignment]
        return out
