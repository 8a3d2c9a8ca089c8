"""``udml record``: subscribe to topics and write their exact wire frames to MCAP.

A receive thread only receives and validates; a writer thread compresses and writes (zstd and
lz4 release the GIL), connected by a bounded queue whose overflow is counted, never silent.
Files split by duration or size; per-topic counts, sequence gaps and drops go into the file's
metadata when it is finished. SIGINT/SIGTERM finish the file. Chunks close on size and on time
(``chunk_seconds``, 1 s by default, checked even while no message arrives), so after SIGKILL at
most the last ``chunk_seconds`` of any topic mix is lost and ``udml log recover`` rebuilds a
readable file from the rest.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from udml_stream.errors import ConfigError
from udml_stream.logs.writer import COMPRESSION, LogWriter
from udml_stream.messages import DecodeError, decode
from udml_stream.transport.pubsub import check_endpoint

log = logging.getLogger(__name__)

@dataclass
class RecorderConfig:
    """What to record and how."""

    endpoints: list[str]
    output: Path  # file name; split files get _0001, _0002 … before the suffix
    topics: list[str] = field(default_factory=lambda: ["*"])  # names or fnmatch patterns
    exclude: list[str] = field(default_factory=lambda: ["hb.*"])
    compression: str = "zstd"
    chunk_size: int = 4 * 1024 * 1024
    chunk_seconds: float = 1.0  # a chunk also closes this long after its first message
    split_seconds: float = 0.0  # 0 = no split by duration
    split_bytes: int = 0  # 0 = no split by size
    queue_messages: int = 2000
    foxglove: bool = False  # also write viewer channels in Foxglove schemas (see logs/foxglove.py)


@dataclass
class TopicStats:
    """Per-topic counters written into the file metadata."""

    messages: int = 0
    bytes: int = 0
    gaps: int = 0
    dropped_queue: int = 0
    last_seq: int = -1


def topic_matches(topic: str, patterns: list[str]) -> bool:
    """Whether ``topic`` equals one of ``patterns`` or matches it as an fnmatch pattern
    (``cam*``, ``mic?``, ``[ab]*``); shared by ``udml record`` and ``udml replay``."""
    return any(fnmatch.fnmatchcase(topic, p) for p in patterns)


def validate(cfg: RecorderConfig) -> None:
    """Raise ``ConfigError`` naming the first setting of ``cfg`` that cannot work."""
    if not cfg.endpoints:
        raise ConfigError("record: give at least one endpoint to record from")
    for ep in cfg.endpoints:
        check_endpoint("record", ep)
    if cfg.compression not in COMPRESSION:
        raise ConfigError(f"record: compression = {cfg.compression!r}; expected one of "
                          f"{', '.join(COMPRESSION)}")
    if not cfg.topics or any(not t for t in cfg.topics):
        raise ConfigError("record: --topic must be a non-empty name or pattern")
    for name, value in (("chunk_seconds", cfg.chunk_seconds), ("split_seconds", cfg.split_seconds),
                        ("split_bytes", cfg.split_bytes)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"record: {name} = {value}; expected a finite number ≥ 0 (0 = off)")
    if cfg.chunk_size <= 0 or cfg.queue_messages <= 0:
        raise ConfigError("record: chunk_size and queue_messages must be > 0")
    out = Path(cfg.output)
    if out.exists() and not out.is_file():
        raise ConfigError(f"record: output {out} exists and is not a file")


class Recorder:
    """Records until ``stop()``; run ``run()`` in the main thread (it owns the socket)."""

    def __init__(self, cfg: RecorderConfig, ctx: zmq.Context | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self._ctx = ctx or zmq.Context.instance()
        self._q: queue.Queue = queue.Queue(maxsize=cfg.queue_messages)
        self._stop = threading.Event()
        self.stats: dict[str, TopicStats] = {}
        self.decode_errors = 0
        self.files: list[Path] = []
        self._writer_error: BaseException | None = None

    def wanted(self, topic: str) -> bool:
        """Whether ``topic`` passes the topic patterns and not the excludes."""
        return topic_matches(topic, self.cfg.topics) and not topic_matches(topic, self.cfg.exclude)

    def stop(self) -> None:
        """Ask the recorder to finish (safe from a signal handler)."""
        self._stop.set()

    # ---- writer thread ----

    def _path(self, index: int) -> Path:
        out = Path(self.cfg.output)
        return out if index == 0 else out.with_name(f"{out.stem}_{index:04d}{out.suffix}")

    def _write_loop(self) -> None:
        index, out = 0, None
        opened_at = 0.0
        # Wake up often enough to close a chunk on time even when no message arrives.
        poll_s = min(0.1, self.cfg.chunk_seconds / 4) if self.cfg.chunk_seconds > 0 else None
        try:
            while True:
                try:
                    item = self._q.get(timeout=poll_s)
                except queue.Empty:
                    if out is not None:
                        out.tick()
                    continue
                if item is None:
                    break
                topic, frames, seq, capture_ns, rx_ns, kind, stream, clock, msg = item
                split = out is not None and (
                    (self.cfg.split_seconds and time.monotonic() - opened_at >= self.cfg.split_seconds)
                    or (self.cfg.split_bytes and out.bytes_written >= self.cfg.split_bytes))
                if split:
                    self._finish(out)
                    out, index = None, index + 1
                if out is None:
                    out = LogWriter(self._path(index), self.cfg.compression, self.cfg.chunk_size,
                                    self.cfg.foxglove, chunk_seconds=self.cfg.chunk_seconds)
                    opened_at = time.monotonic()
                    self.files.append(out.path)
                out.write(topic, frames, seq, capture_ns, rx_ns, kind, stream, clock, msg)
        except BaseException as err:  # surfaced by run(); the receive side keeps counting
            self._writer_error = err
            log.exception("writer failed")
        finally:
            if out is not None:
                self._finish(out)

    def _finish(self, out: LogWriter) -> None:
        out.finish({"udml_recording": {
            "topics": json.dumps({t: vars(s) for t, s in self.stats.items()}),
            "decode_errors": str(self.decode_errors),
            "finished_unix_ns": str(time.time_ns()),
        }})

    # ---- receive loop ----

    def run(self, duration_s: float = 0.0) -> list[Path]:
        """Record until ``stop()`` or ``duration_s``; returns the files written."""
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        for ep in self.cfg.endpoints:
            try:
                sock.connect(ep)
            except zmq.ZMQError as err:
                sock.close(linger=0)
                raise ConfigError(f"record: cannot connect to {ep!r}: {err}") from None
        writer = threading.Thread(target=self._write_loop, name="mcap-writer", daemon=True)
        writer.start()
        end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                if not sock.poll(100):
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_message(frames)
        finally:
            sock.close(linger=0)
            self._q.put(None)  # blocks until the writer has room: nothing queued is lost
            writer.join()
        if self._writer_error is not None:
            raise self._writer_error
        return self.files

    def _on_message(self, frames: list[bytes]) -> None:
        rx_ns = time.time_ns()
        try:
            msg = decode(frames)
        except DecodeError as err:
            self.decode_errors += 1
            log.warning("dropped a malformed message: %s", err)
            return
        if not self.wanted(msg.topic):
            return
        st = self.stats.setdefault(msg.topic, TopicStats())
        if st.last_seq >= 0 and msg.seq > st.last_seq + 1:
            st.gaps += msg.seq - st.last_seq - 1
        st.last_seq = msg.seq
        item = (msg.topic, frames[1:], msg.seq, msg.capture_ns, rx_ns, msg.kind, msg.stream,
                msg.clock, msg if self.cfg.foxglove else None)
        try:
            self._q.put_nowait(item)
        except queue.Full:
            st.dropped_queue += 1
            return
        st.messages += 1
        st.bytes += sum(len(f) for f in frames)
