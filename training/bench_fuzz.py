"""Program: the long hypothesis run of tests/test_fuzz.py."""

from __future__ import annotations

import json
from pathlib import Path

from udml_stream.benchmarks import fuzz


def main(minutes: float, out: Path, command: str) -> str:
    """Run the fuzz tests for about ``minutes``, write JSON and Markdown next to ``out``;
    return the Markdown."""
    res = fuzz.run(minutes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = fuzz.to_markdown(res, command)
    out.with_suffix(".md").write_text(md + "\n")
    return md
