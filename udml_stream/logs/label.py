"""Label a recorded log after the fact: spans of a CSV file become ``label`` messages.

``udml label LOG --spans spans.csv -o OUT`` writes a copy of LOG in which every record is kept
byte for byte (data, log time, publish time, sequence; every channel, viewer channels and
metadata included) and the ground truth is added on the label and condition topics the log
data set reads (``udml_stream/data/logset.py``).

The CSV has the columns ``start,end,label[,condition]`` (a header row with these names is
optional; blank lines and lines starting with ``#`` are skipped):

* ``start``, ``end``: seconds from the log's start in **log time**, the timeline of
  ``udml log info``, ``udml replay --start/--end`` and Foxglove's player;
* ``label``: a class name (``class_names``, by default the digits) or a class index;
* ``condition``: a free name such as ``clean`` (the default: recorded as is, no scripted
  degradation); training with ``conditions = ["clean"]`` keeps only those spans.

Spans are checked against the log's time range (from its first to its last record): a span that
starts at or after the log's end labels nothing and is an error naming its CSV line; one that
ends more than ``END_SLACK_S`` past the end is labelled up to the end, with a warning naming
its line.

A label holds from its start until the next label, so where a span ends without another one
starting, a label ``-1`` (no ground truth) and the condition ``unlabelled`` close it. Label
messages are stamped in the streams' capture clock: the span start plus the log's median
capture-minus-receive offset of its camera (or audio) records, so a camera frame and a label
written at the same instant line up whichever clock the sensors used.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mcap.reader import SeekingReader
from mcap.writer import CompressionType, Writer

from udml_stream.errors import UdmlError
from udml_stream.logs.format import MESSAGE_ENCODING, SCHEMA_NAME, pack_frames
from udml_stream.logs.reader import LogError
from udml_stream.messages import Label, encode

log = logging.getLogger(__name__)

CLASS_NAMES = tuple(str(d) for d in range(10))
NO_LABEL = -1  # closes a span: no ground truth from here on
UNLABELLED = "unlabelled"
_NS = 1_000_000_000
#: How far a span may end past the log's last record without a warning: times noted by hand
#: are rounded (a 52.5 s span end on a log whose last record is at 52.497 s is fine).
END_SLACK_S = 0.5


class SpansError(UdmlError):
    """The spans CSV is malformed; the message names the line and what was expected."""


@dataclass(frozen=True)
class Span:
    """One labelled stretch of a log: seconds from the log start, the class, the condition."""

    start_s: float
    end_s: float
    label: int
    name: str
    condition: str
    line: int  # in the CSV, for error messages


@dataclass
class LabelReport:
    """What ``label`` wrote."""

    output: Path
    spans: int
    labels_written: int  # label messages, span closers included
    records_copied: int
    replaced: int  # label/condition records of the input left out (``replace``)
    warnings: list[str] = field(default_factory=list)  # spans running past the log's end


def _number(cell: str, what: str, where: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise SpansError(f"{where}: {what} {cell!r} is not a number (seconds from the log "
                         "start)") from None
    if not math.isfinite(v) or v < 0:
        raise SpansError(f"{where}: {what} {cell!r}; expected a finite number of seconds ≥ 0")
    return v


def _class(cell: str, class_names: Sequence[str], where: str) -> tuple[int, str]:
    if cell in class_names:
        return list(class_names).index(cell), cell
    try:
        k = int(cell)
    except ValueError:
        k = -1
    if 0 <= k < len(class_names):
        return k, class_names[k]
    raise SpansError(f"{where}: label {cell!r} is neither a class name {list(class_names)} nor "
                     f"a class index 0..{len(class_names) - 1}")


def read_spans(path: Path, class_names: Sequence[str] = CLASS_NAMES) -> list[Span]:
    """The spans of ``path``, sorted by start; ``SpansError`` naming the line on any fault."""
    path = Path(path)
    if not path.is_file():
        raise SpansError(f"spans file {path} not found")
    spans: list[Span] = []
    with open(path, newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"{path}:{n}"
            if not spans and [c.lower() for c in cells[:3]] == ["start", "end", "label"]:
                continue  # the header row
            if len(cells) not in (3, 4):
                raise SpansError(f"{where}: {len(cells)} columns; expected start,end,label"
                                 "[,condition]")
            start = _number(cells[0], "start", where)
            end = _number(cells[1], "end", where)
            if end <= start:
                raise SpansError(f"{where}: end {cells[1]} is not after start {cells[0]}")
            k, name = _class(cells[2], class_names, where)
            cond = cells[3] if len(cells) == 4 and cells[3] else "clean"
            spans.append(Span(start, end, k, name, cond, n))
    if not spans:
        raise SpansError(f"{path} holds no span (expected lines start,end,label[,condition])")
    spans.sort(key=lambda s: s.start_s)
    for a, b in itertools.pairwise(spans):
        if b.start_s < a.end_s:
            raise SpansError(f"{path}:{b.line}: the span from {b.start_s} s overlaps the span of "
                             f"line {a.line} ({a.start_s}–{a.end_s} s)")
    return spans


def check_spans(spans: list[Span], duration_s: float, spans_csv: Path, log_path: Path
                ) -> list[str]:
    """Spans against the log's time range ``[0, duration_s]``: a ``SpansError`` naming the
    line for a span that starts at or after the end (it would label nothing); a warning line
    (returned) for each span that ends more than ``END_SLACK_S`` past it."""
    warnings = []
    for s in spans:
        where = f"{spans_csv}:{s.line}"
        if s.start_s >= duration_s:
            raise SpansError(f"{where}: the span {s.start_s:g}–{s.end_s:g} s starts after the "
                             f"end of {log_path} ({duration_s:.2f} s long; see `udml log info`): "
                             "wrong log, or times not in seconds from the log's start?")
        if s.end_s > duration_s + END_SLACK_S:
            warnings.append(f"{where}: the span {s.start_s:g}–{s.end_s:g} s ends past the end "
                            f"of {log_path} ({duration_s:.2f} s long); labelled up to the end")
    return warnings


def _events(spans: list[Span]) -> list[tuple[float, int, str, str]]:
    """(seconds, label, label name, condition) at each span start, and a closer at each end
    that no other span starts at."""
    out = []
    for i, s in enumerate(spans):
        out.append((s.start_s, s.label, s.name, s.condition))
        if i + 1 == len(spans) or spans[i + 1].start_s > s.end_s:
            out.append((s.end_s, NO_LABEL, "", UNLABELLED))
    return out


def label(log_path: Path, spans_csv: Path, out: Path, *, label_topic: str = "label",
          condition_topic: str = "condition", class_names: Sequence[str] = CLASS_NAMES,
          replace: bool = False) -> LabelReport:
    """Write ``out``: ``log_path`` with the spans of ``spans_csv`` as label and condition
    messages. A log that already has messages on those topics is refused unless ``replace``
    (then they are left out). ``out`` appears only once complete and may not be the input."""
    log_path, out = Path(log_path), Path(out)
    if not log_path.is_file():
        raise LogError(f"log {log_path} not found")
    if out.resolve() == log_path.resolve():
        raise LogError(f"label: the output {out} is the input log; write the copy elsewhere")
    spans = read_spans(spans_csv, class_names)
    with open(log_path, "rb") as fh:
        reader = SeekingReader(fh, validate_crcs=True)
        try:
            summary = reader.get_summary()
        except Exception:
            summary = None
        if summary is None or summary.statistics is None:
            raise LogError(f"{log_path} has no summary (recorder killed?): run `udml log recover "
                           f"{log_path}` first and label the recovered copy")
        t0 = summary.statistics.message_start_time
        warnings = check_spans(spans, (summary.statistics.message_end_time - t0) / _NS,
                               Path(spans_csv), log_path)
        for w in warnings:
            log.warning("%s", w)
        offset, clock = _capture_offset(reader, summary)
        truth = [(t0 + round(sec * _NS), k, name, cond)
                 for sec, k, name, cond in _events(spans)]
        tmp = out.with_name(f".{out.name}.partial")
        try:
            n, replaced = _copy_with_labels(reader, summary, tmp, truth, offset, clock,
                                            label_topic, condition_topic, replace, log_path,
                                            spans_csv)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("%s: %d spans labelled into %s", log_path, len(spans), out)
    return LabelReport(out, len(spans), len(truth), n, replaced, warnings)


def _capture_offset(reader: SeekingReader, summary) -> tuple[int, str]:
    """Median capture-minus-log-time offset of the camera (else audio) records, and their
    clock: the publish time of a udml record is the message's capture time."""
    for kind in ("camera_frame", "audio_chunk"):
        chans = [c for c in summary.channels.values()
                 if c.message_encoding == MESSAGE_ENCODING and c.metadata.get("kind") == kind]
        if not chans:
            continue
        diffs = []
        for _s, _c, m in reader.iter_messages(topics=[c.topic for c in chans]):
            diffs.append(m.publish_time - m.log_time)
            if len(diffs) >= 2000:
                break
        if diffs:
            return statistics.median_low(diffs), chans[0].metadata.get("clock", "monotonic")
    raise LogError("the log has no camera or audio records to place labels against")


