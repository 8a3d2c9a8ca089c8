"""Program: evaluate a checkpoint on the AV-Digits test split under every condition."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.evaluate.conditions import evaluate_model
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def main(ckpt: Path, cache_dir: Path, seed: int, preset: str | None, device: str,
         limit: int = 0) -> dict[str, Any]:
    """Load ``ckpt`` with no other flags needed and score it; the preset defaults to the one the
    checkpoint was trained on. ``limit`` > 0 scores only the first ``limit`` test samples."""
    dev = resolve_device(device)
    model, meta = checkpoint.load(ckpt, dev)
    data = load_data_for_checkpoint(meta, cache_dir, preset)
    name = data.preset.name
    test = data.splits["test"]
    if limit:
        test = test.rows(np.arange(min(limit, len(test))))
    result = evaluate_model(model, test, seed=seed, device=dev)
    result.update({"preset": name, "method": meta["model"]["method"], "checkpoint": str(ckpt)})
    return result
