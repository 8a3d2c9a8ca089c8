"""A passive observer of every topic: per-stream rate, drops, latency; the latest fusion result."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from udml_stream.messages import FusionResult, Heartbeat, Message
from udml_stream.transport import Subscriber


@dataclass
class TopicView:
    """What the monitor knows about one stream."""

    arrivals: deque = field(default_factory=lambda: deque(maxlen=2000))  # rx monotonic ns
    latency_ns: deque = field(default_factory=lambda: deque(maxlen=2000))  # rx − capture
    count: int = 0

    def rate(self, now_ns: int, window_s: float = 2.0) -> float:
        """Messages per second over the last ``window_s``."""
        cut = now_ns - int(window_s * 1e9)
        return sum(1 for t in self.arrivals if t >= cut) / window_s

    def latency_ms(self, q: float) -> float:
        """Latency quantile ``q`` in milliseconds (NaN when nothing arrived)."""
        return float(np.quantile(np.asarray(self.latency_ns), q)) / 1e6 if self.latency_ns \
            else float("nan")


class Monitor:
    """Subscribes to ``endpoints`` (all topics) and keeps per-stream statistics."""

    def __init__(self, endpoints: list[str]) -> None:
        self.sub = Subscriber(endpoints)
        self.topics: dict[str, TopicView] = {}
        self.heartbeats: dict[str, Heartbeat] = {}
        self.heard_ns: dict[str, int] = {}  # node → time.monotonic_ns() of its latest heartbeat
        self.last_result: FusionResult | None = None
        self.results: list[FusionResult] = []

    def pump(self, timeout_ms: int = 50) -> list[Message]:
        """Receive what arrived; returns the messages."""
        msgs = self.sub.receive(timeout_ms)
        now = time.monotonic_ns()
        for m in msgs:
            if isinstance(m, Heartbeat):
                self.heartbeats[m.node] = m
                self.heard_ns[m.node] = now
                continue
            v = self.topics.setdefault(m.stream, TopicView())
            v.count += 1
            v.arrivals.append(now)
            if m.clock == "monotonic":
                v.latency_ns.append(now - m.capture_ns)
            if isinstance(m, FusionResult):
                self.last_result = m
                self.results.append(m)
        return msgs

    def table_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(stream, rate Hz, drops, p50 ms, p99 ms) per stream."""
        now = time.monotonic_ns()
        rows = []
        for name, v in sorted(self.topics.items()):
            st = self.sub.stats.get(name)
            drops = (st.gaps + st.dropped_stale) if st else 0
            rows.append((name, f"{v.rate(now):.1f}", str(drops), f"{v.latency_ms(0.5):.1f}",
                         f"{v.latency_ms(0.99):.1f}"))
        return rows

    def close(self) -> None:
        """Close the socket."""
        self.sub.close()
