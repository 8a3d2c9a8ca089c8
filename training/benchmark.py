"""Program: the whole AV-Digits benchmark (all presets, methods and seeds) and its report."""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

from udml_stream.evaluate.benchmark import run_benchmark
from udml_stream.evaluate.report import aggregate, write_report

log = logging.getLogger(__name__)


def main(presets: list[str], methods: list[str], seeds: list[int], runs_dir: Path,
         cache_dir: Path, out_dir: Path, workers: int, command: str) -> Path:
    """Run (or resume) every combination, then write the report into ``out_dir``."""
    t0 = time.perf_counter()
    # A resumed call reuses saved runs: say how many were computed, so the wall time reads right.
    saved_before = len(list(runs_dir.glob("*/*/seed*/result.json")))
    results = run_benchmark(presets, methods, seeds, runs_dir, cache_dir, workers)
    meta = {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "wall_seconds_this_call": round(time.perf_counter() - t0),
            "runs_total": len(results), "runs_resumed_from_disk": saved_before,
            "train_seconds_total": round(sum(r["train_seconds"] for r in results))}
    path = write_report(aggregate(results), out_dir, command, meta)
    log.info("report written to %s", path)
    return path
