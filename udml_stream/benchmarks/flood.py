"""A running fusion node under a malformed-message flood (issue 9's goals, measured side by side).

One fusion node process (the shipped checkpoint, CPU, one thread) is started from a launch file,
as the launcher would, and fed valid traffic by one publisher in this process: 640×480 ``bgr8``
camera frames at 30 fps and 16 kHz audio in 20 ms chunks, stamped with the node's clock. Each
run has two phases of equal length, measured at a subscriber of the node's results and
heartbeats:

* **baseline**: valid traffic only;
* **flood**: the same valid traffic plus a second publisher (a separate process) sending
  ~20,000 malformed messages/s, cycling through ``flood_messages`` (garbage bytes, bad versions,
  empty shapes, wrong kinds, ``camera_rear``, timestamps 2**64-1, NaN and 44.1 kHz audio,
  duplicate ``seq``, ...).

Per phase: results/s, the node's log lines and bytes, its RSS (``VmRSS``) at the start, the end
and the peak, and the change of its heartbeat counters (rejections by reason). With ``curve``
the same two phases run again on a second node with CurveZMQ on every socket (the launch file's
``[security]`` table): valid traffic from an allow-listed publisher, the flood from an
*unlisted* peer — a publisher that binds where the node subscribes, holding only its own key
pair (not the server secret), and an XSUB client with an unlisted key that connects to the
node's result socket and sends the same messages. Nothing of it should reach the node.

The flood's messages on a served stream carry the stream's first position (``seq`` 0, the
stream's start time): a second sender's stale or duplicated chunks. Fresh NaN or 44.1 kHz
chunks would be *valid* audio, which the edge serves (degraded, counted; tests/test_edge.py);
a peer able to publish fresh audio can replace a stream's content, which is what CURVE keeps
out, not the edge. So every flood message is rejected under a named reason, by the decoder
(``DECODE_REASONS``) or by the edge (``EDGE_REASONS``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth

from udml_stream.errors import UdmlError
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.messages import (
    AudioChunk,
    CameraFrame,
    FusionResult,
    Heartbeat,
    Label,
    encode_bytes,
)
from udml_stream.transport import Publisher, Security, Subscriber, secure_context
from udml_stream.transport.security import generate_keys, stop_authenticator

log = logging.getLogger(__name__)

MS = 1_000_000
#: The issue's goals.
GOAL_RATE_RATIO = 0.95
GOAL_CURVE_RSS_MB = 50.0


def with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    """``frames`` with header fields changed (forging a malformed message)."""
    h = msgpack.unpackb(frames[1])
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


@dataclass(frozen=True)
class FloodKind:
    """One kind of malformed message: its wire frames and the counter(s) that may take it (a
    ``rejected.<reason>`` heartbeat counter; a stale audio chunk is a duplicate or a reordered
    one depending on where the stream is)."""

    name: str
    frames: list[bytes]
    reasons: tuple[str, ...]


def flood_messages(start_ns: int = 1_000_000_000) -> list[FloodKind]:
    """The flood's message kinds. ``start_ns``: the capture time of the served streams' first
    message (``seq`` 0); kinds on a served stream sit there, so the edge sees them as stale."""
    t = start_ns
    small = np.zeros((4, 4, 3), np.uint8)
    cam = encode_bytes(CameraFrame("camera", 0, t, image=small))
    mic = encode_bytes(AudioChunk("mic", 0, t, samples=np.zeros(320, np.float32)))

    def audio(x: np.ndarray, rate: int = 16000) -> list[bytes]:
        return encode_bytes(AudioChunk("mic", 0, t, samples=x, sample_rate=rate))

    return [
        FloodKind("garbage bytes", [b"camera", b"\xc1\xffgarbage\x00\x01"], ("not_msgpack",)),
        FloodKind("header only", [b"mic", mic[1]], ("frames",)),
        FloodKind("bad version", with_header(cam, v=2), ("version",)),
        FloodKind("unknown kind", with_header(cam, kind="bogus"), ("kind",)),
        FloodKind("header not a map", [b"camera", msgpack.packb([1, 2, 3]), cam[2]], ("not_map",)),
        FloodKind("Timestamp extension", with_header(cam, extra=msgpack.Timestamp(1, 2)),
                  ("ext_type",)),
        FloodKind("t_publish_ns 2**64-1", with_header(cam, t_publish_ns=2**64 - 1),
                  ("timestamp",)),
        FloodKind("t_capture_ns 2**64-1", with_header(mic, t_capture_ns=2**64 - 1),
                  ("timestamp",)),
        FloodKind("seq 2**64-1", with_header(mic, seq=2**64 - 1), ("seq",)),
        FloodKind("payload size mismatch", [*cam[:2], cam[2][:-1]], ("payload_size",)),
        FloodKind("bad dtype", with_header(mic, dtype="float64"), ("dtype",)),
        FloodKind("camera shape [0,0,3]",
                  encode_bytes(CameraFrame("camera", 0, t, image=np.zeros((0, 0, 3), np.uint8))),
                  ("empty_frame",)),
        FloodKind("camera shape [480,0,3]",
                  encode_bytes(CameraFrame("camera", 0, t, image=np.zeros((480, 0, 3), np.uint8))),
                  ("empty_frame",)),
        FloodKind("audio shape [320,0]", audio(np.zeros((320, 0), np.float32)),
                  ("empty_audio",)),
        FloodKind("wrong kind (label on camera)", encode_bytes(Label("camera", 0, t, label=3)),
                  ("wrong_kind",)),
        FloodKind("wrong kind (heartbeat on mic)", encode_bytes(Heartbeat("mic", 0, t)), ("wrong_kind",)),
        FloodKind("topic camera_rear", encode_bytes(CameraFrame("camera_rear", 0, t, image=small)),
                  ("other_topic",)),
        FloodKind("stream differs from topic",
                  encode_bytes(CameraFrame("cam2", 0, t, topic="camera", image=small)),
                  ("stream_mismatch",)),
        FloodKind("audio 16,001 Hz", audio(np.zeros(320, np.float32), 16001), ("sample_rate",)),
        FloodKind("NaN audio (stale)", audio(np.full(320, np.nan, np.float32)),
                  ("duplicate_seq", "reordered_seq")),
        FloodKind("audio 44.1 kHz (stale)", audio(np.zeros(882, np.float32), 44100),
                  ("duplicate_seq", "reordered_seq")),
        FloodKind("duplicate seq (audio)", mic, ("duplicate_seq", "reordered_seq")),
        FloodKind("duplicate seq (camera)", cam, ("duplicate_seq", "reordered_seq")),
    ]


# ---- the flood sender (a separate process) --------------------------------------------------


@dataclass(frozen=True)
class FloodSpec:
    """What the flood process does. ``keys``: with CURVE, the keys folder; the flooder then
    uses the unlisted pair ``rogue`` and, at ``target``, also connects an XSUB client."""

    start_ns: int
    rate: float
    keys: Path | None = None
    target: str | None = None


def _rogue_sockets(ctx: zmq.Context, spec: FloodSpec) -> tuple[zmq.Socket, zmq.Socket | None]:
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    xsub: zmq.Socket | None = None
    if spec.keys is not None:
        rogue_pub, rogue_sec = zmq.auth.load_certificate(spec.keys / "rogue.key_secret")
        server_pub, _ = zmq.auth.load_certificate(spec.keys / "server.key")
        # Binding, it must be a CURVE server; it holds no server secret, only its own pair.
        pub.setsockopt(zmq.CURVE_SERVER, 1)
        pub.setsockopt(zmq.CURVE_PUBLICKEY, rogue_pub)
        pub.setsockopt(zmq.CURVE_SECRETKEY, rogue_sec)
        if spec.target is not None:
            xsub = ctx.socket(zmq.XSUB)
            xsub.setsockopt(zmq.LINGER, 0)
            xsub.setsockopt(zmq.CURVE_SERVERKEY, server_pub)
            xsub.setsockopt(zmq.CURVE_PUBLICKEY, rogue_pub)
            xsub.setsockopt(zmq.CURVE_SECRETKEY, rogue_sec)
            xsub.connect(spec.target)
    pub.bind("tcp://127.0.0.1:*")
    return pub, xsub


def _flood_process(spec: FloodSpec, conn: Any) -> None:
    """Bind, report the endpoint, wait for ``go``, flood until ``stop``; report the count sent.

    Runs in a child process so its sending does not share the GIL with the valid publisher."""
    ctx = zmq.Context()
    pub, xsub = _rogue_sockets(ctx, spec)
    conn.send(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    msgs = [k.frames for k in flood_messages(spec.start_ns)]
    sent = 0
    batch = max(1, int(spec.rate / 100))  # every 10 ms
    try:
        while True:
            cmd = conn.recv()
            if cmd != "go":
                break
            t0 = time.monotonic()
            n0 = sent
            while not conn.poll(0):
                for _ in range(batch):
                    frames = msgs[sent % len(msgs)]
                    pub.send_multipart(frames)
                    if xsub is not None:
                        xsub.send_multipart(frames)
                    sent += 1
                ahead = t0 + (sent - n0) / spec.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            conn.recv()  # "stop"
            conn.send({"sent": sent - n0, "seconds": time.monotonic() - t0})
    finally:
        pub.close(0)
        if xsub is not None:
            xsub.close(0)
        ctx.term()


class Flooder:
    """The flood process, bound and idle until ``start``; ``stop`` returns what it sent."""

    def __init__(self, spec: FloodSpec) -> None:
        mpctx = mp.get_context("spawn")
        self._conn, child = mpctx.Pipe()
        self.proc = mpctx.Process(target=_flood_process, args=(spec, child), daemon=True)
        self.proc.start()
        if not self._conn.poll(60):
            raise UdmlError("the flood process did not start within 60 s")
        self.endpoint: str = self._conn.recv()

    def start(self) -> None:
        """Begin flooding."""
        self._conn.send("go")

    def stop(self) -> dict[str, float]:
        """Stop flooding; the messages sent and the seconds it flooded."""
        self._conn.send("stop")
        if not self._conn.poll(30):
            raise UdmlError("the flood process did not answer within 30 s")
        out: dict[str, float] = self._conn.recv()
        return out

    def close(self) -> None:
        """End the process."""
        with suppress(OSError):
            self._conn.send("exit")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# ---- valid traffic --------------------------------------------------------------------------


class ValidTraffic(threading.Thread):
    """Camera frames (640×480 bgr8) at ``fps`` and 20 ms audio chunks from one publisher, each
    sent at and stamped with its scheduled capture time on the monotonic clock (the node's);
    ``seq`` 0 of both streams at ``start_ns``."""

    def __init__(self, pub: Publisher, start_ns: int, fps: float = 30.0) -> None:
        super().__init__(daemon=True, name="valid-traffic")
        self.pub, self.start_ns, self.fps = pub, start_ns, fps
        self.stop_event = threading.Event()
        self.sent = {"camera": 0, "mic": 0}
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        self.tone = (0.1 * np.sin(np.arange(320) * 2 * np.pi * 440 / 16000)).astype(np.float32)

    def run(self) -> None:
        """Send until stopped; a lagging sender catches up on the schedule, never bursts."""
        frame_ns, chunk_ns = int(1e9 / self.fps), 20 * MS
        t0 = self.start_ns
        while not self.stop_event.is_set():
            now = time.monotonic_ns()
            na = (now - t0) // chunk_ns  # chunks whose 20 ms have ended
            while self.sent["mic"] < na:
                i = self.sent["mic"]
                self.pub.publish(AudioChunk("mic", i, t0 + i * chunk_ns, samples=self.tone))
                self.sent["mic"] += 1
            nf = (now - t0) // frame_ns + 1
            while self.sent["camera"] < nf:
                i = self.sent["camera"]
                self.pub.publish(CameraFrame("camera", i, t0 + i * frame_ns, image=self.image))
                self.sent["camera"] += 1
            wake = min(t0 + (self.sent["mic"] + 1) * chunk_ns,
                       t0 + self.sent["camera"] * frame_ns)
            time.sleep(max(0.0, (wake - time.monotonic_ns()) / 1e9))


# ---- the node and its measurements ----------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of process ``pid`` in MB: ``VmRSS`` (now) or ``VmHWM`` (its peak so
    far) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise UdmlError(f"no {field} for process {pid}")


def cpu_s(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_lines(path: Path) -> tuple[int, int]:
    """Lines and bytes of ``path`` so far."""
    data = path.read_bytes()
    return data.count(b"\n"), len(data)


@dataclass
class NodeRun:
    """A running fusion node, its stderr file and the subscriber to its results."""

    proc: subprocess.Popen[bytes]
    stderr_path: Path
    sub: Subscriber
    last_counters: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        """Whether the node process still runs."""
        return self.proc.poll() is None


def _counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = sorted(set(before) | set(after))
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if isinstance(after.get(k, 0), int) and after.get(k, 0) != before.get(k, 0)}


def _receive(node: NodeRun, seconds: float, rss: list[float] | None = None) -> dict[str, int]:
    """Receive for ``seconds``; tally results; sample RSS every 0.5 s into ``rss``."""
    tally = {"results": 0, "with_camera": 0, "audio_present": 0}
    end = time.monotonic() + seconds
    next_rss = 0.0
    while (now := time.monotonic()) < end:
        if rss is not None and now >= next_rss and node.alive():
            rss.append(rss_mb(node.proc.pid))
            next_rss = now + 0.5
        for m in node.sub.receive(50):
            if isinstance(m, FusionResult):
                tally["results"] += 1
                tally["with_camera"] += "camera" in m.source_seq
                tally["audio_present"] += bool(m.present.get("audio"))
            elif isinstance(m, Heartbeat) and m.node == "fusion":
                node.last_counters = dict(m.counters)
    return tally


def _wait_heartbeat(node: NodeRun, timeout_s: float = 5.0) -> dict[str, int]:
    """The counters of the next heartbeat (results received meanwhile are dropped)."""
    node.last_counters = {}
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not node.last_counters:
        _receive(node, 0.05)
    return dict(node.last_counters)


def _phase(node: NodeRun, seconds: float, flooder: Flooder | None = None) -> dict[str, Any]:
    """One measured phase: results/s, log growth, RSS, counter changes. With ``flooder``, it
    floods from right after the starting measurements to the end of the window; the counters
    are read at the next heartbeat after it (what was still queued is counted too)."""
    before = _wait_heartbeat(node)
    lines0, bytes0 = count_lines(node.stderr_path)
    rss: list[float] = [rss_mb(node.proc.pid)]
    cpu0 = cpu_s(node.proc.pid)
    t0 = time.monotonic()
    if flooder is not None:
        flooder.start()
    try:
        tally = _receive(node, seconds, rss)
    finally:
        sent = flooder.stop() if flooder is not None else None
    elapsed = time.monotonic() - t0
    cpu = cpu_s(node.proc.pid) - cpu0 if node.alive() else float("nan")
    load = os.getloadavg()[0]
    after = _wait_heartbeat(node)
    lines1, bytes1 = count_lines(node.stderr_path)
    if node.alive():
        rss.append(rss_mb(node.proc.pid))
    delta = _counter_delta(before, after)
    out: dict[str, Any] = {} if sent is None else {
        "flood_sent": sent, "flood_msgs_per_s": sent["sent"] / max(sent["seconds"], 1e-9)}
    return out | {
        "seconds": round(elapsed, 3),
        "results": tally["results"],
        "results_per_s": tally["results"] / elapsed,
        "results_with_camera": tally["with_camera"],
        "results_audio_present": tally["audio_present"],
        "node_cpu_share": cpu / elapsed,
        "load_avg_1min": load,
        "log_lines": lines1 - lines0,
        "log_bytes": bytes1 - bytes0,
        "rss_mb": {"start": rss[0] if rss else float("nan"), "end": rss[-1] if rss else float("nan"),
                   "peak": max(rss) if rss else float("nan")},
        "rss_growth_mb": (rss[-1] - rss[0]) if rss else float("nan"),
        "counters_delta": delta,
        "rejected": {k.removeprefix("rejected."): v for k, v in delta.items()
                     if k.startswith("rejected.")},
        "node_alive": node.alive(),
    }


@contextmanager
def _fusion_node(out_dir: Path, name: str, ckpt: Path, subscribe: list[str], endpoint: str,
                 sub_ctx: zmq.Context, keys: Path | None,
                 startup_s: float = 120.0) -> Iterator[NodeRun]:
    """Start the fusion node of launch file ``<out_dir>/<name>.toml`` and wait until results
    flow (the handshake); stop it (SIGTERM) on exit."""
    path = out_dir / f"{name}.toml"
    write_launch(path, {"fusion": {
        "program": "fusion", "checkpoint": ckpt.resolve(), "device": "cpu", "threads": 1,
        "subscribe": subscribe, "endpoint": endpoint, "heartbeat_s": 0.5, "restart": "never"}},
        comment=f"udml bench flood: {name}")
    if keys is not None:
        with path.open("a") as f:
            f.write(f'\n[security]\ncurve = true\nkeys = "{keys.resolve()}"\nclient = "client"\n')
    load_launch(path)  # validates the [security] table too
    stderr_path = out_dir / f"{name}.stderr.log"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(path), "fusion"],
                                stdout=subprocess.DEVNULL, stderr=err)
    sub = Subscriber([endpoint], ctx=sub_ctx)
    node = NodeRun(proc, stderr_path, sub)
    try:
        end = time.monotonic() + startup_s
        while time.monotonic() < end:
            if not node.alive():
                raise UdmlError(f"fusion node exited with {proc.returncode} during startup; "
                                   f"see {stderr_path}")
            if _receive(node, 0.2)["results"]:
                break
        else:
            raise UdmlError(f"no fusion result within {startup_s} s; see {stderr_path}")
        yield node
    finally:
        sub.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _run_pair(out_dir: Path, label: str, ckpt: Path, phase_s: float, warmup_s: float,
              rate: float, keys: Path | None) -> dict[str, Any]:
    """Baseline then flood phase on one fresh node; with ``keys``, CURVE on everywhere."""
    good_sec = Security.from_keys_dir(keys) if keys is not None else None
    ctx = secure_context(good_sec) if good_sec is not None else secure_context(None)
    start_ns = time.monotonic_ns() + 200 * MS
    # ipc: no port to pick (and no free-port race); CURVE covers ipc:// as it does tcp://.
    result_ep = f"ipc://{out_dir.resolve()}/{label}-results.sock"
    flooder = Flooder(FloodSpec(start_ns, rate, keys, result_ep if keys is not None else None))
    try:
        with Publisher("tcp://127.0.0.1:*", ctx=ctx, hwm=1000) as pub:
            traffic = ValidTraffic(pub, start_ns)
            traffic.start()
            try:
                with _fusion_node(out_dir, label, ckpt, [pub.endpoint, flooder.endpoint],
                                  result_ep, ctx, keys) as node:
                    _receive(node, warmup_s)
                    base = _phase(node, phase_s)
                    flood = _phase(node, phase_s, flooder)
                    node.proc.terminate()
                    try:
                        rc = node.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        rc = None
                    err_text = node.stderr_path.read_text(errors="replace")
            finally:
                traffic.stop_event.set()
                traffic.join(5)
    finally:
        flooder.close()
        if good_sec is not None:
            stop_authenticator(ctx)
        ctx.destroy(linger=0)
    reached = sum(flood["rejected"].values())
    return {
        "baseline": base, "flood": flood,
        "rate_ratio": flood["results_per_s"] / max(base["results_per_s"], 1e-9),
        "flood_msgs_reached_node": reached,
        "node_exit_code": rc, "tracebacks": err_text.count("Traceback"),
        "valid_sent": dict(traffic.sent),
    }


def run(ckpt: Path, out_dir: Path, phase_s: float = 10.0, warmup_s: float = 3.0,
        rate: float = 20_000.0, curve: bool = True) -> dict[str, Any]:
    """Measure the plain pair (and the CURVE pair with ``curve``); return everything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("flood benchmark: plaintext node, %.0f s per phase", phase_s)
    res: dict[str, Any] = {"plain": _run_pair(out_dir, "plain", ckpt, phase_s, warmup_s, rate,
                                              None)}
    if curve:
        keys = out_dir / "keys"
        if not (keys / "server.key_secret").exists():
            generate_keys(keys, ["client"])
        if not (keys / "rogue.key_secret").exists():
            generate_keys(keys, ["rogue"], allow=False)
        log.info("flood benchmark: CURVE node, %.0f s per phase", phase_s)
        res["curve"] = _run_pair(out_dir, "curve", ckpt, phase_s, warmup_s, rate, keys)
    res["flood_kinds"] = {k.name: list(k.reasons) for k in flood_messages()}
    res["goals"] = {"rate_ratio_min": GOAL_RATE_RATIO, "curve_rss_growth_mb_max": GOAL_CURVE_RSS_MB}
    res["setup"] = {
        "camera": "640x480 bgr8 @ 30 fps", "audio": "16 kHz, 20 ms chunks", "device": "cpu",
        "fusion_threads": 1, "phase_s": phase_s, "warmup_s": warmup_s, "flood_rate": rate,
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "libzmq": zmq.zmq_version(), "pyzmq": zmq.__version__,
    }
    return res


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The tables docs/benchmarks.md quotes."""
    rows = ["| node | phase | results/s | ratio to baseline | log lines | log bytes | "
            "RSS start → end (peak) MB | flood msgs/s sent | flood msgs that reached the node | "
            "node CPU (cores) | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for label in ("plain", "curve"):
        pair = res.get(label)
        if pair is None:
            continue
        for phase in ("baseline", "flood"):
            p, r = pair[phase], pair[phase]["rss_mb"]
            flood = phase == "flood"
            ratio = f"{pair['rate_ratio']:.3f}" if flood else "1"
            sent = f"{p['flood_msgs_per_s']:,.0f}" if flood else "–"
            reached = f"{pair['flood_msgs_reached_node']:,}" if flood else "–"
            rows.append(f"| {label} | {phase} | {p['results_per_s']:.1f} | {ratio} | "
                        f"{p['log_lines']} | {p['log_bytes']:,} | {r['start']:.1f} → {r['end']:.1f} "
                        f"({r['peak']:.1f}) | {sent} | {reached} | "
                        f"{p.get('node_cpu_share', float('nan')):.2f} | "
                        f"{p.get('load_avg_1min', float('nan')):.1f} |")
        notes.append(f"- {label}: rejected during the flood, by reason: "
                     f"{_fmt_counts(pair['flood']['rejected'])}. Node alive after the flood: "
                     f"{pair['flood']['node_alive']}; exit code on SIGTERM: "
                     f"{pair['node_exit_code']}; tracebacks in its log: {pair['tracebacks']}.")
    goals = res["goals"]
    lo = goals["rate_ratio_min"]
    verdict = ["- results/s during the flood ≥ " + f"{lo:.0%} of baseline: " + ", ".join(
        f"{k} {res[k]['rate_ratio']:.3f} ({'met' if res[k]['rate_ratio'] >= lo else 'NOT met'})"
        for k in ("plain", "curve") if k in res)]
    if "curve" in res:
        g, cap = res["curve"]["flood"]["rss_growth_mb"], goals["curve_rss_growth_mb_max"]
        verdict.append(f"- CURVE: node RSS growth under the flood ≤ {cap:.0f} MB: {g:+.1f} MB "
                       f"({'met' if g <= cap else 'NOT met'}); results kept flowing: "
                       f"{res['curve']['flood']['results'] > 0}")
    return "\n".join([
        f"Command: `{command}`", "", *rows, "", *notes, "", "Goals (issue 9):", *verdict, "",
        f"Flood kinds (cycled; expected rejection reasons): {json.dumps(res['flood_kinds'])}",
        f"Setup: {json.dumps(res['setup'])}",
    ])
