"""``udml label``: spans from a CSV become label messages in a copy of a log; every other
record is kept byte for byte, and the log data set reads the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader

from udml_stream.data.logset import LogSource, read_log
from udml_stream.logs import LogError, LogWriter
from udml_stream.logs.format import unpack_frames
from udml_stream.logs.label import SpansError, label, read_spans
from udml_stream.messages import AudioChunk, CameraFrame, Label, decode, encode

NS = 1_000_000_000
LOG0 = 1_700_000_000 * NS  # receive times: wall clock
CAP0 = 50 * NS  # capture times: a monotonic clock
LAG = 3_000_000  # capture → receive


def _log(path: Path, seconds: int = 6, foxglove: bool = True) -> None:
    """10 fps camera, 50 ms audio chunks, captured on a monotonic clock, received 3 ms later
    on the wall clock; with Foxglove viewer channels (a foreign encoding to carry over)."""
    w = LogWriter(path, chunk_size=64 * 1024, foxglove=foxglove)
    events = []
    for i in range(seconds * 10):
        t = CAP0 + i * NS // 10
        events.append(CameraFrame("camera", i, t, t, image=np.full((8, 8), i % 256, np.uint8),
                                  encoding="mono8"))
    for j in range(seconds * 20):
        t = CAP0 + j * NS // 20
        events.append(AudioChunk("mic", j, t, t, samples=np.full(800, j, np.int16)))
    for msg in sorted(events, key=lambda m: m.capture_ns):
        f = encode(msg)
        w.write(msg.stream, f[1:], msg.seq, msg.capture_ns, msg.capture_ns - CAP0 + LOG0 + LAG,
                msg.kind, msg.stream, msg.clock, msg=msg)
    w.finish({"udml_recording": {"note": "kept"}})


def _records(path: Path) -> list[tuple[str, str, int, int, int, bytes]]:
    with open(path, "rb") as fh:
        return [(c.topic, c.message_encoding, m.log_time, m.publish_time, m.sequence, m.data)
                for _, c, m in make_reader(fh).iter_messages(log_time_order=True)]


def test_label_writes_spans_and_keeps_every_record(tmp_path: Path) -> None:
    src, out = tmp_path / "s.mcap", tmp_path / "labelled.mcap"
    _log(src)
    spans = tmp_path / "spans.csv"
    spans.write_text("start,end,label,condition\n# a comment\n0.5,2.5,3\n2.5,4,five_or_7,\n"
                     .replace("five_or_7", "7") + "4.5,5.5,1,noisy\n")
    rep = label(src, spans, out)
    assert rep.spans == 3 and rep.labels_written == 5  # 3 starts + closers at 4 s and 5.5 s
    before, after = _records(src), _records(out)
    assert [r for r in after if r[0] not in ("label", "condition")] == before
    assert {r[0] for r in before} >= {"camera/foxglove", "mic/foxglove"}
    truth = [(r[0], decode([r[0].encode(), *unpack_frames(r[5])])) for r in after
             if r[0] in ("label", "condition")]
    labels = [m for t, m in truth if t == "label"]
    assert [(m.label, m.name) for m in labels] == [(3, "3"), (7, "7"), (-1, ""), (1, "1"),
                                                    (-1, "")]
    # Stamped in the capture clock: log start + span start + the capture offset.
    assert labels[0].capture_ns == CAP0 + NS // 2 and labels[0].clock == "monotonic"
    conds = [m.name for t, m in truth if t == "condition"]
    assert conds == ["clean", "clean", "unlabelled", "noisy", "unlabelled"]
    with open(out, "rb") as fh:
        meta = {m.name: m.metadata for m in make_reader(fh).iter_metadata()}
    assert meta["udml_recording"] == {"note": "kept"} and "udml_labels" in meta


def test_labelled_log_is_training_data(tmp_path: Path) -> None:
    from udml_stream.data.logset import LogReadStats

    src, out = tmp_path / "s.mcap", tmp_path / "l.mcap"
    _log(src, foxglove=False)
    spans = tmp_path / "spans.csv"
    spans.write_text("0,3,2\n3,6,4\n")
    label(src, spans, out)
    stats = LogReadStats()
    _, _, ys = read_log(out, LogSource(), stats)
    # Frames with their whole 1 s window in a span: 1.0-2.9 s → 2, 4.0-5.9 s → 4.
    assert set(ys) == {2, 4} and ys.count(2) >= 15 and ys.count(4) >= 15


@pytest.mark.parametrize(("text", "match"), [
    ("0,1\n", r"spans.csv:1: 2 columns"),
    ("start,end,label\n0,1,3\nx,2,3\n", r"spans.csv:3: start 'x' is not a number"),
    ("0,1,3\n2,1,3\n", r"spans.csv:2: end 1 is not after start 2"),
    ("0,1,cat\n", r"spans.csv:1: label 'cat' is neither a class name"),
    ("0,2,3\n1,3,4\n", r"spans.csv:2: the span from 1.0 s overlaps the span of line 1"),
    ("0,inf,3\n", r"expected a finite number"),
    ("# nothing\n", "holds no span"),
])
def test_spans_errors_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "spans.csv"
    p.write_text(text)
    with pytest.raises(SpansError, match=match):
        read_spans(p)


def test_refusals(tmp_path: Path) -> None:
    src = tmp_path / "s.mcap"
    _log(src, seconds=2, foxglove=False)
    spans = tmp_path / "spans.csv"
    spans.write_text("0,1,3\n")
    once = tmp_path / "once.mcap"
    label(src, spans, once)
    with pytest.raises(LogError, match="already has messages on condition, label"):
        label(once, spans, tmp_path / "twice.mcap")
    rep = label(once, spans, tmp_path / "twice.mcap", replace=True)
    assert rep.replaced == 4
    with pytest.raises(LogError, match="is the input log"):
        label(src, spans, src)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(LogError, match="udml log recover"):
        label(cut, spans, tmp_path / "x.mcap")
    assert not (tmp_path / "x.mcap").exists()
    # The wire carries the -1 "no label" closer.
    assert decode(encode(Label("label", 0, 0, label=-1))).label == -1


def test_gaps_between_spans_are_not_trained_on(tmp_path: Path) -> None:
    from udml_stream.data.logset import LogReadStats

    src, out = tmp_path / "s.mcap", tmp_path / "l.mcap"
    _log(src, foxglove=False)
    spans = tmp_path / "spans.csv"
    spans.write_text("0,2.5,2\n4,6,4\n")  # 2.5-4 s has no label
    label(src, spans, out)
    stats = LogReadStats()
    _, _, ys = read_log(out, LogSource(), stats)
    assert set(ys) == {2, 4} and stats.unlabelled > 0


def test_label_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from udml_stream.cli.main import app

    src = tmp_path / "s.mcap"
    _log(src, foxglove=False)
    spans = tmp_path / "spans.csv"
    spans.write_text("start,end,label\n0,3,2\n3,6,4\n")
    r = CliRunner().invoke(app, ["label", str(src), "--spans", str(spans)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.labelled.mcap").is_file() and "2 spans" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1\n")
    r = CliRunner().invoke(app, ["label", str(src), "--spans", str(bad), "-o",
                                 str(tmp_path / "x.mcap")])
    assert r.exit_code == 2 and "bad.csv:1" in r.output


def test_spans_outside_the_log_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    from typer.testing import CliRunner

    from udml_stream.cli.main import app

    src = tmp_path / "s.mcap"
    _log(src, foxglove=False)  # records from 0 to 5.95 s
    spans = tmp_path / "spans.csv"
    # A span that ends past the log: labelled up to the end, with a warning naming its line.
    spans.write_text("start,end,label\n0,2,3\n5,7.5,4\n")
    with caplog.at_level("WARNING", logger="udml_stream.logs.label"):
        rep = label(src, spans, tmp_path / "l.mcap")
    assert rep.warnings == [f"{spans}:3: the span 5–7.5 s ends past the end of {src} (5.95 s "
                            "long); labelled up to the end"]
    assert rep.warnings[0] in caplog.text
    # Within END_SLACK_S of the end (times rounded by hand): no warning.
    spans.write_text("0,2,3\n5,6.2,4\n")
    assert label(src, spans, tmp_path / "l2.mcap").warnings == []
    # A span that starts after the log's end labels nothing: an error naming the line, and
    # nothing written (the new user's 60–70 s span on a 52.5 s log).
    spans.write_text("0,2,3\n\n60,70,4,clean\n")
    out = tmp_path / "l3.mcap"
    with pytest.raises(SpansError, match=r"spans\.csv:3: the span 60–70 s starts after the end "
                                         r"of .*s\.mcap \(5\.95 s long; see `udml log info`\)"):
        label(src, spans, out)
    assert not out.exists()
    r = CliRunner().invoke(app, ["label", str(src), "--spans", str(spans), "-o", str(out)])
    assert r.exit_code == 2 and "spans.csv:3: the span 60–70 s starts after the end" in r.output
