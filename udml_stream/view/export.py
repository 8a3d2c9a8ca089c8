"""``udml log export LOG --format foxglove``: a copy of a finished log with the viewer channels
the live view serves (``/<topic>/image``, ``/<topic>/level``, ``/<topic>/view``).

Every record of the original is copied unchanged (messages with their three stamps, schemas,
channels, metadata, attachments), so the copy is still a udml log that replay and training read;
the viewer records are added beside them with the original's log time (they interleave on
Foxglove's timeline), the capture time as publish time and in their ``timestamp`` field. A wire
record that does not decode is copied and counted, and gets no viewer record.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mcap.reader import SeekingReader
from mcap.writer import CompressionType, Writer

from udml_stream.logs.format import MESSAGE_ENCODING, unpack_frames
from udml_stream.logs.foxglove import ViewOptions, view_record
from udml_stream.logs.reader import LogError
from udml_stream.messages import DecodeError, decode

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    """What ``export_foxglove`` wrote."""

    output: Path
    copied: int = 0  # original message records, all of them
    written: dict[str, int] = field(default_factory=dict)  # viewer topic → records added
    skipped: dict[str, int] = field(default_factory=dict)  # "topic: reason" → wire records


def export_foxglove(log_path: Path, out: Path, opts: ViewOptions | None = None) -> ExportReport:
    """Write ``out``: ``log_path`` with the viewer channels added. The log must be complete
    (``udml log recover`` first otherwise); ``out`` appears only once complete and may not be
    the input."""
    opts = opts or ViewOptions()
    try:
        opts.check()
    except ValueError as err:
        raise LogError(f"export: {err}") from None
    log_path, out = Path(log_path), Path(out)
    if not log_path.is_file():
        raise LogError(f"log {log_path} not found")
    if out.exists() and out.resolve() == log_path.resolve():
        raise LogError(f"export: the output {out} is the input log; write the copy elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(log_path, "rb") as src, open(tmp, "wb") as dst:
            report = _copy(SeekingReader(src, validate_crcs=True), log_path, dst, opts)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    report.output = out
    log.info("%s: %d records copied, viewer records %s into %s", log_path, report.copied,
             report.written, out)
    return report


def _copy(reader: SeekingReader, src: Path, dst, opts: ViewOptions) -> ExportReport:
    try:
        summary = reader.get_summary()
    except Exception:  # mcap raises several types on a file without a readable summary
        summary = None
    if summary is None or summary.statistics is None:
        raise LogError(f"{src} has no summary (recorder killed?): run `udml log recover {src}` "
                       "first and export the recovered copy")
    report = ExportReport(Path())
    written: Counter = Counter()
    skipped: Counter = Counter()
    w = Writer(dst, compression=CompressionType.ZSTD)
    w.start(profile="udml", library="udml_stream (export foxglove)")
    schemas: dict[int, int] = {}
    channels: dict[int, int] = {}
    view_schemas: dict[str, int] = {}
    view_channels: dict[str, int] = {}
    originals = {c.topic for c in summary.channels.values()}

    def schema_id(sid: int) -> int:
        if sid not in schemas:
            s = summary.schemas.get(sid) if sid else None
            schemas[sid] = 0 if s is None else w.register_schema(s.name, s.encoding, s.data)
        return schemas[sid]

    for schema, ch, m in reader.iter_messages(log_time_order=True):
        if ch.id not in channels:
            channels[ch.id] = w.register_channel(ch.topic, ch.message_encoding,
                                                 schema_id(schema.id if schema else 0),
                                                 dict(ch.metadata))
        w.add_message(channels[ch.id], log_time=m.log_time, data=m.data,
                      publish_time=m.publish_time, sequence=m.sequence)
        report.copied += 1
        if ch.message_encoding != MESSAGE_ENCODING:
            continue  # viewer channels of `udml record --foxglove`, or foreign ones: kept as is
        try:
            msg = decode([ch.topic.encode(), *unpack_frames(m.data)])
        except (DecodeError, ValueError) as err:
            skipped[f"{ch.topic}: {getattr(err, 'reason', 'not udml-wire/1')}"] += 1
            continue
        rec = view_record(msg, opts)
        if rec is None:
            continue
        if rec.topic in originals:
            raise LogError(f"{src} already has a channel {rec.topic}: it was exported before; "
                           "export the original log")
        if rec.topic not in view_channels:
            if rec.schema_name not in view_schemas:
                view_schemas[rec.schema_name] = w.register_schema(
                    rec.schema_name, "jsonschema", json.dumps(rec.schema).encode())
            view_channels[rec.topic] = w.register_channel(rec.topic, "json",
                                                          view_schemas[rec.schema_name], {})
        w.add_message(view_channels[rec.topic], log_time=m.log_time, data=rec.data,
                      publish_time=rec.stamp_ns, sequence=m.sequence)
        written[rec.topic] += 1
    for meta in reader.iter_metadata():
        w.add_metadata(meta.name, dict(meta.metadata))
    for att in reader.iter_attachments():
        w.add_attachment(att.create_time, att.log_time, att.name, att.media_type, att.data)
    w.finish()
    report.written, report.skipped = dict(written), dict(skipped)
    return report
