"""Program: train one model from a TOML config and optionally export the selected checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from udml_stream.model import checkpoint
from udml_stream.train.config import load_config, portable_paths
from udml_stream.train.distributed import LaunchSpec, launch
from udml_stream.train.trainer import TrainResult, train

log = logging.getLogger(__name__)


def main(config: Path, overrides: dict[str, Any], resume: bool, export: Path | None,
         spec: LaunchSpec | None = None) -> TrainResult | None:
    """Train as ``config`` (with dotted ``overrides``) says; copy the best checkpoint to ``export``.

    With ``spec`` naming more than one process in all, the run is distributed (DDP through
    torchrun, docs/distributed.md); then only node 0 returns a result (and exports)."""
    if spec is not None and spec.world > 1:
        result = launch(config, overrides, resume, spec)
        if result is None:
            return None
    else:
        result = train(load_config(config, overrides), resume=resume)
    log.info("best epoch %d (val acc %.4f) in %.0f s → %s", result.best_epoch, result.best_score,
             result.seconds, result.best_path)
    if export is not None:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(result.best_path, export)
        # The stored training config names this machine's folders: those under the working
        # directory (the checkout) are written relative to it.
        meta_path = export / checkpoint.CONFIG
        meta = json.loads(meta_path.read_text())
        if isinstance(meta.get("config"), dict):
            meta["config"] = portable_paths(meta["config"], Path.cwd())
            meta_path.write_text(json.dumps(meta, indent=2))
        log.info("exported %s", export)
    return result
