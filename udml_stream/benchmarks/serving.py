"""``docs/results/serving.json``: the serving figures of issue #10 in one file, each written by
the benchmark that measures it (transport, fleet, GPU) without touching the others' keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merge(path: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Update ``path`` with ``figures`` (other keys kept); returns the whole summary."""
    cur = json.loads(path.read_text()) if path.exists() else {}
    cur.update(figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cur, indent=1, sort_keys=True) + "\n")
    return cur
