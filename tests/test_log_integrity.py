"""Logs that never lose: chunks close on time, recovery trusts only CRC-valid chunks, the log
and replay commands refuse bad arguments with one line, and replay delivers what it counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Chunk, Message
from mcap.stream_reader import breakup_chunk
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.logs import LogError, info, iter_wire, recover
from udml_stream.logs.replay import ReplayConfig, Replayer
from udml_stream.logs.writer import LogWriter
from udml_stream.messages import AudioChunk, CameraFrame, Label, encode

MS = 1_000_000


def _write_log(path: Path, n: int, compression: str = "zstd", chunk_size: int = 16 * 1024
               ) -> None:
    """A log of ``n`` camera frames and ``n`` audio chunks, in many small chunks."""
    out = LogWriter(path, compression, chunk_size)
    rng = np.random.default_rng(0)
    for i in range(n):
        t = 1_000 * MS + i * 33 * MS
        for msg in (CameraFrame("camera", i, t, t, image=rng.integers(0, 255, (24, 32, 3),
                                                                      dtype=np.uint8)),
                    AudioChunk("mic", i, t, t, samples=rng.standard_normal(256, np.float32))):
            frames = encode(msg)
            out.write(msg.stream, frames[1:], msg.seq, msg.capture_ns, t + MS, msg.kind,
                      msg.stream, msg.clock)
    out.finish()


def _chunks(path: Path) -> list[tuple[int, int, list[Message]]]:
    """(start, end, messages) of every chunk, read with the official mcap reader's index."""
    out = []
    with open(path, "rb") as fh:
        for ci in make_reader(fh).get_summary().chunk_indexes:
            fh.seek(ci.chunk_start_offset + 9)  # past opcode and record length
            chunk = Chunk.read(ReadDataStream(fh))
            msgs = [r for r in breakup_chunk(chunk, validate_crc=True) if isinstance(r, Message)]
            out.append((ci.chunk_start_offset, ci.chunk_start_offset + ci.chunk_length, msgs))
    return out


def _read_back(path: Path) -> dict[tuple[str, int], bytes]:
    """(topic, sequence) → record data, through the official reader with CRCs checked."""
    with open(path, "rb") as fh:
        return {(ch.topic, m.sequence): m.data for _s, ch, m in
                make_reader(fh, validate_crcs=True).iter_messages()}


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_recover_skips_bit_flipped_chunks_and_never_writes_altered_messages(
        tmp_path: Path, compression: str) -> None:
    src = tmp_path / "good.mcap"
    _write_log(src, 300, compression)
    original = _read_back(src)
    chunks = _chunks(src)
    assert len(chunks) >= 10
    data = bytearray(src.read_bytes())
    hit = {1, 4, 5, len(chunks) - 2}  # a first-ish chunk, two neighbours, one near the end
    for k in hit:
        start, end, _ = chunks[k]
        data[(start + end) // 2] ^= 0x10  # one bit in the middle of the chunk's data
    bad = tmp_path / "flipped.mcap"
    bad.write_bytes(data)

    i = info(bad)
    assert i.damaged and len(i.damage) == len(hit)
    rep = recover(bad, tmp_path / "fixed.mcap")
    got = _read_back(tmp_path / "fixed.mcap")
    expected = {(("camera", "mic")[m.channel_id - 1], m.sequence)
                for k, (_s, _e, msgs) in enumerate(chunks) if k not in hit for m in msgs}
    assert set(got) == expected  # every intact chunk, nothing of a damaged one
    assert rep.messages == len(expected) and rep.chunks_bad == len(hit)
    assert all(got[key] == original[key] for key in got)  # 0 altered messages
    assert [(d.start, d.end) for d in rep.damage] == [chunks[k][:2] for k in sorted(hit)]
    assert not info(tmp_path / "fixed.mcap").damaged


def test_recover_resumes_after_a_broken_record_length_and_a_truncated_tail(tmp_path: Path) -> None:
    src = tmp_path / "good.mcap"
    _write_log(src, 200)
    chunks = _chunks(src)
    original = _read_back(src)
    data = bytearray(src.read_bytes())
    data[chunks[3][0] + 5] ^= 0x40  # the record length of chunk 3: the layout no longer adds up
    cut = chunks[-2][0] + (chunks[-2][1] - chunks[-2][0]) // 2  # mid-way through chunk -2
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(data[:cut])
    rep = recover(bad, tmp_path / "fixed.mcap")
    got = _read_back(tmp_path / "fixed.mcap")
    expected = {(("camera", "mic")[m.channel_id - 1], m.sequence)
                for k, (_s, _e, msgs) in enumerate(chunks[:-2]) if k != 3 for m in msgs}
    assert set(got) == expected
    assert all(got[key] == original[key] for key in got)
    assert rep.damage[0].start == chunks[3][0] and rep.damage[0].end == chunks[4][0]
    with pytest.raises(LogError, match="damaged"):
        list(iter_wire(bad, strict=True))
    assert {(r.topic, r.seq) for r in iter_wire(bad)} == expected  # past the damage too


def test_recover_and_info_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    log = tmp_path / "a.mcap"
    _write_log(log, 20)
    before = log.read_bytes()
    (tmp_path / "link.mcap").symlink_to(log)
    (tmp_path / "sub").mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a log\n")
    cases = [
        ["log", "recover", str(log), "-o", str(log)],
        ["log", "recover", str(log), "-o", str(tmp_path / "sub" / ".." / "a.mcap")],
        ["log", "recover", str(tmp_path / "link.mcap"), "-o", str(log)],
        ["log", "recover", str(tmp_path / "missing.mcap"), "-o", str(tmp_path / "out.mcap")],
        ["log", "recover", str(text), "-o", str(tmp_path / "out2.mcap")],
        ["log", "info", str(tmp_path / "missing.mcap")],
        ["log", "info", str(text)],
        ["log", "eval", str(tmp_path / "missing.mcap")],
    ]
    for args in cases:
        r = CliRunner().invoke(app, args)
        assert r.exit_code != 0, args
        lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in r.output, (args, r.output)
    assert log.read_bytes() == before
    assert not (tmp_path / "out.mcap").exists() and not (tmp_path / "out2.mcap").exists()
    assert not list(tmp_path.glob(".*partial"))
    r = CliRunner().invoke(app, ["log", "info", str(log)])
    assert r.exit_code == 0 and "complete" in r.output and "DAMAGED" not in r.output
    flipped = tmp_path / "flipped.mcap"
    data = bytearray(before)
    start, end, _ = _chunks(log)[0]
    data[(start + end) // 2] ^= 1
    flipped.write_bytes(data)
    r = CliRunner().invoke(app, ["log", "info", str(flipped)])
    assert "DAMAGED" in r.output and "CRC" in r.output, r.output


@pytest.mark.parametrize("args", [
    ["--rate", "0"], ["--rate", "-1"], ["--rate", "nan"], ["--remap", "camera"],
    ["--remap", "=x"], ["--start", "20", "--end", "10"], ["--start", "-3"], ["--lossless"],
    ["--order", "bogus"], ["--results", "tcp://127.0.0.1:1"], ["--topic", ""],
])
def test_replay_refuses_bad_arguments_with_one_line(tmp_path: Path, args: list[str]) -> None:
    log = tmp_path / "a.mcap"
    _write_log(log, 5)
    r = CliRunner().invoke(app, ["replay", str(log), "--endpoint", f"ipc://{tmp_path}/r", *args])
    assert r.exit_code == 2, r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()][-1].startswith("error: replay:")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args", [
    ["notanendpoint"], ["tcp://127.0.0.1:1", "--duration", "-1"],
    ["tcp://127.0.0.1:1", "--compression", "rar"], ["tcp://127.0.0.1:1", "--chunk-seconds", "-1"],
    ["tcp://127.0.0.1:1", "--split-mb", "-2"], ["tcp://127.0.0.1:1", "--topic", ""],
])
def test_record_refuses_bad_arguments_with_one_line(tmp_path: Path, args: list[str]) -> None:
    r = CliRunner().invoke(app, ["record", *args, "-o", str(tmp_path / "r.mcap")])
    assert r.exit_code == 2, r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()][-1].startswith("error: record:")
    assert not (tmp_path / "r.mcap").exists()


