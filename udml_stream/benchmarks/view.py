"""What the live view costs next to the recorder, on the same streams in the same run.

One publisher in this process plays a robot as its nodes would: 640×480 ``bgr8`` frames at 30 fps
(a moving synthetic scene with sensor noise, so JPEG sizes are those of a camera rather than of
pure noise), 16 kHz audio in 20 ms chunks and one fusion result per frame. Then, one after the
other for ``seconds`` each, a child process subscribes to them:

* ``record``: ``udml record`` (zstd), the baseline;
* ``record --foxglove``: the recorder writing its JSON viewer channels as well (issue 11's 5×);
* ``view jpeg``: ``udml view`` with a Foxglove WebSocket client subscribed to every channel
  (the client runs in this process, so its cost is not the server's);
* ``view raw``: the same with ``foxglove.RawImage`` frames (921 kB each) instead of JPEG;
* ``view idle``: ``udml view`` with no client (nothing is encoded).

Each child's CPU time (user + system, all threads, from /proc) is taken over the steady window
after a warm-up, so imports and start-up do not count; its peak RSS at the end. The client
counts what it received: image frames/s and fusion results (each result's ``seq``).
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from udml_stream.benchmarks.flood import cpu_s, rss_mb
from udml_stream.benchmarks.report import write_report
from udml_stream.errors import UdmlError
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult
from udml_stream.transport import Publisher

log = logging.getLogger(__name__)

FPS = 30.0
CHUNK_NS = 20_000_000
CLASS_NAMES = [str(d) for d in range(10)]


def scene_frames(n: int = 30, width: int = 640, height: int = 480, seed: int = 0
                 ) -> list[np.ndarray]:
    """``n`` ``bgr8`` frames of a moving scene: gradients, a moving disc, a digit, and
    Gaussian sensor noise (σ 3 levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        img = np.stack([x * 255 // width, y * 255 // height, (x + y + 8 * i) % 256],
                       -1).astype(np.uint8)
        cv2.circle(img, (width // 6 + (10 * i) % (2 * width // 3), height // 2), height // 8,
                   (30, 200, 90), -1)
        cv2.putText(img, str(i % 10), (width // 2, height * 5 // 8), cv2.FONT_HERSHEY_SIMPLEX,
                    height / 80, (255, 255, 255), max(1, height // 40))
        noisy = img + rng.normal(0, 3, img.shape)
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def fusion_result(topic: str, seq: int, capture_ns: int) -> FusionResult:
    """A fusion result as the node sends it (values vary with ``seq``)."""
    w = 0.5 + 0.4 * np.sin(seq / 30)
    probs = np.full(10, 0.02)
    probs[seq % 10] = 1 - probs.sum() + 0.02
    return FusionResult(topic, seq, capture_ns, topic=topic, probs=probs.tolist(),
                        pred=seq % 10, class_names=CLASS_NAMES,
                        sigma_hat={"image": float(1 - w), "audio": float(w)},
                        weights={"image": float(w), "audio": float(1 - w)},
                        present={"image": True, "audio": True},
                        latency_ns={"total": 12_000_000}, audio_valid=1.0)


class Traffic(threading.Thread):
    """Frames at ``fps``, 20 ms audio chunks and one fusion result per frame for each robot
    (topics ``<robot>/camera``, ``<robot>/mic``, ``<robot>/fused``; unprefixed for ``""``),
    sent at and stamped with their scheduled capture time (monotonic clock). A lagging sender
    catches up on the schedule rather than bursting."""

    def __init__(self, pub: Publisher, robots: tuple[str, ...] = ("",), fps: float = FPS,
                 frames: list[np.ndarray] | None = None) -> None:
        super().__init__(daemon=True, name="view-traffic")
        self.pub, self.robots, self.fps = pub, robots, fps
        self.frames = frames if frames is not None else scene_frames()
        self.stop_event = threading.Event()
        self.sent_frames = 0
        self.sent_chunks = 0
        self.start_ns = 0
        t = np.arange(320) / 16000
        self.tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # -9.03 dBFS RMS

    def topic(self, robot: str, name: str) -> str:
        """``<robot>/<name>`` (``name`` for the unnamed robot)."""
        return f"{robot}/{name}" if robot else name

    def run(self) -> None:
        """Send until stopped."""
        frame_ns = int(1e9 / self.fps)
        t0 = self.start_ns = time.monotonic_ns()
        while not self.stop_event.is_set():
            now = time.monotonic_ns()
            while self.sent_chunks < (now - t0) // CHUNK_NS:
                i = self.sent_chunks
                for r in self.robots:
                    mic = self.topic(r, "mic")
                    self.pub.publish(AudioChunk(mic, i, t0 + i * CHUNK_NS, topic=mic,
                                                samples=self.tone))
                self.sent_chunks += 1
            while self.sent_frames < (now - t0) // frame_ns + 1:
                i = self.sent_frames
                t = t0 + i * frame_ns
                for r in self.robots:
                    cam = self.topic(r, "camera")
                    self.pub.publish(CameraFrame(cam, i, t, topic=cam,
                                                 image=self.frames[i % len(self.frames)]))
                    self.pub.publish(fusion_result(self.topic(r, "fused"), i, t))
                self.sent_frames += 1
            wake = min(t0 + (self.sent_chunks + 1) * CHUNK_NS, t0 + self.sent_frames * frame_ns)
            time.sleep(max(0.0, (wake - time.monotonic_ns()) / 1e9))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientCounter(threading.Thread):
    """A Foxglove WebSocket client subscribed to every channel, counting what arrives."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="view-client")
        self.port = port
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.images: list[float] = []  # receipt times (monotonic s) of image frames
        self.image_latency_ms: list[float] = []  # capture → receipt at the client
        self.image_bytes = 0
        self.results: list[tuple[float, int]] = []  # (receipt time, seq) of fusion results
        self.levels = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Receive until stopped."""
        from udml_stream.view.client import FoxgloveClient

        try:
            with FoxgloveClient("127.0.0.1", self.port, connect_timeout_s=30) as client:
                while not self.stop_event.is_set():
                    r = client.recv(0.2)
                    if r is None:
                        continue
                    with self.lock:
                        if r.topic.endswith("/image"):
                            self.images.append(r.rx_s)
                            # Capture stamps are on this host's monotonic clock, as rx_s.
                            self.image_latency_ms.append(r.rx_s * 1e3 - r.timestamp_ns / 1e6)
                            self.image_bytes += len(r.payload)
                        elif r.topic.endswith("/view"):
                            self.results.append((r.rx_s, r.json()["seq"]))
                        elif r.topic.endswith("/level"):
                            self.levels += 1
        except BaseException as err:  # reported by the benchmark, never lost
            self.error = err

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Image frames/s and fusion results received between ``t0`` and ``t1``, mean frame
        size, and the results missing between the first and the last one received."""
        with self.lock:
            n = sum(t0 <= t < t1 for t in self.images)
            lat = [ms for t, ms in zip(self.images, self.image_latency_ms, strict=True)
                   if t0 <= t < t1]
            seqs = [q for t, q in self.results if t0 <= t < t1]
            return {"images_per_s": n / (t1 - t0),
                    "image_kb": self.image_bytes / max(1, len(self.images)) / 1e3,
                    "results": len(seqs),
                    "results_missing": (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0,
                    "levels": self.levels,
                    "image_latency_ms_p50": float(np.percentile(lat, 50)) if lat else None,
                    "image_latency_ms_p99": float(np.percentile(lat, 99)) if lat else None}


_CHILD = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
kind, ep, seconds, arg = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
if kind == "record":
    from udml_stream.logs import Recorder, RecorderConfig
    Recorder(RecorderConfig([ep], arg, foxglove=sys.argv[5] == "1")).run(seconds)
else:
    from udml_stream.view.server import ViewConfig, ViewServer
    ViewServer(ViewConfig([ep], port=int(arg), image=sys.argv[5])).run(seconds)
"""


def _phase(name: str, args: list[str], ep: str, seconds: float, warmup_s: float,
           client_port: int | None, tmp: Path) -> dict[str, Any]:
    run_s = warmup_s + seconds + 2.0
    err_path = tmp / f"{name.replace(' ', '_')}.log"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, args[0], ep, str(run_s), *args[1:]],
                                stdout=subprocess.DEVNULL, stderr=err)
    client = ClientCounter(client_port) if client_port else None
    try:
        if client:
            client.start()
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise UdmlError(f"view benchmark: {name} exited early: {err_path.read_text()[-2000:]}")
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_s(proc.pid), time.monotonic()
        res: dict[str, Any] = {"cpu_s": c1 - c0, "wall_s": t1 - t0,
                               "cores": (c1 - c0) / (t1 - t0), "peak_rss_mb": rss_mb(proc.pid, "VmHWM")}
        if client:
            if client.error is not None:
                raise UdmlError(f"view benchmark: client of {name} failed: {client.error!r}")
            res.update(client.window(t0, t1))
    finally:
        if client:
            client.stop_event.set()
            client.join(5)
        try:
            proc.wait(timeout=run_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    res["exit_code"] = proc.returncode
    return res


def run(workdir: Path, seconds: float = 10.0, warmup_s: float = 3.0, repeats: int = 2
        ) -> dict[str, Any]:
    """Run every phase ``repeats`` times in turn on one publisher (the machine is shared: the
    rounds show the noise); returns the measurements (see the module doc)."""
    try:
        import websockets  # noqa: F401  (the client needs it; say so before anything starts)
    except ImportError:
        raise UdmlError("udml bench view needs the websockets package: pip install "
                        "'udml-stream[dev]' (or websockets)") from None
    workdir.mkdir(parents=True, exist_ok=True)
    ep = f"ipc://{workdir.resolve()}/bus.sock"
    phases: list[tuple[str, list[str], bool]] = [
        ("record", ["record", str(workdir / "rec.mcap"), "0"], False),
        ("record --foxglove", ["record", str(workdir / "rec_fx.mcap"), "1"], False),
        ("view jpeg", ["view", "{port}", "jpeg"], True),
        ("view raw", ["view", "{port}", "raw"], True),
        ("view idle", ["view", "{port}", "jpeg"], False),
    ]
    rounds: list[dict[str, Any]] = []
    out: dict[str, Any] = {"rounds": rounds}
    with Publisher(ep, bind=True, hwm=64) as pub:
        traffic = Traffic(pub)
        traffic.start()
        try:
            for k in range(repeats):
                rnd: dict[str, Any] = {}
                for name, args, with_client in phases:
                    port = free_port()
                    argv = [a.replace("{port}", str(port)) for a in args]
                    log.info("view benchmark, round %d: %s for %.0f s", k + 1, name, seconds)
                    rnd[name] = _phase(name, argv, ep, seconds, warmup_s,
                                       port if with_client else None, workdir)
                base = rnd["record"]["cpu_s"]
                for p in rnd.values():
                    p["cpu_ratio_to_record"] = p["cpu_s"] / base if base > 0 else float("nan")
                rounds.append(rnd)
        finally:
            traffic.stop_event.set()
            traffic.join(5)
        elapsed = (time.monotonic_ns() - traffic.start_ns) / 1e9
        out["sent_fps"] = traffic.sent_frames / elapsed
    out["config"] = {"camera": "640x480 bgr8 @ 30 fps (synthetic moving scene + noise)",
                     "audio": "16 kHz float32, 20 ms chunks", "results": "one per frame",
                     "seconds": seconds, "warmup_s": warmup_s, "repeats": repeats,
                     "jpeg_quality": 75,
                     "cpus": os.cpu_count(), "python": platform.python_version(),
                     "load_avg_1min_end": os.getloadavg()[0]}
    return out


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The table docs/view.md quotes."""
    rows = ["| round | process | CPU (cores) | ratio to record | peak RSS MB | image frames/s "
            "at the client | mean image kB | capture → client p50 / p99 ms | fusion results "
            "received (missing) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, rnd in enumerate(res["rounds"], 1):
        for name, p in rnd.items():
            fps = f"{p['images_per_s']:.1f}" if "images_per_s" in p else "–"
            kb = f"{p['image_kb']:.1f}" if "image_kb" in p else "–"
            results = f"{p['results']} ({p['results_missing']})" if "results" in p else "–"
            lat = (f"{p['image_latency_ms_p50']:.1f} / {p['image_latency_ms_p99']:.1f}"
                   if p.get("image_latency_ms_p50") is not None else "–")
            rows.append(f"| {k} | {name} | {p['cores']:.3f} | {p['cpu_ratio_to_record']:.2f} | "
                        f"{p['peak_rss_mb']:.0f} | {fps} | {kb} | {lat} | {results} |")
    cfg = res["config"]
    return "\n".join([
        f"`{command}`: {cfg['seconds']:.0f} s per process after {cfg['warmup_s']:.0f} s of "
        f"warm-up, one after the other on the same publisher, {cfg['repeats']} rounds ({cfg['camera']}; "
        f"{cfg['audio']}; fusion results {cfg['results']}; sent {res['sent_fps']:.1f} frames/s). "
        f"CPU is user + system time of the process, all threads, over the window; "
        f"{cfg['cpus']} CPUs, load average {cfg['load_avg_1min_end']:.1f} at the end.", "",
        *rows])


def write(res: dict[str, Any], out: Path, command: str) -> str:
    """Write ``out`` (JSON) and ``out`` with ``.md``; return the Markdown."""
    return write_report(res, out, to_markdown(res, command))
