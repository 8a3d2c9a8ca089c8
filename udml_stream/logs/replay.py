"""``udml replay``: publish recorded wire frames on their topics, so that consumers cannot tell
replay from live.

Timed mode schedules each message at ``t0 + (log_time − first) / rate`` (or by capture time) and
measures the actual-minus-scheduled error. Lossless mode is consumer-paced for offline
evaluation: every camera frame is published after the audio that covers its instant, and the
replayer waits for the fusion node's result for that frame before going on, collecting every
result. Reads are streamed from the MCAP index with a bounded read-ahead.

Every message counted as published was accepted by ZeroMQ for at least one subscriber: the
XPUB socket blocks instead of dropping at its high-water mark (``XPUB_NODROP``, bounded by
``send_timeout_s``; a message still refused is counted in ``not_sent``), a message whose topic
no subscriber wants is counted in ``unheard``, and closing waits (up to ``linger_s``) until the
queued tail has gone out.

Going out is not yet arriving: libzmq discards what a subscriber had not yet read from the
wire when its publisher disconnects (a subscriber that was a few dozen messages behind lost
them all). So after a log that ended (not one stopped), the socket stays open until every
subscriber has left or ``drain_s`` has passed, whichever comes first.
"""

from __future__ import annotations

import heapq
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from mcap.reader import SeekingReader

from udml_stream.errors import ConfigError
from udml_stream.logs.reader import WireRecord, iter_wire
from udml_stream.logs.recorder import topic_matches
from udml_stream.messages import FusionResult
from udml_stream.transport import Subscriber
from udml_stream.transport.pubsub import check_endpoint
from udml_stream.transport.security import close_context, new_context

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
    topics: list[str] | None = None  # names or fnmatch patterns, as ``udml record`` takes
    remap: dict[str, str] = field(default_factory=dict)
    order: str = "log"  # "log" (receive time) or "capture"
    read_ahead: int = 512  # bounded reorder window for capture-time order
    prefetch: int = 64  # records a reader thread decodes ahead of publishing
    lossless: bool = False
    results_endpoint: str | None = None  # the fusion node's output, for lossless mode
    camera_topic: str = "camera"  # the trigger camera: one fusion result per frame
    audio_topic: str = "mic"
    # Further cameras (lossless mode): their frames captured up to a trigger frame's instant go
    # out before it, with its audio, so the node pairs the frame with them as live.
    other_topics: tuple[str, ...] = ()
    result_timeout_s: float = 5.0
    wait_subscribers_s: float = 10.0
    send_timeout_s: float = 10.0  # a subscriber this far behind makes a message count as not sent
    linger_s: float = 10.0  # how long closing waits for the queued tail to go out
    drain_s: float = 2.0  # after the log ends, how long subscribers get to read the tail


ORDERS = ("log", "capture")


