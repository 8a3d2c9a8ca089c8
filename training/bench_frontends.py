"""Program: the front-end comparison of the field model (reference, floor, robust)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from udml_stream.benchmarks import frontends


def main(config: Path, cache_dir: Path, budget: frontends.Budget, out: Path,
         command: str) -> dict[str, Any]:
    """Train (or resume) and evaluate every front-end, write JSON and Markdown next to ``out``;
    return the result."""
    res = frontends.run(config, budget, cache_dir)
    res["command"] = command
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(frontends.to_markdown(res, command) + "\n")
    return res
