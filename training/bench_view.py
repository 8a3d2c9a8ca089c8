"""Program: what ``udml view`` costs next to ``udml record`` on the same streams (issue 11)."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import view


def main(out: Path, command: str, seconds: float = 10.0) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = view.run(Path("runs/bench_view"), seconds=seconds)
    return view.write(res, out, command)
