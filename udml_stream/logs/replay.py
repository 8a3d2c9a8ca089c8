"""``udml replay``: publish recorded wire frames on their topics, so that consumers cannot tell
replay from live.

Timed mode schedules each message at ``t0 + (log_time − first) / rate`` (or by capture time) and
measures the actual-minus-scheduled error. Lossless mode is consumer-paced for offline
evaluation: every camera frame is published after the audio that covers its instant, and the
replayer waits for the fusion node's result for that frame before going on, collecting every
result. Reads are streamed from the MCAP index with a bounded read-ahead.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from udml_stream.logs.reader import WireRecord, iter_wire
from udml_stream.messages import FusionResult
from udml_stream.transport import Subscriber

log = logging.getLogger(__name__)


@dataclass
class ReplayConfig:
    """What to replay and how."""

    path: Path
    endpoint: str
    bind: bool = True
    rate: float = 1.0
    loop: bool = False
    start_s: float | None = None  # offsets from the log's first message
    end_s: float | None = None
    topics: list[str] | None = None
    remap: dict[str, str] = field(default_factory=dict)
    order: str = "log"  # "log" (receive time) or "capture"
    read_ahead: int = 512  # bounded reorder window for capture-time order
    prefetch: int = 64  # records a reader thread decodes ahead of publishing
    lossless: bool = False
    results_endpoint: str | None = None  # the fusion node's output, for lossless mode
    camera_topic: str = "camera"
    audio_topic: str = "mic"
    result_timeout_s: float = 5.0
    wait_subscribers_s: float = 10.0


@dataclass
class ReplayStats:
    """What a replay did."""

    published: dict[str, int] = field(default_factory=dict)
    timing_error_ns: list[int] = field(default_factory=list)
    results: list[FusionResult] = field(default_factory=list)
    frames_without_result: int = 0
    loops: int = 0


_END = object()


def prefetch(records: Iterator[WireRecord], depth: int) -> Iterator[WireRecord]:
    """Iterate ``records`` in a reader thread, at most ``depth`` records ahead.

    Decompressing the next chunk (zstd and lz4 release the GIL) then overlaps with publishing the
    current one, on a second core; the bounded queue keeps memory flat whatever the file size.
    An exception in the reader is raised here, in the caller's thread.
    """
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for rec in records:
                if not put(rec):
                    return
            put(_END)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)

    th = threading.Thread(target=read, name="log-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join(timeout=5)


def _first_log_ns(path: Path) -> int:
    for rec in iter_wire(path):
        return rec.log_ns
    return 0


class Replayer:
    """Publishes a log on an XPUB socket (so it can wait until subscribers have joined)."""

    def __init__(self, cfg: ReplayConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        if cfg.bind:
            self.sock.bind(cfg.endpoint)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock.connect(cfg.endpoint)
            self.endpoint = cfg.endpoint
        self._stop = False
        self.subscriptions: set[bytes] = set()

    def stop(self) -> None:
        """Finish after the current message (safe from a signal handler)."""
        self._stop = True

    def wait_for_subscribers(self, prefixes: list[str], timeout_s: float) -> bool:
        """Block until subscriptions covering each topic in ``prefixes`` arrived (XPUB handshake)."""
        end = time.monotonic() + timeout_s
        want = [p.encode() for p in prefixes]
        while time.monotonic() < end:
            if all(any(w.startswith(s) for s in self.subscriptions) for w in want):
                return True
            if self.sock.poll(50):
                ev = self.sock.recv()
                if ev and ev[0] == 1:
                    self.subscriptions.add(ev[1:])
        return False

    def _records(self) -> Iterator[WireRecord]:
        cfg = self.cfg
        first = _first_log_ns(cfg.path)
        start = first + int(cfg.start_s * 1e9) if cfg.start_s is not None else None
        end = first + int(cfg.end_s * 1e9) if cfg.end_s is not None else None
        it = prefetch(iter_wire(cfg.path, cfg.topics, start, end), cfg.prefetch)
        if cfg.order == "log":
            yield from it
            return
        heap: list[tuple[int, int, WireRecord]] = []
        for i, rec in enumerate(it):
            heapq.heappush(heap, (rec.capture_ns, i, rec))
            if len(heap) > cfg.read_ahead:
                yield heapq.heappop(heap)[2]
        while heap:
            yield heapq.heappop(heap)[2]

    def _send(self, rec: WireRecord, stats: ReplayStats) -> None:
        topic = self.cfg.remap.get(rec.topic, rec.topic)
        frames = rec.frames if topic == rec.topic else [topic.encode(), *rec.frames[1:]]
        self.sock.send_multipart(frames, copy=False)  # payloads ≥ 64 kB go without a copy
        stats.published[topic] = stats.published.get(topic, 0) + 1

    def run(self) -> ReplayStats:
        """Replay (looping if configured) until the log ends or ``stop()``."""
        stats = ReplayStats()
        topics = self.cfg.topics or []
        results = (Subscriber([self.cfg.results_endpoint], ctx=self._ctx)
                   if self.cfg.lossless and self.cfg.results_endpoint else None)
        self.wait_for_subscribers([self.cfg.remap.get(t, t) for t in topics] or [""],
                                  self.cfg.wait_subscribers_s)
        if results is not None:
            self._wait_for_results_link(results)
        try:
            while not self._stop:
                if self.cfg.lossless:
                    self._run_lossless(stats, results)
                else:
                    self._run_timed(stats)
                if not self.cfg.loop:
                    break
                stats.loops += 1
        finally:
            if results is not None:
                results.close()
        return stats

    def _wait_for_results_link(self, results: Subscriber) -> None:
        """Wait until a message (the fusion node's heartbeat) arrives on the results socket.
        A SUB socket misses what is published before its subscription reaches the publisher, so
        without this the first frame's result could be lost (ZeroMQ's slow-joiner case)."""
        end = time.monotonic() + self.cfg.wait_subscribers_s
        while time.monotonic() < end:
            if results.recv_one(100) is not None:
                return
        log.warning("nothing heard from %s in %.0f s; results of the first frames may be lost",
                    self.cfg.results_endpoint, self.cfg.wait_subscribers_s)

    def _run_timed(self, stats: ReplayStats) -> None:
        key = (lambda r: r.log_ns) if self.cfg.order == "log" else (lambda r: r.capture_ns)
        t0 = time.monotonic_ns()
        base: int | None = None
        for rec in self._records():
            if self._stop:
                return
            if base is None:
                base = key(rec)
            due = t0 + int((key(rec) - base) / self.cfg.rate)
            delay = due - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            stats.timing_error_ns.append(time.monotonic_ns() - due)
            self._send(rec, stats)

    def _run_lossless(self, stats: ReplayStats, results: Subscriber | None) -> None:
        cfg = self.cfg
        held: list[WireRecord] = []
        records = self._records()
        exhausted = False

        def pull() -> WireRecord | None:
            nonlocal exhausted
            if exhausted:
                return None
            try:
                return next(records)
            except StopIteration:
                exhausted = True
                return None

        while not self._stop:
            rec = held.pop(0) if held else pull()
            if rec is None:
                return
            if rec.topic != cfg.camera_topic:
                self._send(rec, stats)
                continue
            # Send the audio that covers this frame's instant first (hold everything else).
            while True:
                nxt = pull()
                if nxt is None:
                    break
                if nxt.topic == cfg.audio_topic:
                    self._send(nxt, stats)
                    if nxt.capture_ns >= rec.capture_ns:
                        break
                else:
                    held.append(nxt)
            self._send(rec, stats)
            if results is None:
                continue
            end = time.monotonic() + cfg.result_timeout_s
            got = False
            while time.monotonic() < end and not got:
                m = results.recv_one(50)
                if isinstance(m, FusionResult):
                    stats.results.append(m)
                    got = m.source_seq.get(cfg.camera_topic) == rec.seq
            if not got:
                stats.frames_without_result += 1

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)
