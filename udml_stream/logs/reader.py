"""Read udml MCAP logs: indexed seeks when the file is complete, a streaming read up to the
damage when it is not, a summary (``udml log info``) and recovery (``udml log recover``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mcap.reader import NonSeekingReader, SeekingReader

from udml_stream.errors import UdmlError
from udml_stream.logs.format import MESSAGE_ENCODING, unpack_frames
from udml_stream.logs.writer import LogWriter

log = logging.getLogger(__name__)


class LogError(UdmlError):
    """A log cannot be read (the message says how far it was readable)."""


@dataclass
class WireRecord:
    """One recorded message: its topic, exact wire frames and the three stamps."""

    topic: str
    frames: list[bytes | memoryview]  # [topic, header, *payload], ready to send
    log_ns: int
    capture_ns: int
    seq: int
    channel_meta: dict[str, str]


def _complete(fh) -> bool:
    try:
        return SeekingReader(fh).get_summary() is not None
    except Exception:
        return False
    finally:
        fh.seek(0)


def iter_wire(path: Path, topics: Iterable[str] | None = None, start_ns: int | None = None,
              end_ns: int | None = None, strict: bool = False) -> Iterator[WireRecord]:
    """Yield the records of ``path`` in log-time order, seeking through the chunk index when the
    file is complete. A truncated or corrupt file yields every message before the damage, then
    logs (or with ``strict`` raises) a ``LogError``."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"log {path} not found")
    topic_list = list(topics) if topics is not None else None
    with open(path, "rb") as fh:
        if _complete(fh):
            it = SeekingReader(fh).iter_messages(topics=topic_list, starting_at=start_ns,
                                                 ending_before=end_ns, log_time_order=True)
        else:
            log.warning("%s has no summary (recorder killed?): reading up to the damage", path)
            # File order (= the recorder's receive order): sorting would buffer the whole file
            # and fail at the damage before yielding anything.
            it = NonSeekingReader(fh).iter_messages(topics=topic_list, starting_at=start_ns,
                                                    ending_before=end_ns, log_time_order=False)
        n = 0
        try:
            for _schema, ch, msg in it:
                if ch.message_encoding != MESSAGE_ENCODING:
                    continue
                frames = [ch.topic.encode(), *unpack_frames(msg.data)]
                n += 1
                yield WireRecord(ch.topic, frames, msg.log_time, msg.publish_time, msg.sequence,
                                 ch.metadata)
        except Exception as err:  # mcap raises many types on truncated or corrupt data
            text = f"{path} is damaged after {n} readable messages: {type(err).__name__}: {err}"
            if strict:
                raise LogError(text) from None
            log.warning("%s", text)


@dataclass
class TopicInfo:
    """Per-topic facts of a log."""

    messages: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    gaps: int = 0
    kind: str = ""
    recorded_drops: int = 0


@dataclass
class LogInfo:
    """What ``udml log info`` prints."""

    path: Path
    complete: bool
    messages: int = 0
    start_ns: int = 0
    end_ns: int = 0
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Log time span in seconds."""
        return max(0, self.end_ns - self.start_ns) / 1e9


def info(path: Path) -> LogInfo:
    """Scan ``path`` once and summarise it (counts, duration, rates, gaps, recorded drops)."""
    path = Path(path)
    with open(path, "rb") as fh:
        complete = _complete(fh)
        meta = {}
        if complete:
            for m in SeekingReader(fh).iter_metadata():
                meta[m.name] = dict(m.metadata)
    out = LogInfo(path, complete, metadata=meta)
    last_seq: dict[str, int] = {}
    for rec in iter_wire(path):
        t = out.topics.setdefault(rec.topic, TopicInfo(first_ns=rec.log_ns,
                                                       kind=rec.channel_meta.get("kind", "")))
        t.messages += 1
        t.bytes += sum(memoryview(f).nbytes for f in rec.frames[1:])
        t.last_ns = rec.log_ns
        prev = last_seq.get(rec.topic)
        if prev is not None and rec.seq > prev + 1:
            t.gaps += rec.seq - prev - 1
        last_seq[rec.topic] = rec.seq
        out.messages += 1
        out.start_ns = rec.log_ns if out.start_ns == 0 else min(out.start_ns, rec.log_ns)
        out.end_ns = max(out.end_ns, rec.log_ns)
    rec_meta = meta.get("udml_recording", {})
    for topic, st in json.loads(rec_meta.get("topics", "{}")).items():
        if topic in out.topics:
            out.topics[topic].recorded_drops = int(st.get("dropped_queue", 0))
    return out


def recover(src: Path, dst: Path, compression: str = "zstd") -> int:
    """Copy every readable message of a damaged ``src`` into a complete, indexed ``dst``."""
    n = 0
    out = LogWriter(dst, compression, chunk_size=1024 * 1024,
                    library="udml_stream (recovered)")
    try:
        for rec in iter_wire(src):
            meta = rec.channel_meta
            out.write(rec.topic, rec.frames[1:], rec.seq, rec.capture_ns, rec.log_ns,
                      meta.get("kind", ""), meta.get("stream", ""), meta.get("clock", ""),
                      channel_metadata=meta)
            n += 1
    finally:
        out.finish({"udml_recovered": {"source": str(src), "messages": str(n)}})
    return n
