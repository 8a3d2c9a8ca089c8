"""Program: a running fusion node under a malformed-message flood (issue 9's goals)."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import flood
from udml_stream.benchmarks.report import write_report


def main(checkpoint: Path, phase_s: float, rate: float, curve: bool, out: Path,
         command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = flood.run(checkpoint, Path("runs/bench_flood"), phase_s=phase_s, rate=rate, curve=curve)
    return write_report(res, out, flood.to_markdown(res, command))
