"""End-to-end latency of the live pipeline: capture → fused result received.

Runs a camera node (a 640×480 video file paced at 30 fps), a microphone node (16 kHz WAV file,
20 ms chunks) and the fusion node with the default checkpoint on the CPU, as processes on
loopback, and measures at a subscriber of the fusion results. The baseline, run in the same
process right before, is the same camera node read directly by a subscriber (transport only),
so the table also gives the ratio of pipeline to bare transport latency.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.demo.scene import SceneSpec, build_scene
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.launch.supervisor import Supervisor
from udml_stream.messages import CameraFrame, FusionResult, Heartbeat
from udml_stream.transport import Subscriber


def _q(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": int(a.size)}


def _launch(out: Path, scene_video: Path, scene_audio: Path, ckpt: Path, fusion: bool,
            threads: int = 1) -> Path:
    ep = {n: f"ipc://{out.resolve()}/{n}.sock" for n in ("camera", "mic", "fusion")}
    nodes: dict[str, dict[str, Any]] = {"camera": {
        "program": "camera", "source": scene_video.resolve(), "loop": True,
        "endpoint": ep["camera"]}}
    if fusion:
        nodes["mic"] = {"program": "microphone", "source": "file", "file": scene_audio.resolve(),
                        "loop": True, "endpoint": ep["mic"]}
        nodes["fusion"] = {"program": "fusion", "checkpoint": ckpt.resolve(), "device": "cpu",
                           "threads": threads, "subscribe": [ep["camera"], ep["mic"]],
                           "endpoint": ep["fusion"]}
    path = out / (f"pipeline_t{threads}.toml" if fusion else "transport.toml")
    write_launch(path, nodes)
    return path


def _measure(path: Path, seconds: float, warmup_s: float, fusion: bool) -> dict[str, Any]:
    launch = load_launch(path)
    sup = Supervisor(path, launch, log_dir=path.parent / "logs")
    target = launch.nodes["fusion" if fusion else "camera"].endpoint
    extra = [launch.nodes["camera"].endpoint] if fusion else []
    e2e: list[float] = []
    parts: dict[str, list[float]] = {}
    cam_seqs: set[int] = set()
    fused_seqs: set[int] = set()
    beats: dict[str, Heartbeat] = {}
    sup.start()
    try:
        with Subscriber([target, *extra]) as sub:
            t_start = time.monotonic()
            while time.monotonic() - t_start < warmup_s + seconds:
                for m in sub.receive(50):
                    now = time.monotonic_ns()
                    measuring = time.monotonic() - t_start >= warmup_s
                    if isinstance(m, Heartbeat):
                        beats[m.node] = m
                    elif isinstance(m, CameraFrame):
                        if not fusion and measuring:
                            e2e.append((now - m.capture_ns) / 1e6)
                        if measuring:
                            cam_seqs.add(m.seq)
                    elif isinstance(m, FusionResult) and "camera" in m.source_seq and measuring:
                        e2e.append((now - m.capture_ns) / 1e6)
                        fused_seqs.add(m.source_seq["camera"])
                        for k, v in m.latency_ns.items():
                            parts.setdefault(k, []).append(v / 1e6)
    finally:
        sup.stop()
    out: dict[str, Any] = {"end_to_end_ms": _q(e2e), "breakdown_ms": {k: _q(v) for k, v in parts.items()}}
    if fusion:
        # Frames the camera published during the window that never produced a fused result.
        lo, hi = (min(cam_seqs), max(cam_seqs)) if cam_seqs else (0, -1)
        published = {s for s in cam_seqs if lo <= s <= hi}
        out["frames_published"] = len(published)
        out["frames_fused"] = len(fused_seqs & published)
        out["frames_not_fused"] = len(published - fused_seqs)
        hb = beats.get("fusion")
        out["fusion_counters"] = hb.counters if hb else {}
    return out


def _busy(stop: Any) -> None:
    """A process that keeps one core busy (another program on the robot's computer)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run(ckpt: Path, data: Any, out_dir: Path, seconds: float = 20.0,
        warmup_s: float = 8.0) -> dict[str, Any]:
    """Measure the baseline (transport only) and the full pipeline; then the pipeline with the
    fusion node on one torch thread (the launch default) and on torch's default (every core),
    each on the idle machine and next to a process that keeps one core busy."""
    import multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    scene = build_scene(data, out_dir, SceneSpec(plan=(("clean", 20),)))
    base = _measure(_launch(out_dir, scene.video, scene.audio, ckpt, False), seconds, 3.0, False)
    threads: dict[str, dict[str, Any]] = {}
    for load in ("idle", "one core busy"):
        for t in (1, 0):
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            hog = ctx.Process(target=_busy, args=(stop,), daemon=True) if load != "idle" else None
            if hog is not None:
                hog.start()
            try:
                threads.setdefault(str(t), {})[load] = _measure(
                    _launch(out_dir, scene.video, scene.audio, ckpt, True, t), seconds,
                    warmup_s, True)
            finally:
                if hog is not None:
                    stop.set()
                    hog.join(10)
    return {"baseline_transport_only": base, "pipeline": threads["1"]["idle"],
            "fusion_threads": threads,
            "setup": {"camera": "640x480 bgr8 @ 30 fps (video file)", "audio": "16 kHz, 20 ms chunks",
                      "device": "cpu", "fusion_threads": 1, "seconds": seconds,
                      "cpus": len(os.sched_getaffinity(0)),
                      "machine": platform.machine(), "python": platform.python_version()}}


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The table docs/benchmarks.md quotes."""
    b, p = res["baseline_transport_only"], res["pipeline"]
    rows = ["| measure | p50 ms | p99 ms | mean ms | n |", "| --- | --- | --- | --- | --- |"]

    def row(name: str, q: dict[str, float]) -> None:
        rows.append(f"| {name} | {q['p50']:.2f} | {q['p99']:.2f} | {q['mean']:.2f} | {q['n']} |")

    row("baseline: capture → frame received (transport only)", b["end_to_end_ms"])
    row("pipeline: capture → fused result received", p["end_to_end_ms"])
    for k in ("publish", "transport", "sync_wait", "preprocess", "inference"):
        if k in p["breakdown_ms"]:
            row(f"  of which {k}", p["breakdown_ms"][k])
    ratio = p["end_to_end_ms"]["p50"] / max(b["end_to_end_ms"]["p50"], 1e-9)
    return "\n".join([
        f"Command: `{command}`", "", *rows, "",
        f"Pipeline / transport-only p50 ratio: {ratio:.1f}×. Frames published during the window: "
        f"{p.get('frames_published')}, fused: {p.get('frames_fused')}, not fused: "
        f"{p.get('frames_not_fused')}. Fusion node counters: {json.dumps(p.get('fusion_counters'))}.",
        f"Setup: {json.dumps(res['setup'])}",
        *_threads_table(res),
    ])


def _threads_table(res: dict[str, Any]) -> list[str]:
    """The fusion node's torch threads: the launch default (1) against torch's (every core)."""
    th = res.get("fusion_threads")
    if not th:
        return []
    rows = ["", "### Fusion node threads (capture → fused result, same run)", "",
            "| torch threads | machine | p50 ms | p99 ms | frames not fused |",
            "| --- | --- | --- | --- | --- |"]
    for t, loads in th.items():
        for load, r in loads.items():
            q = r["end_to_end_ms"]
            rows.append(f"| {t if t != '0' else '0 (torch default: every core)'} | {load} | "
                        f"{q['p50']:.2f} | {q['p99']:.2f} | {r.get('frames_not_fused')} |")
    return rows
