"""Adapt the health estimator to a user's robot from **unlabelled** logs.

The estimator's target is the level of a synthetic degradation, not a class, so it can learn a
new robot's "clean" from recordings nobody labelled: each step takes windows of the user's logs,
degrades each stream with a training family at a uniformly drawn level (1 = as recorded) and
fits σ̂ to that level. Everything else stays frozen (encoders, heads, batch-norm statistics), so
the classifier is the one that was validated; only the estimator and the σ̂ and confidence
gates, recalibrated on the same logs, and the pretext gate change. The pretext head is
self-supervised, so it learns this robot's "the right way up" from the same unlabelled logs (one
half fits it, the other sets its ends); the typicality gate keeps its training-time fit (its
class centres need labels). A robot whose camera is dimmer or whose
room is louder than the training data no longer reads as degraded at its normal best, and its
really degraded input still does.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream import corrupt, modalities
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import NaturalInput, make_batch
from udml_stream.data.logset import LogSource, read_split
from udml_stream.errors import ConfigError
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet
from udml_stream.train.confgate import calibrate_confidence_gate
from udml_stream.train.pregate import calibrate_pretext_gate
from udml_stream.train.trainer import calibrate_gate, to_torch
from udml_stream.train.typgate import split_halves

log = logging.getLogger(__name__)


@dataclass
class AdaptReport:
    """What adapting did: data used, the estimator loss before and after, the new gates."""

    output: Path
    samples: int
    steps: int
    loss_first: float  # mean σ̂ loss over the first tenth of the steps
    loss_last: float  # … and over the last tenth
    gate: dict[str, list[float]] = field(default_factory=dict)
    confidence_gate: dict[str, list[float]] = field(default_factory=dict)
    pretext_gate: dict[str, list[float]] = field(default_factory=dict)
    members: list[AdaptReport] = field(default_factory=list)  # an ensemble's, one per member


def _levels(n: int, mods: tuple[str, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per stream, levels uniform over 1..11; one stream degraded per sample (the other clean),
    as the gates are calibrated and as one stream breaks at a time on a robot."""
    lv = {m: np.full(n, corrupt.CLEAN, np.int64) for m in mods}
    which = rng.integers(0, len(mods), n)
    draw = rng.integers(corrupt.CLEAN, corrupt.PURE_NOISE + 1, n)
    for i, m in enumerate(mods):
        lv[m][which == i] = draw[which == i]
    return lv


def adapt_estimator(ckpt: Path, logs: list[str], out: Path, steps: int = 300,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    src: LogSource | None = None) -> AdaptReport:
    """Fit the estimator of ``ckpt`` to the unlabelled ``logs``; write the result to ``out``.

    An ensemble is adapted member by member (the same samples, steps and seed for each, as its
    members were trained alike) and written as the ensemble of the adapted members; its report's
    losses are the members' means and ``members`` holds each member's report."""
    meta = checkpoint.read_meta(ckpt)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"adapt: steps = {steps}, batch_size = {batch_size}, lr = {lr}; "
                          "expected positive numbers")
    out = Path(out)
    ensemble = checkpoint.MEMBERS in meta
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Refused before the work, not after it; never written over (it may be the source).
        raise ConfigError(f"{out} exists and is not an empty directory; choose a new one")
    sources = checkpoint.model_dirs(ckpt, meta)
    models = [checkpoint.load_one(d, torch.device("cpu"), "adapting the estimator")
              for d in sources]
    for (model, _), d in zip(models, sources, strict=True):
        if not model.rule.has_estimator:
            raise ConfigError(f"{d}: method {model.cfg.method} has no health estimator to adapt")
    split, stats = read_split("adapt", logs, src, labelled=False)
    log.info("adapting on %d unlabelled samples from %d log(s)", len(split), stats.files)
    adapted = {"logs": [str(x) for x in logs], "samples": len(split), "steps": steps, "lr": lr,
               "seed": seed}
    if not ensemble:
        model, meta = models[0]
        return _adapt_one(model, meta, split, out, steps, batch_size, lr, seed,
                          {"from": str(ckpt), **adapted})
    work = out.with_name(f".{out.name}.members")
    shutil.rmtree(work, ignore_errors=True)
    try:
        reps = [_adapt_one(model, m_meta, split, work / str(i), steps, batch_size, lr, seed,
                           {"from": str(d), **adapted})
                for i, ((model, m_meta), d) in enumerate(zip(models, sources, strict=True))]
        rep = AdaptReport(out, len(split), steps, float(np.mean([r.loss_first for r in reps])),
                          float(np.mean([r.loss_last for r in reps])), members=reps)
        written = checkpoint.save_ensemble(
            out, [r.output for r in reps],
            origins=[f"{d} adapted by udml adapt" for d in sources],
            extra={"adapted": {"from": str(ckpt), **adapted, "loss_first": rep.loss_first,
                               "loss_last": rep.loss_last}})
        for r, d in zip(reps, checkpoint.member_dirs(written), strict=True):
            r.output = d  # where each adapted member now lives (the work folder goes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("ensemble of %d: mean estimator loss %.2f → %.2f; written %s", len(reps),
             rep.loss_first, rep.loss_last, out)
    return rep


def _adapt_one(model: FusionNet, meta: dict[str, Any], split: Split, out: Path, steps: int,
               batch_size: int, lr: float, seed: int, adapted: dict[str, Any]) -> AdaptReport:
    """Fit one model's estimator on ``split`` and write it, adapted, to ``out``."""
    named = meta.get("config", {}).get("train", {}).get("families") or {}
    mods = tuple(model.cfg.modalities)
    kinds = {m: tuple(named.get(m, (corrupt.TRAIN_KINDS[modalities.kind_of(m).corrupt],)))
             for m in mods}
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # Eval mode throughout: batch norm keeps its statistics, embeddings are their means; only
    # the estimator's parameters move (its dropout is off, like when it serves).
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.estimator.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        rows = rng.integers(0, len(split), batch_size)
        b = make_batch(split, rows, _levels(batch_size, mods, rng), rng, kinds)
        inputs, present, lv, _ = to_torch(b, torch.device("cpu"))
        o = model(inputs, present, lv)
        loss = torch.zeros(())
        for m in mods:
            keep = o.present[m].float()
            err = (o.sigma_hat[m] - lv[m].float()) ** 2
            loss = loss + (err * keep).sum() / keep.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in params:
        p.requires_grad_(False)
    tenth = max(1, steps // 10)
    gate = calibrate_gate(model, split, kinds, seed, torch.device("cpu")) \
        if model.rule.has_gates else {}
    conf = calibrate_confidence_gate(model, split, kinds, seed, torch.device("cpu"))
    pre: dict[str, list[float]] = {}
    if model.rule.has_gates:
        fit, calib = split_halves(split, seed + 20_029)
        pre = calibrate_pretext_gate(model, fit, calib, kinds, NaturalInput(), seed,
                                     torch.device("cpu"))
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "model", "class_names", "dependency")}
    rep = AdaptReport(Path(out), len(split), steps, float(np.mean(losses[:tenth])),
                      float(np.mean(losses[-tenth:])), gate, conf, pre)
    checkpoint.save(model, out, list(meta["class_names"]),
                    {**extra, "gate": gate or extra.get("gate"), "confidence_gate": conf,
                     "pretext_gate": pre or extra.get("pretext_gate"),
                     "adapted": {**adapted, "loss_first": rep.loss_first,
                                 "loss_last": rep.loss_last}})
    log.info("estimator loss %.2f → %.2f over %d steps; written %s", rep.loss_first,
             rep.loss_last, steps, out)
    return rep
