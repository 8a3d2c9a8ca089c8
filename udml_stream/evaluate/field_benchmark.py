"""The field benchmark: UDML (both rules) against its peers on natural input, every test sample
corrupted, with paired per-seed deltas, and leave-one-family-out generalisation.

Runs (each trains from ``configs/field.toml`` with the method, seed and families replaced, and
writes ``runs_dir/<suite>/<method>/<tag>/result.json`` as soon as it finishes, so a rerun
resumes):
  * ``main``: every method × seed, trained on every family, scored on every family;
  * ``lofo``: every method × held-out group (one image family and one audio family left out of
    training together; the two modalities' families are independent, so one run serves both),
    scored on the held-out families only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream import corrupt

log = logging.getLogger(__name__)

#: Methods in report order: the peers, then UDML with the paper's rule, then the product's.
FIELD_METHODS = ("static_concat_aug", "qmf", "pdf", "udml", "udml_switch_no_dependency",
                 "udml_switch")
#: Levels scored per family (every test sample corrupted at each).
BENCH_LEVELS = (3, 6, 9, 11)
#: The ablation runs on the main suite only (leave-one-family-out compares the rules and peers).
MAIN_ONLY = ("udml_switch_no_dependency",)


@dataclass(frozen=True)
class FieldRun:
    """One training + evaluation run of the field benchmark."""

    suite: str  # "main" | "lofo"
    method: str
    seed: int
    holdout: int  # lofo: index of the held-out family in each modality's family list; else -1
    runs_dir: Path
    base_config: Path
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def tag(self) -> str:
        """The run's folder name."""
        return f"seed{self.seed}" if self.holdout < 0 else f"holdout{self.holdout}"

    @property
    def out_dir(self) -> Path:
        """Where this run's checkpoints and result live."""
        return self.runs_dir / self.suite / self.method / self.tag


def held_out(index: int, families: dict[str, list[str]]) -> dict[str, str]:
    """The family each modality leaves out in hold-out group ``index``."""
    return {m: fams[index % len(fams)] for m, fams in families.items()}


def run_field(spec: FieldRun, threads: int = 1) -> dict[str, Any]:
    """Train and score one run (in a worker process); returns and writes its result."""
    import torch

    from udml_stream.evaluate.field import run_pass
    from udml_stream.model import checkpoint
    from udml_stream.train.config import parse_config, resolve_paths
    from udml_stream.train.trainer import load_data, train
    from udml_stream.validation import read_toml, set_dotted

    torch.set_num_threads(threads)
    result_path = spec.out_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    raw = resolve_paths(read_toml(spec.base_config), Path(spec.base_config).parent)
    for dotted, value in (("model.method", spec.method), ("train.seed", spec.seed),
                          ("train.out_dir", str(spec.out_dir)), ("train.threads", threads),
                          ("train.device", "cpu"), *spec.overrides):
        set_dotted(raw, dotted, value)
    families: dict[str, list[str]] = raw["train"]["families"]
    held = held_out(spec.holdout, families) if spec.holdout >= 0 else {}
    raw["train"]["families"] = {m: [f for f in fams if f != held.get(m)]
                                for m, fams in families.items()}
    cfg = parse_config(raw, f"field benchmark {spec.suite}/{spec.method}/{spec.tag}")
    data = load_data(cfg)
    res = train(cfg, resume=True, progress=False, data=data)
    model, _ = checkpoint.load(res.best_path)
    test = data.splits["test"]
    seed = spec.seed
    clean = run_pass(model, test, seed)
    out: dict[str, Any] = {"suite": spec.suite, "method": spec.method, "seed": spec.seed,
                           "holdout": held, "clean": float(clean.correct.mean()),
                           "best_epoch": res.best_epoch, "val_acc": res.best_score,
                           "train_seconds": res.seconds, "sweep": {}, "dropped": {}}
    for m, fams in families.items():
        out["dropped"][m] = float(run_pass(model, test, seed, missing=(m,)).correct.mean())
        for fam in fams:
            if held and fam != held[m]:
                continue
            out["sweep"][f"{m}/{fam}"] = {
                str(lv): float(run_pass(model, test, seed, levels={m: lv}, kinds={m: fam},
                                        tag=f"{m}/{fam}@{lv}").correct.mean())
                for lv in BENCH_LEVELS}
    result_path.write_text(json.dumps(out, indent=1))
    return out


