"""The AV-Digits benchmark: every preset × method × seed trained and evaluated, then reported.

Each run's result is written to ``runs_dir/<preset>/<method>/seed<k>/result.json`` as soon as it
finishes, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from udml_stream.errors import UdmlError

log = logging.getLogger(__name__)

#: Methods in report order.
BENCH_METHODS = (
    "static_concat",
    "static_concat_aug",
    "qmf",
    "pdf",
    "udml_no_dependency",
    "udml_no_estimator",
    "dependency_only",
    "udml",
    "oracle",
)


@dataclass(frozen=True)
class RunSpec:
    """One training + evaluation run of the benchmark."""

    preset: str
    method: str
    seed: int
    runs_dir: Path
    cache_dir: Path
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def out_dir(self) -> Path:
        """Where this run's checkpoints and result live."""
        return self.runs_dir / self.preset / self.method / f"seed{self.seed}"


def run_one(spec: RunSpec, threads: int = 1) -> dict[str, Any]:
    """Train and evaluate one run (in a worker process); returns and writes its result."""
    import torch

    from udml_stream.evaluate.conditions import evaluate_model
    from udml_stream.model import checkpoint
    from udml_stream.train.config import parse_config
    from udml_stream.train.trainer import load_data, train
    from udml_stream.validation import set_dotted

    torch.set_num_threads(threads)
    result_path = spec.out_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    raw: dict[str, Any] = {
        "data": {"preset": spec.preset, "cache_dir": str(spec.cache_dir)},
        "model": {"method": spec.method},
        "train": {"seed": spec.seed, "out_dir": str(spec.out_dir), "device": "cpu"},
    }
    for dotted, value in spec.overrides:
        set_dotted(raw, dotted, value)
    cfg = parse_config(raw, f"benchmark {spec.preset}/{spec.method}")
    data = load_data(cfg)  # once, for training and for evaluation
    res = train(cfg, resume=True, progress=False, data=data)
    model, _ = checkpoint.load(res.best_path)
    if cfg.data.source != "avdigits":  # trained from logs: scored on the preset's array test split
        data = load_data(cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"source": "avdigits"})}))
    out = evaluate_model(model, data.splits["test"], seed=spec.seed)
    out.update({"preset": spec.preset, "method": spec.method, "seed": spec.seed,
                "best_epoch": res.best_epoch, "val_acc": res.best_score,
                "train_seconds": res.seconds})
    result_path.write_text(json.dumps(out, indent=1))
    return out


def run_benchmark(
    presets: list[str],
    methods: list[str],
    seeds: list[int],
    runs_dir: Path,
    cache_dir: Path,
    workers: int = 2,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every combination (``workers`` processes, CPU threads split between them)."""
    from udml_stream.data import avdigits

    for preset in presets:  # build once, before the workers race for it
        avdigits.load(preset, cache_dir)
    specs = [RunSpec(p, m, s, runs_dir, cache_dir, tuple((overrides or {}).items()))
             for p in presets for m in methods for s in seeds]
    return run_specs(specs, run_one, workers)


def run_specs(specs: list[Any], fn: Any, workers: int) -> list[dict[str, Any]]:
    """Run ``fn(spec, threads)`` for every spec in ``workers`` processes (CPU threads split
    between them); a failing run is recorded, the others finish, then the call fails."""
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    results: list[dict[str, Any]] = []
    failed: list[str] = []

    def collect(spec: Any, get: Any) -> None:
        # One failing run must not cost the others: record it, finish the rest, then fail.
        try:
            results.append(get())
            log.info("done %s", spec.out_dir)
        except Exception as err:
            log.exception("run %s failed", spec.out_dir)
            failed.append(f"{spec.out_dir}: {err!r}")

    if workers <= 1:
        for spec in tqdm(specs, desc="benchmark"):
            collect(spec, lambda spec=spec: fn(spec, threads))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futs = {pool.submit(fn, s, threads): s for s in specs}
            for fut in tqdm(as_completed(futs), total=len(futs), desc="benchmark"):
                collect(futs[fut], fut.result)
    if failed:
        raise BenchmarkError(f"{len(failed)} of {len(specs)} runs failed (the others are saved "
                             "and a rerun resumes): " + "; ".join(failed))
    return results


class BenchmarkError(UdmlError):
    """Some benchmark runs failed."""