def _copy_with_labels(reader: SeekingReader, summary, dst: Path,
                      truth: list[tuple[int, int, str, str]], offset: int, clock: str,
                      label_topic: str, condition_topic: str, replace: bool, src: Path,
                      spans_csv: Path) -> tuple[int, int]:
    ours = {label_topic, condition_topic}
    existing = [c.topic for c in summary.channels.values() if c.topic in ours]
    if existing and not replace:
        raise LogError(f"{src} already has messages on {', '.join(sorted(existing))}: pass "
                       "replace (--replace) to drop them in favour of the spans")
    with open(dst, "wb") as fh:
        w = Writer(fh, compression=CompressionType.ZSTD)
        w.start(profile="udml", library="udml_stream (label)")
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        wire_schema = None

        def schema_id(sid: int) -> int:
            if sid not in schemas:
                s = summary.schemas[sid] if sid else None
                schemas[sid] = 0 if s is None else w.register_schema(s.name, s.encoding, s.data)
            return schemas[sid]

        label_ch: dict[str, int] = {}
        conditions: dict[str, int] = {}

        def put_truth(t_log: int, k: int, name: str, cond: str, seq: int) -> None:
            nonlocal wire_schema
            if wire_schema is None:
                wire_schema = w.register_schema(SCHEMA_NAME, "", b"")
            for topic, lab, text in ((label_topic, k, name), (condition_topic, 0, cond)):
                if topic not in label_ch:
                    label_ch[topic] = w.register_channel(
                        topic, MESSAGE_ENCODING, wire_schema,
                        {"kind": "label", "stream": topic, "clock": clock})
                if topic == condition_topic:
                    lab = conditions.setdefault(text, len(conditions))
                t_cap = max(0, t_log + offset)
                frames = encode(Label(topic, seq, t_cap, t_cap, clock, label=lab, name=text))
                w.add_message(label_ch[topic], log_time=t_log, data=pack_frames(frames[1:]),
                              publish_time=t_cap, sequence=seq)

        pending = list(truth)
        seq = n = replaced = 0
        for schema, ch, m in reader.iter_messages(log_time_order=True):
            while pending and pending[0][0] <= m.log_time:
                put_truth(*pending.pop(0), seq)
                seq += 1
            if ch.topic in ours:
                replaced += 1
                continue
            if ch.id not in channels:
                sid = schema_id(schema.id if schema is not None else 0)
                if schema is not None and schema.name == SCHEMA_NAME and wire_schema is None:
                    wire_schema = sid
                channels[ch.id] = w.register_channel(ch.topic, ch.message_encoding, sid,
                                                     dict(ch.metadata))
            w.add_message(channels[ch.id], log_time=m.log_time, data=m.data,
                          publish_time=m.publish_time, sequence=m.sequence)
            n += 1
        for ev in pending:
            put_truth(*ev, seq)
            seq += 1
        for meta in reader.iter_metadata():
            w.add_metadata(meta.name, dict(meta.metadata))
        for att in reader.iter_attachments():
            w.add_attachment(att.create_time, att.log_time, att.name, att.media_type, att.data)
        w.add_metadata("udml_labels", {"spans": str(spans_csv), "source": str(src),
                                       "label_topic": label_topic,
                                       "condition_topic": condition_topic,
                                       "capture_offset_ns": str(offset)})
        w.finish()
    return n, replaced
