"""Program: train one model from a TOML config and optionally export the selected checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from udml_stream.train.config import load_config
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
        log.info("exported %s", export)
    return result
