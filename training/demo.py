"""Program: the live demo (scene → camera + microphone nodes → fusion node → per-segment score)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from udml_stream.demo.run import SegmentScore, run_demo
from udml_stream.model import checkpoint as ckpt
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def verdicts(scores: list[SegmentScore]) -> list[str]:
    """Did the weights move toward the healthy stream in each degraded segment?"""
    by = {s.condition: s for s in scores}
    clean = by.get("clean")
    lines = []
    if clean is None or not clean.results:
        return ["no clean results to compare against"]
    for cond, hurt in (("camera_noise", "image"), ("audio_noise", "audio"),
                       ("camera_killed", "image")):
        s = by.get(cond)
        if s is None or not s.results:
            lines.append(f"{cond}: no scored results")
            continue
        before, after = clean.weight_share.get(hurt, 0), s.weight_share.get(hurt, 0)
        ok = after < before
        lines.append(f"{cond}: {hurt} weight share {before:.2f} (clean) → {after:.2f} "
                     f"{'✓ moved toward the healthy stream' if ok else '✗ did not move'}")
    return lines


def print_scores(scores: list[SegmentScore], title: str) -> None:
    """The per-segment table and the verdicts."""
    t = Table(title=title)
    for col in ("segment", "scored", "fused acc", "image weight", "audio weight", "camera absent"):
        t.add_column(col, justify="left" if col == "segment" else "right")
    for s in scores:
        t.add_row(s.condition, str(s.results), f"{100 * s.accuracy:.1f}%",
                  f"{s.weight_share.get('image', 0):.2f}", f"{s.weight_share.get('audio', 0):.2f}",
                  f"{100 * s.camera_absent:.0f}%")
    con = Console()
    con.print(t)
    for line in verdicts(scores):
        con.print(line)


def main(checkpoint: Path, cache_dir: Path, out_dir: Path, pulse: bool | None,
         record: Path | None = None) -> int:
    """Run the demo and print its report."""
    data = load_data_for_checkpoint(ckpt.read_meta(checkpoint), cache_dir)
    scores, facts = run_demo(checkpoint, data, out_dir, pulse, record=record)
    print_scores(scores, f"live demo: {facts['results']} fusion results, audio via "
                         f"{facts['audio_path']}")
    con = Console()
    for e in facts["events"]:
        con.print(f"event: {e}")
    if record is not None:
        con.print(f"recorded to {record}; evaluate it offline with `udml log eval {record}`")
    return 0
