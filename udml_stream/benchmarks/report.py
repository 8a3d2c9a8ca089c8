"""Writing a benchmark's result: the JSON beside its Markdown report (what the docs quote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(res: dict[str, Any], out: Path, md: str) -> str:
    """Write ``res`` as JSON to ``out`` and ``md`` to ``out`` with suffix ``.md``; return ``md``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(md + "\n")
    return md
