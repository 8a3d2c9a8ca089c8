"""Publish → receive latency of udml_stream's transport against raw pyzmq, side by side (issue 10).

Two paths carry the same messages over the same transport, with the same socket options and HWMs:

* **raw**: plain pyzmq PUB/SUB. The sender hands already encoded frames (topic, header, payload
  as ``bytes``) to ``send_multipart``; the receiver takes them with a blocking ``recv_multipart``.
* **ours**: what a node does. ``Publisher.publish(msg)`` (stamp, encode, send) on one side,
  ``Subscriber.recv_one`` (receive, decode, validate, count) on the other, giving a ``Message``
  with a numpy payload.

The sender is this process; the receiver is a separate, spawned process, as nodes are, so the
two ends do not share a GIL. Latency is the receiver's ``monotonic_ns`` right after a message is
in hand minus the sender's ``monotonic_ns`` right before the send call (CLOCK_MONOTONIC is system
wide on Linux, so the two processes' stamps compare). Each case alternates blocks of ``n``
messages raw / ours for ``rounds`` rounds, the order swapping every round, one message every
``period_ms`` (a sender that fell behind does not burst to catch up), so both paths see the same
machine load. After taking its stamp the receiver checks every message, untimed: its payload must
hold exactly the bytes sent, which differ per message (ours: the decoded array; raw: the payload
frame, seq read from the header). The sender also times its send call alone (ours: stamp +
encode + send), which splits each path's latency into sender and transport + receiver shares.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import platform
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from udml_stream.errors import UdmlError
from udml_stream.messages import AudioChunk, CameraFrame, Message, encode_bytes
from udml_stream.transport import Publisher, Subscriber
from udml_stream.transport.security import PUBLISHER_MAX_INBOUND, SUBSCRIBER_MAX_INBOUND

log = logging.getLogger(__name__)

#: Issue 10's goal: our p50 at most this multiple of raw pyzmq's, in every case.
GOAL_RATIO_P50 = 1.2
#: Payload sizes measured: a 640×480×3 camera frame and 800 float32 audio samples.
CAMERA_BYTES = 640 * 480 * 3
AUDIO_BYTES = 800 * 4
SIZES = (CAMERA_BYTES, AUDIO_BYTES)
TRANSPORTS = ("ipc", "tcp")
#: Socket options both paths share (``Publisher`` / ``Subscriber`` defaults).
PUB_HWM = 16
SUB_HWM = 1000
_SEED = 10
_WAIT_MS = 2000  # per-message receive deadline: a lost message ends its block, it never hangs
_MS = 1e6


@functools.lru_cache(maxsize=4)
def _base(size: int) -> np.ndarray:
    arr = np.random.default_rng(_SEED + size).integers(0, 256, size, dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def expected_payload(size: int, seq: int) -> np.ndarray:
    """The payload bytes of message ``seq``: fixed random bytes with ``seq`` in the first 8
    (a fresh array each call)."""
    buf = _base(size).copy()
    buf[:8] = np.frombuffer(int(seq).to_bytes(8, "little"), np.uint8)
    return buf


def _message(size: int, seq: int, payload: np.ndarray) -> Message:
    """The message kind a payload of ``size`` bytes travels as (a camera frame or audio)."""
    now = time.monotonic_ns()
    if size == CAMERA_BYTES:
        return CameraFrame("camera", seq, now, image=payload.reshape(480, 640, 3))
    if size == AUDIO_BYTES:
        return AudioChunk("mic", seq, now, samples=payload.view("<f4"), sample_rate=16000)
    raise UdmlError(f"payload size {size} is not measured; use one of {SIZES}")


def _exact(payload: Any, size: int, seq: int) -> bool:
    """Whether ``payload`` (bytes or an array) holds exactly ``expected_payload(size, seq)``;
    compared as uint64 words, which allocates little (both sizes are multiples of 8)."""
    got = np.frombuffer(payload, np.uint8) if isinstance(payload, bytes) else \
        np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    if got.nbytes != size:
        return False
    words, want = got.view(np.uint64), _base(size).view(np.uint64)
    return int(words[0]) == seq and bool(np.array_equal(words[1:], want[1:]))


def _endpoint(transport: str, tmp: Path, name: str) -> str:
    return f"ipc://{tmp / name}" if transport == "ipc" else "tcp://127.0.0.1:*"


# ---- the receiver process --------------------------------------------------------------------


class _Receiver:
    """Both paths' SUB sockets of one case, in the receiver process."""

    def __init__(self, ctx: zmq.Context, raw_ep: str, ours_ep: str, topic: str, size: int) -> None:
        self.size = size
        self.raw = ctx.socket(zmq.SUB)
        for opt, val in ((zmq.LINGER, 0), (zmq.RCVHWM, SUB_HWM),
                         (zmq.MAXMSGSIZE, SUBSCRIBER_MAX_INBOUND), (zmq.RCVTIMEO, _WAIT_MS)):
            self.raw.setsockopt(opt, val)
        self.raw.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.raw.connect(raw_ep)
        self.ours = Subscriber([ours_ep], topics=[topic], hwm=SUB_HWM, ctx=ctx)

    def take(self, path: str) -> tuple[int, int, Any] | None:
        """One message of ``path``: (receive stamp, seq, payload), or None on timeout. Raw
        frames are not decoded (that is what raw means): seq comes from the header, untimed."""
        if path == "raw":
            try:
                frames = self.raw.recv_multipart()
            except zmq.Again:
                return None
            t1 = time.monotonic_ns()
            return t1, msgpack.unpackb(frames[1])["seq"], frames[2]
        msg = self.ours.recv_one(_WAIT_MS)
        t1 = time.monotonic_ns()
        if msg is None:
            return None
        return t1, msg.seq, msg.image if isinstance(msg, CameraFrame) else msg.samples  # type: ignore[attr-defined]

    def block(self, path: str, seq0: int, n: int) -> list[tuple[int, int, bool]]:
        """Receive messages ``seq0`` … ``seq0 + n - 1``: (seq, receive stamp, payload exact)
        each. Ends at the last one or when none comes for ``_WAIT_MS`` (a loss); older
        messages (left over from a block that lost its tail) are skipped."""
        out = []
        while True:
            got = self.take(path)
            if got is None:
                return out
            t1, seq, payload = got
            if seq < seq0:
                continue
            out.append((seq, t1, _exact(payload, self.size, seq)))
            if seq >= seq0 + n - 1:
                return out

    def warm(self, path: str) -> None:
        """Wait until ``path`` delivers (the subscription has reached the publisher), then drain."""
        if self.take(path) is None:
            raise UdmlError(f"no warm-up message on the {path} path within {_WAIT_MS} ms")
        time.sleep(0.05)
        while True:
            sock = self.raw if path == "raw" else self.ours.sock
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        self.raw.close(linger=0)
        self.ours.close()


