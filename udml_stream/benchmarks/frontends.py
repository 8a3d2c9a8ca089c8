"""The field model's front-ends measured against each other: reference, floor and robust.

Each front-end trains the field config (``configs/field.toml``) with only ``model.frontend``
changed, at a reduced budget and one shared seed, so the three runs differ by nothing else. Each
is then scored on the field test split: the natural-input grid (fused and each stream alone at
-6/-26/-46 dBFS peak, with and without a -60 dBFS room floor), one contiguous gap (NaN, the
stream marked missing) of 50-500 ms, and one 50 ms run of digital zeros in every audio window:
the zeros are in the signal, as a microphone that outputs zeros would deliver them, which is the
failure measured on the old (reference) front-end. Runs resume: a finished training in
``runs_dir/<frontend>`` is reused, and so is its saved evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.data.avdigits import AVDigits, Split
from udml_stream.errors import UdmlError
from udml_stream.evaluate.field import (
    GAP_MS,
    NATURAL_GRID,
    gap_costs,
    insert_gap,
    natural_input,
    run_pass,
)
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet
from udml_stream.train.config import (
    TrainConfig,
    absolute_config,
    flatten,
    load_config,
    resolve_paths,
)
from udml_stream.train.trainer import load_data, train

log = logging.getLogger(__name__)

FRONTENDS = ("reference", "floor", "robust")
#: Length of the run of digital zeros put into every audio window.
ZEROS_MS = 50
#: Differences smaller than this (accuracy) are called ties in the verdict: about the binomial
#: standard error of one accuracy on the 750 test samples; seed-to-seed training variance,
#: not measured here, is likely larger.
TIE_MARGIN = 0.02
#: Bumped when the evaluation changes, so a saved evaluation of an older kind is redone.
EVAL_VERSION = 1
_RUN_FILE = "bench_frontends.json"


@dataclass(frozen=True)
class Budget:
    """The reduced training budget every front-end gets (one seed, the same for all)."""

    epochs: int = 6
    samples_per_epoch: int = 3000
    lr_drop_epoch: int = 5
    threads: int = 1
    seed: int = 0
    runs_dir: Path = Path("runs/bench_frontends")

    def overrides(self, frontend: str) -> dict[str, Any]:
        """Dotted config overrides for ``frontend``'s run."""
        return {"model.frontend": frontend, "train.epochs": self.epochs,
                "train.samples_per_epoch": self.samples_per_epoch,
                "train.lr_drop_epoch": self.lr_drop_epoch, "train.threads": self.threads,
                "train.seed": self.seed, "train.out_dir": str(self.runs_dir / frontend)}


def zeros_cost(model: FusionNet, split: Split, seed: int, ms: float = ZEROS_MS) -> dict[str, float]:
    """Fused and audio-only accuracy with one run of ``ms`` ms of zeros in every audio window,
    and audio-only accuracy of the same samples without it (natural input drawn at random)."""
    tag = f"zeros{ms:g}"
    audio_only = tuple(m for m in split.tables if m != "audio")
    return {
        "fused": float(run_pass(model, split, seed, edit=insert_gap(ms, value=0.0), tag=tag)
                       .correct.mean()),
        "audio_only": float(run_pass(model, split, seed, edit=insert_gap(ms, value=0.0),
                                     tag=tag, missing=audio_only).correct.mean()),
        # The natural draws depend on the batch alone, so these are the same samples as above.
        "audio_only_without": float(run_pass(model, split, seed, tag=tag, missing=audio_only)
                                    .correct.mean()),
    }


def evaluate(model: FusionNet, split: Split, seed: int) -> dict[str, Any]:
    """Every condition of the comparison for one model (JSON-ready)."""
    return {"eval_version": EVAL_VERSION, "seed": seed, "n_test": len(split),
            "natural": natural_input(model, split, seed), "gaps": gap_costs(model, split, seed),
            "zeros": zeros_cost(model, split, seed)}


def _finished(out_dir: Path, epochs: int) -> bool:
    """Whether ``out_dir`` holds a training that ran all ``epochs`` (not just an early best)."""
    state = out_dir / "train_state.pt"
    if not (out_dir / "best").is_dir() or not state.exists():
        return False
    # weights_only=True: the state holds tensors and plain containers, nothing pickled.
    st = torch.load(state, map_location="cpu", weights_only=True)
    return int(st["epoch"]) + 1 >= epochs


