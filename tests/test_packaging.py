"""Packaging: every package of the tree is listed, and the apps do not claim generic names."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_pyproject_lists_every_package() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "udml_stream").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"
    assert {"udml_stream_apps.nodes", "udml_stream_apps.training"} <= listed
    assert not listed & {"nodes", "training"}
