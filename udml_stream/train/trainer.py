"""The training loop: seeded, resumable, validation-selected, with a progress bar."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from udml_stream import corrupt, modalities
from udml_stream.data import avdigits
from udml_stream.data.batching import Batch, NaturalInput, draw_training_levels, make_batch
from udml_stream.errors import ConfigError
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.model.fusion import FusionNet, FusionOutput, ModelConfig
from udml_stream.model.loss import LossTerms, compute_loss
from udml_stream.model.preprocess import (
    MISSING_ABSENT_FRACTION,
    ImagePrep,
    LogMelPrep,
    MfccPrep,
    fit_logmel_stats,
    valid_fraction,
)
from udml_stream.model.rules.udml import PRETEXT_CLASSES
from udml_stream.train.config import (
    DataSection,
    LogsSection,
    ModelSection,
    TrainConfig,
    TrainSection,
    absolute_config,
    parse_config,
    training_differences,
)
from udml_stream.train.ema import WeightEMA

if TYPE_CHECKING:
    from udml_stream.data.logset import LogSource
    from udml_stream.train.distributed import DistContext

log = logging.getLogger(__name__)


class TrainObserver(Protocol):
    """Hooks into the training loop (``distributed.Trace`` records a rank's run with them)."""

    def step(self, epoch: int, rows: np.ndarray, model: torch.nn.Module) -> None:
        """After each optimisation step on ``rows`` (this process's samples)."""

    def epoch(self, epoch: int, model: torch.nn.Module, score: float) -> None:
        """After each validation."""

    def saved_checkpoint(self, path: Path) -> None:
        """After a checkpoint or the resume state was written."""


def to_torch(batch: Batch, device: torch.device, pinned: bool = False
             ) -> tuple[dict, dict, dict, torch.Tensor]:
    """Move a numpy ``Batch`` to ``device`` as (inputs, present, levels, labels).

    ``pinned`` (CUDA): stage each array in page-locked memory and copy without blocking the
    host, so the next batch is built while this one travels."""

    def move(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.pin_memory().to(device, non_blocking=True) if pinned else t.to(device)

    inputs = {m: move(x) for m, x in batch.inputs.items()}
    present = {m: move(p) for m, p in batch.present.items()}
    levels = {m: move(v) for m, v in batch.levels.items()}
    return inputs, present, levels, move(batch.labels)


def sync_each_step(host_sync: str, device: torch.device) -> bool:
    """Whether the loop reads its losses back every step (``train.host_sync``; ``auto``: on CPU,
    where a read costs nothing and the loop stays as it always was, and not on CUDA, where
    each read stalls the host until the GPU has finished the step)."""
    return host_sync == "step" or (host_sync == "auto" and device.type != "cuda")


def train_step(model: FusionNet, opt: torch.optim.Optimizer, batch: Batch, device: torch.device,
               quality_on: bool, grad_clip: float, history: dict[str, Any] | None,
               sync: bool = True, bf16: bool = False, net: torch.nn.Module | None = None,
               pretext_weight: float = 0.0) -> LossTerms:
    """One optimisation step on ``batch``.

    ``history`` holds each sample's running unimodal loss (QMF's ranking target): numpy arrays
    over the train split when ``sync`` (updated every step, as the loop always did), device
    tensors otherwise (only QMF reads it; None skips it). With ``sync`` False nothing here waits
    for the device: the caller reads ``terms.part_tensors`` when it logs. ``bf16`` (CUDA) runs
    the forward pass and the loss under bf16 autocast; weights, gradients and the optimizer
    stay fp32. ``net`` is the module to run forward (``model`` wrapped by DDP: the backward pass
    then averages the gradients over processes); by default ``model``. ``pretext_weight`` > 0
    adds the self-supervised term of ``pretext_loss``."""
    rows = batch.rows
    inputs, present, levels, y = to_torch(batch, device, pinned=not sync and device.type == "cuda")
    needs_history = model.rule.needs_history
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
           else contextlib.nullcontext())
    with amp:
        out = (net or model)(inputs, present, levels, quality_on=quality_on)
        if history is None or not needs_history:
            hist = None
        elif sync:
            hist = {m: torch.from_numpy(history[m][rows]).to(device) for m in history}
        else:
            idx = torch.from_numpy(rows).to(device, non_blocking=True)
            hist = {m: h[idx] for m, h in history.items()}
        terms = compute_loss(model, out, y, levels, hist)
        if pretext_weight > 0:
            pre = pretext_loss(model, inputs, present, levels)
            terms.total = terms.total + pretext_weight * pre
            terms.part_tensors["pretext"] = pre.detach()
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if history is not None and sync:
        for m, per in terms.unimodal_per_sample.items():
            history[m][rows] = 0.9 * history[m][rows] + 0.1 * per.cpu().numpy()
    elif history is not None and needs_history:
        for m, per in terms.unimodal_per_sample.items():
            history[m][idx] = 0.9 * history[m][idx] + 0.1 * per.float()
    return terms


@contextlib.contextmanager
def _running_stats_kept(module: torch.nn.Module) -> Iterator[None]:
    """Batch norm inside ``module`` normalises with the batch as in training, but its running
    statistics (what evaluation uses) stay as they are: an extra pass over transformed inputs
    must not pull them away from the training mix."""
    norms = [b for b in module.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [b.momentum for b in norms]
    for b in norms:
        b.momentum = 0.0
    try:
        yield
    finally:
        for b, mom in zip(norms, saved, strict=True):
            b.momentum = mom


def pretext_loss(model: FusionNet, inputs: Mapping[str, Tensor], present: Mapping[str, Tensor],
                 levels: Mapping[str, Tensor]) -> Tensor:
    """The self-supervised term of ``train.pretext_weight``: each stream's clean inputs of the
    batch, each through a random one of its kind's transforms (``train.pregate.TRANSFORMS``),
    through the encoder, and its pretext head telling which (cross-entropy, mean over streams).
    It asks the encoder to keep the input's layout (which way up a digit stands, which way a
    word runs), which the gates read at serving; the heads themselves are fitted afresh after
    training, as without it."""
    from udml_stream.train.pregate import TRANSFORMS, pooled_map

    losses = []
    for m in model.cfg.modalities:
        if m not in inputs:
            continue
        valid = valid_fraction(inputs[m])
        keep = (present[m].bool() & (levels[m] == corrupt.CLEAN)
                & (valid >= 1.0 - MISSING_ABSENT_FRACTION))
        if int(keep.sum()) < 2:
            continue
        x = model.prep[m](inputs[m][keep])
        k = torch.randint(0, PRETEXT_CLASSES, (x.shape[0],), device=x.device)
        transform = TRANSFORMS[model.cfg.preprocess[m]["kind"]]
        parts = [transform(x[k == j], j) for j in range(PRETEXT_CLASSES)]
        labels = torch.cat([k[k == j] for j in range(PRETEXT_CLASSES)])
        with _running_stats_kept(model.enc[m]):
            logits = model.pretext[m](pooled_map(model, m, torch.cat(parts)))
        losses.append(F.cross_entropy(logits.float(), labels))
    if not losses:
        return next(iter(inputs.values())).new_zeros(())
    return torch.stack(losses).mean()


#: Audio front-end settings per ``model.frontend`` (see ``LogMelPrep``).
FRONTENDS: dict[str, dict[str, float | None]] = {
    "reference": {"floor_dbfs": None, "range_db": None},
    "floor": {"floor_dbfs": -100.0, "range_db": None},
    "robust": {"floor_dbfs": -100.0, "range_db": 50.0},
}


def preprocess_params(data: avdigits.AVDigits, train: avdigits.Split,
                      frontend: str = "reference") -> dict[str, dict[str, Any]]:
    """Preprocessing parameters per modality, fitted on clean training data where needed
    (on a natural split: clean data after its natural variation, fixed seed)."""
    params: dict[str, dict[str, Any]] = {}
    for m in data.modalities:
        prep_kind = modalities.kind_of(m, train.kinds).prep  # image2 is preprocessed as image
        if prep_kind == "image":
            # The field front-ends read a digit on paper as MNIST draws it (``ImagePrep``).
            params[m] = (ImagePrep(norm="fixed").params() if frontend == "reference" else
                         ImagePrep(norm="frame", polarity="auto").params())
        elif prep_kind == "logmel":
            prep = LogMelPrep(sample_rate=data.sample_rate, window_samples=avdigits.WINDOW_SAMPLES,
                              **FRONTENDS[frontend])
            rows = np.arange(min(len(train), 1000))
            waves = make_batch(train, rows, {k: np.ones(len(rows), np.int64)
                                             for k in data.modalities},
                               np.random.default_rng(12_345)).inputs[m]
            fit_logmel_stats(prep, waves)
            params[m] = prep.params()
        else:
            params[m] = MfccPrep(frames=avdigits.MFCC_FRAMES).params()
    return params


def _log_source(lg: LogsSection) -> LogSource:
    """How a config's ``data.logs`` section reads its logs (topics, kept conditions)."""
    from udml_stream.data.logset import LogSource

    return LogSource(lg.camera_topic, lg.audio_topic, lg.label_topic, lg.condition_topic,
                     tuple(lg.conditions) if lg.conditions is not None else None)


def check_log_globs(lg: LogsSection) -> None:
    """Fail now, naming the key, when a ``data.logs`` glob matches no file: the train and val
    logs are read at once, but the test logs only by ``udml eval`` of the checkpoint."""
    for key in ("train", "val", "test"):
        for pattern in getattr(lg, key):
            if not glob.glob(pattern):
                # The pattern is shown as resolved: a relative one from a config file was
                # joined to the file's folder already, one from --set is the working directory's.
                raise ConfigError(f"data.logs.{key}: no log matches {pattern!r} (a relative "
                                  "pattern in a config file is relative to the file's folder; "
                                  f"one given with --set to the working directory, {Path.cwd()})")


def data_fingerprint(data: avdigits.AVDigits) -> str:
    """A cheap digest of the train and val data (labels, row indices, table shapes and a few
    rows of each table): the resume state records it, so a run is not resumed on data that
    changed under an unchanged config (relabelled logs, a new recording)."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("train", "val"):
        split = data.splits[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        for m in sorted(split.tables):
            table, index = split.tables[m], split.index[m]
            h.update(f"{m}{table.shape}{table.dtype}".encode())
            h.update(np.ascontiguousarray(index).tobytes())
            rows = np.unique(np.linspace(0, len(table) - 1, min(len(table), 16)).astype(np.int64))
            h.update(np.ascontiguousarray(table[rows]).tobytes())
    return h.hexdigest()


def load_init(path: Path, data: avdigits.AVDigits, device: torch.device
              ) -> tuple[FusionNet, dict[str, Any]]:
    """The checkpoint a fine-tune starts from (``train.init_from``), checked against the data:
    the same modalities and classes."""
    model, meta = checkpoint.load_one(path, device, "fine-tuning (train.init_from)")
    have, want = sorted(data.modalities), sorted(model.cfg.modalities)
    if have != want:
        raise ConfigError(f"train.init_from = {str(path)!r}: the checkpoint's model takes "
                          f"{want}, but the training data has {have}; fine-tune from a "
                          "checkpoint with the same streams, or train from scratch without "
                          "train.init_from")
    names = list(meta.get("class_names", []))
    if names != list(data.class_names):
        raise ConfigError(f"train.init_from = {str(path)!r}: the checkpoint's classes {names} "
                          f"differ from the data's {list(data.class_names)}")
    return model, meta


def with_init_model(cfg: TrainConfig, meta: dict[str, Any]) -> TrainConfig:
    """``cfg`` as a fine-tune from the checkpoint with metadata ``meta`` runs it: its
    ``[model]`` section is the checkpoint's, and empty ``train.families`` are the
    checkpoint's (the degradations its estimator and gates were trained on)."""
    stored = meta.get("config", {})
    update: dict[str, Any] = {}
    try:
        update["model"] = ModelSection.model_validate(stored["model"])
    except (KeyError, TypeError, ValueError):
        log.warning("the checkpoint's config has no readable [model] section; the model is "
                    "built from its model config, and the stored [model] section is this "
                    "config's")
    fams = (stored.get("train") or {}).get("families") or {}
    if not cfg.train.families and fams:
        update["train"] = cfg.train.model_copy(update={"families": fams})
        log.info("fine-tuning with the checkpoint's degradation families: %s",
                 {m: len(f) for m, f in fams.items()})
    return cfg.model_copy(update=update)


def load_data(cfg: TrainConfig) -> avdigits.AVDigits:
    """The data set a training config names: AV-Digits (built on first use) or recorded logs."""
    return load_data_section(cfg.data)


def load_data_section(d: DataSection) -> avdigits.AVDigits:
    """The data set a config's data section names (``load_data``)."""
    if d.source == "logs":
        from udml_stream.data.logset import load_logs

        return load_logs({"train": d.logs.train, "val": d.logs.val}, _log_source(d.logs))
    return avdigits.load(d.preset, d.cache_dir, seed=d.build_seed,
                         variants_per_accent=d.variants_per_accent, renditions=d.renditions,
                         more_digits=d.more_digits)


def load_data_for_checkpoint(meta: dict[str, Any], cache_dir: Path,
                             preset: str | None = None) -> avdigits.AVDigits:
    """The data set a checkpoint was trained on (its preset and build), from its metadata."""
    d = meta.get("config", {}).get("data", {})
    if preset is None and meta.get("preset") == "logs":
        # A log-trained checkpoint is scored on the held-out logs its own config names: the
        # test logs, else the validation logs (as its split "test").
        from udml_stream.data.logset import load_logs

        lg = parse_config(meta["config"], "the checkpoint's config").data.logs
        held = lg.test or lg.val
        if not held:
            raise ConfigError("this checkpoint was trained from logs but its config names no "
                              "test or validation logs: name an AV-Digits preset (--preset "
                              f"{'|'.join(avdigits.PRESETS)}) or replay a labelled log through "
                              "it (udml log eval)")
        return load_logs({"test": list(held)}, _log_source(lg))
    return avdigits.load(preset or meta.get("preset", "balanced"), cache_dir,
                         seed=meta.get("build_seed", 0),
                         variants_per_accent=d.get("variants_per_accent", 12),
                         renditions=d.get("renditions", 3))


@torch.no_grad()
def probe_one_stream(model: FusionNet, val: avdigits.Split,
                     kinds: dict[str, tuple[str, ...]] | None, rng_seed: int,
                     device: torch.device, n: int,
                     statistic: Callable[[FusionOutput, str], torch.Tensor]
                     ) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    """What the gates are calibrated from: per modality (every other stream clean), the per-
    sample ``statistic(output, modality)`` of the samples where it is present, on clean input
    and on information-free input (level 11) of each of its training families, for ``n``
    validation samples drawn with ``rng_seed``."""
    model.eval()
    rng = np.random.default_rng(rng_seed)
    rows = rng.permutation(len(val))[:n]
    mods = model.cfg.modalities
    clean_lv = {m: np.full(len(rows), corrupt.CLEAN, np.int64) for m in mods}

    def run(m: str, lv: int, kind: str | None) -> torch.Tensor:
        levels = {**clean_lv, m: np.full(len(rows), lv, np.int64)}
        b = make_batch(val, rows, levels, rng, {**(kinds or {}), **({m: kind} if kind else {})})
        inputs, present, lvt, _ = to_torch(b, device)
        res = model(inputs, present, lvt)
        return statistic(res, m)[res.present[m]]

    out = {}
    for m in mods:
        clean = run(m, corrupt.CLEAN, None)
        fams = (kinds or {}).get(m) or (corrupt.TRAIN_KINDS[modalities.kind_of(m).corrupt],)
        out[m] = (clean, [run(m, corrupt.PURE_NOISE, f) for f in fams])
    return out


def calibrate_gate(model: FusionNet, val: avdigits.Split, kinds: dict[str, tuple[str, ...]] | None,
                   seed: int, device: torch.device, n: int = 500) -> dict[str, list[float]]:
    """Set the switch rule's gate from validation data, one stream at a time (the other clean):
    it is fully open up to the 75th percentile of σ̂ on clean input, and closed from the median,
    over the training families, of each family's median σ̂ at level 11 (information-free input),
    so no single family's estimator bias sets it. Streams the gap policy made absent are left
    out. A modality whose two values are not clearly apart keeps its gate open."""
    probes = probe_one_stream(model, val, kinds, seed + 20_011, device, n,
                              lambda res, m: res.sigma_hat[m])
    return set_gate_ends(model, probes, ("gate_clean", "gate_broken"), 0.75,
                         lambda c, b, _: b >= c + 0.5, "σ̂")


def set_gate_ends(model: FusionNet, probes: dict[str, tuple[torch.Tensor, list[torch.Tensor]]],
                  buffers: tuple[str, str], clean_quantile: float,
                  apart: Callable[[float, float, torch.Tensor], bool], name: str
                  ) -> dict[str, list[float]]:
    """Write one gate's two ends per modality into ``model``'s ``buffers`` (clean end,
    information-free end) from ``probe_one_stream``'s statistics: the ``clean_quantile`` of the
    clean values, and the median over the training families of each family's median on
    information-free input (no single family's bias sets it). Where ``apart(clean_end,
    broken_end, clean_values)`` is false the two are not clearly apart and the gate stays open
    (both 0), as it does when a probe holds no clean or no information-free sample. Returns the
    ends as ``{"clean": [...], "broken": [...]}``."""
    out: dict[str, list[float]] = {"clean": [], "broken": []}
    for i, m in enumerate(model.cfg.modalities):
        clean, broken = probes[m]
        meds = [float(s.median()) for s in broken if s.numel()]
        c = float(torch.quantile(clean, clean_quantile)) if clean.numel() else 0.0
        b = float(np.median(meds)) if meds else 0.0
        if not (clean.numel() and meds and apart(c, b, clean)):
            log.warning("%s gate for %s left open: clean %.2f vs information-free %.2f",
                        name, m, c, b)
            c = b = 0.0
        getattr(model, buffers[0])[i], getattr(model, buffers[1])[i] = c, b
        out["clean"].append(c)
        out["broken"].append(b)
    return out


def _calibrate_gates(best: FusionNet, meta: dict[str, Any], path: Path, val: avdigits.Split,
                     val_batches: list[Batch], kinds: dict[str, tuple[str, ...]] | None,
                     seed: int, device: torch.device, class_names: list[str],
                     train: avdigits.Split, natural: NaturalInput) -> None:
    """Calibrate the switch rule's gates (σ̂, confidence, typicality on validation data; the
    pretext head on clean ``train`` input drawn with ``natural``, its ends on validation) and
    rewrite the checkpoint at ``path`` with them and its gated validation score."""
    from udml_stream.train.confgate import calibrate_confidence_gate
    from udml_stream.train.pregate import calibrate_pretext_gate
    from udml_stream.train.typgate import calibrate_typicality_gate

    gate = calibrate_gate(best, val, kinds, seed, device)
    log.info("switch gate calibrated on validation: σ̂ clean %s, information-free %s",
             gate["clean"], gate["broken"])
    conf = calibrate_confidence_gate(best, val, kinds, seed, device)
    log.info("confidence gate calibrated on validation: clean %s, information-free %s",
             conf.get("clean"), conf.get("broken"))
    typ = calibrate_typicality_gate(best, val, kinds, seed, device)
    log.info("typicality gate calibrated on validation: clean %s, information-free %s",
             typ.get("clean"), typ.get("broken"))
    pre = calibrate_pretext_gate(best, train, val, kinds, natural, seed, device)
    log.info("pretext gate calibrated: clean %s, information-free %s",
             pre.get("clean"), pre.get("broken"))
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "model", "class_names", "dependency")}
    ungated = extra.get("val_acc_ungated", extra.get("val_acc"))
    # The checkpoint serves with the gates: report its validation score with them too.
    gated = _score(best, val_batches, device)
    log.info("validation with the gates: %.4f (without: %s)", gated, ungated)
    checkpoint.save(best, path, class_names,
                    {**extra, "gate": gate, "confidence_gate": conf, "typicality_gate": typ,
                     "pretext_gate": pre, "val_acc_ungated": ungated,
                     "val_acc": gated})