def _check_same_config(best: Path, cfg: TrainConfig) -> None:
    """Refuse to reuse a run trained under another config (budget, seed or front-end)."""
    # Checkpoints store their config with absolute paths: compare both that way.
    stored = flatten(resolve_paths(checkpoint.read_meta(best).get("config") or {}, Path.cwd()))
    wanted = flatten(absolute_config(cfg))
    if any(stored.get(k) != wanted.get(k) for k in stored.keys() | wanted.keys()):
        raise UdmlError(f"{best} was trained with another config than this benchmark asks for; "
                        f"remove {best.parent} or pick another runs directory")


def run_one(config: Path, frontend: str, budget: Budget, data: AVDigits) -> dict[str, Any]:
    """Train (or resume) ``frontend``'s run and evaluate it on the test split (or reuse both)."""
    cfg = load_config(config, budget.overrides(frontend))
    out_dir = Path(cfg.train.out_dir)
    saved_path = out_dir / _RUN_FILE
    saved: dict[str, Any] = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if _finished(out_dir, cfg.train.epochs):
        _check_same_config(out_dir / "best", cfg)
        log.info("%s: training found in %s, reusing it", frontend, out_dir)
        trained_now = False
    else:
        log.info("%s: training into %s", frontend, out_dir)
        res = train(cfg, resume=True, progress=False, data=data)
        saved = {"train_seconds": round(res.seconds, 1)}  # any older evaluation is now stale
        saved_path.write_text(json.dumps(saved, indent=1))
        trained_now = True
    meta = checkpoint.read_meta(out_dir / "best")
    ev = saved.get("eval")
    if ev is None or ev.get("eval_version") != EVAL_VERSION or ev.get("seed") != budget.seed:
        log.info("%s: evaluating on the test split", frontend)
        t0 = time.perf_counter()
        model, _ = checkpoint.load(out_dir / "best")
        ev = evaluate(model, data.splits["test"], budget.seed)
        saved.update({"eval": ev, "eval_seconds": round(time.perf_counter() - t0, 1)})
        saved_path.write_text(json.dumps(saved, indent=1))
    else:
        log.info("%s: evaluation found in %s, reusing it", frontend, saved_path)
    return {"frontend": frontend, "checkpoint": str(out_dir / "best"), "trained_now": trained_now,
            "best_epoch": meta.get("epoch"), "val_acc": meta.get("val_acc"),
            "train_seconds": saved.get("train_seconds"), "eval_seconds": saved.get("eval_seconds"),
            **ev}


def run(config: Path = Path("configs/field.toml"), budget: Budget | None = None,
        cache_dir: Path = Path("data_cache"),
        frontends: tuple[str, ...] = FRONTENDS) -> dict[str, Any]:
    """Train and evaluate every front-end in ``frontends``; the JSON-ready comparison."""
    budget = budget or Budget()
    t0 = time.perf_counter()
    # Set here as well as by training: a fully resumed call trains nothing but still evaluates.
    torch.set_num_threads(budget.threads)
    base = load_config(config, {"data.cache_dir": str(cache_dir)})
    data = load_data(base)  # once, shared by all runs
    results = {}
    for f in frontends:
        # cache_dir goes in through the data set only: the run's own config stays the file's,
        # so the config check on resume does not depend on where the cache lives.
        results[f] = run_one(config, f, budget, data)
    return {
        "config": str(config), "shipped_frontend": load_config(config).model.frontend,
        "budget": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(budget).items()},
        "base_budget": {"epochs": base.train.epochs,
                        "samples_per_epoch": base.train.samples_per_epoch},
        "frontends": results,
        "setup": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                  "torch": torch.__version__,
                  "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
                  "runs_trained_this_call": sum(r["trained_now"] for r in results.values()),
                  # Saved per run, so a resumed call still reports what the whole work took.
                  "train_seconds_total": round(sum(r["train_seconds"] or 0.0
                                                   for r in results.values()), 1),
                  "eval_seconds_total": round(sum(r["eval_seconds"] or 0.0
                                                  for r in results.values()), 1)},
    }


def _nat_label(peak: float, floor: float | None) -> str:
    return f"{peak:g} dBFS, " + ("no floor" if floor is None else f"{floor:g} dBFS floor")


