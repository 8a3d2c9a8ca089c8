"""UDML for M ≥ 2 modalities, and its peers, behind one model class with named outputs.

``FusionNet`` owns the preprocessing, one encoder per modality, the embedding heads and one
fusion rule chosen by ``ModelConfig.method`` (see ``METHODS``). Its forward takes sensor-domain
tensors (pixels, waveform samples, MFCC frames), a per-sample presence mask and, for training and
the oracle, the injected noise level; it returns a ``FusionOutput``. Schedules (clean epochs,
when quality weighting switches on) stay in the training loop and arrive as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udml_stream.errors import ConfigError
from udml_stream.model import encoders
from udml_stream.model.preprocess import MISSING_ABSENT_FRACTION, build_prep, valid_fraction

_T = dict[str, Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """What distinguishes one fusion method from another."""

    fusion: str  # "concat" | "udml" | "qmf" | "pdf"
    probabilistic: bool = False  # μ/σ embedding heads
    quality: str = "none"  # "none" | "estimator" | "raw_sigma" | "oracle"
    dependency: bool = False  # divide quality weights by the modality dependency D_m
    noise_augment: bool = True  # the training loop injects noise after its clean epochs
    # How the UDML weights scale each stream: "residual" is the paper's (1 + w)·z, whose
    # multiplier never falls below 1; "switch" is w·z, whose multiplier reaches 0 for a stream
    # the estimator calls broken (the product's rule, see docs/method.md).
    rule: str = "residual"


METHODS: dict[str, MethodSpec] = {
    "static_concat": MethodSpec("concat", noise_augment=False),
    "static_concat_aug": MethodSpec("concat"),
    "qmf": MethodSpec("qmf"),
    "pdf": MethodSpec("pdf"),
    "udml_no_dependency": MethodSpec("udml", True, "estimator", False),
    "udml_no_estimator": MethodSpec("udml", True, "raw_sigma", True),
    "dependency_only": MethodSpec("udml", True, "none", True),
    "udml": MethodSpec("udml", True, "estimator", True),
    "udml_switch": MethodSpec("udml", True, "estimator", True, rule="switch"),
    "udml_switch_no_dependency": MethodSpec("udml", True, "estimator", False, rule="switch"),
    "oracle": MethodSpec("udml", True, "oracle", True),
}


#: Estimator heads (see ``ModelConfig.estimator``).
ESTIMATORS = ("mlp", "linear")


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
    span = (broken - clean)[None, :]
    on = span > 0
    g = torch.where(on, ((broken[None, :] - sigma_hat) / span.clamp(min=1e-6)).clamp(0.0, 1.0),
                    torch.ones_like(sigma_hat))
    gw = w * g * mask.float()
    total = gw.sum(dim=1, keepdim=True)
    n_present = mask.float().sum(dim=1, keepdim=True)
    return torch.where(total > 1e-6, n_present * gw / total.clamp(min=1e-6), w)


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


class _LinearEstimator(nn.Module):
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
    """Multimodal classifier: preprocessing → encoders → embeddings → one fusion rule."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        spec, d, k = cfg.spec, cfg.embed_dim, cfg.num_classes
        self.prep = nn.ModuleDict({m: build_prep(cfg.preprocess[m]) for m in cfg.modalities})
        in_ch = {"image": 1, "logmel": 1, "mfcc": 13}
        self.enc = nn.ModuleDict({
            m: encoders.create(cfg.encoders[m], in_channels=in_ch[cfg.preprocess[m]["kind"]])
            for m in cfg.modalities
        })
        self.embed = nn.ModuleDict({
            m: _Embed(self.enc[m].out_channels, d, spec.probabilistic) for m in cfg.modalities
        })
        # Channels-last convolutions run 1.4-2x faster on CPU (oneDNN) and suit tensor cores on
        # GPU. A 1-channel input is already both layouts, so the weights must carry the format.
        # load_state_dict copies into these tensors and keeps it; checkpoints store contiguous.
        self.enc.to(memory_format=torch.channels_last)
        self.embed.to(memory_format=torch.channels_last)
        if spec.fusion in ("concat", "udml"):
            self.head = nn.Linear(d * len(cfg.modalities), k)
        else:
            self.heads = nn.ModuleDict({m: nn.Linear(d, k) for m in cfg.modalities})
        if spec.quality == "estimator":
            self.estimator = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(d // 2, 1)) if cfg.estimator == "mlp"
                else _LinearEstimator(d, d // 2)
                for m in cfg.modalities
            })
        if spec.fusion == "pdf":
            self.confidence = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, 1))
                for m in cfg.modalities
            })
        # Dependency statistics are model state: saved in and restored from the checkpoint.
        self.register_buffer("dependency_ema", torch.ones(len(cfg.modalities)))
        if spec.rule == "switch":
            # The switch rule's gate: σ̂ of clean and of information-free input per modality,
            # calibrated on the validation split after training (``calibrate_gate``); while
            # both are 0 the gate is open (training, and checkpoints without a calibration).
            self.register_buffer("gate_clean", torch.zeros(len(cfg.modalities)))
            self.register_buffer("gate_broken", torch.zeros(len(cfg.modalities)))
            # Its second gate, on the stream's own confidence (the top softmax probability of
            # its unimodal logits): open from the confidence of clean validation input down,
            # closed at that of information-free input (``calibrate_confidence_gate``). σ̂
            # measures the degradations the estimator was trained on; a stream broken in a way
            # it never saw (a tilted camera, a rolling shutter) may keep a clean-looking σ̂ and
            # still lose its confidence. Open while both are 0.
            self.register_buffer("conf_clean", torch.zeros(len(cfg.modalities)))
            self.register_buffer("conf_broken", torch.zeros(len(cfg.modalities)))

    # ---- helpers -------------------------------------------------------------------------

    def _embed(self, m: str, x: Tensor, preprocessed: bool
               ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        fmap = self.enc[m](x if preprocessed else self.prep[m](x))
        head = self.embed[m]
        mu = head.mu(fmap)
        if head.logvar is None:
            return mu.mean(dim=(2, 3)), None, None
        logvar = head.logvar(fmap)
        sigma = torch.exp(0.5 * logvar)
        # torch.randn, not randn_like: on a channels-last map randn_like is ~7x slower on CPU.
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device) if self.training else None
        z = mu + eps * sigma if eps is not None else mu
        # KL(N(μ, σ²) ‖ N(0, L)) is computed by the loss from these maps.
        return z.mean(dim=(2, 3)), sigma.mean(dim=(2, 3)), torch.stack([mu, logvar])

    def _block_logits(self, m_index: int, z: Tensor) -> Tensor:
        d = self.cfg.embed_dim
        w = self.head.weight[:, m_index * d : (m_index + 1) * d]
        return z @ w.t() + self.head.bias

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
        cfg, spec = self.cfg, self.cfg.spec
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
        for m in cfg.modalities:
            p = torch.zeros(b, dtype=torch.bool, device=dev) if m not in inputs else (
                present[m].to(dev).bool() if present is not None and m in present
                else torch.ones(b, dtype=torch.bool, device=dev))
            if m in valid:
                p = p & (valid[m] >= 1.0 - MISSING_ABSENT_FRACTION)
            pres[m] = p
            if m in inputs:
                zm, sm, mp = self._embed(m, inputs[m], preprocessed)
                # where() not a product: an all-missing window may embed to non-finite values.
                z[m] = torch.where(p[:, None], zm, torch.zeros_like(zm))
                if sm is not None:
                    sig[m], maps[m] = sm, mp
            else:
                z[m] = torch.zeros(b, cfg.embed_dim, device=dev)
                if spec.probabilistic:
                    sig[m] = torch.ones(b, cfg.embed_dim, device=dev)
        fuse = {"concat": self._fuse_concat, "udml": self._fuse_udml,
                "qmf": self._fuse_qmf, "pdf": self._fuse_pdf}[spec.fusion]
        est: _T = {}
        if spec.quality == "estimator" and cfg.estimator != "mlp":
            for m in cfg.modalities:
                v = valid.get(m, torch.ones(b, device=dev))[:, None]
                est[m] = torch.cat([torch.log(sig[m].detach().clamp(min=1e-6)), v], dim=1)
        elif spec.quality == "estimator":
            est = {m: sig[m].detach() for m in cfg.modalities}
        out = fuse(z, sig, pres, levels, quality_on, est)
        if maps:
            out.aux["embedding_maps"] = maps  # type: ignore[assignment]
        return out

    def _fuse_concat(self, z: _T, sig: _T, pres: _T, levels: Mapping[str, Tensor] | None,
                   quality_on: bool, est: _T) -> FusionOutput:
        ms = self.cfg.modalities
        logits = self.head(torch.cat([z[m] for m in ms], dim=1))
        uni = {m: self._block_logits(i, z[m]) for i, m in enumerate(ms)}
        weights = {m: pres[m].float() for m in ms}
        return FusionOutput(logits, uni, weights, pres, multipliers=dict(weights))

    def _fuse_udml(self, z: _T, sig: _T, pres: _T, levels: Mapping[str, Tensor] | None,
                   quality_on: bool, est: _T) -> FusionOutput:
        cfg, spec, ms = self.cfg, self.cfg.spec, self.cfg.modalities
        uni = {m: self._block_logits(i, z[m]) for i, m in enumerate(ms)}
        mask = torch.stack([pres[m] for m in ms], dim=1).float()  # [B, M]

        sigma_hat: dict[str, Tensor] = {}
        aux: dict[str, Tensor] = {}
        if spec.quality == "estimator":
            for m in ms:
                o = self.estimator[m](est[m]).squeeze(1)
                aux[f"estimator_out/{m}"] = o
                sigma_hat[m] = torch.exp(0.5 * o)
        elif spec.quality == "raw_sigma":
            sigma_hat = {m: sig[m].detach().mean(dim=1) for m in ms}
        elif spec.quality == "oracle":
            if levels is None:
                raise ConfigError("the oracle method needs the true noise levels in forward()")
            sigma_hat = {m: levels[m].to(mask).float() for m in ms}

        q = (torch.stack([sigma_hat[m] for m in ms], dim=1) if sigma_hat and quality_on
             else None)
        if (q is not None and cfg.gap_floor and not self.training
                and spec.quality == "estimator" and cfg.estimator != "mlp"):
            # A window with a share v missing is at least at the `gap` family's level for that
            # share, 1 + 10·(1 − v), whatever σ̂ says: σ cannot see a gap (missing frames read
            # as silence), the share is measured. Serving only, like the gate: training is the
            # same with or without it.
            v = torch.stack([est[m][:, -1] for m in ms], dim=1)
            q = torch.maximum(q, 1.0 + 10.0 * (1.0 - v))
        if self.training:
            with torch.no_grad():
                dep_now = dependency_statistic([uni[m] for m in ms], mask)
                mom = cfg.dependency_momentum
                self.dependency_ema.mul_(mom).add_((1 - mom) * dep_now)
            dep = dep_now  # the reference recomputes D every step; the EMA serves evaluation
        else:
            dep = self.dependency_ema
        w = udml_weights(q, dep if spec.dependency else None, mask)
        if spec.rule == "switch" and q is not None and not self.training:
            w = gate_weights(w, q, self.gate_clean, self.gate_broken, mask)
            # The confidence gate, as the σ̂ gate on "badness" = −confidence.
            conf = torch.stack([F.softmax(uni[m].float(), dim=1).amax(dim=1) for m in ms], dim=1)
            w = gate_weights(w, -conf, -self.conf_clean, -self.conf_broken, mask)
        mult = effective_multipliers(w, mask, spec.rule)
        scaled = torch.cat([mult[:, i : i + 1] * z[m] for i, m in enumerate(ms)], dim=1)
        logits = self.head(scaled)
        return FusionOutput(
            logits, uni, {m: w[:, i] for i, m in enumerate(ms)}, pres,
            {m: mult[:, i] for i, m in enumerate(ms)}, sigma_hat,
            {m: dep[i] for i, m in enumerate(ms)}, aux,
        )

    def _fuse_qmf(self, z: _T, sig: _T, pres: _T, levels: Mapping[str, Tensor] | None,
                   quality_on: bool, est: _T) -> FusionOutput:
        ms = self.cfg.modalities
        uni = {m: self.heads[m](z[m]) for m in ms}
        # Energy-based confidence: the negative free energy logsumexp(logits), scaled.
        conf = {m: torch.logsumexp(uni[m], dim=1) / 10.0 for m in ms}
        weights = {m: conf[m].detach().clamp(min=0.0) * pres[m] for m in ms}
        logits = sum(weights[m][:, None] * uni[m] for m in ms)
        aux = {f"confidence/{m}": conf[m] for m in ms}
        return FusionOutput(logits, uni, weights, pres, multipliers=dict(weights), aux=aux)

    def _fuse_pdf(self, z: _T, sig: _T, pres: _T, levels: Mapping[str, Tensor] | None,
                   quality_on: bool, est: _T) -> FusionOutput:
        ms, k = self.cfg.modalities, self.cfg.num_classes
        uni = {m: self.heads[m](z[m]) for m in ms}
        conf = {m: torch.sigmoid(self.confidence[m](z[m].detach())).squeeze(1) for m in ms}
        c = torch.stack([conf[m].detach() for m in ms], dim=1).clamp(1e-4, 1 - 1e-4)
        mask = torch.stack([pres[m] for m in ms], dim=1)
        if not self.training:
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