def _run_splits(cfg: TrainConfig, data: avdigits.AVDigits
                ) -> tuple[avdigits.Split, avdigits.Split]:
    """The training and validation splits a run uses (subsets when the config asks)."""
    train_split, val_split = data.splits["train"], data.splits["val"]
    if cfg.data.train_subset:
        train_split = train_split.subset(cfg.data.train_subset, seed=cfg.train.seed)
    if cfg.data.val_subset:
        val_split = val_split.subset(cfg.data.val_subset, seed=cfg.train.seed)
    return train_split, val_split


def _training_natural(tc: TrainSection) -> NaturalInput:
    """The natural variation training draws (and the pretext head is fitted with)."""
    return NaturalInput(jitter=tc.image_jitter, sensor=tc.sensor_jitter,
                        place_words=tc.place_words)


def recalibrate(ckpt: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Calibrate the gates of a trained switch-rule checkpoint again, in place, exactly as
    training ends (same validation data, seed and families): for a checkpoint trained before
    a gate existed. Returns the new gate values."""
    model, meta = checkpoint.load_one(ckpt, torch.device("cpu"), "recalibrating the gates")
    cfg = parse_config(meta["config"], str(ckpt))
    if cache_dir is not None:
        cfg.data.cache_dir = cache_dir
    if not model.rule.has_gates:
        raise ConfigError(f"{ckpt}: method {model.cfg.method} has no gates to calibrate")
    data = load_data(cfg)
    tc = cfg.train
    train_split, val_split = _run_splits(cfg, data)
    kinds = {m: tuple(f) for m, f in tc.families.items() if m in data.modalities} or None
    val_batches = _validation_batches(val_split, tc.seed, 256, kinds)
    _calibrate_gates(model, meta, ckpt, val_split, val_batches, kinds, tc.seed,
                     torch.device("cpu"), list(data.class_names), train_split,
                     _training_natural(tc))
    _, new = checkpoint.load(ckpt, torch.device("cpu"))
    return {"gate": new.get("gate"), "confidence_gate": new.get("confidence_gate"),
            "typicality_gate": new.get("typicality_gate"),
            "pretext_gate": new.get("pretext_gate"),
            "val_acc": new.get("val_acc"), "val_acc_ungated": new.get("val_acc_ungated")}


def _check_resumable(state: dict[str, Any], stored_cfg: dict[str, Any], fingerprint: str,
                     out_dir: Path) -> None:
    """Refuse to resume a run made with another training config or on other data (it would
    carry on, or re-export, a model of something else)."""
    if "config" not in state:  # written before the state recorded its config
        log.warning("%s: its resume state records no config (an older run); resuming without "
                    "checking that it was made with this one", out_dir)
        return
    differ = training_differences(json.loads(state["config"]), stored_cfg)
    if state.get("data") != fingerprint:
        differ.append("the train/val data read")
    if differ:
        raise ConfigError(f"{out_dir} holds a run made with other settings (changed: "
                          f"{', '.join(differ)}): pass --no-resume to train from the start, or "
                          "choose another train.out_dir")


@dataclass
class TrainResult:
    """Where the selected checkpoint went and how training went."""

    best_path: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]
    seconds: float
    #: A fine-tuned ensemble's members, each its own run (then ``best_path`` is the ensemble,
    #: ``best_epoch`` −1 and ``best_score`` the members' mean validation accuracy).
    members: list[TrainResult] = field(default_factory=list)


def _validation_batches(val: avdigits.Split, seed: int, bs: int,
                        kinds: dict[str, tuple[str, ...]] | None = None) -> list[Batch]:
    """A fixed validation set: every sample clean, and every sample in the noisy mixture."""
    rng = np.random.default_rng(seed + 10_007)
    out = []
    mods = tuple(val.tables)
    for noisy in (False, True):
        for start in range(0, len(val), bs):
            rows = np.arange(start, min(start + bs, len(val)))
            lv = (draw_training_levels(len(rows), mods, rng, 0.0) if noisy
                  else {m: np.ones(len(rows), dtype=np.int64) for m in mods})
            out.append(make_batch(val, rows, lv, rng, kinds))
    return out


@torch.no_grad()
def _count(model: FusionNet, batches: list[Batch], device: torch.device) -> tuple[int, int]:
    """(correct, total) of ``model`` on ``batches``."""
    model.eval()
    correct = total = 0
    for b in batches:
        inputs, present, levels, y = to_torch(b, device)
        out = model(inputs, present, levels)
        correct += int((out.logits.argmax(1) == y).sum())
        total += len(y)
    return correct, total


def _score(model: FusionNet, batches: list[Batch], device: torch.device,
           dist: DistContext | None = None) -> float:
    """Accuracy on ``batches``; with ``dist``, each process scores its share of them and the
    counts are summed (every process gets the score)."""
    if dist is None:
        correct, total = _count(model, batches, device)
    else:
        mine = _count(model, batches[dist.rank :: dist.world], device)
        correct, total = dist.sum_(torch.tensor(mine, dtype=torch.int64)).tolist()
    return correct / max(total, 1)


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True,
          data: avdigits.AVDigits | None = None, dist: DistContext | None = None,
          observer: TrainObserver | None = None) -> TrainResult:
    """Train one model as ``cfg`` says; the best validation epoch is saved to ``out_dir/best``.

    ``data`` is the already loaded data set ``cfg`` names (callers that evaluate afterwards
    pass it to load it once); by default it is loaded from ``cfg.data``. ``dist``: this process
    is one rank of a DDP run (``distributed.init_from_env``): it trains on its share of each
    batch, and only rank 0 writes checkpoints (docs/distributed.md). ``observer`` is told of
    each step, validation and checkpoint."""
    t0 = time.perf_counter()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = dist.device if dist is not None and dist.device.type == "cuda" else resolve_device(
        tc.device)
    if tc.precision == "bf16" and device.type != "cuda":
        raise ConfigError(f'train.precision = "bf16" needs a CUDA device; train.device = '
                          f'{tc.device!r} runs on {device}. Use "fp32" there.')
    sync = sync_each_step(tc.host_sync, device)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)

    if cfg.data.source == "logs":
        check_log_globs(cfg.data.logs)
    data = data if data is not None else load_data(cfg)
    train_split, val_split = _run_splits(cfg, data)

    init_meta: dict[str, Any] | None = None
    if tc.init_from is not None:
        # Fine-tuning: the checkpoint's model, weights and gates; the loop below is unchanged.
        model, init_meta = load_init(tc.init_from, data, device)
        cfg = with_init_model(cfg, init_meta)
        tc = cfg.train
        mcfg = model.cfg
        log.info("fine-tuning %s (%s, val acc %s) on %d samples", tc.init_from, mcfg.method,
                 init_meta.get("val_acc"), len(train_split))
    else:
        encs = {m: cfg.model.encoders.get(m, modalities.kind_of(m, train_split.kinds).encoder)
                for m in data.modalities}
        mcfg = ModelConfig(
            modalities=data.modalities, encoders=encs,
            preprocess=preprocess_params(data, train_split, cfg.model.frontend),
            num_classes=len(data.class_names), method=cfg.model.method,
            embed_dim=cfg.model.embed_dim, gamma=cfg.model.gamma, beta=cfg.model.beta,
            estimator_weight=cfg.model.estimator_weight, estimator=cfg.model.estimator,
            gap_floor=cfg.model.gap_floor,
        )
        model = FusionNet(mcfg).to(device)
    kinds = {m: tuple(f) for m, f in tc.families.items() if m in data.modalities} or None
    # Under DDP: the wrapper runs the training forward pass; checkpoints and scores use model.
    net = None
    if dist is not None:
        from udml_stream.train.distributed import wrap

        dist.shard(tc.batch_size)  # a batch that does not split evenly fails here, on every rank
        net = wrap(model, dist)
    main = dist is None or dist.is_main
    # Only what training updates: the switch rule's pretext heads are fitted after it, frozen
    # here (and a run saved before they existed resumes with the same parameter list).
    if tc.pretext_weight > 0:
        if dist is not None:
            # The heads join the loss outside the wrapped forward pass: DDP would not average
            # their gradients, and a process without a clean sample would leave them unused.
            raise ConfigError(f"train.pretext_weight = {tc.pretext_weight}: one process only "
                              "(not with torchrun)")
        if not model.rule.reads_pooled:
            raise ConfigError(f"train.pretext_weight = {tc.pretext_weight}: only the switch rule "
                              f"(udml_switch) has pretext heads; method {mcfg.method} has none")
        model.pretext.requires_grad_(True)  # trained with the encoders, refitted after
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay) if tc.optimizer == "adam"
        else torch.optim.SGD(params, lr=tc.lr, momentum=0.9, weight_decay=tc.weight_decay)
    )
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "train_state.pt"
    start_epoch, best_score, best_epoch, history = 0, -1.0, -1, []
    # What the run learns from, with absolute paths: stored in each checkpoint (so that `udml
    # eval` finds its logs from any folder) and in the resume state (checked on resume).
    stored_cfg = absolute_config(cfg)
    fingerprint = data_fingerprint(data)
    # The weight average (train.weight_ema): validation, "best" and the gates use it; "last"
    # keeps the live weights, which a resumed run continues from.
    ema = WeightEMA(model, tc.weight_ema) if tc.weight_ema > 0 else None
    can_resume = resume and state_path.exists() and (out_dir / "last").exists()
    if dist is not None:  # every rank resumes, from the same files, or none does
        can_resume = dist.agree(can_resume, f"resuming from {out_dir} (every process must see it, "
                                "or pass --no-resume)")
    if can_resume:
        # weights_only=True: the resume state holds tensors and plain containers, nothing pickled.
        st = torch.load(state_path, map_location=device, weights_only=True)
        _check_resumable(st, stored_cfg, fingerprint, out_dir)
        last, _ = checkpoint.load(out_dir / "last", device)
        model.load_state_dict(last.state_dict())
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["torch_rng"])
        rng.bit_generator.state = json.loads(st["numpy_rng"])
        start_epoch, best_score, best_epoch = st["epoch"] + 1, st["best_score"], st["best_epoch"]
        history = json.loads(st["history"])
        if ema is not None:
            if "ema" not in st:
                raise ConfigError(f"{state_path} holds no weight average although "
                                  f"train.weight_ema = {tc.weight_ema}; resume with the run's "
                                  "own config or pass --no-resume")
            ema.load_state_dict(st["ema"])
        if start_epoch >= tc.epochs:
            log.info("%s has finished its %d epochs: nothing left to train", out_dir, tc.epochs)
        else:
            log.info("resuming %s at epoch %d/%d", out_dir, start_epoch + 1, tc.epochs)

    val_batches = _validation_batches(val_split, tc.seed, 256, kinds)
    spec = mcfg.spec
    history_loss: dict[str, Any] | None = {
        m: np.full(len(train_split), np.log(mcfg.num_classes), dtype=np.float32)
        for m in data.modalities}
    if not sync:  # kept on the device, and only where the rule reads it (QMF)
        history_loss = ({m: torch.from_numpy(h).to(device) for m, h in history_loss.items()}
                        if spec.fusion.needs_history else None)
    meta: dict[str, Any] = {"preset": data.preset.name, "build_seed": cfg.data.build_seed,
                            "seed": tc.seed, "config": stored_cfg}
    if init_meta is not None:
        meta["init_from"] = {"path": stored_cfg["train"]["init_from"],
                             "preset": init_meta.get("preset"), "val_acc": init_meta.get("val_acc")}

    train_nat = _training_natural(tc)
    for epoch in range(start_epoch, tc.epochs):
        # One process: one generator for the schedule and the corruption, as always. Several:
        # ``rng`` (alike on every rank) draws the order and levels of the global batch, and each
        # rank corrupts its share with its own generator.
        aug_rng = rng
        touched = None
        if dist is not None:
            aug_rng = dist.epoch_rng(tc.seed, epoch)
            torch.manual_seed(dist.epoch_torch_seed(tc.seed, epoch))
            touched = np.zeros(len(train_split), dtype=bool)
        model.train()
        lr = tc.lr * (0.1 if epoch >= tc.lr_drop_epoch else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        noisy = spec.noise_augment and epoch >= tc.clean_epochs
        quality_on = epoch >= tc.quality_start_epoch
        order = rng.permutation(len(train_split))[: tc.samples_per_epoch or None]
        n_batches = len(order) // tc.batch_size  # drop the ragged tail in training only
        sums: dict[str, float] = {}
        dev_sums: dict[str, torch.Tensor] = {}  # the same sums kept on the device (not sync)
        bar = tqdm(range(n_batches), desc=f"{mcfg.method} ep {epoch + 1}/{tc.epochs}",
                   disable=not (progress and main), leave=False)
        for bi in bar:
            rows = order[bi * tc.batch_size : (bi + 1) * tc.batch_size]
            lv = (draw_training_levels(len(rows), data.modalities, rng, tc.clean_fraction)
                  if noisy else {m: np.ones(len(rows), dtype=np.int64) for m in data.modalities})
            if dist is not None:  # this rank's share of the global batch
                mine = dist.shard(len(rows))
                rows, lv = rows[mine], {m: v[mine] for m, v in lv.items()}
                touched[rows] = True
            batch = make_batch(train_split, rows, lv, aug_rng, kinds, natural=train_nat)
            terms = train_step(model, opt, batch, device, quality_on, tc.grad_clip, history_loss,
                               sync, tc.precision == "bf16", net, tc.pretext_weight)
            if ema is not None:
                ema.update()
            if observer is not None:
                observer.step(epoch, rows, model)
            if sync:
                for k, v in terms.parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{float(terms.total.detach()):.3f}")
                continue
            for k, t in terms.part_tensors.items():
                dev_sums[k] = dev_sums[k] + t.float() if k in dev_sums else t.float()
            if (bi + 1) % tc.log_interval == 0:  # one host read per interval
                bar.set_postfix(loss=f"{float(terms.total.detach()):.3f}")
        sums.update({k: float(v) for k, v in dev_sums.items()})
        if dist is not None:
            sums = dist.mean_values(sums)
            dist.average_buffers(model)
            if history_loss is not None:
                dist.merge_rows(history_loss, touched)
        if ema is not None and dist is not None:
            dist.average_buffers(ema.shadow)
        scored = ema.shadow if ema is not None else model
        score = _score(scored, val_batches, device, dist)
        if observer is not None:
            observer.epoch(epoch, model, score)
        row = {"epoch": epoch, "val_acc": score, "lr": lr,
               **{k: v / max(n_batches, 1) for k, v in sums.items()},
               # The dependency EMA per modality: which stream the shared head leans on (the
               # dual-suppression question needs its ratio, epoch by epoch). Only UDML-family
               # forward passes update it; for the others it would read 1.0, which means "not
               # measured" (training/dominance.py measures D for every method).
               **({f"dependency/{m}": float(v) for m, v in
                   zip(mcfg.modalities, model.dependency_ema.tolist(), strict=True)}
                  if spec.fusion.tracks_dependency else {})}
        history.append(row)
        is_best = score >= best_score
        if is_best:
            best_score, best_epoch = score, epoch
        if not main:  # checkpoints and logs are rank 0's
            continue
        # Counted from 1 as the progress bar counts (history and checkpoints keep the 0-based
        # index that lr_drop_epoch and quality_start_epoch use).
        log.info("%s epoch %d/%d: val %.4f loss %.3f", mcfg.method, epoch + 1, tc.epochs, score,
                 row.get("ce_fused", float("nan")))
        ckpt_meta = {**meta, "epoch": epoch, "val_acc": score}
        for name in ("best", "last") if is_best else ("last",):
            # With a weight average, val_acc is the average's: "last" says it holds the live
            # weights instead.
            checkpoint.save(scored if name == "best" else model, out_dir / name,
                            list(data.class_names),
                            {**ckpt_meta, "weights": "live"} if ema is not None and name == "last"
                            else ckpt_meta)
            if observer is not None:
                observer.saved_checkpoint(out_dir / name)
        torch.save({
            "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state), "epoch": epoch,
            "best_score": best_score, "best_epoch": best_epoch, "history": json.dumps(history),
            "config": json.dumps(stored_cfg), "data": fingerprint,
            **({"ema": ema.state_dict()} if ema is not None else {}),
        }, state_path)
    if not main:  # rank 0 calibrates and rewrites the best checkpoint
        return TrainResult(out_dir / "best", best_epoch, best_score, history,
                           time.perf_counter() - t0)
    if spec.fusion.has_gates and best_epoch >= 0:
        best, best_meta = checkpoint.load(out_dir / "best", device)
        _calibrate_gates(best, best_meta, out_dir / "best", val_split, val_batches, kinds,
                         tc.seed, device, list(data.class_names), train_split, train_nat)
    return TrainResult(out_dir / "best", best_epoch, best_score, history,
                       time.perf_counter() - t0)

