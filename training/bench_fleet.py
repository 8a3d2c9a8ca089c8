"""Program: robots per machine at 30 fps, one batched fusion process against one per robot."""

from __future__ import annotations

import logging
from pathlib import Path

from udml_stream.benchmarks import fleet


def main(checkpoint: Path, seconds: float, out: Path, command: str) -> str:
    """Run the search for both layouts, write JSON and Markdown next to ``out``; return the
    Markdown. Also updates the fleet keys of docs/results/serving.json next to ``out``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = fleet.run(checkpoint, Path("runs/bench_fleet"), seconds)
    md = fleet.write(res, out, command)
    fleet.update_serving(out.parent / "serving.json", res)
    return md
