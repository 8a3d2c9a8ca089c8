"""Program: a checkpoint with both streams broken at once (``udml eval-joint``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from udml_stream_apps.training.field_eval import seen_families

from udml_stream.evaluate.card import add_joint, joint_section, stored_card, weights_digest
from udml_stream.evaluate.card import write_markdown as write_card_markdown
from udml_stream.evaluate.joint import joint_sweep, plot, render_markdown
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def main(ckpt: Path, cache_dir: Path, out: Path | None, cmd: str, seed: int = 0,
         limit: int = 0, device: str = "cpu", threads: int = 1, split: str = "test",
         card: Path | None = None) -> str:
    """Score ``ckpt`` on ``split`` of its own preset (as ``eval-field``: seed 0, 750 samples;
    ``val`` to choose between models without looking at test) with the camera and the
    microphone degraded together; with ``out`` write ``out.json``, ``out.md`` and ``out.png``;
    with ``card`` add the results to the model card ``eval-field --card`` stored in the
    checkpoint and rewrite the card's markdown at ``card``. Returns the summary as text."""
    torch.set_num_threads(threads)
    model, meta = checkpoint.load(ckpt, resolve_device(device))
    # Checked before the sweep, and the weights named as they were loaded.
    digest = weights_digest(ckpt) if card is not None else ""
    if card is not None:
        stored_card(ckpt, digest)
    data = load_data_for_checkpoint(meta, cache_dir)
    samples = data.splits[split]
    if limit:
        samples = samples.rows(np.arange(min(limit, len(samples))))
    result: dict[str, Any] = joint_sweep(model, samples, seed, seen_families(meta))
    result.update({"checkpoint": str(ckpt), "method": meta["model"]["method"],
                   "preset": data.preset.name, "seed": seed, "n_test": len(samples),
                   "split": split, "command": cmd})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_markdown(result, cmd))
        plot(result, out.with_suffix(".png"))
        log.info("wrote %s.{json,md,png}", out)
    if card is not None:
        report = (os.path.relpath(out.with_suffix(".md"), card.parent) if out is not None
                  else "")
        facts = add_joint(ckpt, joint_section(result, digest, report))
        write_card_markdown(facts, card, str(ckpt))
        log.info("added both streams broken at once to %s and %s", ckpt, card)
    lines = []
    for name in ("trained", "held_out"):
        s = result[name]["summary"]
        if not s["pairs"]:
            lines.append(f"{name}: no pairs")
            continue
        lines.append(f"{name}: {s['pairs']} pairs, mean fused {100 * s['mean_fused']:.2f}% vs "
                     f"the better stream alone {100 * s['mean_best_alone']:.2f}%, "
                     f"{len(s['below_promise'])} more than 1 pt below it (worst "
                     f"{100 * s['worst']['vs_best']:+.1f} pt)")
    return "\n".join(lines)