def validate(cfg: ReplayConfig) -> None:
    """Raise ``ConfigError`` naming the first setting of ``cfg`` that cannot work."""
    if not Path(cfg.path).is_file():
        raise ConfigError(f"replay: log {cfg.path} not found" if not Path(cfg.path).exists()
                          else f"replay: {cfg.path} is not a file")
    check_endpoint("replay", cfg.endpoint)
    if not (math.isfinite(cfg.rate) and cfg.rate > 0):
        raise ConfigError(f"replay: --rate {cfg.rate}; expected a finite number > 0 "
                          "(1 = recorded pace, 2 = twice as fast)")
    for name, v in (("--start", cfg.start_s), ("--end", cfg.end_s)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"replay: {name} {v}; expected seconds ≥ 0 from the log start")
    if cfg.start_s is not None and cfg.end_s is not None and cfg.end_s <= cfg.start_s:
        raise ConfigError(f"replay: --end {cfg.end_s} must be after --start {cfg.start_s}")
    if cfg.order not in ORDERS:
        raise ConfigError(f"replay: --order {cfg.order!r}; expected one of {', '.join(ORDERS)}")
    if cfg.lossless and not cfg.results_endpoint:
        raise ConfigError("replay: --lossless waits for each frame's fusion result, so it needs "
                          "--results ENDPOINT (the fusion node's output)")
    if cfg.results_endpoint and not cfg.lossless:
        raise ConfigError("replay: --results is only used with --lossless")
    if cfg.lossless and cfg.order != "log":
        raise ConfigError("replay: --lossless replays in log order; drop --order")
    if {cfg.camera_topic, cfg.audio_topic} & set(cfg.other_topics) or any(
            not t for t in cfg.other_topics):
        raise ConfigError(f"replay: other camera topics {list(cfg.other_topics)} must be "
                          f"non-empty and differ from {cfg.camera_topic!r} and "
                          f"{cfg.audio_topic!r}")
    if cfg.topics is not None and any(not t for t in cfg.topics):
        raise ConfigError("replay: --topic must be a non-empty name or pattern")
    for old, new in cfg.remap.items():
        if not old or not new:
            raise ConfigError(f"replay: --remap {old}={new}: expected OLD=NEW with both names")
    for name, v in (("read_ahead", cfg.read_ahead), ("prefetch", cfg.prefetch)):
        if v < 1:
            raise ConfigError(f"replay: {name} = {v}; expected ≥ 1")
    for name, f in (("result_timeout_s", cfg.result_timeout_s),
                    ("wait_subscribers_s", cfg.wait_subscribers_s),
                    ("send_timeout_s", cfg.send_timeout_s), ("linger_s", cfg.linger_s),
                    ("drain_s", cfg.drain_s)):
        if not (math.isfinite(f) and f >= 0):
            raise ConfigError(f"replay: {name} = {f}; expected seconds ≥ 0")