def plan(methods: list[str], seeds: list[int], runs_dir: Path, base_config: Path,
         lofo: bool, overrides: dict[str, Any] | None = None, main: bool = True
         ) -> list[FieldRun]:
    """Every run, most informative first (so a run cut short still reports): seeds 0-2 of the
    main suite, then leave-one-family-out, then the remaining seeds. ``main``/``lofo`` pick the
    suites (on 2 cores each takes over an hour: run them as separate commands)."""
    from udml_stream.validation import read_toml

    ov = tuple((overrides or {}).items())
    n_groups = max(len(f) for f in read_toml(base_config)["train"]["families"].values())
    if not main:
        seeds = []
    first = [FieldRun("main", m, s, -1, runs_dir, base_config, ov)
             for s in seeds[:3] for m in methods]
    groups = [FieldRun("lofo", m, 0, g, runs_dir, base_config, ov)
              for g in range(n_groups) for m in methods if m not in MAIN_ONLY] if lofo else []
    rest = [FieldRun("main", m, s, -1, runs_dir, base_config, ov)
            for s in seeds[3:] for m in methods]
    return first + groups + rest


def corrupted_mean(result: dict[str, Any]) -> float:
    """Mean fused accuracy over every scored (family, level) of a run, every sample corrupted."""
    return float(np.mean([v for lv in result["sweep"].values() for v in lv.values()]))


def worst_vs_dropped(result: dict[str, Any]) -> float:
    """The lowest fused − dropped-stream accuracy over every scored (family, level)."""
    return min(v - result["dropped"][k.split("/")[0]]
               for k, lv in result["sweep"].items() for v in lv.values())


