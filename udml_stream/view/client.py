"""A small Foxglove WebSocket client: what the Foxglove app does on connecting, for tests and
``udml bench view`` (needs the ``websockets`` package, in the ``dev`` extra).

The exchange: the server answers the handshake with ``serverInfo`` and ``advertise`` (JSON text
frames, one entry per channel: id, topic, encoding, schema name and schema); the client sends
``subscribe`` with its own subscription id per channel; the server then sends each logged
message as a binary frame ``u8 opcode (1 = message data) | u32 subscription id | u64 timestamp
ns | payload``, little-endian. foxglove-sdk 0.30 accepts the subprotocol ``foxglove.sdk.v1``;
the Foxglove app offers it and the older ``foxglove.websocket.v1``, and so does this client.
"""

from __future__ import annotations

import json
import re
import struct
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")
OP_MESSAGE_DATA = 1
_HEADER = struct.Struct("<BIQ")
# foxglove-sdk 0.30 can answer a subscribe that follows its advertise closely with a status
# error "... Unknown channel ID: <id>" (the advertise went out before
# the server recorded it for this client); such a subscribe is sent again after a pause.
_UNKNOWN_CHANNEL = re.compile(r"unknown channel\D*(\d+)", re.IGNORECASE)
RESUBSCRIBE_AFTER_S = 0.05
MAX_RESUBSCRIBES = 20


@dataclass(frozen=True)
class ChannelInfo:
    """One advertised channel."""

    id: int
    topic: str
    encoding: str
    schema_name: str
    schema: str


@dataclass(frozen=True)
class Received:
    """One message data frame, with the topic of its subscription."""

    topic: str
    timestamp_ns: int
    payload: bytes
    rx_s: float  # time.monotonic() at receipt

    def json(self) -> Any:
        """The payload of a JSON channel, decoded."""
        return json.loads(self.payload)


def parse_data(frame: bytes) -> tuple[int, int, bytes]:
    """(subscription id, timestamp ns, payload) of a binary message data frame; ``ValueError``
    for any other binary frame."""
    if len(frame) < _HEADER.size or frame[0] != OP_MESSAGE_DATA:
        raise ValueError(f"not a message data frame (opcode {frame[:1].hex() or 'none'})")
    _op, sub, ts = _HEADER.unpack_from(frame)
    return sub, ts, bytes(frame[_HEADER.size:])


class FoxgloveClient:
    """Connects to ``ws://host:port``, subscribes to every channel it is told of whose topic
    ``subscribe_to`` accepts, and returns their messages from ``recv``."""

    def __init__(self, host: str, port: int, subscribe_to: Any = lambda topic: True,
                 connect_timeout_s: float = 5.0) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + connect_timeout_s
        self._stack = ExitStack()  # websockets wants its connection used as a context manager
        while True:  # the server may still be starting: retry until the deadline
            try:
                self._ws = self._stack.enter_context(connect(
                    f"ws://{host}:{port}", subprotocols=list(SUBPROTOCOLS), max_size=None,
                    compression=None, proxy=None,
                    open_timeout=max(0.1, deadline - time.monotonic())))
                break
            except (OSError, TimeoutError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self.subprotocol = self._ws.subprotocol
        self.server_info: dict[str, Any] = {}
        self.channels: dict[int, ChannelInfo] = {}  # channel id → info
        self._subs: dict[int, int] = {}  # subscription id → channel id
        self._accept = subscribe_to
        self._retry: dict[int, float] = {}  # subscription id → when to send its subscribe again
        self._retries: dict[int, int] = {}  # subscription id → subscribes sent again so far
        self.status: list[dict[str, Any]] = []  # status messages from the server, in order

    def _control(self, text: str) -> None:
        msg = json.loads(text)
        op = msg.get("op")
        if op == "serverInfo":
            self.server_info = msg
        elif op == "advertise":
            new = []
            for c in msg["channels"]:
                info = ChannelInfo(c["id"], c["topic"], c["encoding"], c.get("schemaName", ""),
                                   c.get("schema", ""))
                self.channels[info.id] = info
                if self._accept(info.topic):
                    sub_id = len(self._subs) + 1
                    self._subs[sub_id] = info.id
                    new.append({"id": sub_id, "channelId": info.id})
            if new:
                self._ws.send(json.dumps({"op": "subscribe", "subscriptions": new}))
        elif op == "unadvertise":
            for cid in msg.get("channelIds", []):
                self.channels.pop(cid, None)
        elif op == "status":
            self.status.append(msg)
            m = _UNKNOWN_CHANNEL.search(str(msg.get("message", "")))
            if m:
                cid = int(m.group(1))
                for sub_id, c in self._subs.items():
                    if c == cid and self._retries.get(sub_id, 0) < MAX_RESUBSCRIBES:
                        self._retry[sub_id] = time.monotonic() + RESUBSCRIBE_AFTER_S

    def _resubscribe(self) -> float:
        """Send the subscribes that are due again; seconds until the next one (inf if none)."""
        now = time.monotonic()
        due = [s for s, t in self._retry.items() if t <= now]
        if due:
            subs = [{"id": s, "channelId": self._subs[s]} for s in due
                    if self._subs[s] in self.channels]
            for s in due:
                del self._retry[s]
                self._retries[s] = self._retries.get(s, 0) + 1
            if subs:
                self._ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
        return min(self._retry.values(), default=float("inf")) - now

    def recv(self, timeout_s: float) -> Received | None:
        """The next message data frame within ``timeout_s`` (control frames are handled on the
        way), or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            retry_in = self._resubscribe()
            try:
                frame = self._ws.recv(timeout=max(0.0, min(left, retry_in)))
            except TimeoutError:
                if retry_in < left:
                    continue  # a subscribe is due again: send it, then wait on
                return None
            if isinstance(frame, str):
                self._control(frame)
                continue
            if not frame or frame[0] != OP_MESSAGE_DATA:
                continue  # time, service or asset frames: not used by the view
            sub, ts, payload = parse_data(frame)
            cid = self._subs.get(sub)
            if cid is None or cid not in self.channels:
                continue
            return Received(self.channels[cid].topic, ts, payload, time.monotonic())

    def topics(self) -> dict[str, ChannelInfo]:
        """Advertised channels by topic."""
        return {c.topic: c for c in self.channels.values()}

    def subscribed(self) -> set[str]:
        """Topics this client has subscribed to."""
        return {self.channels[c].topic for c in self._subs.values() if c in self.channels}

    def close(self) -> None:
        """Close the connection."""
        self._stack.close()

    def __enter__(self) -> FoxgloveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
