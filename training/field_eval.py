"""Program: the field evaluation of a checkpoint (natural input, gaps, every family vs dropping)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream import corrupt, modalities
from udml_stream.evaluate.card import build_card, weights_digest, write_into_checkpoint
from udml_stream.evaluate.card import write_markdown as write_card_markdown
from udml_stream.evaluate.field import evaluate_field
from udml_stream.evaluate.field_report import plot, write_markdown
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def seen_families(meta: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The degradation families a checkpoint was trained on (its reference kind when none named)."""
    named = meta.get("config", {}).get("train", {}).get("families") or {}
    mods = meta["model"]["modalities"]
    return {m: tuple(named.get(m, (corrupt.TRAIN_KINDS[modalities.kind_of(m).corrupt],)))
            for m in mods}


def main(ckpt: Path, cache_dir: Path, seed: int, device: str, limit: int,
         out: Path | None, command: str, card: Path | None = None,
         split: str = "test") -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``split`` of its own preset (``field`` for the shipped model; ``val``
    to choose between training runs, never the test split); with ``out`` write ``out.json``,
    ``out.md`` and ``out_families.png``; with ``card`` store the model card in the
    checkpoint and write it as markdown to ``card``."""
    dev = resolve_device(device)
    model, meta = checkpoint.load(ckpt, dev)
    # The weights as loaded, whatever happens to the file later.
    digest = weights_digest(ckpt) if card is not None else None
    data = load_data_for_checkpoint(meta, cache_dir)
    test = data.splits[split]
    if limit:
        test = test.rows(np.arange(min(limit, len(test))))
    result = evaluate_field(model, test, seed, seen_families(meta))
    result.update({"checkpoint": str(ckpt), "method": meta["model"]["method"],
                   "preset": data.preset.name, "seed": seed, "split": split})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        write_markdown(result, out.with_suffix(".md"), command)
        plot(result, out)
    if card is not None:
        report = (os.path.relpath(out.with_suffix(".md"), card.parent) if out is not None
                  else "")
        facts = build_card(meta, result, digest, report)
        write_into_checkpoint(ckpt, facts)
        write_card_markdown(facts, card, str(ckpt))
    return result
