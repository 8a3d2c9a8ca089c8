"""Evaluate a recorded session offline: replay it losslessly through a fusion node, score the
results against the labels recorded in the log, plot the weights over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.demo.run import SegmentScore, score_results
from udml_stream.demo.scene import Segment
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.launch.supervisor import Supervisor
from udml_stream.logs import LogError, iter_wire
from udml_stream.logs.replay import ReplayConfig, Replayer
from udml_stream.messages import FusionResult, Label, decode


def segments_from_log(path: Path) -> tuple[list[Segment], int]:
    """Segments from the log's ``label`` and ``condition`` topics; and the time base (ns)."""
    found: dict[str, dict[int, Label]] = {"label": {}, "condition": {}}
    for rec in iter_wire(path, topics=["label", "condition"]):
        msg = decode(rec.frames)
        if isinstance(msg, Label) and msg.stream in found:
            found[msg.stream][msg.seq] = msg
    if not found["label"]:
        raise LogError(f"{path} has no `label` topic: record it with the ground truth "
                       "(`udml demo --record` does)")
    seqs = sorted(found["label"])
    starts = [found["label"][s].capture_ns for s in seqs]
    base = starts[0]
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else 1.5e9
    segs = []
    for i, s in enumerate(seqs):
        end = starts[i + 1] if i + 1 < len(starts) else starts[i] + step
        if found["label"][s].label < 0:
            continue  # a negative label closes a span (`udml label`): nothing to score there
        cond = found["condition"].get(s)
        segs.append(Segment(s, found["label"][s].label, (starts[i] - base) / 1e9,
                            (end - base) / 1e9, cond.name if cond else "unknown"))
    return segs, base


def plot_weights(results: list[FusionResult], segments: list[Segment], base_ns: int,
                 path: Path) -> None:
    """Weight share of each stream over scene time, degraded segments shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6))
    colours = {"camera_noise": "tab:orange", "audio_noise": "tab:purple",
               "camera_covered": "tab:brown", "mic_unplugged": "tab:green",
               "camera_killed": "tab:red"}
    for seg in segments:
        if seg.condition in colours:
            ax.axvspan(seg.start_s, seg.end_s, color=colours[seg.condition], alpha=0.12, lw=0)
    t = np.array([(r.capture_ns - base_ns) / 1e9 for r in results])
    for m in sorted({m for r in results for m in r.weights}):
        w = np.array([r.weights.get(m, 0.0) / (sum(r.weights.values()) or 1.0) for r in results])
        ax.plot(t, w, ".", ms=2.5, label=f"{m} weight share")
    present = {seg.condition for seg in segments}
    for cond, c in colours.items():
        if cond in present:  # the legend names only conditions this log has
            ax.plot([], [], color=c, alpha=0.4, lw=8, label=cond)
    ax.set_xlabel("scene time (s)")
    ax.set_ylabel("share of fusion weight")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_log(path: Path, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Replay ``path`` losslessly through a fusion node running ``checkpoint``; score per segment."""
    out_dir.mkdir(parents=True, exist_ok=True)
    segments, base = segments_from_log(path)
    eps = {n: f"ipc://{out_dir.resolve()}/{n}.sock" for n in ("replay", "fusion")}
    launch = out_dir / "fusion.toml"
    write_launch(launch, {"fusion": {
        "program": "fusion", "checkpoint": checkpoint.resolve(), "device": "auto", "threads": 1,
        "subscribe": [eps["replay"]], "endpoint": eps["fusion"]}})
    sup = Supervisor(launch, load_launch(launch), log_dir=out_dir / "logs")
    rep = Replayer(ReplayConfig(path, eps["replay"], lossless=True, results_endpoint=eps["fusion"],
                                topics=["camera", "mic"], wait_subscribers_s=120))
    sup.start()
    try:
        stats = rep.run()
    finally:
        rep.close()
        sup.stop()
    scores: list[SegmentScore] = score_results(segments, stats.results, base, 1.0)
    png = out_dir / "log_eval_weights.png"
    plot_weights(stats.results, segments, base, png)
    return {"scores": scores, "plot": png, "frames": stats.published.get("camera", 0),
            "results": len(stats.results), "frames_without_result": stats.frames_without_result}
