"""Program: memory attacks on running nodes with CURVE on and off (issue 9's goals)."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import attacks
from udml_stream.benchmarks.report import write_report


def main(checkpoint: Path, subscriptions: int, hold_s: float, curve: bool, out: Path,
         command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = attacks.run(checkpoint, Path("runs/bench_attacks"), subscriptions=subscriptions,
                      hold_s=hold_s, curve=curve)
    return write_report(res, out, attacks.to_markdown(res, command))
