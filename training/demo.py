"""Program: the live demo (scene → camera + microphone nodes → fusion node → per-segment score)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from rich.console import Console
from rich.table import Table

from udml_stream.demo.run import SegmentScore, run_demo
from udml_stream.model import checkpoint as ckpt
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)

#: Each degraded condition and the stream it hurts.
HURTS: tuple[tuple[str, str], ...] = (
    ("camera_noise", "image"), ("audio_noise", "audio"), ("camera_covered", "image"),
    ("mic_unplugged", "audio"), ("camera_killed", "image"))
#: What the demo should show in every segment: a fused accuracy this high over enough results
#: that one lucky or unlucky digit cannot decide it.
TARGET_ACCURACY = 0.90
#: The conditions in which the launcher kills the node of the stream they hurt.
KILLED = ("camera_killed", "mic_unplugged")
MIN_RESULTS = 20


def _dead_camera_in_replay(cond: str, live: bool) -> bool:
    """A lossless replay fuses per recorded frame: a camera killed while recording left no
    frames for its dead stretch, so fusing without it shows only live."""
    return not live and cond in KILLED and dict(HURTS).get(cond) == "image"


def verdicts(scores: list[SegmentScore], live: bool = True) -> list[str]:
    """Did the weights move toward the healthy stream in each degraded segment? One line per
    condition of ``HURTS`` that ``scores`` holds (none for a condition the log lacks, none
    for one without scored results: ``accuracy_verdicts`` says so). ``live`` False: a lossless
    replay, where a killed camera's dead stretch left nothing to fuse."""
    by = {s.condition: s for s in scores}
    clean = by.get("clean")
    lines = []
    for cond, hurt in HURTS:
        s = by.get(cond)
        if s is None:
            continue  # not in this log
        if _dead_camera_in_replay(cond, live):
            lines.append(f"{cond}: the dead camera left no frames to replay (fusing without it "
                         "shows live only)" if not s.results else
                         f"{cond}: {s.results} results from the frames recorded while the camera "
                         "was up; fusing without it shows live only")
            continue
        if not s.results:
            continue
        if cond in KILLED:
            # The node is dead for ~3 s of the segment: the mean share over the whole segment
            # says little; what matters is that fusion went on without the stream.
            absent = s.camera_absent if hurt == "image" else s.audio_absent
            n = round(absent * s.results) if absent == absent else 0  # NaN: not measured
            lines.append(f"{cond}: {n} of {s.results} scored results fused without the {hurt} "
                         f"{'✓ went on with the healthy stream' if n else '✗ none'}")
            continue
        if clean is None or not clean.results:
            lines.append(f"{cond}: no clean results to compare the {hurt} weight share against")
            continue
        before, after = clean.weight_share.get(hurt, 0), s.weight_share.get(hurt, 0)
        ok = after < before
        lines.append(f"{cond}: {hurt} weight share {before:.2f} (clean) → {after:.2f} "
                     f"{'✓ moved toward the healthy stream' if ok else '✗ did not move'}")
    return lines


def accuracy_verdicts(scores: list[SegmentScore], live: bool = True) -> list[str]:
    """Per condition in ``scores``: is the fused accuracy at least ``TARGET_ACCURACY`` over at
    least ``MIN_RESULTS`` scored results? (``live`` False: a killed camera's condition without
    results is left to ``verdicts``, which says why.)"""
    lines = []
    for s in scores:
        if not s.results:
            if not _dead_camera_in_replay(s.condition, live):
                lines.append(f"{s.condition}: no scored results ✗")
            continue
        ok = s.results >= MIN_RESULTS and s.accuracy >= TARGET_ACCURACY
        why = "" if ok else (f" (only {s.results} results)" if s.results < MIN_RESULTS
                             else " (accuracy below target)")
        lines.append(f"{s.condition}: fused accuracy {100 * s.accuracy:.1f}% over {s.results} "
                     f"results {'✓' if ok else '✗'} ≥ {100 * TARGET_ACCURACY:.0f}% with ≥ "
                     f"{MIN_RESULTS}{why}")
    return lines


def print_scores(scores: list[SegmentScore], title: str, live: bool = True) -> None:
    """The per-segment table and the verdicts (``live`` False for a replayed log)."""
    t = Table(title=title)
    # One weight column per stream the model fuses (a second camera gets its own).
    mods = list(dict.fromkeys(["image", *(m for s in scores for m in s.weight_share), "audio"]))
    mods = [m for m in mods if m != "audio"] + ["audio"]
    for col in ("segment", "scored", "fused acc", *(f"{m} weight" for m in mods),
                "camera absent", "audio absent"):
        t.add_column(col, justify="left" if col == "segment" else "right")
    for s in scores:
        t.add_row(s.condition, str(s.results), f"{100 * s.accuracy:.1f}%" if s.results else "-",
                  *(f"{s.weight_share.get(m, 0):.2f}" for m in mods),
                  f"{100 * s.camera_absent:.0f}%", f"{100 * s.audio_absent:.0f}%")
    con = Console()
    con.print(t)
    for line in verdicts(scores, live) + accuracy_verdicts(scores, live):
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
    back_at = cast(dict[str, float | None], facts["back_at"])
    for node, t in back_at.items():
        con.print(f"{node} stream back in the results at scene t={t:.1f}s" if t is not None
                  else f"{node} stream never came back after its kill")
    if record is not None:
        con.print(f"recorded to {record}; evaluate it offline with `udml log eval {record}`")
        if facts.get("viewer_log"):
            con.print(f"for Foxglove: {facts['viewer_log']} (layout: configs/foxglove_layout.json)")
    return 0
