"""Program: a checkpoint with both streams broken at once (``udml eval-joint``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from udml_stream_apps.training import sweep_setup
from udml_stream_apps.training.field_eval import seen_families

from udml_stream.evaluate.card import add_joint, joint_section
from udml_stream.evaluate.joint import joint_sweep, plot, render_markdown

log = logging.getLogger(__name__)


def main(ckpt: Path, cache_dir: Path, out: Path | None, cmd: str, seed: int = 0,
         limit: int = 0, device: str = "cpu", threads: int = 1, split: str = "test",
         card: Path | None = None) -> str:
    """Score ``ckpt`` on ``split`` of its own preset (as ``eval-field``: seed 0, 750 samples;
    ``val`` to choose between models without looking at test) with the camera and the
    microphone degraded together; with ``out`` write ``out.json``, ``out.md`` and ``out.png``;
    with ``card`` add the results to the model card ``eval-field --card`` stored in the
    checkpoint and rewrite the card's markdown at ``card``. Returns the summary as text."""
    ld = sweep_setup.load(ckpt, cache_dir, device, threads, split, limit, card)
    model, meta, data, samples, digest = ld.model, ld.meta, ld.data, ld.samples, ld.digest
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
        sweep_setup.add_to_card(ckpt, card, out, add_joint,
                                lambda report: joint_section(result, digest, report))
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
