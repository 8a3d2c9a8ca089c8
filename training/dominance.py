"""Dominance study driver (docs/results/dominance.md): train one run epoch by epoch and measure
the dependency statistic D_m of every epoch's checkpoint on clean validation data.

The trainer logs ``dependency/<m>`` (an EMA over training steps) only for UDML-family methods:
``static_concat_aug`` never updates the buffer, so its history holds the initial 1.0. To get a
per-epoch D for every method alike, this script trains with the ordinary trainer one epoch at a
time (``train.epochs = 1, 2, …`` with resume, which restores optimiser and RNG state, so the run
is the same as one uninterrupted run) and after each epoch computes ``dependency_statistic`` on
the ``last`` checkpoint in eval mode on the clean validation split (unimodal logits of the
shared head with the other modality's features zeroed). Then it scores the selected (``best``)
checkpoint on the test split with the benchmark's ``evaluate_model`` (``udml eval``'s scorer).

Usage::

    nice -n 10 python training/dominance.py CONFIG OUT.json [--set key=value ...] [--no-eval]
    python training/dominance.py summarise RUNS_DIR OUT.json   # after `udml eval --json`
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.cli.main import _parse_set
from udml_stream.data import avdigits
from udml_stream.data.batching import make_batch
from udml_stream.evaluate.conditions import evaluate_model
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet, dependency_statistic
from udml_stream.train.config import load_config
from udml_stream.train.trainer import load_data, to_torch, train


@torch.no_grad()
def measure_dependency(model: FusionNet, split: avdigits.Split, bs: int = 250) -> dict[str, float]:
    """D_m over the whole (clean) ``split``: Σ_classes mean |z_m|, z_m the shared head's logits
    with only modality m's features (eval mode, so z = μ for probabilistic embeddings)."""
    model.eval()
    mods = model.cfg.modalities
    rng = np.random.default_rng(0)
    sums = np.zeros(len(mods))
    n = 0
    for start in range(0, len(split), bs):
        rows = np.arange(start, min(start + bs, len(split)))
        b = make_batch(split, rows, {m: np.ones(len(rows), np.int64) for m in mods}, rng)
        inputs, present, levels, _ = to_torch(b, torch.device("cpu"))
        out = model(inputs, present, levels)
        mask = torch.stack([out.present[m] for m in mods], dim=1)
        d = dependency_statistic([out.unimodal_logits[m] for m in mods], mask)
        sums += d.numpy() * len(rows)
        n += len(rows)
    return {m: float(v) for m, v in zip(mods, sums / max(n, 1), strict=True)}


def run(config: Path, overrides: dict[str, Any], do_eval: bool) -> dict[str, Any]:
    """Train ``config`` epoch by epoch; per-epoch D (measured and the trainer's EMA), test scores."""
    cfg = load_config(config, overrides)
    data = load_data(cfg)
    val = data.splits["val"]
    epochs = cfg.train.epochs
    out_dir = Path(cfg.train.out_dir)
    t0 = time.perf_counter()
    per_epoch = []
    res = None
    for e in range(1, epochs + 1):
        step = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": e})})
        res = train(step, resume=True, progress=False, data=data)
        model, _ = checkpoint.load(out_dir / "last", "cpu")
        d = measure_dependency(model, val)
        row = res.history[-1]
        mods = list(d)
        per_epoch.append({
            "epoch": row["epoch"], "val_acc": row["val_acc"],
            "D_measured": d, "D_history_ema": {m: row.get(f"dependency/{m}") for m in mods},
            # ratio of the second modality's D to the first's (audio/image on raw presets)
            "D_ratio": {f"{mods[1]}/{mods[0]}": d[mods[1]] / d[mods[0]]},
        })
        logging.info("epoch %d: val %.4f D %s %s/%s %.2f", row["epoch"], row["val_acc"], d,
                     mods[1], mods[0], d[mods[1]] / d[mods[0]])
    assert res is not None
    result: dict[str, Any] = {
        "config": str(config), "overrides": overrides, "method": cfg.model.method,
        "preset": cfg.data.preset, "seed": cfg.train.seed, "best_epoch": res.best_epoch,
        "best_val": res.best_score, "per_epoch": per_epoch,
        "train_seconds": time.perf_counter() - t0,
    }
    if do_eval:
        best, _ = checkpoint.load(out_dir / "best", "cpu")
        result["D_measured_best"] = measure_dependency(best, val)
        ev = evaluate_model(best, data.splits["test"], seed=0, device="cpu")
        result["test"] = {"clean": ev["clean"], "corrupted_mean": ev["corrupted_mean"],
                          "conditions": {k: v["acc"] for k, v in ev["conditions"].items()},
                          "sweep": {m: {lv: r["acc"] for lv, r in s.items()}
                                    for m, s in ev["sweep"].items()}}
    return result


METHODS = ("udml", "udml_no_dependency", "static_concat_aug")
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}  # two-sided 95% t quantiles by n


