"""Program: a checkpoint on degradations it was never trained on (``udml eval-unseen``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.evaluate.card import (
    add_held_out,
    held_out_section,
    stored_card,
    weights_digest,
)
from udml_stream.evaluate.card import write_markdown as write_card_markdown
from udml_stream.evaluate.unseen import render_markdown, summary, unseen_sweep
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def main(ckpt: Path, cache_dir: Path, out: Path | None, cmd: str, seed: int = 0,
         limit: int = 0, device: str = "cpu", threads: int = 1, split: str = "test",
         card: Path | None = None) -> str:
    """Score ``ckpt`` on ``split`` of its own preset (as ``eval-field``: seed 0, 750 samples;
    ``val`` to choose between models or settings without looking at test) under every held-out
    degradation and severity; with ``out`` write ``out.json`` and ``out.md``; with ``card`` add
    the degradations that break the promise to the model card ``eval-field --card`` stored in
    the checkpoint, and rewrite the card's markdown at ``card``. Returns the summary as text
    (one finding a line)."""
    torch.set_num_threads(threads)  # a shared machine: one core, and comparable timings
    dev = resolve_device(device)
    model, meta = checkpoint.load(ckpt, dev)
    # Checked before the sweep, and the weights named as they were loaded.
    digest = weights_digest(ckpt) if card is not None else ""
    if card is not None:
        stored_card(ckpt, digest)
    data = load_data_for_checkpoint(meta, cache_dir)
    test = data.splits[split]
    if limit:
        test = test.rows(np.arange(min(limit, len(test))))
    result: dict[str, Any] = unseen_sweep(model, test, seed)
    result.update({"checkpoint": str(ckpt), "method": meta["model"]["method"],
                   "preset": data.preset.name, "seed": seed, "n_test": len(test),
                   "split": split})
    result["summary"] = summary(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_markdown(result, cmd))
        log.info("wrote %s and %s", out.with_suffix(".json"), out.with_suffix(".md"))
    if card is not None:
        report = (os.path.relpath(out.with_suffix(".md"), card.parent) if out is not None
                  else "")
        facts = add_held_out(ckpt, held_out_section(result, digest, report))
        write_card_markdown(facts, card, str(ckpt))
        log.info("added the held-out part to %s and %s", ckpt, card)
    s = result["summary"]
    fooled = ", ".join(f"{k} ({100 * v['min_above_clean']:.1f}%)"
                       for k, v in s["sigma_fooled"].items()) or "none"
    broken = ", ".join(f"{b['degradation']} ({100 * b['vs_dropped']:+.1f} pt)"
                       for b in s["breaks_promise"]) or "none"
    return "\n".join([
        f"worst fused − dropped: {100 * s['worst_vs_dropped']:+.1f} pt ({s['worst']})",
        f"break the promise (< −1 pt): {broken}",
        f"σ̂ rises on < 90% of samples where the stream is hurt: {fooled}"])
