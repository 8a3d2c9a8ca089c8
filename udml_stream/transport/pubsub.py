"""Publisher and subscriber over ``tcp://`` or ``ipc://``, bind or connect per config.

* Every receive has a timeout; sockets close with linger 0.
* Latest-only topics (live video) are drained to the newest message on each receive: ZeroMQ's
  CONFLATE cannot carry multipart messages, so the subscriber keeps a small receive queue and
  discards older frames itself, counting them as dropped.
* Other topics (audio) are delivered in order, every message.
* Malformed messages are counted per topic and dropped; sequence gaps are counted per stream.
* Payloads of ``ZERO_COPY_MIN_BYTES`` (64 KiB) or more travel without a copy at both ends: the
  sender hands ZeroMQ the array's buffer, and the decoded array is a writable view of its own
  received frame (libzmq gives such a message its own allocation; never over ``inproc://``, where
  a frame can share memory with the sender). Smaller payloads are copied (see the codec).
* Receives block in libzmq with ``ZMQ_RCVTIMEO`` (no poll call first), as a bare ``recv`` does.
* Inbound size is capped by ``ZMQ_MAXMSGSIZE`` (see ``transport.security``): a peer announcing a
  frame larger than its socket may receive is disconnected before anything is allocated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import zmq

from udml_stream.errors import ConfigError
from udml_stream.messages import DecodeError, Heartbeat, Message, decode, encode
from udml_stream.transport.security import PUBLISHER_MAX_INBOUND, SUBSCRIBER_MAX_INBOUND

log = logging.getLogger(__name__)


def check_endpoint(command: str, endpoint: str) -> None:
    """Raise ``ConfigError`` (prefixed ``command:``) when ``endpoint`` is no ZeroMQ endpoint."""
    if "://" not in endpoint:
        raise ConfigError(f"{command}: endpoint {endpoint!r} is not a ZeroMQ endpoint "
                          "(expected e.g. tcp://127.0.0.1:5600 or ipc:///tmp/udml/camera.sock)")


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
        msg.publish_ns = time.monotonic_ns() if msg.clock == "monotonic" else time.time_ns()
        frames = encode(msg)
        send, last = self.sock.send, len(frames) - 1
        for i, f in enumerate(frames):
            # Payload arrays (≥ 64 kB, see the codec) go without a copy; bytes frames are small
            # and copied straight into the message (pyzmq's zero-copy path would copy them too,
            # after building a Frame).
            send(f, 0 if i == last else zmq.SNDMORE, copy=not isinstance(f, np.ndarray))
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
        # Large payloads stay in their received frames (no copy) unless a frame may share memory
        # with a sender's array or another subscriber's: only over inproc://.
        self._zero_copy = not any(ep.startswith("inproc://") for ep in self.endpoints)
        self._rcvtimeo = -1  # the socket's ZMQ_RCVTIMEO, set only when a call needs another

    def _take(self, flags: int) -> Message | None:
        """Receive one multipart message (``flags``: 0 waits up to ZMQ_RCVTIMEO, NOBLOCK not at
        all; ``zmq.Again`` when none came) and decode it; None when it was malformed."""
        # One recv per frame, reading ``more`` from the frame: recv_multipart asks the socket
        # for RCVMORE through Python on every part.
        recv = self.sock.recv
        frame = recv(flags, copy=False)
        frames = [frame]
        while frame.more:
            frame = recv(0, copy=False)
            frames.append(frame)
        try:
            msg = decode(frames, zero_copy=self._zero_copy)
        except DecodeError as err:
            topic = frames[0].bytes[:64].decode(errors="replace")
            self.decode_errors[topic] = self.decode_errors.get(topic, 0) + 1
            log.warning("dropped a malformed message on %r: %s", topic, err)
            return None
        # A node's heartbeats carry the node's name as their stream, which is often also the
        # name of the stream it publishes ("camera"): their own sequence must not interleave
        # with the data's, or every beat reads as a restart and the next frame as a huge gap.
        key = msg.topic if isinstance(msg, Heartbeat) else msg.stream
        st = self.stats.get(key)
        if st is None:
            st = self.stats[key] = StreamStats()
        st.update(msg.seq, time.monotonic_ns() if msg.clock == "monotonic" else time.time_ns())
        return msg

    def _wait_for(self, timeout_ms: int) -> None:
        """Make the next blocking receive wait at most ``timeout_ms`` (negative: forever)."""
        timeout_ms = max(int(timeout_ms), -1)
        if timeout_ms != self._rcvtimeo:
            self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms

    def receive(self, timeout_ms: int, max_messages: int = 1000) -> list[Message]:
        """Wait up to ``timeout_ms`` for traffic, then drain what is queued (at most
        ``max_messages``). Latest-only topics keep only their newest message."""
        out: list[Message] = []
        newest: dict[str, int] = {}
        # The first receive blocks in libzmq itself (as a bare recv does), not in a poll first.
        if timeout_ms != self._rcvtimeo:
            self._wait_for(timeout_ms)
        flags = 0
        for _ in range(max_messages):
            try:
                msg = self._take(flags)
            except zmq.Again:
                break
            flags = zmq.NOBLOCK
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
        if timeout_ms < 0:
            return None
        # Kept lean: on an idle machine every call here runs on a cold cache (tens of µs per
        # layer), and this is the path the transport benchmark holds to raw pyzmq.
        start = time.monotonic()
        if timeout_ms != self._rcvtimeo:
            self._wait_for(timeout_ms)
        while True:
            try:
                msg = self._take(0)
            except zmq.Again:
                return None
            if msg is not None:
                return msg
            left = timeout_ms - int((time.monotonic() - start) * 1000)  # a malformed one
            if left < 0:
                return None
            self._wait_for(left)

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
