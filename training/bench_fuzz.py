"""Program: the long hypothesis run of tests/test_fuzz.py."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import fuzz
from udml_stream.benchmarks.report import write_report


def main(minutes: float, out: Path, command: str) -> str:
    """Run the fuzz tests for about ``minutes``, write JSON and Markdown next to ``out``;
    return the Markdown."""
    res = fuzz.run(minutes)
    return write_report(res, out, fuzz.to_markdown(res, command))
