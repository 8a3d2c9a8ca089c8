"""One udml MCAP log file: wire-frame channels (and optional Foxglove viewer channels) in the
layout ``logs/format.py`` describes. ``udml record`` writes through it from live sockets and
``udml dataset build --sessions`` writes synthetic sessions through it, so both produce the
same files for the same reader."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from mcap.records import Channel, Schema
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
    """Writes wire messages into one MCAP file; channels are registered on first use.

    A chunk closes when it reaches ``chunk_size`` bytes or, at the next ``write`` or ``tick``,
    when its first message is ``chunk_seconds`` old (0 = size only), so a killed writer loses
    at most that much of any topic mix. Every chunk carries the schema and channel records of
    the channels it uses, so each CRC-checked chunk can be recovered on its own.
    """

    def __init__(self, path: Path, compression: str = "zstd", chunk_size: int = 4 * 1024 * 1024,
                 foxglove: bool = False, library: str = "udml_stream",
                 chunk_seconds: float = 0.0) -> None:
        if compression not in COMPRESSION:
            raise ValueError(f"compression = {compression!r}; expected one of {list(COMPRESSION)}")
        if chunk_seconds < 0:
            raise ValueError(f"chunk_seconds = {chunk_seconds}; expected ≥ 0 (0 = size only)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.foxglove = foxglove
        self.chunk_seconds = chunk_seconds
        self.bytes_written = 0
        self.chunks_closed_on_time = 0
        self._fh = _FlushingFile(io.FileIO(self.path, "wb"))
        self._writer = Writer(self._fh, chunk_size=chunk_size, compression=COMPRESSION[compression])
        self._writer.start(profile="udml", library=library)
        self._schema = self._writer.register_schema(SCHEMA_NAME, "", b"")
        self._channels: dict[str, int] = {}
        self._viewer_schemas: dict[str, int] = {}
        # What each channel needs in a chunk of its own: its schema record and channel record.
        self._records: dict[int, tuple[Schema, Channel]] = {}
        self._schema_records = {self._schema: Schema(id=self._schema, name=SCHEMA_NAME,
                                                     encoding="", data=b"")}
        self._in_chunk: set[int] = set()  # channel ids whose records the open chunk holds
        self._chunk_opened = 0.0  # monotonic time of the open chunk's first message
        self._open = True

    def _builder(self) -> Any:
        """The mcap writer's open chunk. ``mcap.Writer`` writes a channel record only into the
        chunk open when the channel is registered and offers no public way to repeat it, so the
        record is added to later chunks through the builder (the MCAP spec allows repeats)."""
        return getattr(self._writer, "_Writer__chunk_builder", None)

    def _register(self, topic: str, encoding: str, schema_id: int, meta: dict[str, str]) -> int:
        builder = self._builder()
        before = builder.num_messages if builder is not None else 0
        cid = self._writer.register_channel(topic, encoding, schema_id, meta)
        self._records[cid] = (self._schema_records[schema_id],
                              Channel(id=cid, topic=topic, message_encoding=encoding,
                                      schema_id=schema_id, metadata=dict(meta)))
        if before and builder.num_messages == 0:
            self._in_chunk.clear()  # the record tipped the chunk over its size: it went out
        else:
            self._in_chunk.discard(cid)  # written, but its schema may sit in an older chunk
        return cid

    def _add(self, cid: int, log_ns: int, data: bytes, publish_ns: int, seq: int) -> None:
        builder = self._builder()
        if builder is not None:
            if builder.num_messages == 0:
                self._chunk_opened = time.monotonic()
            if cid not in self._in_chunk:
                schema, channel = self._records[cid]
                builder.add_schema(schema)
                builder.add_channel(channel)
                self._in_chunk.add(cid)
        self._writer.add_message(cid, log_time=log_ns, data=data, publish_time=publish_ns,
                                 sequence=seq)
        if builder is not None and builder.num_messages == 0:
            self._in_chunk.clear()  # add_message closed the chunk on size

    def tick(self, now: float | None = None) -> bool:
        """Close the open chunk if its first message is ``chunk_seconds`` old; True if it did."""
        if not self._open or self.chunk_seconds <= 0:
            return False
        builder = self._builder()
        if builder is None or builder.num_messages == 0:
            return False
        if (time.monotonic() if now is None else now) - self._chunk_opened < self.chunk_seconds:
            return False
        self._writer.flush()  # finishes the chunk in progress and writes it to the file
        self._in_chunk.clear()
        self.chunks_closed_on_time += 1
        return True

    def write(self, topic: str, frames: list[Any], seq: int, capture_ns: int, log_ns: int,
              kind: str, stream: str, clock: str, msg: Message | None = None,
              channel_metadata: dict[str, str] | None = None) -> None:
        """Store one message's wire frames ``[header, *payload]`` (topic frame excluded).

        ``msg`` is the decoded message; with ``foxglove`` on it also goes to the viewer channel.
        ``channel_metadata`` replaces the default ``kind``/``stream``/``clock`` channel metadata
        when the channel is first registered (recovery copies the original's).
        """
        self.tick()
        if topic not in self._channels:
            meta = channel_metadata or {"kind": kind, "stream": stream, "clock": clock}
            self._channels[topic] = self._register(topic, MESSAGE_ENCODING, self._schema,
                                                   dict(meta))
        data = pack_frames(frames)
        self._add(self._channels[topic], log_ns, data, capture_ns, seq & 0xFFFFFFFF)
        self.bytes_written += len(data)
        view = viewer_message(msg, log_ns) if (self.foxglove and msg is not None) else None
        if view is not None:
            name, schema, payload = view
            vtopic = f"{topic}/foxglove"
            if name not in self._viewer_schemas:
                text = json.dumps(schema).encode()
                sid = self._writer.register_schema(name, "jsonschema", text)
                self._viewer_schemas[name] = sid
                self._schema_records[sid] = Schema(id=sid, name=name, encoding="jsonschema",
                                                   data=text)
            if vtopic not in self._channels:
                self._channels[vtopic] = self._register(vtopic, "json",
                                                        self._viewer_schemas[name], {})
            self._add(self._channels[vtopic], log_ns, payload, capture_ns, seq & 0xFFFFFFFF)
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
