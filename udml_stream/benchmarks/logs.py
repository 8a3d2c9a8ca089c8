"""Recording and replay benchmark.

* Record: two 640×480 cameras at 30 fps (two camera nodes playing the demo video) plus 16 kHz
  audio in 20 ms chunks (a microphone node playing the demo WAV), recorded for ``seconds`` per
  codec: throughput (MB/s, messages/s), drops (sequence gaps + recorder queue drops) and the
  compression ratio.
* Replay at maximum speed, compared in the same run with reading the same file with the plain
  ``mcap`` reader (the baseline): messages per second and the ratio.
* Replay at 1×: timing error (actual − scheduled publish time), p50 and p99.
"""

from __future__ import annotations

import gc
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from mcap.reader import make_reader

from udml_stream.demo.scene import SceneSpec, build_scene
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.launch.supervisor import Supervisor
from udml_stream.logs import Recorder, RecorderConfig, info
from udml_stream.logs.replay import ReplayConfig, Replayer
from udml_stream.logs.writer import LogWriter
from udml_stream.messages import CameraFrame, encode


def _sensors(out: Path, video: Path, audio: Path) -> tuple[Path, list[str]]:
    eps = [f"ipc://{out.resolve()}/{n}.sock" for n in ("cam0", "cam1", "mic")]
    nodes: dict[str, dict[str, Any]] = {
        name: {"program": "camera", "stream": name, "source": video, "loop": True,
               "endpoint": ep}
        for name, ep in zip(("cam0", "cam1"), eps, strict=False)}
    nodes["mic"] = {"program": "microphone", "source": "file", "file": audio, "loop": True,
                    "endpoint": eps[2]}
    path = out / "sensors.toml"
    write_launch(path, nodes)
    return path, eps


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:  # Linux: resident pages of this process
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def replay_memory(out_dir: Path, gigabytes: float) -> dict[str, Any]:
    """Write a log of ``gigabytes`` of incompressible 640×480 frames, replay it at maximum speed
    and sample this process's resident memory every 10 ms: streaming reads keep the growth at a
    few chunks, whatever the file size. The file is deleted afterwards."""
    path = out_dir / "replay_memory.mcap"
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    n = int(gigabytes * 1e9 // image.nbytes)
    out = LogWriter(path, "none")
    for i in range(n):
        t = 1_000_000_000 + i * 33_333_333
        frames = encode(CameraFrame("camera", i, t, t, image=image))
        out.write("camera", frames[1:], i, t, t, "camera_frame", "camera", "monotonic")
    out.finish()
    size = path.stat().st_size
    gc.collect()
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, _rss_bytes())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rep = Replayer(ReplayConfig(path, f"ipc://{out_dir.resolve()}/replay_mem.sock", rate=1e9,
                                wait_subscribers_s=0.0))
    t0 = time.perf_counter()
    try:
        stats = rep.run()
    finally:
        rep.close()
        done.set()
        th.join()
        path.unlink()
    return {"file_GB": size / 1e9, "messages": stats.replayed,
            "seconds": time.perf_counter() - t0, "rss_before_MB": base / 1e6,
            "rss_peak_MB": peak / 1e6, "rss_growth_MB": (peak - base) / 1e6}


