"""Program: a checkpoint on degradations it was never trained on (``udml eval-unseen``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from udml_stream_apps.training import sweep_setup

from udml_stream.evaluate.card import (
    add_held_out,
    held_out_section,
)
from udml_stream.evaluate.unseen import render_markdown, summary, unseen_sweep

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
    ld = sweep_setup.load(ckpt, cache_dir, device, threads, split, limit, card)
    model, meta, data, test, digest = ld.model, ld.meta, ld.data, ld.samples, ld.digest
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
        sweep_setup.add_to_card(ckpt, card, out, add_held_out,
                                lambda report: held_out_section(result, digest, report))
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