def _receiver_main(conn: Connection) -> None:
    """Entry point of the receiver process: obeys commands from the sender over ``conn``."""
    ctx = zmq.Context()
    rx: _Receiver | None = None
    try:
        while True:
            cmd, *args = conn.recv()
            if cmd == "stop":
                break
            if cmd == "case":
                if rx is not None:
                    rx.close()
                rx = _Receiver(ctx, *args)
                conn.send("ok")
            elif cmd == "warm" and rx is not None:
                rx.warm(*args)
                conn.send("ok")
            elif cmd == "block" and rx is not None:
                conn.send("armed")
                conn.send(rx.block(*args))
    finally:
        if rx is not None:
            rx.close()
        ctx.term()


# ---- the sender (this process) ---------------------------------------------------------------


class _Sender:
    """Both paths' PUB sockets of one case, in this process."""

    def __init__(self, ctx: zmq.Context, transport: str, size: int, tmp: Path) -> None:
        self.size = size
        self.raw = ctx.socket(zmq.PUB)
        for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, PUB_HWM),
                         (zmq.MAXMSGSIZE, PUBLISHER_MAX_INBOUND)):
            self.raw.setsockopt(opt, val)
        self.raw.bind(_endpoint(transport, tmp, f"raw-{size}"))
        self.raw_ep = self.raw.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ours = Publisher(_endpoint(transport, tmp, f"ours-{size}"), hwm=PUB_HWM, ctx=ctx)
        self.topic = _message(size, 0, expected_payload(size, 0)).stream

    def prepare(self, path: str, seq: int) -> Any:
        """What the send call of ``path`` takes for message ``seq``: a fresh message for ours
        (a camera hands over a new frame each time), its encoded bytes for raw."""
        msg = _message(self.size, seq, expected_payload(self.size, seq))
        return encode_bytes(msg) if path == "raw" else msg

    def send(self, path: str, item: Any) -> tuple[int, int]:
        """Send ``item``; return the stamps taken right before and right after the send call."""
        t0 = time.monotonic_ns()
        if path == "raw":
            self.raw.send_multipart(item)
        else:
            self.ours.publish(item)
        return t0, time.monotonic_ns()

    def close(self) -> None:
        self.raw.close(linger=0)
        self.ours.close()


