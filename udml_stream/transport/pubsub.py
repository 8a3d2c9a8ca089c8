"""Publisher and subscriber over ``tcp://`` or ``ipc://``, bind or connect per config.

* Every receive has a timeout; sockets close with linger 0.
* Latest-only topics (live video) are drained to the newest message on each receive: ZeroMQ's
  CONFLATE cannot carry multipart messages, so the subscriber keeps a small receive queue and
  discards older frames itself, counting them as dropped.
* Other topics (audio) are delivered in order, every message.
* Malformed messages are counted per topic and dropped; sequence gaps are counted per stream.
* Inbound size is capped by ``ZMQ_MAXMSGSIZE`` (see ``transport.security``): a peer announcing a
  frame larger than its socket may receive is disconnected before anything is allocated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import zmq

from udml_stream.messages import DecodeError, Message, decode, encode
from udml_stream.transport.security import PUBLISHER_MAX_INBOUND, SUBSCRIBER_MAX_INBOUND

log = logging.getLogger(__name__)


def now_ns(clock: str = "monotonic") -> int:
    """Current time in integer nanoseconds of ``clock`` (``monotonic`` or ``realtime``)."""
    return time.monotonic_ns() if clock == "monotonic" else time.time_ns()


@dataclass
class StreamStats:
    """Receive-side counters of one stream."""

    received: int = 0
    gaps: int = 0  # messages missing between consecutive sequence numbers
    dropped_stale: int = 0  # older frames discarded by latest-only draining
    restarts: int = 0  # sequence went backwards (publisher restarted)
    last_seq: int = -1
    last_rx_ns: int = 0

    def update(self, seq: int, rx_ns: int) -> None:
        """Account for one received message with sequence number ``seq``."""
        if self.last_seq >= 0:
            if seq > self.last_seq + 1:
                self.gaps += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                self.restarts += 1
        self.last_seq, self.last_rx_ns = seq, rx_ns
        self.received += 1


class Publisher:
    """Publishes messages on one PUB socket; stamps ``publish_ns`` at send time."""

    def __init__(self, endpoint: str, bind: bool = True, hwm: int = 16,
                 ctx: zmq.Context | None = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        # A PUB socket receives only subscriptions (and CURVE handshakes): keep them small.
        self.sock.setsockopt(zmq.MAXMSGSIZE, PUBLISHER_MAX_INBOUND)
        if bind:
            self.sock.bind(endpoint)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock.connect(endpoint)
            self.endpoint = endpoint
        self.sent = 0

    def publish(self, msg: Message) -> None:
        """Stamp and send ``msg`` (never blocks: PUB drops at the high-water mark)."""
        msg.publish_ns = now_ns(msg.clock)
        self.sock.send_multipart(encode(msg), copy=False)
        self.sent += 1

    def send_raw(self, frames: list[bytes]) -> None:
        """Send pre-encoded frames unchanged (replay of recorded wire frames, tests)."""
        self.sock.send_multipart(frames)

    def close(self) -> None:
        """Close the socket immediately (linger 0)."""
        self.sock.close(linger=0)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """Receives and decodes messages from one or more endpoints."""

    def __init__(
        self,
        endpoints: Iterable[str],
        topics: Iterable[str] = ("",),
        bind: bool = False,
        latest_only: Iterable[str] = (),
        hwm: int = 1000,
        ctx: zmq.Context | None = None,
        max_frame_bytes: int = SUBSCRIBER_MAX_INBOUND,
    ) -> None:
        """``max_frame_bytes``: the largest frame accepted (ZMQ_MAXMSGSIZE); default the wire
        format's payload limit; a subscriber of known small streams may pass less."""
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.endpoints = []
        for ep in endpoints:
            if bind:
                self.sock.bind(ep)
                self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
            else:
                self.sock.connect(ep)
                self.endpoints.append(ep)
        self.latest_only = set(latest_only)
        self.stats: dict[str, StreamStats] = {}
        self.decode_errors: dict[str, int] = {}
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    def _take(self) -> Message | None:
        frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        try:
            msg = decode(frames)
        except DecodeError as err:
            topic = bytes(frames[0].buffer)[:64].decode(errors="replace") if frames else "?"
            self.decode_errors[topic] = self.decode_errors.get(topic, 0) + 1
            log.warning("dropped a malformed message on %r: %s", topic, err)
            return None
        self.stats.setdefault(msg.stream, StreamStats()).update(msg.seq, now_ns(msg.clock))
        return msg

    def receive(self, timeout_ms: int, max_messages: int = 1000) -> list[Message]:
        """Wait up to ``timeout_ms`` for traffic, then drain what is queued (at most
        ``max_messages``). Latest-only topics keep only their newest message."""
        out: list[Message] = []
        if not self._poller.poll(timeout_ms):
            return out
        newest: dict[str, int] = {}
        for _ in range(max_messages):
            try:
                msg = self._take()
            except zmq.Again:
                break
            if msg is None:
                continue
            if msg.topic in self.latest_only:
                if msg.topic in newest:
                    self.stats[msg.stream].dropped_stale += 1
                    out[newest[msg.topic]] = msg
                    continue
                newest[msg.topic] = len(out)
            out.append(msg)
        return out

    def recv_one(self, timeout_ms: int) -> Message | None:
        """The next valid message, or None when ``timeout_ms`` passes without one."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left < 0 or not self._poller.poll(max(left, 0)):
                return None
            try:
                msg = self._take()
            except zmq.Again:
                continue
            if msg is not None:
                return msg

    @property
    def total_decode_errors(self) -> int:
        """Malformed messages dropped so far, all topics."""
        return sum(self.decode_errors.values())

    def close(self) -> None:
        """Close the socket immediately (linger 0)."""
        self.sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