def parse_remap(items: list[str]) -> dict[str, str]:
    """``["old=new", …]`` → ``{"old": "new"}``; ``ConfigError`` on anything else."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new or "=" in new:
            raise ConfigError(f"replay: --remap {item!r}: expected OLD=NEW, e.g. camera=camera_rear")
        if old in out:
            raise ConfigError(f"replay: --remap names {old!r} twice")
        out[old] = new
    return out


@dataclass
class ReplayStats:
    """What a replay did."""

    published: dict[str, int] = field(default_factory=dict)  # accepted for ≥ 1 subscriber
    unheard: dict[str, int] = field(default_factory=dict)  # no subscriber wanted the topic
    not_sent: dict[str, int] = field(default_factory=dict)  # refused after send_timeout_s
    timing_error_ns: list[int] = field(default_factory=list)
    results: list[FusionResult] = field(default_factory=list)
    frames_without_result: int = 0
    loops: int = 0

    @property
    def replayed(self) -> int:
        """Records taken from the log and handled: published, unheard or not sent."""
        return sum(self.published.values()) + sum(self.unheard.values()) + sum(
            self.not_sent.values())


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


def _resolve_topics(path: Path, patterns: list[str]) -> list[str]:
    """The log's topics that ``patterns`` match (names pass as they are when no summary lists
    the channels)."""
    if not any(c in p for p in patterns for c in "*?["):
        return list(patterns)
    try:
        with open(path, "rb") as fh:
            summary = SeekingReader(fh).get_summary()
    except Exception:  # no readable summary (a killed recorder's file)
        summary = None
    if summary is None:
        return []
    return sorted({c.topic for c in summary.channels.values()
                   if topic_matches(c.topic, patterns)})


class Replayer:
    """Publishes a log on an XPUB socket (so it can wait until subscribers have joined)."""

    def __init__(self, cfg: ReplayConfig, ctx: zmq.Context | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        # A context of its own unless given one: closing terminates it, which is what waits
        # for the queued tail to leave (linger) without touching anyone else's sockets.
        self._own_ctx = ctx is None
        self._ctx = ctx or new_context()  # the process's CURVE policy, when one is set
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, int(cfg.linger_s * 1000))
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        # Block at the high-water mark instead of dropping, so "published" means handed over.
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDTIMEO, int(cfg.send_timeout_s * 1000))
        try:
            if cfg.bind:
                self.sock.bind(cfg.endpoint)
                self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self.sock.connect(cfg.endpoint)
                self.endpoint = cfg.endpoint
        except zmq.ZMQError as err:
            self.sock.close(linger=0)
            if self._own_ctx:
                close_context(self._ctx)
            raise ConfigError(f"replay: cannot {'bind' if cfg.bind else 'connect'} "
                              f"{cfg.endpoint!r}: {err}") from None
        self._stop = False
        self.subscriptions: set[bytes] = set()
        self._heard: dict[str, bool] = {}  # topic → some subscription covers it (cached)

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
                self._take_subscription()
        return False

    def _take_subscription(self) -> None:
        """Apply one (un)subscription message of the XPUB socket."""
        ev = self.sock.recv()
        if ev and ev[0] == 1:
            self.subscriptions.add(ev[1:])
        elif ev and ev[0] == 0:
            self.subscriptions.discard(ev[1:])
        self._heard.clear()

    def _records(self) -> Iterator[WireRecord]:
        cfg = self.cfg
        first = _first_log_ns(cfg.path)
        start = first + int(cfg.start_s * 1e9) if cfg.start_s is not None else None
        end = first + int(cfg.end_s * 1e9) if cfg.end_s is not None else None
        patterns = cfg.topics
        it = prefetch((r for r in iter_wire(cfg.path, None, start, end)
                       if patterns is None or topic_matches(r.topic, patterns)), cfg.prefetch)
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
        while self.sock.poll(0):  # subscriptions that arrived since the last message
            self._take_subscription()
        heard = self._heard.get(topic)
        if heard is None:
            t = topic.encode()
            heard = self._heard[topic] = any(t.startswith(s) for s in self.subscriptions)
        if not heard:  # XPUB would discard it silently: not a published message
            stats.unheard[topic] = stats.unheard.get(topic, 0) + 1
            return
        frames = rec.frames if topic == rec.topic else [topic.encode(), *rec.frames[1:]]
        try:
            self.sock.send_multipart(frames, copy=False)  # payloads ≥ 64 kB go without a copy
        except zmq.Again:
            stats.not_sent[topic] = stats.not_sent.get(topic, 0) + 1
            return
        stats.published[topic] = stats.published.get(topic, 0) + 1

    def run(self) -> ReplayStats:
        """Replay (looping if configured) until the log ends or ``stop()``."""
        stats = ReplayStats()
        topics = self.cfg.topics or []
        results = (Subscriber([self.cfg.results_endpoint], ctx=self._ctx)
                   if self.cfg.lossless and self.cfg.results_endpoint else None)
        # Patterns wait for the log's concrete topics they match (a subscriber never names
        # "cam*"); without a summary to list them, for any subscription at all.
        names = _resolve_topics(self.cfg.path, topics) if topics else []
        self.wait_for_subscribers([self.cfg.remap.get(t, t) for t in names] or [""],
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
            # Send the audio that covers this frame's instant first, and the other cameras'
            # frames captured by then (hold everything else).
            while True:
                nxt = pull()
                if nxt is None:
                    break
                if nxt.topic == cfg.audio_topic:
                    self._send(nxt, stats)
                    if nxt.capture_ns >= rec.capture_ns:
                        break
                elif nxt.topic in cfg.other_topics and nxt.capture_ns <= rec.capture_ns:
                    self._send(nxt, stats)
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

    def drain(self) -> None:
        """Keep the socket open until every subscriber has left or ``drain_s`` has passed.

        A subscriber's unread tail lives in its kernel buffer and receive queue; libzmq drops
        both when the publisher disconnects, so leaving at once would lose what it had counted
        as published. XPUB reports each leaving subscriber as an unsubscription."""
        end = time.monotonic() + self.cfg.drain_s
        while self.subscriptions and (left := end - time.monotonic()) > 0:
            if self.sock.poll(int(min(left, 0.05) * 1000) + 1):
                self._take_subscription()

    def close(self) -> None:
        """Close the socket after :meth:`drain` (skipped once stopped), waiting up to
        ``linger_s`` for queued messages to go out."""
        if not self._stop:
            self.drain()
        self.sock.close()  # with the LINGER set in __init__
        if self._own_ctx:
            close_context(self._ctx)  # returns once the tail has left (or linger_s has passed)