class _Link:
    """The command pipe to the receiver process; every wait for a reply is bounded."""

    def __init__(self, conn: Connection, proc: Any) -> None:
        self.conn, self.proc = conn, proc

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    def reply(self, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(0.05):
            if not self.proc.is_alive():
                raise UdmlError(f"the receiver process exited (code {self.proc.exitcode}); "
                                "see its traceback above")
            if time.monotonic() > deadline:
                raise UdmlError(f"the receiver process did not answer within {timeout_s} s")
        return self.conn.recv()


def _run_block(link: _Link, tx: _Sender, path: str, seq0: int, n: int,
               period_ns: int) -> dict[str, Any]:
    """One paced block of ``n`` messages on ``path``; latencies in ms, losses, bad payloads."""
    link.send("block", path, seq0, n)
    if link.reply() != "armed":
        raise UdmlError("the receiver process did not arm")
    sent: dict[int, int] = {}
    call_us = []
    due = time.monotonic_ns() + period_ns
    for seq in range(seq0, seq0 + n):
        item = tx.prepare(path, seq)
        wait = due - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        t0, t_done = tx.send(path, item)
        sent[seq] = t0
        call_us.append((t_done - t0) / 1e3)
        # No catch-up bursts after a stall (another process had the CPU): back-to-back sends
        # would measure queueing, and a PUB drops at its HWM of 16 within one burst.
        due = max(due + period_ns, t0 + period_ns // 2)
    got = link.reply()
    lat = [(t1 - sent[seq]) / _MS for seq, t1, _ in got if seq in sent]
    return {"lat_ms": lat, "lost": n - len(lat), "bad": sum(not ok for *_, ok in got),
            "send_call_us": call_us}


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _case(link: _Link, ctx: zmq.Context, transport: str, size: int, n: int, rounds: int,
          period_ns: int, tmp: Path) -> dict[str, Any]:
    tx = _Sender(ctx, transport, size, tmp)
    try:
        link.send("case", tx.raw_ep, tx.ours.endpoint, tx.topic, size)
        link.reply()
        seq = 0
        for path in ("raw", "ours"):  # slow joiners: publish until the receiver has one
            link.send("warm", path)
            while not link.conn.poll(0.01) and seq < 1000:
                tx.send(path, tx.prepare(path, seq))
                seq += 1
                time.sleep(0.005)
            link.reply()
        lat: dict[str, list[float]] = {"raw": [], "ours": []}
        call: dict[str, list[float]] = {"raw": [], "ours": []}
        round_ratios, lost, bad = [], {"raw": 0, "ours": 0}, {"raw": 0, "ours": 0}
        for r in range(rounds):
            p50 = {}
            for path in (("raw", "ours") if r % 2 == 0 else ("ours", "raw")):
                blk = _run_block(link, tx, path, seq, n, period_ns)
                seq += n
                lat[path] += blk["lat_ms"]
                call[path] += blk["send_call_us"]
                lost[path] += blk["lost"]
                bad[path] += blk["bad"]
                p50[path] = _pct(blk["lat_ms"], 50)
            round_ratios.append(round(p50["ours"] / p50["raw"], 3))
    finally:
        tx.close()
    raw50, ours50 = _pct(lat["raw"], 50), _pct(lat["ours"], 50)
    return {
        "transport": transport, "payload_bytes": size, "n": len(lat["ours"]),
        "raw_p50_ms": round(raw50, 4), "ours_p50_ms": round(ours50, 4),
        "ratio_p50": round(ours50 / raw50, 3),
        "raw_p99_ms": round(_pct(lat["raw"], 99), 4), "ours_p99_ms": round(_pct(lat["ours"], 99), 4),
        # Where the time goes, sender side: the send call alone (ours: stamp + encode + send).
        "raw_send_call_p50_us": round(_pct(call["raw"], 50), 1),
        "ours_send_call_p50_us": round(_pct(call["ours"], 50), 1),
        "round_ratios_p50": round_ratios, "lost": lost, "bad_payload": bad,
    }


def run(n: int = 100, rounds: int = 20, period_ms: float = 2.0,
        transports: tuple[str, ...] = TRANSPORTS, sizes: tuple[int, ...] = SIZES
        ) -> dict[str, Any]:
    """Measure every (transport, size) case; see the module docstring for the method.

    ``n`` messages per block, ``rounds`` rounds of one raw and one ours block per case, one
    message every ``period_ms``. Returns ``cases`` keyed ``<transport>_<bytes>`` and
    ``worst_ratio_p50`` (the largest ours ÷ raw p50 over the cases)."""
    for t in transports:
        if t not in TRANSPORTS:
            raise UdmlError(f"transport {t!r} is not measured; use one of {TRANSPORTS}")
    if n < 1 or rounds < 1 or period_ms <= 0:
        raise UdmlError(f"n ({n}) and rounds ({rounds}) must be ≥ 1 and period_ms ({period_ms}) "
                        "positive")
    started = time.monotonic()
    load_start = os.getloadavg()
    mpc = mp.get_context("spawn")
    parent, child = mpc.Pipe()
    proc = mpc.Process(target=_receiver_main, args=(child,), daemon=True)
    proc.start()
    link = _Link(parent, proc)
    ctx = zmq.Context()
    cases: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="udml-transport-") as tmp:
            for transport in transports:
                for size in sizes:
                    log.info("transport bench: %s, %d B", transport, size)
                    cases[f"{transport}_{size}"] = _case(link, ctx, transport, size, n, rounds,
                                                         int(period_ms * _MS), Path(tmp))
        link.send("stop")
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        ctx.term()
    worst = max(cases, key=lambda k: cases[k]["ratio_p50"])
    return {
        "cases": cases, "worst_ratio_p50": cases[worst]["ratio_p50"], "worst_case": worst,
        "goal_ratio_p50": GOAL_RATIO_P50,
        "goal_met": all(c["ratio_p50"] <= GOAL_RATIO_P50 for c in cases.values()),
        "setup": {
            "n_per_block": n, "rounds": rounds, "period_ms": period_ms,
            "receiver": "separate process (multiprocessing spawn); sender in the calling process",
            "raw": "send_multipart(bytes frames) → blocking recv_multipart (copy=True defaults)",
            "ours": "Publisher.publish(msg) → Subscriber.recv_one → Message",
            "pub_hwm": PUB_HWM, "sub_hwm": SUB_HWM, "cpus": os.cpu_count(),
            "nice": os.nice(0), "load_avg_1_5_15_at_start": [round(x, 2) for x in load_start],
            "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "wall_s": round(time.monotonic() - started, 1),
        },
    }


# ---- reporting -------------------------------------------------------------------------------

_COLUMNS = ("case", "raw p50 ms", "ours p50 ms", "ours ÷ raw p50", "raw p99 ms", "ours p99 ms",
            "send call p50 µs raw/ours", "per-round ratios", "n per path", "lost raw/ours")


def _rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in res["cases"].values():
        rows.append([f"{c['transport']}, {c['payload_bytes']:,} B", f"{c['raw_p50_ms']:.3f}",
                     f"{c['ours_p50_ms']:.3f}", f"{c['ratio_p50']:.2f}×",
                     f"{c['raw_p99_ms']:.3f}", f"{c['ours_p99_ms']:.3f}",
                     f"{c['raw_send_call_p50_us']:.0f}/{c['ours_send_call_p50_us']:.0f}",
                     " ".join(f"{r:.2f}" for r in c["round_ratios_p50"]), str(c["n"]),
                     f"{c['lost']['raw']}/{c['lost']['ours']}"])
    return rows


def to_table(res: dict[str, Any]) -> Any:
    """The case table as a ``rich`` table (for the terminal)."""
    from rich.table import Table

    table = Table(title="publish → receive latency, ours vs raw pyzmq")
    for col in _COLUMNS:
        table.add_column(col)
    for row in _rows(res):
        table.add_row(*row)
    return table


def verdict(res: dict[str, Any]) -> str:
    """One line: the worst ratio against the goal."""
    return (f"worst ours ÷ raw p50: {res['worst_ratio_p50']:.2f}× ({res['worst_case']}); goal "
            f"≤ {res['goal_ratio_p50']}× in every case: {'met' if res['goal_met'] else 'NOT met'}")


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The case table, the goal line and the setup."""
    s = res["setup"]
    lines = [f"Command: `{command}`", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(res)]
    bad = {k: c["bad_payload"] for k, c in res["cases"].items()
           if c["bad_payload"]["raw"] or c["bad_payload"]["ours"]}
    lines += [
        "", f"Goal (issue 10): {verdict(res)}.",
        f"Every received message was checked against the bytes sent: "
        f"{'all exact' if not bad else f'MISMATCHES {bad}'}.", "",
        "Method: the sender (this process) and the receiver (a spawned process) alternate blocks "
        f"of {s['n_per_block']} messages raw / ours, {s['rounds']} rounds per case (order swapped "
        f"each round), one message every {s['period_ms']} ms. Latency = receiver monotonic_ns "
        "after the message is in hand − sender monotonic_ns before the send call. Raw: "
        f"{s['raw']}; ours: {s['ours']}; same socket options (linger 0, SNDHWM {s['pub_hwm']}, "
        f"RCVHWM {s['sub_hwm']}, MAXMSGSIZE). p50 and p99 over all messages of a case. The send "
        "call column is the sender's share (ours: stamp + encode + send); the rest of a "
        "latency is transport + receive (+ decode for ours).",
        "", f"Machine: {s['cpus']} CPUs, shared; nice {s['nice']}; load average (1/5/15 min) "
        f"{s['load_avg_1_5_15_at_start']} at the start, {s['load_avg_1_5_15_at_end']} at the "
        f"end; wall {s['wall_s']} s; Python {s['python']}, pyzmq {s['pyzmq']}, libzmq "
        f"{s['libzmq']}.",
    ]
    return "\n".join(lines)
