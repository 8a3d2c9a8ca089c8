"""Program: train one model from a TOML config and optionally export the selected checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from udml_stream.train.config import load_config
from udml_stream.train.trainer import TrainResult, train

log = logging.getLogger(__name__)


def main(config: Path, overrides: dict[str, Any], resume: bool, export: Path | None) -> TrainResult:
    """Train as ``config`` (with dotted ``overrides``) says; copy the best checkpoint to ``export``."""
    cfg = load_config(config, overrides)
    result = train(cfg, resume=resume)
    log.info("best epoch %d (val acc %.4f) in %.0f s → %s", result.best_epoch, result.best_score,
             result.seconds, result.best_path)
    if export is not None:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(result.best_path, export)
        log.info("exported %s", export)
    return result