def run(data: Any, out_dir: Path, seconds: float = 10.0, memory_gb: float = 2.0
        ) -> dict[str, Any]:
    """Run the three measurements; return a JSON-serialisable result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = build_scene(data, out_dir, SceneSpec(plan=(("clean", 10),)))
    launch, eps = _sensors(out_dir, scene.video.resolve(), scene.audio.resolve())
    sup = Supervisor(launch, load_launch(launch), log_dir=out_dir / "logs")
    sup.start()
    time.sleep(3.0)  # the nodes start and begin publishing
    record: dict[str, Any] = {}
    files: dict[str, Path] = {}
    try:
        for codec in ("zstd", "lz4", "none"):
            path = out_dir / f"bench_{codec}.mcap"
            rec = Recorder(RecorderConfig(eps, path, compression=codec))
            th = threading.Thread(target=rec.run)
            th.start()
            time.sleep(seconds)
            rec.stop()
            th.join(30)
            raw = sum(s.bytes for s in rec.stats.values())
            msgs = sum(s.messages for s in rec.stats.values())
            record[codec] = {
                "seconds": seconds, "messages": msgs, "MB_per_s": raw / seconds / 1e6,
                "messages_per_s": msgs / seconds, "file_MB": path.stat().st_size / 1e6,
                "compression_ratio": raw / max(path.stat().st_size, 1),
                "gaps": {t: s.gaps for t, s in rec.stats.items()},
                "queue_drops": {t: s.dropped_queue for t, s in rec.stats.items()},
            }
            files[codec] = path
    finally:
        sup.stop()
    path = files["zstd"]
    # Baseline (the plain mcap reader over the same file) and replay at maximum speed,
    # alternated three times; the median of each (the machine is shared and noisy).
    plain_rates, replay_rates = [], []
    n_rep = 0
    for k in range(3):
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            n_plain = sum(1 for _ in make_reader(fh).iter_messages(log_time_order=True))
        plain_rates.append(n_plain / (time.perf_counter() - t0))
        rep = Replayer(ReplayConfig(path, f"ipc://{out_dir.resolve()}/replay{k}.sock", rate=1e9,
                                    wait_subscribers_s=0.0))
        t0 = time.perf_counter()
        stats = rep.run()
        replay_rates.append(stats.replayed / (time.perf_counter() - t0))
        n_rep = stats.replayed
        rep.close()
    plain_rate, replay_rate = float(np.median(plain_rates)), float(np.median(replay_rates))
    # Replay at 1× over the first few seconds: how far from schedule each publish lands.
    rep = Replayer(ReplayConfig(path, f"ipc://{out_dir.resolve()}/replay1x.sock", rate=1.0,
                                end_s=min(5.0, seconds), wait_subscribers_s=0.0))
    st1 = rep.run()
    rep.close()
    err = np.asarray(st1.timing_error_ns) / 1e6
    return {
        "record": record,
        "replay_max_speed": {"messages": n_rep, "messages_per_s": replay_rate,
                             "plain_reader_messages_per_s": plain_rate,
                             "ratio_to_plain_read": replay_rate / plain_rate,
                             "runs": {"plain": plain_rates, "replay": replay_rates}},
        "replay_1x_timing_error_ms": {"p50": float(np.percentile(err, 50)),
                                      "p99": float(np.percentile(err, 99)),
                                      "max": float(err.max()), "n": int(err.size)},
        "log_info": {t: ti.messages for t, ti in info(path).topics.items()},
        "replay_memory": replay_memory(out_dir, memory_gb) if memory_gb > 0 else None,
        "setup": {"cameras": "2 × 640x480 bgr8 @ 30 fps (demo video)",
                  "audio": "16 kHz, 20 ms chunks", "machine": platform.machine()},
    }


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The tables docs/benchmarks.md quotes."""
    lines = [f"Command: `{command}`", "",
             "| codec | MB/s recorded | msgs/s | drops (gaps + queue) | compression ratio | file MB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for codec, r in res["record"].items():
        drops = sum(r["gaps"].values()) + sum(r["queue_drops"].values())
        lines.append(f"| {codec} | {r['MB_per_s']:.1f} | {r['messages_per_s']:.0f} | {drops} | "
                     f"{r['compression_ratio']:.2f} | {r['file_MB']:.1f} |")
    m = res["replay_max_speed"]
    t = res["replay_1x_timing_error_ms"]
    lines += ["", "| replay | msgs/s | vs plain mcap read |", "| --- | --- | --- |",
              f"| plain `mcap` reader (baseline) | {m['plain_reader_messages_per_s']:.0f} | 1.00 |",
              f"| `udml replay` at max speed | {m['messages_per_s']:.0f} | "
              f"{m['ratio_to_plain_read']:.2f} |", "",
              f"Replay at 1×: timing error p50 {t['p50']:.3f} ms, p99 {t['p99']:.3f} ms, "
              f"max {t['max']:.3f} ms over {t['n']} messages.", "",
              f"Setup: {res['setup']}"]
    mem = res.get("replay_memory")
    if mem:
        lines += ["", f"Replay memory: a {mem['file_GB']:.2f} GB log ({mem['messages']} frames of "
                  f"640×480, uncompressed) replayed at maximum speed in {mem['seconds']:.1f} s; "
                  f"resident memory {mem['rss_before_MB']:.0f} MB before, peak "
                  f"{mem['rss_peak_MB']:.0f} MB (growth {mem['rss_growth_MB']:.0f} MB)."]
    return "\n".join(lines)