def paired_ci(deltas: list[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% t-interval of paired differences."""
    from scipy.stats import t

    d = np.asarray(deltas, dtype=np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan"), float("nan")
    half = float(t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half


def family_names() -> dict[str, tuple[str, ...]]:
    """The degradation families of the camera and microphone streams."""
    return {m: corrupt.families(m) for m in ("image", "audio")}


def _ci_row(name: str, ci: tuple[float, float, float]) -> str:
    """``| name | mean | [lo, hi] | excludes 0 |`` in points."""
    mean, lo, hi = ci
    excl = "yes" if lo > 0 or hi < 0 else "no"
    return f"| {name} | {100 * mean:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] | {excl} |"


def _fmt(mean_sd: tuple[float, float]) -> str:
    return f"{100 * mean_sd[0]:.1f} ± {100 * mean_sd[1]:.1f}"


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method summaries, paired deltas of the UDML rules against every other method, and
    the leave-one-family-out table (every per-run value kept)."""
    main = [r for r in results if r["suite"] == "main"]
    lofo = [r for r in results if r["suite"] == "lofo"]
    methods = [m for m in FIELD_METHODS if any(r["method"] == m for r in results)]
    out: dict[str, Any] = {"methods": {}, "paired": {}, "lofo": {}, "lofo_paired": {}}
    for m in methods:
        runs = sorted((r for r in main if r["method"] == m), key=lambda r: r["seed"])
        if not runs:
            continue
        cm = [corrupted_mean(r) for r in runs]
        out["methods"][m] = {
            "seeds": [r["seed"] for r in runs], "clean": [r["clean"] for r in runs],
            "corrupted_mean": cm, "worst_vs_dropped": [worst_vs_dropped(r) for r in runs],
            "train_seconds": [r["train_seconds"] for r in runs]}
    for ours in ("udml_switch", "udml"):
        if ours not in out["methods"]:
            continue
        mine = dict(zip(out["methods"][ours]["seeds"], out["methods"][ours]["corrupted_mean"],
                        strict=True))
        for m, d in out["methods"].items():
            if m == ours:
                continue
            deltas = [mine[s] - v for s, v in zip(d["seeds"], d["corrupted_mean"], strict=True)
                      if s in mine]
            out["paired"][f"{ours} - {m}"] = {"deltas": deltas, "ci": paired_ci(deltas)}
    for r in lofo:
        for fam, lv in r["sweep"].items():
            out["lofo"].setdefault(fam, {})[r["method"]] = {
                "mean": float(np.mean(list(lv.values()))), "levels": lv,
                "vs_dropped": min(v - r["dropped"][fam.split("/")[0]] for v in lv.values())}
    for ours in ("udml_switch", "udml"):
        for m in methods:
            if m == ours:
                continue
            deltas = [row[ours]["mean"] - row[m]["mean"] for row in out["lofo"].values()
                      if ours in row and m in row]
            if deltas:
                out["lofo_paired"][f"{ours} - {m}"] = {"deltas": deltas, "ci": paired_ci(deltas)}
    return out


def write_report(agg: dict[str, Any], out_dir: Path, command: str, meta: dict[str, Any]) -> Path:
    """``field_benchmark.md`` and ``.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "field_benchmark.json").write_text(json.dumps({"meta": meta, **agg}, indent=1))
    lines = ["# Field benchmark: UDML against its peers on natural input", "",
             f"Command: `{command}`. Base config `configs/field.toml` (natural input, robust "
             "front-ends, every degradation family it names) with the method, seed and families "
             f"replaced; training budget overrides: {meta.get('overrides') or 'none'}. "
             f"Wall time of this call {meta.get('wall_seconds_this_call')} s on "
             f"{meta.get('cpu_count')} CPUs ({meta.get('runs_resumed_from_disk')} runs resumed "
             "from disk). Every test sample (750, test-split voices) is corrupted in every "
             f"scored condition: one stream, one family, levels {list(BENCH_LEVELS)}. Images and "
             "sounds are paired by class only.", "",
             "## Every family seen in training (mean ± std over seeds)", "",
             "| method | seeds | clean | corrupted mean | worst fused − dropped (pt) |",
             "| --- | --- | --- | --- | --- |"]
    for m, d in agg["methods"].items():
        lines.append(f"| {m} | {len(d['seeds'])} | "
                     f"{_fmt((np.mean(d['clean']), np.std(d['clean'])))} | "
                     f"{_fmt((np.mean(d['corrupted_mean']), np.std(d['corrupted_mean'])))} | "
                     f"{100 * min(d['worst_vs_dropped']):+.1f} |")
    lines += ["", "Paired per-seed differences of the corrupted mean (same seed, same corrupted "
              "samples), mean and 95% t-interval, in points:", "",
              "| comparison | mean | 95% CI | CI excludes 0 | per seed |", "| --- | --- | --- | --- | --- |"]
    for name, d in agg["paired"].items():
        lines.append(_ci_row(name, d["ci"]) + f" {', '.join(f'{100 * x:+.1f}' for x in d['deltas'])} |")
    if agg["lofo"]:
        ms = [m for m in FIELD_METHODS if any(m in row for row in agg["lofo"].values())]
        lines += ["", "## Leave-one-family-out: each family held out of training, then scored",
                  "", "Mean fused accuracy over the scored levels of the held-out family (seed 0; "
                  "in brackets the worst fused − dropped-stream difference, pt).", "",
                  "| held-out family | " + " | ".join(ms) + " |",
                  "| --- | " + " | ".join("---" for _ in ms) + " |"]
        for fam, row in sorted(agg["lofo"].items()):
            cells = [f"{100 * row[m]['mean']:.1f} ({100 * row[m]['vs_dropped']:+.1f})"
                     if m in row else "–" for m in ms]
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
        lines += ["", "Paired over held-out families (mean, 95% t-interval across families):", "",
                  "| comparison | mean | 95% CI | CI excludes 0 |", "| --- | --- | --- | --- |"]
        lines += [_ci_row(name, d["ci"]) for name, d in agg["lofo_paired"].items()]
    path = out_dir / "field_benchmark.md"
    path.write_text("\n".join(lines) + "\n")
    return path