def _group_mean(conditions: dict[str, dict[str, Any]], prefix: str) -> float:
    """Mean accuracy over the standard conditions ``prefix@level`` (half the samples hit)."""
    return float(np.mean([v["acc"] for k, v in conditions.items()
                          if k.startswith(prefix + "@")]))


def _metrics(ev: dict[str, Any]) -> dict[str, float]:
    """The summary numbers of one ``udml eval --json`` result."""
    c, sw = ev["conditions"], ev["sweep"]
    return {
        "clean": ev["clean"], "corrupted_mean": ev["corrupted_mean"],
        "image_corrupted_mean": _group_mean(c, "image"),
        "audio_corrupted_mean": _group_mean(c, "audio"),
        "image_missing": c["image_missing"]["acc"], "audio_missing": c["audio_missing"]["acc"],
        # every test sample corrupted, levels 3..11 (the primary protocol)
        "full_image_sweep_mean": float(np.mean([sw["image"][lv]["acc"]
                                                for lv in ("3", "5", "7", "9", "11")])),
        "full_audio_sweep_mean": float(np.mean([sw["audio"][lv]["acc"]
                                                for lv in ("3", "5", "7", "9", "11")])),
        "image_weight_share_clean": c["clean"]["weight_share"]["image"],
    }


def _ci(deltas: list[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% t-interval of paired per-seed deltas."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = T975.get(n, 1.96) * sd / np.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "per_seed": d.tolist(), "mean": mean, "sd": sd,
            "ci95": [mean - half, mean + half]}


def summarise(runs: Path, out: Path) -> dict[str, Any]:
    """Collect ``runs/<method>-s<seed>.json`` (this script) and ``…-eval.json`` (udml eval)."""
    per: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        per[m] = {}
        for f in sorted(runs.glob(f"{m}-s*.json")):
            if f.stem.endswith("-eval"):
                continue
            seed = int(f.stem.rsplit("-s", 1)[1])
            r = json.loads(f.read_text())
            ev_path = runs / f"{m}-s{seed}-eval.json"
            ev = json.loads(ev_path.read_text()) if ev_path.exists() else None
            per[m][str(seed)] = {
                "run": str(f), "eval": str(ev_path) if ev else None,
                "best_epoch": r["best_epoch"], "best_val": r["best_val"],
                "D_ratio_per_epoch_measured": [e["D_ratio"]["audio/image"]
                                               for e in r["per_epoch"]],
                "D_ratio_per_epoch_history_ema": [
                    e["D_history_ema"]["audio"] / e["D_history_ema"]["image"]
                    for e in r["per_epoch"]],
                "D_measured_per_epoch": [e["D_measured"] for e in r["per_epoch"]],
                "D_ratio_best_measured": (r["D_measured_best"]["audio"]
                                          / r["D_measured_best"]["image"]),
                "test": _metrics(ev) if ev else None,
                "test_script": {"clean": r["test"]["clean"],
                                "corrupted_mean": r["test"]["corrupted_mean"]},
            }
    metric_names = ["clean", "corrupted_mean", "image_corrupted_mean", "audio_corrupted_mean",
                    "image_missing", "audio_missing", "full_image_sweep_mean",
                    "full_audio_sweep_mean", "image_weight_share_clean"]
    agg: dict[str, Any] = {}
    for m, seeds in per.items():
        vals = {k: [s["test"][k] for s in seeds.values() if s["test"]] for k in metric_names}
        agg[m] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))}
                  for k, v in vals.items() if len(v) > 1}
        agg[m]["D_ratio_best_measured"] = float(np.mean(
            [s["D_ratio_best_measured"] for s in seeds.values()]))
    paired: dict[str, Any] = {}
    for other in ("udml_no_dependency", "static_concat_aug"):
        common = sorted(set(per["udml"]) & set(per[other]))
        paired[f"udml - {other}"] = {
            k: _ci([per["udml"][s]["test"][k] - per[other][s]["test"][k] for s in common])
            for k in metric_names}
    common = sorted(set(per["udml_no_dependency"]) & set(per["static_concat_aug"]))
    paired["udml_no_dependency - static_concat_aug"] = {
        k: _ci([per["udml_no_dependency"][s]["test"][k] - per["static_concat_aug"][s]["test"][k]
                for s in common]) for k in metric_names}
    # Short exploratory runs (probe_*.json, --no-eval) that chose the preset.
    probes = {}
    for f in sorted(runs.glob("probe_*.json")):
        r = json.loads(f.read_text())
        probes[f.stem] = {"preset": r["preset"], "method": r["method"], "seed": r["seed"],
                          "overrides": r["overrides"],
                          "D_ratio_audio_over_image_per_epoch": [
                              e["D_measured"]["audio"] / e["D_measured"]["image"]
                              for e in r["per_epoch"]]}
    result = {"preset": "dominant", "per_seed": per, "aggregate": agg, "paired": paired,
              "probes": probes}
    out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    """Command line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "summarise":
        summarise(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    result = run(a.config, _parse_set(a.sets), not a.no_eval)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
