"""``udml view``: the live streams in Foxglove, over Foxglove's WebSocket protocol.

One receive loop subscribes to the nodes' endpoints with the project's ``Subscriber`` (malformed
messages are counted and dropped there) and logs each message to its viewer channel
(``logs/foxglove.py``: ``/<topic>/image``, ``/<topic>/level``, ``/<topic>/view``) on a
foxglove-sdk WebSocket server. Camera topics are latest-only: when the viewer falls behind, older
frames are dropped here (counted), so a slow viewer never backs up a node; a PUB socket drops at
its high-water mark rather than block anyway. Audio levels and fusion results go out in order,
every one. Channels appear when their stream first sends, so a fleet's ``<robot>/camera`` topics
each get their own. A frame is encoded only while a client subscribes to its channel, and
``max_fps`` thins camera frames by capture time. Message timestamps are capture times.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import foxglove
import zmq

from udml_stream.errors import ConfigError
from udml_stream.logs.foxglove import ViewOptions, view_data, view_schema, view_topic
from udml_stream.logs.recorder import topic_matches
from udml_stream.messages import CameraFrame, Message
from udml_stream.transport.pubsub import Subscriber, check_endpoint

log = logging.getLogger(__name__)


@dataclass
class ViewConfig:
    """What to subscribe to and how to serve it."""

    endpoints: list[str]
    host: str = "127.0.0.1"  # loopback by default: the stream is not encrypted
    port: int = 8765  # Foxglove's default; 0 = any free port (``ViewServer.port`` says which)
    topics: list[str] = field(default_factory=lambda: ["*"])  # names or fnmatch patterns
    exclude: list[str] = field(default_factory=lambda: ["hb.*"])
    image: str = "jpeg"  # jpeg (foxglove.CompressedImage) or raw (foxglove.RawImage)
    jpeg_quality: int = 75
    max_fps: float = 0.0  # per camera topic; 0 = every frame
    hwm: int = 500  # receive queue (messages): bounds the memory of a stalled loop
    name: str = "udml view"

    @property
    def options(self) -> ViewOptions:
        """The viewer-channel options of this config."""
        return ViewOptions(self.image, self.jpeg_quality)


def validate(cfg: ViewConfig) -> None:
    """Raise ``ConfigError`` naming the first setting of ``cfg`` that cannot work."""
    if not cfg.endpoints:
        raise ConfigError("view: give at least one endpoint to subscribe to")
    for ep in cfg.endpoints:
        check_endpoint("view", ep)
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"view: port = {cfg.port}; expected 0..65535 (0 = any free port)")
    try:
        cfg.options.check()
    except ValueError as err:
        raise ConfigError(f"view: {err}") from None
    if not math.isfinite(cfg.max_fps) or cfg.max_fps < 0:
        raise ConfigError(f"view: max_fps = {cfg.max_fps}; expected a finite number ≥ 0 (0 = off)")
    if cfg.hwm <= 0:
        raise ConfigError(f"view: hwm = {cfg.hwm}; expected > 0")
    if not cfg.topics or any(not t for t in cfg.topics):
        raise ConfigError("view: --topic must be a non-empty name or pattern")


@dataclass
class ViewStats:
    """What the view received and served, per viewer channel and overall."""

    received: dict[str, int] = field(default_factory=dict)  # message kind → count
    sent: dict[str, int] = field(default_factory=dict)  # viewer topic → messages logged
    no_viewer: int = 0  # messages not encoded: no client subscribed to their channel
    rate_limited: int = 0  # camera frames thinned out by max_fps
    dropped_stale: int = 0  # camera frames superseded before the loop got to them
    decode_errors: int = 0  # malformed messages the subscriber dropped
    ignored: int = 0  # messages of kinds with no viewer channel (heartbeats, labels)


class ViewServer:
    """Serves the viewer channels of ``cfg.endpoints``: ``start()`` opens the WebSocket server
    (``port`` then says where), ``run()`` receives until ``stop()`` or a duration; run it in the
    thread that should own the ZeroMQ socket."""

    def __init__(self, cfg: ViewConfig, ctx: zmq.Context | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self._opts = cfg.options
        self._zmq = ctx or zmq.Context.instance()
        self._fg = foxglove.Context()  # own context: no other sink sees these channels
        self._server: foxglove.WebSocketServer | None = None
        self._channels: dict[str, foxglove.Channel] = {}
        self._last_frame: dict[str, int] = {}  # camera topic → capture time of the last shown
        self._period_ns = int(1e9 / cfg.max_fps) if cfg.max_fps > 0 else 0
        self._stop = threading.Event()
        self.stats = ViewStats()

    @property
    def port(self) -> int:
        """The port the WebSocket server listens on (after ``start``)."""
        if self._server is None:
            raise RuntimeError("view server not started")
        return self._server.port

    def start(self) -> int:
        """Open the WebSocket server; returns its port."""
        if self._server is None:
            try:
                self._server = foxglove.start_server(name=self.cfg.name, host=self.cfg.host,
                                                     port=self.cfg.port, context=self._fg)
            except Exception as err:  # the SDK raises its own types for a busy port, bad host
                raise ConfigError(f"view: cannot serve on {self.cfg.host}:{self.cfg.port}: "
                                  f"{err}") from None
            log.info("Foxglove WebSocket server on ws://%s:%d", self.cfg.host, self.port)
        return self.port

    def stop(self) -> None:
        """Ask ``run`` to finish (safe from a signal handler)."""
        self._stop.set()

    def wanted(self, topic: str) -> bool:
        """Whether ``topic`` passes the topic patterns and not the excludes."""
        return topic_matches(topic, self.cfg.topics) and not topic_matches(topic, self.cfg.exclude)

    def run(self, duration_s: float = 0.0) -> ViewStats:
        """Receive and serve until ``stop()`` or ``duration_s`` (0 = no limit); closes the
        subscriber and the WebSocket server on the way out."""
        self.start()
        sub = Subscriber(self.cfg.endpoints, hwm=self.cfg.hwm, ctx=self._zmq)
        end = time.monotonic() + duration_s if duration_s > 0 else math.inf
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                for msg in sub.receive(timeout_ms=100):
                    if isinstance(msg, CameraFrame) and msg.topic not in sub.latest_only:
                        # Latest-only from the first frame of a camera topic on: its backlog
                        # is drained to the newest frame on every receive (counted there).
                        sub.latest_only.add(msg.topic)
                    self.handle(msg)
                self.stats.dropped_stale = sum(s.dropped_stale for s in sub.stats.values())
                self.stats.decode_errors = sub.total_decode_errors
        finally:
            sub.close()
            self.close()
        log.info("view: received %s, sent %s, %d without a viewer, %d rate-limited, %d stale, "
                 "%d malformed", self.stats.received, self.stats.sent, self.stats.no_viewer,
                 self.stats.rate_limited, self.stats.dropped_stale, self.stats.decode_errors)
        return self.stats

    def close(self) -> None:
        """Stop the WebSocket server (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _channel(self, msg: Message) -> foxglove.Channel | None:
        topic = view_topic(msg.topic or msg.stream, msg.kind)
        ch = self._channels.get(topic)
        if ch is None:
            schema = view_schema(msg, self._opts)
            if schema is None:
                return None
            # A dict schema makes a JSON channel whose schema name is the schema's title.
            ch = foxglove.Channel(topic, schema=schema[1], context=self._fg)
            self._channels[topic] = ch
            log.info("view: %s → %s (%s)", msg.topic, topic, schema[0])
        return ch

    def handle(self, msg: Message) -> bool:
        """Log ``msg`` on its viewer channel; True if it went out to a client."""
        st = self.stats
        st.received[msg.kind] = st.received.get(msg.kind, 0) + 1
        if not self.wanted(msg.topic):
            return False
        if view_schema(msg, self._opts) is None:
            st.ignored += 1
            return False
        if isinstance(msg, CameraFrame) and self._period_ns:
            last = self._last_frame.get(msg.topic)
            # 5 % slack: frames of a 30 fps camera limited to 15 fps keep every second one
            # despite capture jitter.
            if last is not None and msg.capture_ns - last < self._period_ns * 0.95:
                st.rate_limited += 1
                return False
        ch = self._channel(msg)
        if ch is None:
            return False
        if not ch.has_sinks():  # nobody subscribed: skip the encoding (JPEG costs the most)
            st.no_viewer += 1
            return False
        if isinstance(msg, CameraFrame):
            self._last_frame[msg.topic] = msg.capture_ns
        ch.log(view_data(msg, self._opts), log_time=msg.capture_ns)
        st.sent[ch.topic()] = st.sent.get(ch.topic(), 0) + 1
        return True


def serve(cfg: ViewConfig, duration_s: float = 0.0) -> ViewStats:
    """``udml view``: serve until SIGINT/SIGTERM or ``duration_s``; call from the main thread."""
    server = ViewServer(cfg)
    port = server.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    log.info("open ws://%s:%d in Foxglove (Open connection → Foxglove WebSocket); layout: "
             "configs/foxglove_layout.json", cfg.host, port)
    return server.run(duration_s)