def test_replay_at_full_speed_delivers_every_message_it_counts(tmp_path: Path) -> None:
    log = tmp_path / "a.mcap"
    _write_log(log, 2000, chunk_size=256 * 1024)  # 4000 messages
    ep = f"ipc://{tmp_path}/replay"
    # drain_s long enough for any load; it ends as soon as the subscriber leaves.
    rep = Replayer(ReplayConfig(log, ep, rate=1e9, topics=["cam*", "mic"], drain_s=60.0))
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 50)  # a small receive queue: a dropping publisher would lose
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ep)
    got: list[bytes] = []

    def receive() -> None:
        # Leaves once it has all 4000 (or after 5 s of silence): the replayer's drain ends
        # when its last subscriber leaves.
        while len(got) < 4000 and sub.poll(5000):
            got.append(sub.recv_multipart()[0])
        sub.close()

    th = threading.Thread(target=receive)
    th.start()
    stats = rep.run()  # waits for the subscription (XPUB handshake)
    rep.close()  # drains until the subscriber has left, then the queued tail goes out
    th.join(30)
    ctx.term()
    assert stats.published == {"camera": 2000, "mic": 2000}
    assert len(got) == sum(stats.published.values())
    assert got.count(b"camera") == 2000


def test_replay_counts_messages_nobody_subscribed_to_as_unheard(tmp_path: Path) -> None:
    log = tmp_path / "a.mcap"
    _write_log(log, 10)
    rep = Replayer(ReplayConfig(log, f"ipc://{tmp_path}/r", rate=1e9, wait_subscribers_s=0.0))
    stats = rep.run()
    rep.close()
    assert stats.published == {} and stats.unheard == {"camera": 10, "mic": 10}
    assert stats.replayed == 20


def test_sigkilled_recorder_keeps_a_low_rate_topic(tmp_path: Path) -> None:
    """A 2 Hz label topic, the recorder SIGKILLed: every message is recoverable, because chunks
    close on time (1 s by default), not only at 4 MB."""
    out = tmp_path / "k.mcap"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "record",
                             f"tcp://127.0.0.1:{port}", "-o", str(out)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert pub.poll(30_000), "the recorder never subscribed"  # XPUB handshake
        assert pub.recv()[0] == 1
        sent = 0
        t0 = time.monotonic_ns()
        for i in range(12):
            pub.send_multipart(encode(Label("label", i, t0 + i * 500 * MS, label=i % 10,
                                            name=str(i % 10))))
            sent += 1
            if i < 11:
                time.sleep(0.5)  # the 2 Hz rate under test, not a wait for a result
        # Bounded wait for the last message's chunk to reach the disk (closed on time).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len({r.seq for r in iter_wire(out) if r.topic == "label"}) == sent:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        pub.close()
        ctx.term()
    assert not info(out).complete
    rep = recover(out, tmp_path / "fixed.mcap")
    seqs = sorted(r.seq for r in iter_wire(tmp_path / "fixed.mcap", strict=True)
                  if r.topic == "label")
    assert seqs == list(range(12)), (rep.summary, seqs)
