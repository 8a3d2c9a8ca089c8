"""Memory attacks on running nodes, with CURVE on and off (issue 9's second and third goals).

Per mode (``plain``, then ``curve``: CurveZMQ on every socket through the launch file's
``[security]`` table), two node processes are started from one launch file, as the launcher
would start them:

* a **camera node** publishing a short synthetic video (looped, 30 fps) on a PUB socket it binds
  on ``tcp://127.0.0.1``: the target of the subscription flood and of a held frame at its PUB
  socket (a publisher receives subscriptions, so it has a receiving side);
* a **fusion node** (the shipped checkpoint, CPU, one thread) whose SUB socket connects to a raw
  TCP listener of this process: the target of a held frame at a SUB socket.

The attacks, in order:

1. **held frame at the fusion node's SUB**: the listener accepts the node's connection and
   answers with a ZMTP greeting (``NULL`` plus a READY command as a PUB, so the frame arrives in
   the data phase; with CURVE, a ``CURVE`` server greeting, since an attacker without the server
   secret cannot send WELCOME), then a frame header announcing 1 GiB and ``partial_bytes`` of
   it, then holds the connection for ``hold_s``;
2. **subscription flood**: ``subscriptions`` distinct subscriptions of ``topic_bytes`` bytes from
   a client whose key is *not* in the allow-list (with CURVE; a plain client without), spread
   over each connection layout in ``layouts`` (e.g. 2,000 connections of 100, then one of
   200,000). Each batch of connections is held until every handshake ended (the client's
   monitor: ``HANDSHAKE_SUCCEEDED`` or ``HANDSHAKE_FAILED_*``) and the node's RSS settled, then
   closed;
3. **held frame at the camera node's PUB**: raw TCP to its endpoint, a client greeting (NULL
   plus a READY as a SUB; with CURVE a ``CURVE`` client greeting), the 1 GiB header,
   ``partial_bytes``, held for ``hold_s``.

Measured per attack: the target's RSS (``VmRSS``, sampled every 0.1 s) at its start, end and
peak, whether the node closed the attacking connection, and whether the node is still up and
publishing afterwards (messages received by an allow-listed subscriber in the next ``check_s``).
The goal line is the camera and fusion nodes' RSS growth with CURVE on, from before the first
attack to after the last (and the peak), ≤ 50 MB.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
import zmq.utils.monitor

from udml_stream.benchmarks.flood import rss_mb
from udml_stream.errors import UdmlError
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.messages import Heartbeat
from udml_stream.transport import Security, Subscriber, secure_context
from udml_stream.transport.security import generate_keys, stop_authenticator

log = logging.getLogger(__name__)

#: The issue's goal: node memory growth with CURVE on.
GOAL_CURVE_RSS_MB = 50.0
GIB = 1 << 30

# ---- raw ZMTP 3.0 (RFC 23/ZMTP) -------------------------------------------------------------

_FLAG_MORE, _FLAG_LONG, _FLAG_COMMAND = 0x01, 0x02, 0x04


def zmtp_greeting(mechanism: str = "NULL", as_server: bool = False, minor: int = 0) -> bytes:
    """The 64-byte ZMTP 3.x greeting: signature, version 3.``minor``, the mechanism name padded
    to 20 bytes, the as-server flag and 31 bytes of filler."""
    mech = mechanism.encode("ascii")
    if not mech or len(mech) > 20:
        raise ValueError(f"mechanism {mechanism!r}: 1 to 20 ASCII characters")
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, minor]) + mech.ljust(20, b"\x00")
            + bytes([int(as_server)]) + b"\x00" * 31)


def zmtp_frame_header(size: int, more: bool = False, command: bool = False) -> bytes:
    """A ZMTP 3.x frame header announcing ``size`` body bytes: flags, then a 1-byte size (short
    frame, < 256) or an 8-byte big-endian size (long frame)."""
    if not 0 <= size < 1 << 64:
        raise ValueError(f"frame size {size}: 0 to 2**64-1")
    flags = (_FLAG_MORE if more else 0) | (_FLAG_COMMAND if command else 0)
    if size < 256:
        return bytes([flags, size])
    return bytes([flags | _FLAG_LONG]) + struct.pack(">Q", size)


def zmtp_ready(socket_type: str) -> bytes:
    """A complete READY command frame (the NULL mechanism's handshake) with the one property
    ``Socket-Type``."""
    name, value = b"Socket-Type", socket_type.encode("ascii")
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return zmtp_frame_header(len(body), command=True) + body


def held_frame_prelude(curve: bool, as_server: bool, socket_type: str,
                       announce: int = GIB) -> bytes:
    """What the attacker sends before the partial body: its greeting, (NULL only) its READY, and
    the header of a frame announcing ``announce`` bytes. ``as_server``: the CURVE role (the
    attacker answering a connecting node is the server)."""
    if curve:  # no READY/WELCOME possible without the keys: the frame replaces the handshake
        return zmtp_greeting("CURVE", as_server) + zmtp_frame_header(announce, command=True)
    # NULL: the as-server flag is always 0 (RFC 23).
    return zmtp_greeting("NULL") + zmtp_ready(socket_type) + zmtp_frame_header(announce)


def subscription_topic(i: int, size: int) -> bytes:
    """The ``i``-th distinct subscription of ``size`` bytes (``%08d`` then padding)."""
    head = b"%08d" % i
    return head + b"x" * max(0, size - len(head))


# ---- measuring ------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the RSS of ``pids`` every ``period_s`` as ``(monotonic s, {pid: MB})``."""

    def __init__(self, pids: dict[str, int], period_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids, self.period_s = pids, period_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        """Sample until stopped (a process that ended is left out of later samples)."""
        while not self.stop_event.is_set():
            row: dict[str, float] = {}
            for name, pid in self.pids.items():
                with suppress(OSError, UdmlError):
                    row[name] = rss_mb(pid)
            self.samples.append((time.monotonic(), row))
            self.stop_event.wait(self.period_s)

    def now(self, name: str) -> float:
        """A fresh reading for ``name`` (also recorded)."""
        mb = rss_mb(self.pids[name])
        self.samples.append((time.monotonic(), {name: mb}))
        return mb

    def window(self, name: str, t0: float, t1: float) -> dict[str, float]:
        """Start, end and peak RSS of ``name`` between ``t0`` and ``t1``."""
        xs = [row[name] for t, row in self.samples if t0 <= t <= t1 and name in row]
        if not xs:
            return {"start": float("nan"), "end": float("nan"), "peak": float("nan")}
        return {"start": xs[0], "end": xs[-1], "peak": max(xs)}

    def settle(self, name: str, quiet_s: float = 0.5, tol_mb: float = 0.2,
               max_s: float = 10.0) -> float:
        """Wait until ``name``'s RSS moved less than ``tol_mb`` over ``quiet_s`` (at most
        ``max_s``); returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_s:
            time.sleep(0.1)
            now = time.monotonic()
            xs = [row[name] for t, row in self.samples if t >= now - quiet_s and name in row]
            if now - t0 >= quiet_s and xs and max(xs) - min(xs) < tol_mb:
                break
        return time.monotonic() - t0


def _closed_by_peer(sock: socket.socket, wait_s: float) -> float | None:
    """Seconds until the peer closed ``sock`` (reading and discarding what it sends), or None
    if it was still open after ``wait_s``."""
    t0 = time.monotonic()
    while (left := wait_s - (time.monotonic() - t0)) > 0:
        sock.settimeout(max(0.01, left))
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic() - t0
    return None


def _send_held_frame(sock: socket.socket, prelude: bytes, partial_bytes: int,
                     hold_s: float) -> dict[str, Any]:
    """Send ``prelude`` and ``partial_bytes`` of the body on a connected ``sock``, then hold it
    for ``hold_s``; whether (and when) the node closed it."""
    sent = 0
    try:
        sock.sendall(prelude)
        chunk = b"A" * 65536
        while sent < partial_bytes:
            n = min(len(chunk), partial_bytes - sent)
            sock.sendall(chunk[:n])
            sent += n
    except OSError as err:
        log.info("held frame: the node closed the connection after %d body bytes (%s)", sent, err)
    closed_after = _closed_by_peer(sock, hold_s)
    return {"body_bytes_sent": sent, "node_closed_connection": closed_after is not None,
            "closed_after_s": closed_after}


def _messages_within(sub: Subscriber, seconds: float, node: str | None = None,
                     first: bool = False) -> int:
    """Messages ``sub`` receives in the next ``seconds`` (only heartbeats of ``node`` when
    given), after dropping what was already queued; with ``first``, return at the first one."""
    for _ in range(100_000):  # queued while nobody received: not evidence of being up now
        if not sub.receive(0):
            break
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end and not (first and n):
        for m in sub.receive(50):
            n += node is None or (isinstance(m, Heartbeat) and m.node == node)
    return n


# ---- the nodes ------------------------------------------------------------------------------


def write_video(path: Path, frames: int = 30, size: tuple[int, int] = (320, 240),
                fps: float = 30.0) -> Path:
    """A short synthetic MJPG video (moving noise) for the camera node."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise UdmlError(f"could not write the test video {path} (OpenCV without MJPG?)")
    return path


@dataclass
class Nodes:
    """The two node processes of one mode and what this process knows of them."""

    label: str
    camera: subprocess.Popen[bytes]
    fusion: subprocess.Popen[bytes]
    fusion_endpoint: str
    listener: socket.socket
    logs: dict[str, Path]
    camera_endpoint: str = ""

    def alive(self, name: str) -> bool:
        """Whether node ``name`` still runs."""
        return getattr(self, name).poll() is None


def _stop(proc: subprocess.Popen[bytes], wait_s: float = 10.0) -> int | None:
    """SIGTERM ``proc``; its exit code, or None if it had to be killed after ``wait_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None
    return proc.returncode


def _wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first line of ``path`` containing ``needle`` (waiting up to ``timeout_s``)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise UdmlError(f"node exited with {proc.returncode} during startup; see {path}")
        time.sleep(0.1)
    raise UdmlError(f"no {needle!r} in {path} within {timeout_s} s")


def start_nodes(out_dir: Path, label: str, video: Path, ckpt: Path,
                keys: Path | None) -> Nodes:
    """Start the camera node and the fusion node of ``<out_dir>/<label>.toml`` (not waiting
    for them); the fusion node subscribes to a raw TCP listener of this process. Release
    with ``stop_nodes``."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    raw_ep = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    fusion_ep = f"ipc://{out_dir.resolve()}/{label}-fusion.sock"
    path = out_dir / f"{label}.toml"
    write_launch(path, {
        "camera": {"program": "camera", "source": str(video.resolve()), "loop": True, "fps": 30.0,
                   "endpoint": "tcp://127.0.0.1:*", "heartbeat_s": 0.5, "restart": "never"},
        "fusion": {"program": "fusion", "checkpoint": ckpt.resolve(), "device": "cpu",
                   "threads": 1, "subscribe": [raw_ep], "endpoint": fusion_ep,
                   "heartbeat_s": 0.5, "restart": "never"},
    }, comment=f"udml bench attacks: {label}")
    if keys is not None:
        with path.open("a") as f:
            f.write(f'\n[security]\ncurve = true\nkeys = "{keys.resolve()}"\nclient = "client"\n')
    load_launch(path)  # validates the [security] table too
    logs = {n: out_dir / f"{label}-{n}.stderr.log" for n in ("camera", "fusion")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, lp in logs.items():
        with lp.open("wb") as err:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "udml_stream_apps.nodes", str(path), name],
                stdout=subprocess.DEVNULL, stderr=err)
    return Nodes(label, procs["camera"], procs["fusion"], fusion_ep, listener, logs)


def wait_ready(nodes: Nodes, startup_s: float = 180.0) -> None:
    """Wait until both nodes have opened their sockets (their log lines); learn the camera
    node's endpoint (it binds port ``*``)."""
    line = _wait_log(nodes.logs["camera"], "publishing on ", nodes.camera, startup_s)
    nodes.camera_endpoint = line.rsplit("publishing on ", 1)[1].strip()
    _wait_log(nodes.logs["fusion"], "fusing ", nodes.fusion, startup_s)


def stop_nodes(nodes: Nodes) -> dict[str, int | None]:
    """SIGTERM both nodes; their exit codes (None: killed, not stopped within 10 s)."""
    nodes.listener.close()
    return {"camera": _stop(nodes.camera), "fusion": _stop(nodes.fusion)}


# ---- the attacks ----------------------------------------------------------------------------


def _rogue_socket(ctx: zmq.Context, kind: int, keys: Path | None) -> zmq.Socket:
    """A socket of an unlisted client: with ``keys``, a CURVE client presenting the ``rogue``
    pair (not in the allow-list) and the right server key; without, a plain one."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        pub, sec = zmq.auth.load_certificate(keys / "rogue.key_secret")
        server_pub, _ = zmq.auth.load_certificate(keys / "server.key")
        s.setsockopt(zmq.CURVE_SERVERKEY, server_pub)
        s.setsockopt(zmq.CURVE_PUBLICKEY, pub)
        s.setsockopt(zmq.CURVE_SECRETKEY, sec)
    return s


def _handshake_end(mon: zmq.Socket, timeout_s: float) -> str:
    """The event that ended a connection's handshake (``HANDSHAKE_*``), or ``timeout``."""
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        if mon.poll(int(left * 1000) + 1):
            ev = zmq.utils.monitor.recv_monitor_message(mon)["event"]
            name = ev.name if hasattr(ev, "name") else str(ev)
            if name.startswith("HANDSHAKE"):
                return name
    return "timeout"


def subscription_flood(endpoint: str, keys: Path | None, sampler: RssSampler, total: int,
                       connections: int, topic_bytes: int, batch: int = 250) -> dict[str, Any]:
    """``total`` subscriptions over ``connections`` connections to ``endpoint`` (batches of
    ``batch`` connections, each held until its handshakes ended and the camera node's RSS
    settled). Returns the handshake outcomes and the seconds it took."""
    ctx = zmq.Context()
    # A SUB, its monitor PAIR and libzmq's own monitor PAIR per connection.
    ctx.set(zmq.MAX_SOCKETS, 4 * batch + 16)
    per = total // connections
    events: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        for first in range(0, connections, batch):
            socks: list[tuple[zmq.Socket, zmq.Socket]] = []
            for c in range(first, min(first + batch, connections)):
                sub = _rogue_socket(ctx, zmq.SUB, keys)
                mon = sub.get_monitor_socket()
                for i in range(per):
                    sub.setsockopt(zmq.SUBSCRIBE, subscription_topic(c * per + i, topic_bytes))
                sub.connect(endpoint)
                socks.append((sub, mon))
            for _, mon in socks:
                ev = _handshake_end(mon, 10.0)
                events[ev] = events.get(ev, 0) + 1
            sampler.settle("camera")
            for sub, mon in socks:
                sub.disable_monitor()
                mon.close(0)
                sub.close(0)
    finally:
        ctx.destroy(0)
    return {"connections": connections, "subscriptions": per * connections,
            "topic_bytes": topic_bytes, "handshakes": events,
            "seconds": round(time.monotonic() - t0, 2)}


def held_frame_at_publisher(endpoint: str, curve: bool, partial_bytes: int,
                            hold_s: float) -> dict[str, Any]:
    """Raw TCP to a node's PUB endpoint: a client greeting, a 1 GiB frame header,
    ``partial_bytes`` of the body, then held."""
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        return _send_held_frame(s, held_frame_prelude(curve, False, "SUB"), partial_bytes, hold_s)


def _newest_live_connection(listener: socket.socket, timeout_s: float) -> socket.socket:
    """The node's current connection to ``listener``. A node that waited in the backlog past
    its handshake timeout has closed that connection and opened a new one, so every pending
    connection is accepted and the newest one that the node has not closed is kept."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        listener.settimeout(max(0.1, end - time.monotonic()))
        pending = [listener.accept()[0]]
        listener.settimeout(0.3)
        with suppress(TimeoutError):
            while True:
                pending.append(listener.accept()[0])
        conn = pending.pop()
        for old in pending:
            old.close()
        conn.settimeout(0.5)
        data = b""
        try:  # its greeting so far, and b"" (end of stream) if it closed the connection
            while chunk := conn.recv(4096):
                data += chunk
            conn.close()  # closed by the node
        except TimeoutError:
            if data[:1] == b"\xff":
                return conn
            conn.close()
        except OSError:
            conn.close()
    raise UdmlError("the fusion node never held a connection to the raw listener")


def held_frame_at_subscriber(listener: socket.socket, curve: bool, partial_bytes: int,
                             hold_s: float, timeout_s: float = 60.0) -> dict[str, Any]:
    """Take the node's SUB connection on ``listener`` and answer as a PUB would, but with a
    1 GiB frame header, ``partial_bytes`` of the body, then held."""
    with _newest_live_connection(listener, timeout_s) as conn:
        return _send_held_frame(conn, held_frame_prelude(curve, True, "PUB"), partial_bytes,
                                hold_s)


def _attack(nodes: Nodes, sampler: RssSampler, target: str, subs: dict[str, Subscriber],
            check_s: float, fn: Any, *args: Any) -> dict[str, Any]:
    """Run one attack ``fn(*args)`` against node ``target``; its RSS window and liveness."""
    t0 = time.monotonic()
    sampler.now(target)
    out: dict[str, Any] = fn(*args)
    time.sleep(0.5)  # what was freed on close is returned to the OS (or not) by now
    if nodes.alive(target):
        sampler.now(target)
    t1 = time.monotonic()
    rss = sampler.window(target, t0, t1)
    after = _messages_within(subs[target], check_s, None if target == "camera" else "fusion")
    return out | {"target": target, "rss_mb": rss, "rss_growth_mb": rss["end"] - rss["start"],
                  "node_alive": nodes.alive(target), "messages_after": after}


def _run_mode(nodes: Nodes, keys: Path | None, cfg: dict[str, Any],
              t_launch: float) -> dict[str, Any]:
    """All attacks against the (started) nodes of one mode (``keys``: CURVE on)."""
    label = nodes.label
    good = Security.from_keys_dir(keys) if keys is not None else None
    ctx = secure_context(good)
    curve = keys is not None
    try:
        wait_ready(nodes)
        subs = {"camera": Subscriber([nodes.camera_endpoint], ctx=ctx),
                "fusion": Subscriber([nodes.fusion_endpoint], ctx=ctx)}
        sampler = RssSampler({"camera": nodes.camera.pid, "fusion": nodes.fusion.pid})
        sampler.start()
        try:
            for name in ("camera", "fusion"):  # the handshake: each node publishes to us
                if not _messages_within(subs[name], cfg["startup_check_s"], first=True):
                    raise UdmlError(f"{label}: no message from the {name} node within "
                                    f"{cfg['startup_check_s']} s; see {nodes.logs[name]}")
            startup_s = time.monotonic() - t_launch
            log.info("%s: both nodes up %.1f s after launch", label, startup_s)
            time.sleep(cfg["settle_s"])
            start = {n: sampler.now(n) for n in ("camera", "fusion")}
            t_start = time.monotonic()
            attacks = [_attack(nodes, sampler, "fusion", subs, cfg["check_s"],
                               held_frame_at_subscriber, nodes.listener, curve,
                               cfg["partial_bytes"], cfg["hold_s"])
                       | {"attack": "held 1 GiB frame at the SUB"}]
            for conns in cfg["layouts"]:
                attacks.append(_attack(
                    nodes, sampler, "camera", subs, cfg["check_s"], subscription_flood,
                    nodes.camera_endpoint, keys, sampler, cfg["subscriptions"], conns,
                    cfg["topic_bytes"]) | {"attack": f"{cfg['subscriptions']:,} "
                                           f"subscriptions over {conns:,} connection(s)"})
            attacks.append(_attack(nodes, sampler, "camera", subs, cfg["check_s"],
                                   held_frame_at_publisher, nodes.camera_endpoint, curve,
                                   cfg["partial_bytes"], cfg["hold_s"])
                           | {"attack": "held 1 GiB frame at the PUB"})
            for a in attacks:
                log.info("%s: %s: %s RSS %+.1f MB", label, a["attack"], a["target"],
                         a["rss_growth_mb"])
            t_end = time.monotonic()
            totals = {}
            for n in ("camera", "fusion"):
                w = sampler.window(n, t_start, t_end)
                end = sampler.now(n) if nodes.alive(n) else float("nan")
                totals[n] = {"start": start[n], "end": end, "peak": w["peak"],
                             "growth_mb": end - start[n], "peak_growth_mb": w["peak"] - start[n],
                             "alive": nodes.alive(n)}
        finally:
            sampler.stop_event.set()
            sampler.join(2)
            for s in subs.values():
                s.close()
        rcs = stop_nodes(nodes)
        tracebacks = {n: p.read_text(errors="replace").count("Traceback")
                      for n, p in nodes.logs.items()}
    finally:
        if good is not None:
            stop_authenticator(ctx)
        ctx.destroy(linger=0)
    return {"startup_s": round(startup_s, 1), "attacks": attacks, "totals": totals,
            "exit_codes_on_sigterm": rcs, "tracebacks": tracebacks}


def run(ckpt: Path, out_dir: Path, subscriptions: int = 200_000,
        layouts: tuple[int, ...] = (2000, 1), topic_bytes: int = 248,
        partial_bytes: int = 1 << 20, hold_s: float = 3.0, curve: bool = True) -> dict[str, Any]:
    """Every attack against plain nodes, then (with ``curve``) against CURVE nodes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_video(out_dir / "attacks.avi")
    cfg: dict[str, Any] = {
        "subscriptions": subscriptions, "layouts": list(layouts), "topic_bytes": topic_bytes,
        "partial_bytes": partial_bytes, "announced_bytes": GIB, "hold_s": hold_s,
        "check_s": 1.0, "settle_s": 2.0, "startup_check_s": 30.0}
    t0 = time.monotonic()
    load0 = os.getloadavg()
    res: dict[str, Any] = {}
    modes: list[tuple[str, Path | None]] = [("plain", None)]
    if curve:
        keys = out_dir / "keys"
        if not (keys / "server.key_secret").exists():
            generate_keys(keys, ["client"])
        if not (keys / "rogue.key_secret").exists():
            generate_keys(keys, ["rogue"], allow=False)
        modes.append(("curve", keys))
    # Every mode's nodes start at once (the fusion node's start dominates the wall time on a
    # busy machine); the attacks then run mode by mode, each against its own nodes.
    with ExitStack() as stack:
        started = []
        for label, k in modes:
            nodes = start_nodes(out_dir, label, video, ckpt, k)
            stack.callback(stop_nodes, nodes)
            started.append((nodes, k))
        for nodes, k in started:
            log.info("attacks benchmark: %s nodes", nodes.label)
            res[nodes.label] = _run_mode(nodes, k, cfg, t0)
    res["goals"] = {"curve_rss_growth_mb_max": GOAL_CURVE_RSS_MB}
    res["setup"] = cfg | {
        "camera": "320x240 MJPG synthetic video, looped at 30 fps",
        "fusion": "shipped checkpoint, cpu, 1 thread", "wall_s": round(time.monotonic() - t0, 1),
        "load_avg_1_5_15_at_start": [round(x, 2) for x in load0],
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "libzmq": zmq.zmq_version(), "pyzmq": zmq.__version__,
    }
    return res


# ---- report ---------------------------------------------------------------------------------


def _mb(x: float) -> str:
    return "–" if x != x else f"{x:.1f}"


def goal_met(res: dict[str, Any]) -> bool | None:
    """Whether both nodes grew (end and peak) by at most the goal with CURVE on; None without
    a CURVE run."""
    if "curve" not in res:
        return None
    cap = res["goals"]["curve_rss_growth_mb_max"]
    return all(t["alive"] and t["growth_mb"] <= cap and t["peak_growth_mb"] <= cap
               for t in res["curve"]["totals"].values())


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The result table, the goal line and the setup."""
    rows = ["| mode | attack | node | RSS start → end (peak) MB | growth MB | handshakes | "
            "node closed the connection | node after: alive, msgs in the next 1 s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for label in ("plain", "curve"):
        mode = res.get(label)
        if mode is None:
            continue
        for a in mode["attacks"]:
            r = a["rss_mb"]
            hs = ", ".join(f"{k} {v:,}" for k, v in sorted(a.get("handshakes", {}).items())) or "–"
            closed = "–"
            if "node_closed_connection" in a:
                closed = (f"yes, after {a['closed_after_s']:.2f} s"
                          if a["node_closed_connection"] else "no (held open)")
            rows.append(f"| {label} | {a['attack']} | {a['target']} | {_mb(r['start'])} → "
                        f"{_mb(r['end'])} ({_mb(r['peak'])}) | {a['rss_growth_mb']:+.1f} | {hs} | "
                        f"{closed} | {'alive' if a['node_alive'] else 'DEAD'}, "
                        f"{a['messages_after']} |")
        for n, t in mode["totals"].items():
            notes.append(f"- {label}, {n} node over all attacks: {_mb(t['start'])} → "
                         f"{_mb(t['end'])} MB (peak {_mb(t['peak'])}; growth {t['growth_mb']:+.1f}, "
                         f"peak growth {t['peak_growth_mb']:+.1f}); alive: {t['alive']}")
        notes.append(f"- {label}: exit codes on SIGTERM {mode['exit_codes_on_sigterm']} "
                     "(None: still running 10 s later, killed); "
                     f"tracebacks in the node logs {mode['tracebacks']}")
    met = goal_met(res)
    cap = res["goals"]["curve_rss_growth_mb_max"]
    if met is None:
        goal = "- not measured (run without `--curve`)"
    else:
        worst = max(max(t["growth_mb"], t["peak_growth_mb"])
                    for t in res["curve"]["totals"].values())
        goal = (f"- With CURVE on, node memory grows ≤ {cap:.0f} MB under a held 1 GiB partial "
                f"frame and {res['setup']['subscriptions']:,} subscription attempts from an "
                f"unlisted client: worst growth (end or peak, either node) {worst:+.1f} MB: "
                f"{'met' if met else 'NOT met'}")
    s = res["setup"]
    load = (f"load average (1/5/15 min) {s['load_avg_1_5_15_at_start']} at the start, "
            f"{s['load_avg_1_5_15_at_end']} at the end; {s['cpus']} CPUs; nice {s['nice']}; "
            f"wall {s['wall_s']} s")
    return "\n".join([
        f"Command: `{command}`", "", *rows, "", *notes, "", "Goal (issue 9):", goal, "",
        f"Machine: {load}.", f"Setup: {json.dumps(s)}",
    ])