def condition_rows(res: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(condition, {front-end: accuracy}) in table order."""
    fr = res["frontends"]
    rows: list[tuple[str, dict[str, float]]] = []
    for key, name in (("fused", "fused"), ("audio_only", "audio only"),
                      ("image_only", "image only")):
        for i, (peak, floor) in enumerate(NATURAL_GRID):
            rows.append((f"natural {_nat_label(peak, floor)}: {name}",
                         {f: r["natural"][i][key] for f, r in fr.items()}))
    rows.append(("no gap: fused", {f: r["gaps"]["none"] for f, r in fr.items()}))
    for ms in GAP_MS:
        rows.append((f"{ms} ms gap (missing): fused", {f: r["gaps"][f"{ms}ms"] for f, r in fr.items()}))
    rows.append((f"{ZEROS_MS} ms digital zeros: fused", {f: r["zeros"]["fused"] for f, r in fr.items()}))
    rows.append((f"{ZEROS_MS} ms digital zeros: audio only",
                 {f: r["zeros"]["audio_only"] for f, r in fr.items()}))
    rows.append(("same samples without zeros: audio only",
                 {f: r["zeros"]["audio_only_without"] for f, r in fr.items()}))
    return rows


def summary_rows(res: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """The few measures the verdict weighs, (measure, {front-end: accuracy})."""
    out: list[tuple[str, dict[str, float]]] = []
    fr = res["frontends"]
    for key, name in (("fused", "fused"), ("audio_only", "audio only")):
        vals = {f: [row[key] for row in r["natural"]] for f, r in fr.items()}
        out.append((f"natural input, {name}: mean of the 6", {f: float(np.mean(v)) for f, v in vals.items()}))
        out.append((f"natural input, {name}: worst of the 6", {f: float(np.min(v)) for f, v in vals.items()}))
    out.append((f"gaps, fused: mean over {'/'.join(map(str, GAP_MS))} ms",
                {f: float(np.mean([r["gaps"][f"{ms}ms"] for ms in GAP_MS])) for f, r in fr.items()}))
    out.append((f"{ZEROS_MS} ms digital zeros: fused", {f: r["zeros"]["fused"] for f, r in fr.items()}))
    out.append((f"{ZEROS_MS} ms digital zeros: audio only",
                {f: r["zeros"]["audio_only"] for f, r in fr.items()}))
    return out


def verdict(res: dict[str, Any]) -> str:
    """Whether the measurement supports the shipped front-end, in words, from the summary
    measures: ahead/behind means by more than ``TIE_MARGIN`` against the best other one."""
    shipped = res["shipped_frontend"]
    if shipped not in res["frontends"] or len(res["frontends"]) < 2:
        return f"The shipped front-end ({shipped}) was not compared here, so no verdict."
    ahead, behind = [], []
    for name, vals in summary_rows(res):
        others = {f: v for f, v in vals.items() if f != shipped}
        best_other = max(others, key=lambda f: others[f])
        d = vals[shipped] - others[best_other]
        if d > TIE_MARGIN:
            ahead.append(f"{name} (+{100 * d:.1f} points over {best_other})")
        elif d < -TIE_MARGIN:
            behind.append(f"{name} ({100 * d:.1f} points against {best_other})")
    m = f"{100 * TIE_MARGIN:g}"
    if not behind and ahead:
        text = (f"**Supported.** {shipped} is never more than {m} points behind the best other "
                f"front-end on any summary measure, and ahead by more than {m} points on: "
                + "; ".join(ahead) + ".")
    elif not behind:
        text = (f"**Not distinguished.** {shipped} is within {m} points of the best other front-end "
                "on every summary measure: at this budget and one seed the measurement neither "
                "supports nor contradicts the choice.")
    elif ahead:
        text = (f"**Mixed.** {shipped} is ahead by more than {m} points on: " + "; ".join(ahead)
                + f"; but behind by more than {m} points on: " + "; ".join(behind)
                + ". The choice is a trade-off, not a clear win, on this measurement.")
    else:
        text = (f"**Not supported.** {shipped} is behind by more than {m} points on: "
                + "; ".join(behind) + f", and ahead by more than {m} points on no summary measure.")
    # Means can hide single conditions the choice loses: name them whatever the verdict.
    lost = []
    for name, vals in condition_rows(res):
        best_other = max((f for f in vals if f != shipped), key=lambda f: vals[f])
        d = vals[shipped] - vals[best_other]
        if d < -TIE_MARGIN:
            lost.append(f"{name} ({100 * vals[shipped]:.1f} vs {best_other} "
                        f"{100 * vals[best_other]:.1f})")
    if lost:
        text += (f" Single conditions where {shipped} is more than {m} points behind: "
                 + "; ".join(lost) + ".")
    return text


def _md_table(rows: list[tuple[str, dict[str, float]]], frontends: list[str], head: str) -> list[str]:
    lines = [f"| {head} | " + " | ".join(frontends) + " |",
             "| --- |" + " --- |" * len(frontends)]
    for name, vals in rows:
        best = max(vals.values())
        # Bold the best of the row (ties too) so the table reads at a glance.
        cells = [(f"**{100 * vals[f]:.1f}**" if vals[f] == best else f"{100 * vals[f]:.1f}")
                 for f in frontends]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _still_improving(res: dict[str, Any]) -> list[str]:
    """A note when runs were selected at their last epoch: still improving when stopped."""
    last = res["budget"]["epochs"] - 1
    at_end = [f for f, r in res["frontends"].items() if r["best_epoch"] == last]
    if not at_end:
        return []
    return [f"Best epoch is the last one for {', '.join(at_end)}: those runs were still improving "
            "when the reduced budget ended, so the absolute numbers are below the shipped "
            "model's and the ranking could change with more training.", ""]


def to_markdown(res: dict[str, Any], command: str) -> str:
    """docs/results/frontends.md: budget, the condition table, summary and verdict."""
    fr = res["frontends"]
    names = list(fr)
    b, base = res["budget"], res["base_budget"]
    n_test = next(iter(fr.values()))["n_test"]
    lines = [
        "# Front-ends of the field model: reference vs floor vs robust", "",
        f"Command: `{command}`", "",
        f"Each front-end trains `{res['config']}` with only `model.frontend` changed, at a reduced "
        f"budget: {b['epochs']} epochs × {b['samples_per_epoch']} samples (lr × 0.1 from epoch "
        f"{b['lr_drop_epoch']}), seed {b['seed']} for all three, {b['threads']} torch thread "
        f"(the shipped model: {base['epochs']} × {base['samples_per_epoch']}). **These are "
        "single-seed, reduced-budget runs**: the differences below include one seed's training "
        "noise, which this benchmark does not measure.", "",
        f"Accuracy (%) on the field test split ({n_test} samples, every sample in every "
        "condition, evaluation seed "
        f"{b['seed']}); best of each row in bold. *natural*: clean speech at the given peak level, "
        "with or without a room floor, full-quality frames under random exposure; *gap*: one "
        "contiguous run of the audio missing (NaN, the way the live node marks unheld samples); "
        f"*digital zeros*: one {ZEROS_MS} ms run of 0.0 written into every audio window, as a "
        "microphone outputting zeros would (nothing marks it missing). Gap and zeros rows draw "
        "level and floor at random per sample, as in training. The front-end sets the image "
        "scaling too (reference: fixed; floor and robust: per-frame contrast normalisation), "
        "which is why the image-only rows differ.", "",
        *_md_table(condition_rows(res), names, "condition"), "",
        "## Summary", "",
        *_md_table(summary_rows(res), names, "measure"), "",
        "| run | best epoch | val acc | train s | eval s |", "| --- | --- | --- | --- | --- |",
        *[f"| {f} | {r['best_epoch']} | {100 * r['val_acc']:.1f} | {r['train_seconds']} | "
          f"{r['eval_seconds']} |" for f, r in fr.items()], "",
        *_still_improving(res),
        "## Verdict", "",
        f"The shipped model (`{res['config']}`, `checkpoints/default`) uses the "
        f"**{res['shipped_frontend']}** front-end. " + verdict(res)
        + f" (Ahead/behind: by more than {100 * TIE_MARGIN:g} accuracy points against the best "
        "other front-end, about one binomial standard error on this test split; single seed.)", "",
        f"Setup: {res['setup']} (train/eval seconds: the three runs' own, saved with each run, "
        "so a resumed call still reports them).",
    ]
    return "\n".join(lines)


def to_table(res: dict[str, Any]) -> Any:
    """The condition table as a ``rich`` table (for the terminal)."""
    from rich.table import Table

    names = list(res["frontends"])
    t = Table(title=f"Front-ends on the field test split (accuracy %, budget {res['budget']['epochs']} "
                    f"epochs × {res['budget']['samples_per_epoch']}, seed {res['budget']['seed']})")
    t.add_column("condition")
    for f in names:
        t.add_column(f + (" (shipped)" if f == res["shipped_frontend"] else ""), justify="right")
    conditions = condition_rows(res)
    for i, (name, vals) in enumerate(conditions + summary_rows(res)):
        best = max(vals.values())
        t.add_row(name, *[(f"[bold]{100 * vals[f]:.1f}[/bold]" if vals[f] == best
                           else f"{100 * vals[f]:.1f}") for f in names],
                  end_section=i == len(conditions) - 1)  # a rule before the summary measures
    return t
