"""Program: memory attacks on running nodes with CURVE on and off (issue 9's goals)."""

from __future__ import annotations

import json
from pathlib import Path

from udml_stream.benchmarks import attacks


def main(checkpoint: Path, subscriptions: int, hold_s: float, curve: bool, out: Path,
         command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = attacks.run(checkpoint, Path("runs/bench_attacks"), subscriptions=subscriptions,
                      hold_s=hold_s, curve=curve)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = attacks.to_markdown(res, command)
    out.with_suffix(".md").write_text(md + "\n")
    return md
