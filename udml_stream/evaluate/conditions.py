"""The evaluation conditions and the scoring of a model under them (every test sample scored)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from udml_stream import corrupt
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import make_batch
from udml_stream.modalities import kind_of
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import to_torch

CORRUPT_LEVELS = (3, 6, 9, 11)
UNSEEN_LEVELS = (6, 9)
SWEEP_LEVELS = (1, 3, 5, 7, 9, 11)


@dataclass(frozen=True)
class Condition:
    """One test condition: which modalities are corrupted how, on which share of the samples."""

    name: str
    levels: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    fraction: float = 0.5  # share of samples corrupted (the rest stay clean)


def standard_conditions(modalities: tuple[str, ...]) -> list[Condition]:
    """Clean; each modality at levels 3/6/9/11 on half the samples; both at 6 and 9; each
    modality missing; each unseen corruption type at levels 6 and 9 on half the samples."""
    conds = [Condition("clean")]
    for m in modalities:
        conds += [Condition(f"{m}@{lv}", {m: lv}) for lv in CORRUPT_LEVELS]
    conds += [Condition(f"both@{lv}", dict.fromkeys(modalities, lv)) for lv in (6, 9)]
    conds += [Condition(f"{m}_missing", missing=(m,), fraction=1.0) for m in modalities]
    for m in modalities:
        for kind in corrupt.EVAL_KINDS[kind_of(m).corrupt]:  # image2: as image
            conds += [Condition(f"{m}:{kind}@{lv}", {m: lv}, {m: kind}) for lv in UNSEEN_LEVELS]
    return conds


@dataclass
class Scored:
    """Per-sample outcomes of one pass over a split."""

    correct: np.ndarray
    levels: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    sigma_hat: dict[str, np.ndarray]


@torch.no_grad()
def score(
    model: FusionNet,
    split: Split,
    cond: Condition,
    seed: int,
    device: torch.device | str = "cpu",
    batch_size: int = 250,
    level_sampler: str = "fixed",
) -> Scored:
    """Run ``model`` on every sample of ``split`` under ``cond``; the corruption is seeded by
    ``seed`` and the condition's name, so every method sees the same corrupted samples.
    ``level_sampler="uniform"`` draws each corrupted sample's level uniformly from 1..11."""
    model.eval()
    rng = np.random.default_rng([seed, zlib.crc32(cond.name.encode())])
    n = len(split)
    hit = rng.random(n) < cond.fraction
    mods = tuple(split.tables)
    levels = {}
    for m in mods:
        lv = np.ones(n, dtype=np.int64)
        if m in cond.levels:
            val = (rng.integers(corrupt.CLEAN, corrupt.PURE_NOISE + 1, n)
                   if level_sampler == "uniform" else cond.levels[m])
            lv = np.where(hit, val, 1).astype(np.int64)
        levels[m] = lv
    correct, weights, sig = [], {m: [] for m in mods}, {m: [] for m in mods}
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        b = make_batch(split, rows, {m: lv[rows] for m, lv in levels.items()}, rng,
                       cond.kinds, cond.missing)
        inputs, present, lvt, y = to_torch(b, device)
        out = model(inputs, present, lvt)
        correct.append((out.logits.argmax(1) == y).cpu().numpy())
        for m in mods:
            # Shares of the effective multiplier: what actually scales each stream's logits.
            weights[m].append(out.multipliers[m].cpu().numpy())
            if m in out.sigma_hat:
                sig[m].append(out.sigma_hat[m].cpu().numpy())
    return Scored(
        np.concatenate(correct), levels,
        {m: np.concatenate(v) for m, v in weights.items()},
        {m: np.concatenate(v) for m, v in sig.items() if v},
    )


def weight_share(weights: dict[str, np.ndarray], m: str) -> float:
    """Mean share of the summed effective multipliers that modality ``m`` receives."""
    total = sum(weights.values())
    return float(np.mean(np.where(total > 0, weights[m] / np.maximum(total, 1e-12), 0.0)))


def evaluate_model(
    model: FusionNet, split: Split, seed: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Accuracy under every standard condition, level sweeps and estimator diagnostics."""
    mods = tuple(split.tables)
    conds = standard_conditions(mods)
    result: dict[str, Any] = {"conditions": {}, "n_test": len(split)}
    for c in conds:
        s = score(model, split, c, seed, device)
        result["conditions"][c.name] = {
            "acc": float(s.correct.mean()),
            "weight_share": {m: weight_share(s.weights, m) for m in mods},
        }
    accs = result["conditions"]
    result["clean"] = accs["clean"]["acc"]
    result["corrupted_mean"] = float(np.mean([v["acc"] for k, v in accs.items() if k != "clean"]))
    sweep: dict[str, dict[str, dict[str, float]]] = {}
    for m in mods:
        sweep[m] = {}
        for lv in SWEEP_LEVELS:
            s = score(model, split, Condition(f"sweep:{m}@{lv}", {m: lv}, fraction=1.0), seed,
                      device)
            row = {"acc": float(s.correct.mean()), "weight_share": weight_share(s.weights, m)}
            if m in s.sigma_hat:
                row["sigma_hat"] = float(np.mean(s.sigma_hat[m]))
            sweep[m][str(lv)] = row
    result["sweep"] = sweep
    spear: dict[str, float] = {}
    for m in mods:
        s = score(model, split, Condition(f"estimator:{m}", {m: 1}, fraction=1.0), seed, device,
                  level_sampler="uniform")
        if m in s.sigma_hat:
            spear[m] = float(spearmanr(s.sigma_hat[m], s.levels[m]).statistic)
    result["spearman"] = spear
    return result
