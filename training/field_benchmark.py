"""Program: the field benchmark (methods × seeds, leave-one-family-out) and its report."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from udml_stream.data import avdigits
from udml_stream.evaluate.benchmark import run_specs
from udml_stream.evaluate.field_benchmark import aggregate, plan, run_field, write_report

log = logging.getLogger(__name__)


def main(methods: list[str], seeds: list[int], lofo: bool, runs_dir: Path, cache_dir: Path,
         base_config: Path, out_dir: Path, workers: int, overrides: dict[str, Any],
         command: str, main_suite: bool = True) -> Path:
    """Run (or resume) every run of the plan, then write the report into ``out_dir``."""
    t0 = time.perf_counter()
    avdigits.load("field", cache_dir)  # build once, before the workers race for it
    specs = plan(methods, seeds, runs_dir, base_config, lofo, overrides, main_suite)
    # The report covers every run on disk under this plan's folder, this call's or earlier ones.
    everything = plan(methods, seeds, runs_dir, base_config, True, overrides, True)
    saved = sum((s.out_dir / "result.json").exists() for s in specs)
    run_specs(specs, run_field, workers)
    results = [json.loads((s.out_dir / "result.json").read_text()) for s in everything
               if (s.out_dir / "result.json").exists()]
    meta = {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "wall_seconds_this_call": round(time.perf_counter() - t0), "runs_total": len(results),
            "runs_resumed_from_disk": saved, "overrides": overrides,
            "train_seconds_total": round(sum(r["train_seconds"] for r in results))}
    path = write_report(aggregate(results), out_dir, command, meta)
    log.info("report written to %s", path)
    return path
