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


def test_the_fusion_node_loads_no_training_or_dataset_code() -> None:
    """Serving stays small: the fusion node program imports neither ``udml_stream.train`` nor
    ``udml_stream.data`` (checked in a fresh interpreter, so other tests' imports do not count)."""
    import subprocess
    import sys

    code = ("import sys, udml_stream_apps.nodes.fusion; "
            "print(' '.join(m for m in sys.modules if m.startswith(('udml_stream.train', "
            "'udml_stream.data', 'udml_stream_apps.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
