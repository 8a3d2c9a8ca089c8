"""One udml MCAP log file: wire-frame channels (and optional Foxglove viewer channels) in the
layout ``logs/format.py`` describes. ``udml record`` writes through it from live sockets and
``udml dataset build --sessions`` writes synthetic sessions through it, so both produce the
same files for the same reader."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from mcap.writer import CompressionType, Writer

from udml_stream.logs.format import MESSAGE_ENCODING, SCHEMA_NAME, pack_frames
from udml_stream.logs.foxglove import viewer_message
from udml_stream.messages import Message

COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
               "none": CompressionType.NONE}


class _FlushingFile(io.BufferedWriter):
    """Flushes after every write. With chunking on, the MCAP writer keeps messages in memory and
    writes once per finished chunk, so each chunk reaches the OS at once and a SIGKILL loses at
    most the chunk in progress."""

    def write(self, b: bytes) -> int:  # type: ignore[override]
        n = super().write(b)
        self.flush()
        return n


class LogWriter:
    """Writes wire messages into one MCAP file; channels are registered on first use."""

    def __init__(self, path: Path, compression: str = "zstd", chunk_size: int = 4 * 1024 * 1024,
                 foxglove: bool = False, library: str = "udml_stream") -> None:
        if compression not in COMPRESSION:
            raise ValueError(f"compression = {compression!r}; expected one of {list(COMPRESSION)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.foxglove = foxglove
        self.bytes_written = 0
        self._fh = _FlushingFile(io.FileIO(self.path, "wb"))
        self._writer = Writer(self._fh, chunk_size=chunk_size, compression=COMPRESSION[compression])
        self._writer.start(profile="udml", library=library)
        self._schema = self._writer.register_schema(SCHEMA_NAME, "", b"")
        self._channels: dict[str, int] = {}
        self._viewer_schemas: dict[str, int] = {}
        self._open = True

    def write(self, topic: str, frames: list[Any], seq: int, capture_ns: int, log_ns: int,
              kind: str, stream: str, clock: str, msg: Message | None = None,
              channel_metadata: dict[str, str] | None = None) -> None:
        """Store one message's wire frames ``[header, *payload]`` (topic frame excluded).

        ``msg`` is the decoded message; with ``foxglove`` on it also goes to the viewer channel.
        ``channel_metadata`` replaces the default ``kind``/``stream``/``clock`` channel metadata
        when the channel is first registered (recovery copies the original's).
        """
        if topic not in self._channels:
            meta = channel_metadata or {"kind": kind, "stream": stream, "clock": clock}
            self._channels[topic] = self._writer.register_channel(
                topic, MESSAGE_ENCODING, self._schema, dict(meta))
        data = pack_frames(frames)
        self._writer.add_message(self._channels[topic], log_time=log_ns, data=data,
                                 publish_time=capture_ns, sequence=seq & 0xFFFFFFFF)
        self.bytes_written += len(data)
        view = viewer_message(msg, log_ns) if (self.foxglove and msg is not None) else None
        if view is not None:
            name, schema, payload = view
            vtopic = f"{topic}/foxglove"
            if name not in self._viewer_schemas:
                self._viewer_schemas[name] = self._writer.register_schema(
                    name, "jsonschema", json.dumps(schema).encode())
            if vtopic not in self._channels:
                self._channels[vtopic] = self._writer.register_channel(
                    vtopic, "json", self._viewer_schemas[name])
            self._writer.add_message(self._channels[vtopic], log_time=log_ns, data=payload,
                                     publish_time=capture_ns, sequence=seq & 0xFFFFFFFF)
            self.bytes_written += len(payload)

    def finish(self, metadata: dict[str, dict[str, str]] | None = None) -> None:
        """Write ``metadata`` records (name → string map), the summary and close (idempotent)."""
        if not self._open:
            return
        self._open = False
        for name, values in (metadata or {}).items():
            self._writer.add_metadata(name, values)
        self._writer.finish()
        self._fh.close()
