"""Read udml MCAP logs: indexed seeks when the file is complete, a streaming read up to the
damage when it is not, a summary (``udml log info``) and recovery (``udml log recover``)."""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mcap.reader import SeekingReader

from udml_stream.errors import UdmlError
from udml_stream.logs.format import MESSAGE_ENCODING, unpack_frames
from udml_stream.logs.scan import Damage, LogScan, ScanError, ScanReport
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


def _check_input(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise LogError(f"log {path} not found")
    if not path.is_file():
        raise LogError(f"log {path} is not a file")
    return path


def iter_wire(path: Path, topics: Iterable[str] | None = None, start_ns: int | None = None,
              end_ns: int | None = None, strict: bool = False) -> Iterator[WireRecord]:
    """Yield the records of ``path``: in log-time order through the chunk index (chunk CRCs
    checked) when the file is complete; otherwise, in file order, every message of every chunk
    whose CRC checks, past any damage (see ``logs/scan.py``). Damage is logged, or with
    ``strict`` raised as a ``LogError`` after the intact messages."""
    path = _check_input(path)
    topic_list = list(topics) if topics is not None else None
    with open(path, "rb") as fh:
        complete = _complete(fh)
    if not complete:
        log.warning("%s has no summary (recorder killed?): reading every intact chunk", path)
        yield from _iter_scanned(path, topic_list, start_ns, end_ns, strict)
        return
    with open(path, "rb") as fh:
        it = SeekingReader(fh, validate_crcs=True).iter_messages(
            topics=topic_list, starting_at=start_ns, ending_before=end_ns, log_time_order=True)
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
            text = (f"{path} is damaged after {n} readable messages: {type(err).__name__}: "
                    f"{err} (`udml log recover` keeps every intact chunk)")
            if strict:
                raise LogError(text) from None
            log.warning("%s", text)


def damage_text(rep: ScanReport) -> str:
    """One line about what a scan could not trust."""
    parts = [f"{rep.messages} intact messages in {rep.chunks_ok} chunks"]
    if rep.damage:
        parts.append(f"{len(rep.damage)} damaged stretch(es) skipped, the first at "
                     + rep.damage[0].describe())
    if rep.orphan_messages:
        parts.append(f"{rep.orphan_messages} messages on channels whose record was lost")
    if not rep.reached_data_end:
        parts.append("the file ends without its summary (truncated, or the recorder was killed)")
    return "; ".join(parts)


def _iter_scanned(path: Path, topics: list[str] | None, start_ns: int | None,
                  end_ns: int | None, strict: bool) -> Iterator[WireRecord]:
    scan = LogScan(path)
    try:
        for ch, msg in scan.messages():
            if ch.message_encoding != MESSAGE_ENCODING:
                continue
            if topics is not None and ch.topic not in topics:
                continue
            if (start_ns is not None and msg.log_time < start_ns) or (
                    end_ns is not None and msg.log_time >= end_ns):
                continue
            try:
                payload = unpack_frames(msg.data)
            except ValueError as err:  # CRC-valid but not udml-wire: a foreign writer
                log.warning("%s: skipped a %s record: %s", path, ch.topic, err)
                continue
            yield WireRecord(ch.topic, [ch.topic.encode(), *payload], msg.log_time,
                             msg.publish_time, msg.sequence, dict(ch.metadata))
    except ScanError as err:
        raise LogError(str(err)) from None
    rep = scan.report
    if rep.damaged:
        text = f"{path} is damaged: {damage_text(rep)}"
        if strict:
            raise LogError(text)
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
    complete: bool  # has a summary (finished by its writer)
    messages: int = 0
    start_ns: int = 0
    end_ns: int = 0
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    damaged: bool = False  # a chunk failed its CRC, a stretch did not parse, or it is truncated
    damage_summary: str = ""

    @property
    def duration_s(self) -> float:
        """Log time span in seconds."""
        return max(0, self.end_ns - self.start_ns) / 1e9


def info(path: Path) -> LogInfo:
    """Scan ``path`` once, checking every chunk's CRC, and summarise what is intact (counts,
    duration, rates, gaps, recorded drops) and what is damaged."""
    path = _check_input(path)
    scan = LogScan(path)
    out = LogInfo(path, False)
    last_seq: dict[str, int] = {}
    try:
        for ch, msg in scan.messages():
            if ch.message_encoding != MESSAGE_ENCODING:
                continue
            t = out.topics.setdefault(ch.topic, TopicInfo(first_ns=msg.log_time,
                                                          kind=ch.metadata.get("kind", "")))
            t.messages += 1
            # The record holds a u32 count and a u64 length per frame before the frames.
            t.bytes += max(0, len(msg.data) - 4 - 8 * struct.unpack_from("<I", msg.data)[0])
            t.first_ns = min(t.first_ns, msg.log_time)
            t.last_ns = max(t.last_ns, msg.log_time)
            prev = last_seq.get(ch.topic)
            if prev is not None and msg.sequence > prev + 1:
                t.gaps += msg.sequence - prev - 1
            last_seq[ch.topic] = msg.sequence
            out.messages += 1
            out.start_ns = msg.log_time if out.start_ns == 0 else min(out.start_ns, msg.log_time)
            out.end_ns = max(out.end_ns, msg.log_time)
    except ScanError as err:
        raise LogError(str(err)) from None
    rep = scan.report
    out.damage, out.damaged = list(rep.damage), rep.damaged
    out.damage_summary = damage_text(rep) if rep.damaged else ""
    if rep.reached_data_end and rep.summary_ok:
        with open(path, "rb") as fh:
            out.complete = _complete(fh)
            if out.complete:
                out.metadata = {m.name: dict(m.metadata)
                                for m in SeekingReader(fh).iter_metadata()}
    rec_meta = out.metadata.get("udml_recording", {})
    for topic, st in json.loads(rec_meta.get("topics", "{}")).items():
        if topic in out.topics:
            out.topics[topic].recorded_drops = int(st.get("dropped_queue", 0))
    return out


@dataclass
class RecoverReport:
    """What ``recover`` copied and what it left out (and why)."""

    messages: int
    chunks_ok: int
    chunks_bad: int
    damage: list[Damage]
    orphan_messages: int
    other_encoding: int  # CRC-valid messages of non-udml channels (viewer channels), not copied
    summary: str


def _same_file(a: Path, b: Path) -> bool:
    if b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def recover(src: Path, dst: Path, compression: str = "zstd") -> RecoverReport:
    """Copy every message of every CRC-valid chunk of ``src`` into a complete, indexed ``dst``.

    A chunk whose CRC fails is left out whole (never copied with fresh CRCs, which would pass
    damage off as valid) and the scan resumes at the next valid chunk; the skipped byte and time
    ranges are reported. ``dst`` equal to ``src`` is refused, a missing ``src`` creates nothing,
    and ``dst`` appears only once it is complete (written beside it, then renamed).
    """
    src, dst = _check_input(src), Path(dst)
    if _same_file(src, dst):
        raise LogError(f"recover: the output {dst} is the input log; write the copy elsewhere "
                       "(e.g. -o " f"{src.with_name(src.stem + '.recovered.mcap')})")
    if dst.exists() and not dst.is_file():
        raise LogError(f"recover: the output {dst} exists and is not a file")
    scan = LogScan(src)
    tmp = dst.with_name(f".{dst.name}.partial")
    n = other = 0
    out = LogWriter(tmp, compression, chunk_size=1024 * 1024, library="udml_stream (recovered)")
    try:
        for ch, msg in scan.messages():
            if ch.message_encoding != MESSAGE_ENCODING:
                other += 1
                continue
            meta = dict(ch.metadata)
            # Unpacked only to hand LogWriter its frames: the record is re-packed byte for byte.
            out.write(ch.topic, unpack_frames(msg.data), msg.sequence, msg.publish_time,
                      msg.log_time, meta.get("kind", ""), meta.get("stream", ""),
                      meta.get("clock", ""), channel_metadata=meta)
            n += 1
        rep = scan.report
        text = damage_text(rep) if rep.damaged else "no damage found"
        out.finish({"udml_recovered": {
            "source": str(src), "messages": str(n), "chunks_skipped": str(rep.chunks_bad),
            "damage": json.dumps([vars(d) for d in rep.damage])}})
        tmp.replace(dst)
    except ScanError as err:
        raise LogError(str(err)) from None
    finally:
        out.finish()
        tmp.unlink(missing_ok=True)
    return RecoverReport(n, rep.chunks_ok, rep.chunks_bad, list(rep.damage), rep.orphan_messages,
                         other, text)
