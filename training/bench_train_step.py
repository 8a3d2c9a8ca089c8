"""Program: the training-step speed benchmark."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import train_step
from udml_stream.benchmarks.report import write_report


def main(out: Path, command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = train_step.run()
    return write_report(res, out, train_step.to_markdown(res, command))
