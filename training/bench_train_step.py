"""Program: the training-step speed benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from udml_stream.benchmarks import train_step


def main(out: Path, command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    res = train_step.run()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = train_step.to_markdown(res, command)
    out.with_suffix(".md").write_text(md + "\n")
    return md
