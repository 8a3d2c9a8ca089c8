"""``udml bench fleet``: how many robots one machine serves at 30 fps, batched or not.

Publishers: one driver process plays R robots on one PUB socket, as capture nodes would send
them: per robot, a 640×480 ``bgr8`` frame every 1/30 s and a 16 kHz float32 audio chunk every
20 ms (the microphone node's default), each stamped with its capture time on the monotonic
clock at the moment it is sent; the robots' camera phases are spread evenly over a frame
period (robots are not synchronised). The frames and audio are fixed arrays: the fusion node's
cost does not depend on their content, and one driver keeps the publishers' share of the CPU
small and equal for both layouts.

Layouts, same machine, same driver:
* ``batched``: one fusion node with ``robots = [r0 … rR−1]`` (samples fused in batches);
* ``processes``: R fusion nodes, each serving one robot's streams.

A layout sustains R robots when, over the measured window, every frame sent got its result (no
frame dropped by the fusion node: ≥ 99.5% of the frames answered, and no frame superseded
while waiting) and the p99 of capture → result received (at a subscriber in this process) is
under the frame period (33.3 ms). The search raises R until a layout fails twice in a row at
the same R (a failed trial is repeated once: the machine is shared; both are reported).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.benchmarks import serving
from udml_stream.benchmarks.report import write_report
from udml_stream.launch.config import write_launch
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Heartbeat
from udml_stream.transport import Publisher, Subscriber

log = logging.getLogger(__name__)

FPS = 30.0
CHUNK_MS = 20
BUDGET_MS = 1000.0 / FPS
MS = 1_000_000


def drive(endpoint: str, robots: list[str], seconds: float, ready: Any, go: Any,
          sent: Any) -> None:
    """Driver process: publish ``robots``' streams for ``seconds`` once ``go`` is set; puts
    ``{robot: [frame seqs sent]}`` on ``sent``."""
    pub = Publisher(endpoint, bind=True, hwm=1000)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    chunk = (0.05 * rng.standard_normal(16000 * CHUNK_MS // 1000)).astype(np.float32)
    ready.set()
    go.wait()
    period = int(1e9 / FPS)
    start = time.monotonic_ns() + 50 * MS
    next_audio = start
    # Robot k's frames at start + k·period/R + j·period: phases spread over one period.
    next_frame = [start + k * period // len(robots) for k in range(len(robots))]
    fseq = [0] * len(robots)
    aseq = 0
    frames_sent: dict[str, list[int]] = {r: [] for r in robots}
    end = start + int(seconds * 1e9)
    while True:
        t_next = min(next_audio, *next_frame)
        if t_next >= end:
            break
        delay = t_next - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        now = time.monotonic_ns()
        if next_audio <= now:
            for r in robots:  # the chunk that just ended
                pub.publish(AudioChunk(f"{r}/mic", aseq, now - CHUNK_MS * MS, samples=chunk))
            aseq += 1
            next_audio += CHUNK_MS * MS
        for k, r in enumerate(robots):
            if next_frame[k] <= now:
                pub.publish(CameraFrame(f"{r}/camera", fseq[k], time.monotonic_ns(),
                                        image=frame))
                frames_sent[r].append(fseq[k])
                fseq[k] += 1
                next_frame[k] += period
    time.sleep(0.5)
    pub.close()
    sent.put(frames_sent)


def _nodes(layout: str, robots: list[str], driver_ep: str, out: Path, ckpt: Path,
           batch_wait_ms: float = 0.0) -> dict[str, dict[str, Any]]:
    base = {"program": "fusion", "checkpoint": ckpt.resolve(), "device": "cpu", "threads": 1,
            "subscribe": [driver_ep], "heartbeat_s": 0.5}
    if layout == "batched":
        return {"fusion": {**base, "robots": robots, "batch_wait_ms": batch_wait_ms,
                           "endpoint": f"ipc://{out.resolve()}/fusion.sock"}}
    return {f"fusion_{r}": {**base, "streams": {"image": f"{r}/camera", "audio": f"{r}/mic"},
                            "stream": f"{r}/fused", "endpoint": f"ipc://{out.resolve()}/{r}.sock"}
            for r in robots}


def trial(layout: str, n_robots: int, ckpt: Path, out: Path, seconds: float,
          warmup_s: float = 1.0, batch_wait_ms: float = 0.0) -> dict[str, Any]:
    """Run one layout with ``n_robots`` robots; return what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    robots = [f"r{k}" for k in range(n_robots)]
    driver_ep = f"ipc://{out.resolve()}/driver_{layout}_{n_robots}.sock"
    nodes = _nodes(layout, robots, driver_ep, out, ckpt, batch_wait_ms)
    path = out / f"{layout}_{n_robots}.toml"
    write_launch(path, nodes)
    ctx = mp.get_context("spawn")
    ready, go, sent = ctx.Event(), ctx.Event(), ctx.Queue()
    driver = ctx.Process(target=drive, args=(driver_ep, robots, seconds + warmup_s, ready, go,
                                             sent), daemon=True)
    driver.start()
    ready.wait(60)
    procs = [subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(path), n],
                              stdout=subprocess.DEVNULL, stderr=(out / f"{n}.log").open("w"))
             for n in nodes]
    results: list[tuple[str, int, float, float]] = []  # robot, camera seq, e2e ms, sync ms
    beats: dict[str, Heartbeat] = {}
    try:
        with Subscriber([n["endpoint"] for n in nodes.values()], hwm=100_000) as sub:
            end = time.monotonic() + 120  # every node up: a heartbeat from each
            while len(beats) < len(nodes) and time.monotonic() < end:
                for m in sub.receive(100):
                    if isinstance(m, Heartbeat):
                        beats[m.node] = m
            if len(beats) < len(nodes):
                raise RuntimeError(f"fleet bench: {len(nodes) - len(beats)} fusion nodes did "
                                   f"not start; see {out}/*.log")
            t0 = time.monotonic_ns()
            go.set()
            stop = t0 + int((seconds + warmup_s + 1.5) * 1e9)
            while time.monotonic_ns() < stop:
                for m in sub.receive(50):
                    rx = time.monotonic_ns()
                    if isinstance(m, FusionResult):
                        r = m.stream.split("/")[0]
                        cam = m.source_seq.get(f"{r}/camera")
                        if cam is not None:
                            results.append((r, cam, (rx - m.capture_ns) / 1e6,
                                            m.latency_ns.get("sync_wait", 0) / 1e6))
                    elif isinstance(m, Heartbeat):
                        beats[m.node] = m
        frames_sent: dict[str, list[int]] = sent.get(timeout=30)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        driver.join(10)
    # The measured window skips the first warmup_s of frames (nodes settle, caches fill).
    skip = round(warmup_s * FPS)
    lat, sync = [], []
    answered = expected = 0
    for r in robots:
        want = {s for s in frames_sent.get(r, []) if s >= skip}
        got = {c for rr, c, _, _ in results if rr == r and c in want}
        expected += len(want)
        answered += len(got)
    for _, c, e2e, sw in results:
        if c >= skip:
            lat.append(e2e)
            sync.append(sw)
    superseded = sum(v for b in beats.values() for k, v in b.counters.items()
                     if k.endswith("frames_superseded"))
    batches = {int(k.split(".")[1]): v for b in beats.values() for k, v in b.counters.items()
               if k.startswith("batches.")}
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    share = answered / max(expected, 1)
    p99 = float(np.percentile(a, 99))
    return {
        "layout": layout, "robots": n_robots, "frames_expected": expected,
        "frames_answered": answered, "answered_share": share,
        "frames_superseded": superseded,
        "e2e_ms": {"p50": float(np.percentile(a, 50)), "p99": p99, "max": float(a.max())},
        "sync_wait_ms_p50": float(np.median(sync)) if sync else float("nan"),
        "batch_sizes": dict(sorted(batches.items())),
        "sustained": bool(share >= 0.995 and superseded == 0 and p99 < BUDGET_MS),
    }


