"""Program: a running fusion node under a malformed-message flood (issue 9's goals)."""

from __future__ import annotations

import json
from pathlib import Path

from udml_stream.benchmarks import flood


def main(checkpoint: Path, phase_s: float, rate: float, curve: bool, out: Path,
         command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = flood.run(checkpoint, Path("runs/bench_flood"), phase_s=phase_s, rate=rate, curve=curve)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = flood.to_markdown(res, command)
    out.with_suffix(".md").write_text(md + "\n")
    return md
