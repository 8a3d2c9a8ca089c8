"""Program: what adapting the health estimator on a robot's unlabelled logs gains on its data.

"The user's robot" is the AV-Digits ``balanced`` preset written as recorded sessions: digits
weakened to a few principal components, speech under 0 dB background noise, a domain the field
model never trained on. Its train split, with the labels ignored, is what the user recorded;
its test split (labelled, never used for adapting) scores the shipped checkpoint before and
after ``udml adapt``: clean and corrupted accuracy, σ̂ against the level (Spearman), and every
training family at every level against dropping the degraded stream.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from udml_stream_apps.training.field_eval import seen_families

from udml_stream.benchmarks.report import write_report
from udml_stream.data import avdigits
from udml_stream.data.logset import read_split
from udml_stream.data.sessions import write_session
from udml_stream.evaluate.conditions import evaluate_model
from udml_stream.evaluate.field import family_sweep
from udml_stream.model import checkpoint
from udml_stream.train.adapt import adapt_estimator

log = logging.getLogger(__name__)


def _score(ckpt: Path, test: avdigits.Split, seed: int) -> dict[str, Any]:
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    ev = evaluate_model(model, test, seed)
    sw = family_sweep(model, test, seed, seen_families(meta))
    cells = [lv for e in sw["modalities"].values() for f in e["families"].values()
             for lv in f["levels"].values() if isinstance(lv, dict) and "fused" in lv]
    return {"clean": ev["clean"], "corrupted_mean": ev["corrupted_mean"],
            "spearman": ev["spearman"],
            "families_mean_fused": float(np.mean([c["fused"] for c in cells])),
            "worst_vs_dropped": {m: min(f["worst_vs_dropped"] for f in e["families"].values())
                                 for m, e in sw["modalities"].items()},
            "per_family_worst": {f"{m}/{k}": f["worst_vs_dropped"]
                                 for m, e in sw["modalities"].items()
                                 for k, f in e["families"].items()}}


def main(ckpt: Path, cache_dir: Path, out: Path, command: str, n_adapt: int = 1500,
         n_test: int = 750, steps: int = 300, seed: int = 0) -> str:
    """Write the sessions, score, adapt, score again; write ``out`` (.json, .md)."""
    torch.set_num_threads(1)
    work = Path("runs/adapt_eval")
    work.mkdir(parents=True, exist_ok=True)
    data = avdigits.load("balanced", cache_dir)
    paths = {}
    for name, split_name, n in (("robot", "train", n_adapt), ("held_out", "test", n_test)):
        split = data.splits[split_name].subset(n, seed=seed)
        paths[name] = work / f"{name}.mcap"
        write_session(split, paths[name], data.sample_rate, data.class_names)
    test, _ = read_split("held_out", [paths["held_out"]])
    t0 = time.perf_counter()
    shutil.rmtree(work / "adapted", ignore_errors=True)  # this program's scratch output
    before = _score(ckpt, test, seed)
    rep = adapt_estimator(ckpt, [str(paths["robot"])], work / "adapted", steps=steps, seed=seed)
    adapt_s = time.perf_counter() - t0
    after = _score(work / "adapted", test, seed)
    res = {"checkpoint": str(ckpt), "robot_logs": str(paths["robot"]), "adapt_samples": rep.samples,
           "held_out_samples": len(test), "steps": steps, "loss_first": rep.loss_first,
           "loss_last": rep.loss_last, "before": before, "after": after,
           # An ensemble's gates are its members' own (one entry each).
           "gate_after": rep.gate or [r.gate for r in rep.members],
           "confidence_gate_after": rep.confidence_gate or [r.confidence_gate
                                                            for r in rep.members],
           "seconds": adapt_s}
    return write_report(res, out.with_suffix(".json"), _markdown(res, command))


def _markdown(r: dict[str, Any], command: str) -> str:
    b, a = r["before"], r["after"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    rows = [
        ("clean accuracy", pct(b["clean"]), pct(a["clean"])),
        ("corrupted mean (standard conditions)", pct(b["corrupted_mean"]),
         pct(a["corrupted_mean"])),
        ("every family × level: mean fused", pct(b["families_mean_fused"]),
         pct(a["families_mean_fused"])),
        *[(f"Spearman ρ(σ̂, level), {m}", f"{b['spearman'][m]:.2f}", f"{a['spearman'][m]:.2f}")
          for m in b["spearman"]],
        *[(f"worst fused − dropped, {m} (pt)", f"{100 * b['worst_vs_dropped'][m]:+.1f}",
           f"{100 * a['worst_vs_dropped'][m]:+.1f}") for m in b["worst_vs_dropped"]],
    ]
    lines = ["# Adapting the health estimator on unlabelled logs", "",
             f"Command: `{command}`. The shipped checkpoint, a robot whose data it never saw (the "
             "`balanced` preset as recorded sessions: weakened digits, speech under 0 dB noise). "
             f"Adapted on {r['adapt_samples']} unlabelled samples of its own logs ({r['steps']} "
             f"steps, estimator loss {r['loss_first']:.2f} → {r['loss_last']:.2f}; only the "
             "estimator and the gates change); scored on "
             f"{r['held_out_samples']} held-out labelled samples, before and after.", "",
             "| measure | before | after |", "| --- | --- | --- |",
             *[f"| {n} | {x} | {y} |" for n, x, y in rows]]
    return "\n".join(lines)