def search(layout: str, ckpt: Path, out: Path, seconds: float, counts: list[int]
           ) -> tuple[int, list[dict[str, Any]]]:
    """Raise the robot count through ``counts`` until ``layout`` fails; returns the most
    sustained (0 if none) and every trial."""
    best, trials = 0, []
    for n in counts:
        t = trial(layout, n, ckpt, out / layout, seconds)
        trials.append(t)
        if not t["sustained"]:
            # The machine is shared: a failed count is measured once more before the search
            # stops (both trials are reported).
            t = trial(layout, n, ckpt, out / layout, seconds)
            t["repeat"] = True
            trials.append(t)
        log.info("%s R=%d: answered %.3f, superseded %d, p99 %.1f ms → %s", layout, n,
                 t["answered_share"], t["frames_superseded"], t["e2e_ms"]["p99"],
                 "ok" if t["sustained"] else "FAIL")
        if not t["sustained"]:
            break
        best = n
    return best, trials


def run(ckpt: Path, out: Path, seconds: float = 8.0,
        counts: tuple[int, ...] = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24)) -> dict[str, Any]:
    """Both layouts; the robots each sustains and their ratio."""
    batched, tb = search("batched", ckpt, out, seconds, list(counts))
    procs, tp = search("processes", ckpt, out, seconds, list(counts))
    return {
        "robots_30fps_cpu": batched,
        "robots_30fps_cpu_processes": procs,
        "batched_vs_processes": batched / procs if procs else float("inf"),
        "criteria": {"fps": FPS, "p99_e2e_below_ms": BUDGET_MS, "answered_share_min": 0.995,
                     "frames_superseded": 0, "measured_s": seconds},
        "driver": ("one process, one PUB socket: per robot 640x480 bgr8 frames at 30 fps "
                   "(phases spread over a period) and 20 ms float32 audio chunks at 16 kHz, "
                   "stamped on send"),
        "trials": tb + tp,
        "machine": {"cpus": _cpus(), "arch": platform.machine()},
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The result as a Markdown report."""
    lines = [
        "# Fleet serving: robots per machine at 30 fps", "",
        f"`{command}` on {res['machine']['cpus']} CPU cores ({res['machine']['arch']}), "
        "CPU inference, one torch thread per fusion process.", "",
        f"Driver: {res['driver']}.", "",
        f"Sustained = ≥ 99.5% of frames answered, none superseded, p99 capture → result "
        f"< {BUDGET_MS:.1f} ms over {res['criteria']['measured_s']:.0f} s.", "",
        f"- **One batched process: {res['robots_30fps_cpu']} robots**",
        f"- R single-robot processes: {res['robots_30fps_cpu_processes']} robots",
        f"- batched ÷ processes: **{res['batched_vs_processes']:.2f}**", "",
        "| layout | robots | answered | superseded | p50 ms | p99 ms | sync wait p50 ms | "
        "batch sizes | sustained |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in res["trials"]:
        bs = ", ".join(f"{k}:{v}" for k, v in t["batch_sizes"].items()) or "–"
        name = t["layout"] + (" (repeat)" if t.get("repeat") else "")
        lines.append(f"| {name} | {t['robots']} | {t['answered_share']:.3f} | "
                     f"{t['frames_superseded']} | {t['e2e_ms']['p50']:.1f} | "
                     f"{t['e2e_ms']['p99']:.1f} | {t['sync_wait_ms_p50']:.1f} | {bs} | "
                     f"{'yes' if t['sustained'] else 'no'} |")
    return "\n".join(lines)


def write(res: dict[str, Any], out: Path, command: str) -> str:
    """Write ``out`` (JSON) and its Markdown; return the Markdown."""
    return write_report(res, out, to_markdown(res, command))



def update_serving(path: Path, res: dict[str, Any]) -> None:
    """Merge the fleet figures into the serving summary (``docs/results/serving.json``)."""
    serving.merge(path, {k: res[k] for k in ("robots_30fps_cpu", "robots_30fps_cpu_processes",
                                             "batched_vs_processes")})
