"""What the evaluation programs that may add to the model card share: loading a checkpoint and
the samples to score, and writing a section into the card afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.data.avdigits import AVDigits, Split
from udml_stream.evaluate.card import stored_card, weights_digest
from udml_stream.evaluate.card import write_markdown as write_card_markdown
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.model.ensemble import Ensemble
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import load_data_for_checkpoint


@dataclass
class Loaded:
    """A checkpoint ready to score: its model and metadata, its data, the samples (``split``,
    the first ``limit`` of them when given) and its weights digest ("" without a card)."""

    model: FusionNet | Ensemble
    meta: dict[str, Any]
    data: AVDigits
    samples: Split
    digest: str


def load(ckpt: Path, cache_dir: Path, device: str, threads: int, split: str, limit: int,
         card: Path | None) -> Loaded:
    """Load ``ckpt`` and the ``split`` of its own preset; with ``card``, check before any
    scoring that the card it stored was measured on these weights (named as loaded)."""
    torch.set_num_threads(threads)  # a shared machine: one core, and comparable timings
    model, meta = checkpoint.load(ckpt, resolve_device(device))
    digest = weights_digest(ckpt) if card is not None else ""
    if card is not None:
        stored_card(ckpt, digest)
    data = load_data_for_checkpoint(meta, cache_dir)
    samples = data.splits[split]
    if limit:
        samples = samples.rows(np.arange(min(limit, len(samples))))
    return Loaded(model, meta, data, samples, digest)


def add_to_card(ckpt: Path, card: Path, out: Path | None,
                add: Callable[[Path, dict[str, Any]], dict[str, Any]],
                section: Callable[[str], dict[str, Any]]) -> None:
    """Store ``section(report)`` in the checkpoint's card with ``add`` (``report``: the
    report's path from the card's folder, "" without ``out``) and rewrite the card at ``card``."""
    report = os.path.relpath(out.with_suffix(".md"), card.parent) if out is not None else ""
    write_card_markdown(add(ckpt, section(report)), card, str(ckpt))
