"""Field evaluation: natural input, gaps, and every degradation family against dropping the stream.

The benchmark asks "which method is best on the benchmark's processing"; this asks what a user
of the product asks: does clean speech at any level with a full-quality frame just work, does a
gap in the audio cost little, and when one stream breaks in any way, is the fused answer at least
as good as simply ignoring that stream? Every test sample is corrupted in every sweep condition.
Corruptions are seeded by the condition, and the natural variation of a sample (its level, room
floor, exposure) by the batch alone, so a sample's clean and corrupted versions differ only by
the corruption: σ̂ is compared with the same sample's clean σ̂.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from scipy.stats import spearmanr

from udml_stream import corrupt, modalities
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import Batch, NaturalInput, make_batch
from udml_stream.evaluate.conditions import weight_share
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import to_torch

#: (peak dBFS, room-floor RMS dBFS or None) of the natural-input grid.
NATURAL_GRID: tuple[tuple[float, float | None], ...] = (
    (-6.0, None), (-26.0, None), (-46.0, None), (-6.0, -60.0), (-26.0, -60.0), (-46.0, -60.0))
GAP_MS = (50, 100, 300, 500)


@dataclass
class Pass:
    """Per-sample outcomes of one pass over a split."""

    correct: np.ndarray
    multipliers: dict[str, np.ndarray]
    sigma_hat: dict[str, np.ndarray]
    present: dict[str, np.ndarray]


def _natural_rng(seed: int, start: int) -> np.random.Generator:
    return np.random.default_rng([seed, start, 7])


class PassObserver(Protocol):
    """Told where each ``run_pass`` starts and ends (``observe_passes``): a tool that scores
    the sweeps' passes its own way (``training.compare_checkpoints`` scores two models on
    each) learns which pass a forward belongs to without changing the sweeps."""

    def pass_started(self) -> None:
        """A pass is about to run its first batch."""

    def pass_ended(self, split: Split, tag: str, missing: tuple[str, ...]) -> None:
        """The pass over ``split`` tagged ``tag``, with ``missing`` streams absent, is done."""


_observers: list[PassObserver] = []


@contextmanager
def observe_passes(observer: PassObserver) -> Iterator[None]:
    """While open, ``observer`` hears of every ``run_pass`` (the field, held-out and probe
    sweeps all score through it)."""
    _observers.append(observer)
    try:
        yield
    finally:
        # By identity: two observers may compare equal (an empty list-like one, say).
        del _observers[next(i for i, o in enumerate(_observers) if o is observer)]


@torch.no_grad()
def run_pass(
    model: FusionNet,
    split: Split,
    seed: int,
    *,
    levels: Mapping[str, int] | None = None,
    kinds: Mapping[str, str] | None = None,
    missing: tuple[str, ...] = (),
    natural: NaturalInput | None = None,
    edit: Any = None,
    tag: str = "",
    batch_size: int = 250,
    device: torch.device | str = "cpu",
) -> Pass:
    """Score every sample of ``split``: ``levels``/``kinds`` corrupt (all samples), ``missing``
    marks streams absent, ``edit(batch, rng)`` may alter the inputs in place (e.g. a gap)."""
    model.eval()
    for o in _observers:
        o.pass_started()
    mods = tuple(split.tables)
    n = len(split)
    correct, mult, sig = [], {m: [] for m in mods}, {m: [] for m in mods}
    pres: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        # Natural draws come first from this generator, corruption draws after: the same sample
        # gets the same natural variation in every condition.
        rng = _natural_rng(seed, start)
        lv = {m: np.full(len(rows), (levels or {}).get(m, corrupt.CLEAN), np.int64) for m in mods}
        cond_rng = np.random.default_rng([seed, start, zlib.crc32(tag.encode())])
        b = _batch(split, rows, lv, rng, cond_rng, kinds, missing, natural)
        if edit is not None:
            edit(b, cond_rng)
        inputs, present, lvt, y = to_torch(b, device)
        out = model(inputs, present, lvt)
        correct.append((out.logits.argmax(1) == y).cpu().numpy())
        for m in mods:
            mult[m].append(out.multipliers[m].cpu().numpy())
            pres[m].append(out.present[m].cpu().numpy())
            if m in out.sigma_hat:
                sig[m].append(out.sigma_hat[m].cpu().numpy())
    for o in _observers:
        o.pass_ended(split, tag, missing)
    return Pass(np.concatenate(correct), {m: np.concatenate(v) for m, v in mult.items()},
                {m: np.concatenate(v) for m, v in sig.items() if v},
                {m: np.concatenate(v) for m, v in pres.items()})


def _batch(split: Split, rows: np.ndarray, lv: dict[str, np.ndarray],
           nat_rng: np.random.Generator, cond_rng: np.random.Generator,
           kinds: Mapping[str, str] | None, missing: tuple[str, ...],
           natural: NaturalInput | None) -> Batch:
    # Clean natural batch from nat_rng, then the corruption from cond_rng.
    clean = make_batch(split, rows, {m: np.ones_like(v) for m, v in lv.items()}, nat_rng,
                       None, missing, natural)
    for m in list(clean.inputs):
        if kinds is not None and m in kinds and int(lv[m].max()) > corrupt.CLEAN:
            corrupt_stream(clean, m, modalities.kind_of(m, split.kinds).corrupt, kinds[m], lv[m],
                           cond_rng)
    return clean


def corrupt_stream(b: Batch, m: str, key: str, family: str, levels: np.ndarray,
                   rng: np.random.Generator) -> None:
    """Corrupt stream ``m`` of ``b`` in place with ``family`` at ``levels`` (per sample) of its
    corruption kind ``key``, and raise its recorded levels to them; SNRs are measured against
    the clean speech (as in training), not the speech over its floor."""
    b.inputs[m] = corrupt.apply(key, family, b.inputs[m], levels, rng,
                                ref_power=b.ref_power.get(m))
    b.levels[m] = np.maximum(levels, b.levels[m])


def insert_gap(ms: float, modality: str = "audio", sample_rate: int = 16000,
               value: float = np.nan) -> Any:
    """An ``edit`` that overwrites one contiguous run of ``ms`` milliseconds with ``value`` at a
    random place in every window: NaN (the default) makes it missing, as a microphone dropout
    marked by the sync layer; 0.0 makes it digital silence *in* the signal, which nothing marks."""

    def edit(b: Batch, rng: np.random.Generator) -> None:
        x = b.inputs[modality]
        n = round(ms * sample_rate / 1000)
        for i in range(x.shape[0]):
            s = int(rng.integers(0, x.shape[1] - n + 1))
            x[i, s : s + n] = value

    return edit


def natural_input(model: FusionNet, split: Split, seed: int) -> list[dict[str, Any]]:
    """Fused and single-stream accuracy over the natural-input grid (clean speech at a level,
    with or without a room floor; full-quality frames under random exposure)."""
    return [{"peak_dbfs": peak, "floor_dbfs": floor,
             **_fused_and_alone(model, split, seed, tuple(split.tables),
                                natural=NaturalInput(peak, -np.inf if floor is None else floor))}
            for peak, floor in NATURAL_GRID]


def _fused_and_alone(model: FusionNet, split: Split, seed: int, alone: tuple[str, ...],
                     **kw: Any) -> dict[str, Any]:
    """Fused accuracy and each stream's share, and the accuracy of each stream of ``alone``
    with every other marked absent (``kw``: ``run_pass``'s condition)."""
    mods = tuple(split.tables)
    fused = run_pass(model, split, seed, **kw)
    out: dict[str, Any] = {"fused": float(fused.correct.mean()),
                           "share": {m: weight_share(fused.multipliers, m) for m in mods}}
    for m in alone:
        only = run_pass(model, split, seed, missing=tuple(k for k in mods if k != m), **kw)
        out[f"{m}_only"] = float(only.correct.mean())
    return out


def paper_input(model: FusionNet, split: Split, seed: int) -> dict[str, Any]:
    """Natural input at −6 dBFS, but every camera looking at a digit written on paper: each
    frame's negative, dark ink on a light ground (what a robot's camera sees of a written
    digit; the model learnt MNIST's light digits on a dark ground). Fused accuracy, each
    camera's alone, and the shares."""
    mods = tuple(split.tables)
    cams = [m for m in mods if modalities.kind_of(m, split.kinds).prep == "image"]

    def negative(b: Batch, rng: np.random.Generator) -> None:
        for m in cams:
            if m in b.inputs:  # a camera marked absent (the other's alone pass) has no input
                b.inputs[m] = 255.0 - np.clip(b.inputs[m], 0.0, 255.0)

    return {"peak_dbfs": -6.0,
            **_fused_and_alone(model, split, seed, tuple(cams), natural=NaturalInput(
                -6.0, -np.inf), edit=negative, tag="paper")}


def placed_input(model: FusionNet, split: Split, seed: int) -> dict[str, Any]:
    """Natural input at −6 dBFS with each word moved to a random place in its window where it
    fits whole (``data.field.place_words``): a live window ends at the frame's capture time, so
    its word is rarely centred as the cached ones are. Fused accuracy, each stream's alone, and
    the shares."""
    return {"peak_dbfs": -6.0,
            **_fused_and_alone(model, split, seed, tuple(split.tables), natural=NaturalInput(
                -6.0, -np.inf, place_words=True), tag="placed")}


def gap_costs(model: FusionNet, split: Split, seed: int) -> dict[str, Any]:
    """Fused accuracy with one contiguous audio gap of each length in ``GAP_MS``, vs no gap."""
    base = float(run_pass(model, split, seed).correct.mean())
    out: dict[str, Any] = {"none": base}
    for ms in GAP_MS:
        p = run_pass(model, split, seed, edit=insert_gap(ms), tag=f"gap{ms}")
        out[f"{ms}ms"] = float(p.correct.mean())
    return out


def family_sweep(model: FusionNet, split: Split, seed: int,
                 seen: Mapping[str, tuple[str, ...]], alone: bool = True) -> dict[str, Any]:
    """Every family of every modality at every level 1..11, every sample corrupted.

    Per (modality, family, level): fused accuracy, the accuracy with that stream marked absent
    (the floor a broken stream must never drag the answer below), σ̂, the share of samples whose
    σ̂ exceeds their own clean σ̂, and the stream's share of the effective multiplier. ``alone``
    False skips the stream-alone passes (half the passes) and their monotonicity check; every
    other number is the same (each pass draws from its own seeded generator). Such a result is
    for ``training.compare_checkpoints`` only: the report and its goals read the alone passes."""
    mods = tuple(split.tables)
    clean = run_pass(model, split, seed)
    out: dict[str, Any] = {"clean": float(clean.correct.mean()), "modalities": {}}
    for m in mods:
        dropped = run_pass(model, split, seed, missing=(m,))
        fams: dict[str, Any] = {}
        for fam in corrupt.kinds_for(modalities.kind_of(m, split.kinds).corrupt):
            levels: dict[str, Any] = {}
            sig_all, lv_all = [], []
            for lv in corrupt.LEVELS:
                p = (clean if lv == corrupt.CLEAN else
                     run_pass(model, split, seed, levels={m: lv}, kinds={m: fam},
                              tag=f"{m}/{fam}@{lv}"))
                # The stream alone (the others marked absent): the family's calibration check,
                # its accuracy should fall with the level.
                only = (float(run_pass(model, split, seed, levels={m: lv}, kinds={m: fam},
                                       missing=tuple(k for k in mods if k != m),
                                       tag=f"{m}/{fam}@{lv}").correct.mean()) if alone else None)
                row = {"fused": float(p.correct.mean()), "share": weight_share(p.multipliers, m),
                       "alone": only}
                # σ̂ of a stream the gap policy made absent is never used: judge the others.
                keep = p.present[m]
                row["present"] = float(keep.mean())
                if m in p.sigma_hat and keep.any():
                    s = p.sigma_hat[m][keep]
                    row["sigma_hat"] = float(np.mean(s))
                    row["above_clean"] = float(np.mean(s > clean.sigma_hat[m][keep]))
                    sig_all.append(s)
                    lv_all.append(np.full(s.shape, lv))
                levels[str(lv)] = row
            entry: dict[str, Any] = {"seen": fam in seen.get(m, ()), "levels": levels}
            if sig_all:
                entry["spearman"] = float(spearmanr(np.concatenate(sig_all),
                                                    np.concatenate(lv_all)).statistic)
                means = [levels[str(lv)]["sigma_hat"] for lv in corrupt.LEVELS
                         if "sigma_hat" in levels[str(lv)]]
                entry["sigma_monotone"] = bool(np.all(np.diff(means) > 0))
            worst = min(levels[str(lv)]["fused"] - float(dropped.correct.mean())
                        for lv in corrupt.LEVELS)
            entry["worst_vs_dropped"] = worst
            if alone:
                alone_acc = [levels[str(lv)]["alone"] for lv in corrupt.LEVELS]
                # Monotone up to sampling noise: no level more than 1 pt above the one before.
                entry["alone_monotone"] = bool(np.all(np.diff(alone_acc) <= 0.01))
            fams[fam] = entry
        out["modalities"][m] = {"dropped": float(dropped.correct.mean()), "families": fams}
    return out


def evaluate_field(model: FusionNet, split: Split, seed: int,
                   seen: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """The whole field evaluation of one model (JSON-ready)."""
    return {"n_test": len(split), "natural": natural_input(model, split, seed),
            "paper": paper_input(model, split, seed),
            "placed": placed_input(model, split, seed),
            "gaps": gap_costs(model, split, seed), "sweep": family_sweep(model, split, seed, seen)}
