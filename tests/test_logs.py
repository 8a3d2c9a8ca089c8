"""MCAP logs: round trip through record → replay → record, the official reader, crash recovery,
damaged files, replay rates and lossless replay through the fusion node."""

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
from mcap.reader import make_reader

from udml_stream.data import avdigits
from udml_stream.launch.config import load_launch
from udml_stream.launch.supervisor import Supervisor
from udml_stream.logs import LogError, Recorder, RecorderConfig, info, iter_wire, recover
from udml_stream.logs.replay import ReplayConfig, Replayer
from udml_stream.messages import AudioChunk, CameraFrame
from udml_stream.transport import Publisher


def test_record_replay_record_round_trip(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    with Publisher(ep, bind=True, hwm=10_000) as pub:
        out1 = tmp_path / "a.mcap"
        rec = Recorder(RecorderConfig([ep], out1, chunk_size=64 * 1024))
        th = threading.Thread(target=rec.run)
        th.start()
        time.sleep(0.5)
        t0 = time.monotonic_ns()
        for i in range(30):
            pub.publish(AudioChunk("mic", i, t0 + i * 10_000_000, samples=np.full(80, i, np.float32)))
            pub.publish(CameraFrame("camera", i, t0 + i * 10_000_000,
                                    image=np.full((120, 160, 3), i, np.uint8)))
            time.sleep(0.005)
        time.sleep(0.5)
        rec.stop()
        th.join(10)
    # The official reader sees our channels, encodings and messages.
    with open(out1, "rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        topics = {c.topic: c for c in summary.channels.values()}
        assert set(topics) == {"camera", "mic"}
        assert all(c.message_encoding == "udml-wire/1" for c in topics.values())
        assert topics["camera"].metadata["kind"] == "camera_frame"
        assert summary.statistics.message_count == 60
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
        assert "udml_recording" in meta
    first = list(iter_wire(out1))
    # Replay into a second recorder: identical payloads, order and sequence numbers.
    rep_ep = f"ipc://{tmp_path}/replay"
    rep = Replayer(ReplayConfig(out1, rep_ep, rate=4.0, topics=["camera", "mic"]))
    out2 = tmp_path / "b.mcap"
    rec2 = Recorder(RecorderConfig([rep_ep], out2))
    th = threading.Thread(target=rec2.run)
    th.start()
    stats = rep.run()
    time.sleep(0.5)
    rec2.stop()
    th.join(10)
    rep.close()
    second = list(iter_wire(out2))
    assert stats.published == {"camera": 30, "mic": 30}
    assert [(r.topic, r.seq) for r in second] == [(r.topic, r.seq) for r in first]
    assert all([bytes(f) for f in a.frames] == [bytes(f) for f in b.frames]
               for a, b in zip(first, second, strict=True))
    assert all(a.capture_ns == b.capture_ns for a, b in zip(first, second, strict=True))
    i = info(out2)
    assert i.complete and i.topics["camera"].messages == 30 and i.topics["camera"].gaps == 0


def test_topic_patterns_compression_and_split(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    with Publisher(ep, bind=True) as pub:
        out = tmp_path / "s.mcap"
        rec = Recorder(RecorderConfig([ep], out, topics=["cam*"], compression="lz4",
                                      split_bytes=200_000))
        th = threading.Thread(target=rec.run)
        th.start()
        time.sleep(0.5)
        for i in range(20):
            pub.publish(CameraFrame("camera", i, i, image=np.full((120, 160, 3), i, np.uint8)))
            pub.publish(AudioChunk("mic", i, i, samples=np.zeros(80, np.float32)))
            time.sleep(0.005)
        time.sleep(0.5)
        rec.stop()
        th.join(10)
    assert len(rec.files) >= 2  # 20 × 57.6 kB frames split at 200 kB
    seqs = [r.seq for f in rec.files for r in iter_wire(f)]
    assert seqs == list(range(20))  # mic excluded by the pattern, nothing lost across files


def test_sigkill_recover_and_truncated_file(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    out = tmp_path / "k.mcap"
    with Publisher(ep, bind=True, hwm=10_000) as pub:
        proc = subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "record", ep,
                                 "-o", str(out)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        time.sleep(3.0)  # the recorder connects
        sent = 0
        for i in range(150):
            pub.publish(CameraFrame("camera", i, i, image=np.full((120, 160, 3), i % 256,
                                                                   np.uint8)))
            sent += 1
            time.sleep(0.004)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert out.exists()
    with pytest.raises(LogError, match="damaged"):
        list(iter_wire(out, strict=True))
    fixed = tmp_path / "fixed.mcap"
    n = recover(out, fixed).messages
    seqs = [r.seq for r in iter_wire(fixed, strict=True)]
    assert seqs == list(range(n))  # a clean prefix, in order
    per_chunk = 4 * 1024 * 1024 // (120 * 160 * 3) + 1
    assert sent - n <= per_chunk, (sent, n)  # only the chunk in progress is lost
    # A complete file cut in half: readable up to the damage, then a clear error.
    cut = tmp_path / "cut.mcap"
    data = fixed.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    got = list(iter_wire(cut))
    assert 0 < len(got) < n
    with pytest.raises(LogError, match="damaged"):
        list(iter_wire(cut, strict=True))


def test_replay_rates_and_seek(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    out = tmp_path / "r.mcap"
    with Publisher(ep, bind=True, hwm=10_000) as pub:
        rec = Recorder(RecorderConfig([ep], out))
        th = threading.Thread(target=rec.run)
        th.start()
        time.sleep(0.5)
        for i in range(40):
            pub.publish(AudioChunk("mic", i, time.monotonic_ns(), samples=np.zeros(80, np.float32)))
            time.sleep(0.02)
        time.sleep(0.3)
        rec.stop()
        th.join(10)
    recs = list(iter_wire(out))
    span = (recs[-1].log_ns - recs[0].log_ns) / 1e9
    for rate in (1.0, 4.0):
        rep = Replayer(ReplayConfig(out, f"ipc://{tmp_path}/rep{rate}", rate=rate,
                                    wait_subscribers_s=0.1))
        t = time.monotonic()
        stats = rep.run()
        took = time.monotonic() - t - 0.1
        rep.close()
        assert stats.unheard == {"mic": 40}  # no subscriber: handled, counted, not published
        # Behaviour, not a threshold on the machine's speed: 4× takes less time than 1×
        # would by construction, and the scheduler never publishes early.
        assert min(stats.timing_error_ns) >= 0
        assert took >= span / rate * 0.9
    rep = Replayer(ReplayConfig(out, f"ipc://{tmp_path}/seek", rate=100.0, start_s=0.2,
                                end_s=0.5, wait_subscribers_s=0.1))
    stats = rep.run()
    rep.close()
    assert 5 <= stats.unheard["mic"] <= 25


def test_lossless_replay_through_the_fusion_node(tmp_path: Path, scene, tiny_checkpoint) -> None:
    # Record a live camera + microphone session from the demo scene files.
    eps = {n: f"ipc://{tmp_path}/{n}" for n in ("camera", "mic", "fusion", "replay")}
    launch = tmp_path / "live.toml"
    launch.write_text(f"""
[nodes.camera]
program = "camera"
source = "{scene.video}"
endpoint = "{eps['camera']}"
[nodes.mic]
program = "microphone"
source = "file"
file = "{scene.audio}"
endpoint = "{eps['mic']}"
""")
    sup = Supervisor(launch, load_launch(launch))
    log_path = tmp_path / "live.mcap"
    rec = Recorder(RecorderConfig([eps["camera"], eps["mic"]], log_path))
    th = threading.Thread(target=rec.run)
    th.start()
    sup.start()
    time.sleep(scene.duration_s + 2.0)
    sup.stop()
    rec.stop()
    th.join(10)
    n_frames = info(log_path).topics["camera"].messages
    assert n_frames > 100
    # Replay it losslessly into a fusion node: every frame produces a result.
    fusion = tmp_path / "fusion.toml"
    fusion.write_text(f"""
[nodes.fusion]
program = "fusion"
checkpoint = "{tiny_checkpoint}"
device = "cpu"
threads = 1
subscribe = ["{eps['replay']}"]
endpoint = "{eps['fusion']}"
""")
    fsup = Supervisor(fusion, load_launch(fusion))
    rep = Replayer(ReplayConfig(log_path, eps["replay"], lossless=True,
                                results_endpoint=eps["fusion"], topics=["camera", "mic"],
                                wait_subscribers_s=60))
    fsup.start()
    try:
        stats = rep.run()
    finally:
        rep.close()
        fsup.stop()
    frames = {r.source_seq["camera"] for r in stats.results if "camera" in r.source_seq}
    assert stats.published["camera"] == n_frames
    assert stats.frames_without_result == 0
    assert len(frames) == n_frames


def test_foxglove_viewer_channels(tmp_path: Path) -> None:
    import base64
    import json

    ep = f"ipc://{tmp_path}/bus"
    out = tmp_path / "fx.mcap"
    with Publisher(ep, bind=True) as pub:
        rec = Recorder(RecorderConfig([ep], out, foxglove=True))
        th = threading.Thread(target=rec.run)
        th.start()
        time.sleep(0.5)
        img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        pub.publish(CameraFrame("camera", 0, 1, image=img))
        pub.publish(AudioChunk("mic", 0, 1, samples=np.full(160, 0.5, np.float32)))
        time.sleep(0.5)
        rec.stop()
        th.join(10)
    with open(out, "rb") as fh:
        reader = make_reader(fh)
        chans = {c.topic: c for c in reader.get_summary().channels.values()}
        schemas = reader.get_summary().schemas
        assert schemas[chans["camera/foxglove"].schema_id].name == "foxglove.RawImage"
        assert schemas[chans["mic/foxglove"].schema_id].name == "foxglove.RawAudio"
        msgs = {c.topic: json.loads(m.data) for _, c, m in reader.iter_messages(
            topics=["camera/foxglove", "mic/foxglove"])}
    raw = np.frombuffer(base64.b64decode(msgs["camera/foxglove"]["data"]), np.uint8)
    np.testing.assert_array_equal(raw.reshape(48, 64, 3), img)
    assert msgs["mic/foxglove"]["format"] == "pcm-s16" and msgs["mic/foxglove"]["sample_rate"] == 16000
    # The wire channels are untouched: the reader of udml logs ignores the viewer channels.
    assert [r.topic for r in iter_wire(out)] == ["camera", "mic"]


def test_labels_in_a_log_become_scored_segments(tmp_path: Path) -> None:
    from udml_stream.demo.logeval import segments_from_log
    from udml_stream.demo.run import score_results
    from udml_stream.messages import FusionResult, Label

    ep = f"ipc://{tmp_path}/bus"
    out = tmp_path / "l.mcap"
    base = 10**12
    with Publisher(ep, bind=True) as pub:
        rec = Recorder(RecorderConfig([ep], out))
        th = threading.Thread(target=rec.run)
        th.start()
        time.sleep(0.5)
        for i, (digit, cond) in enumerate([(3, "clean"), (5, "audio_noise"), (7, "clean")]):
            t = base + i * 2_000_000_000
            pub.publish(Label("label", i, t, label=digit, name=str(digit)))
            pub.publish(Label("condition", i, t, label=0, name=cond))
        time.sleep(0.5)
        rec.stop()
        th.join(10)
    segs, t0 = segments_from_log(out)
    assert t0 == base
    assert [(s.label, s.condition, s.start_s, s.end_s) for s in segs] == [
        (3, "clean", 0.0, 2.0), (5, "audio_noise", 2.0, 4.0), (7, "clean", 4.0, 6.0)]

    def res(t_s: float, pred: int) -> FusionResult:
        return FusionResult("fused", 0, base + int(t_s * 1e9), pred=pred,
                            weights={"image": 1.5, "audio": 0.5},
                            present={"image": True, "audio": True})

    # Only results whose 1 s audio window lies inside their segment are scored.
    scores = score_results(segs, [res(0.5, 3), res(1.5, 3), res(3.2, 1), res(5.5, 7)], t0, 1.0)
    by = {s.condition: s for s in scores}
    assert by["clean"].results == 2 and by["clean"].accuracy == 1.0
    assert by["audio_noise"].results == 1 and by["audio_noise"].accuracy == 0.0
    assert by["clean"].weight_share == {"audio": 0.25, "image": 0.75}


def test_results_without_audio_are_scored_from_their_segment_start() -> None:
    from udml_stream.demo.run import score_results
    from udml_stream.demo.scene import Segment
    from udml_stream.messages import FusionResult

    segs = [Segment(0, 4, 0.0, 1.5, "mic_unplugged"), Segment(1, 2, 1.5, 3.0, "camera_killed")]

    def res(t_s: float, pred: int, image: bool, audio: bool) -> FusionResult:
        return FusionResult("fused", 0, int(t_s * 1e9), pred=pred,
                            weights={"image": float(image), "audio": float(audio)},
                            present={"image": image, "audio": audio})

    scores = score_results(segs, [
        res(0.2, 4, True, False),  # camera only: the frame alone decides, scored from the start
        res(0.4, 4, True, True),  # the audio window reaches back before the segment: not scored
        res(1.2, 9, True, True),
        res(1.7, 2, False, True),  # audio only: its window starts in the previous segment
        res(2.6, 2, False, True),
    ], 0, 1.0)
    by = {s.condition: s for s in scores}
    assert by["mic_unplugged"].results == 2 and by["mic_unplugged"].accuracy == 0.5
    assert by["mic_unplugged"].audio_absent == 0.5 and by["mic_unplugged"].camera_absent == 0.0
    assert by["mic_unplugged"].weight_share == {"audio": 0.25, "image": 0.75}
    assert by["camera_killed"].results == 1 and by["camera_killed"].camera_absent == 1.0


def _field_like(data: avdigits.AVDigits) -> avdigits.AVDigits:
    """The small build as a natural preset would load it, without rendering 5,000 camera views
    (the natural scene takes its digits from MNIST itself): the clean speech table."""
    import dataclasses

    with np.load(data.info["cache"]) as z:
        clean = z["audio"].astype(np.float32) / 32768.0
    splits = {k: dataclasses.replace(s, tables={**s.tables, "audio": clean}, natural=True)
              for k, s in data.splits.items()}
    return dataclasses.replace(data, preset=avdigits.PRESETS["field"], splits=splits)


def _dbfs(x: np.ndarray) -> float:
    return float(10.0 * np.log10(np.mean(x.astype(np.float64) ** 2)))


def test_field_scene_covers_the_lens_and_puts_speech_over_a_room_floor(
        small_data: avdigits.AVDigits, tmp_path: Path) -> None:
    import cv2

    from udml_stream.demo.run import KILLS
    from udml_stream.demo.scene import SceneSpec, build_scene
    from udml_stream.sensors.microphone import read_wav

    default = {c for c, _ in SceneSpec().plan}
    assert {"camera_covered", "mic_unplugged", "camera_killed"} <= default
    assert {cond for _, cond, _ in KILLS} == {"mic_unplugged", "camera_killed"}
    spec = SceneSpec(plan=(("clean", 1), ("audio_noise", 1), ("camera_covered", 1),
                           ("mic_unplugged", 1)), fps=10.0)
    scene = build_scene(_field_like(small_data), tmp_path, spec)
    assert [s.condition for s in scene.segments] == [c for c, _ in spec.plan]
    cap = cv2.VideoCapture(str(scene.video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    per_seg = round(spec.segment_s * spec.fps)
    assert len(frames) == 4 * per_seg
    top, left = (spec.height - spec.digit_px) // 2, (spec.width - spec.digit_px) // 2
    digit = [f[top : top + spec.digit_px, left : left + spec.digit_px, 0].astype(float)
             for f in frames[per_seg // 2 :: per_seg]]
    assert digit[0].max() > 200  # a full-contrast MNIST digit
    # A hand over the lens: nearly black, with the sensor's noise still there.
    assert digit[2].mean() < 8.0 and digit[2].std() > 0.5

    x, sr = read_wav(scene.audio)
    seg, lead = round(spec.segment_s * sr), round(spec.lead_s * sr)
    assert len(x) == 4 * seg
    # Each clean utterance peaks at -20 dBFS.
    for i in (0, 2, 3):
        peak = 20.0 * np.log10(np.abs(x[i * seg + lead : i * seg + lead + sr]).max())
        assert -20.5 < peak < -19.5
    # The room floor (-70 dBFS RMS) before an utterance, and no digital silence anywhere.
    assert abs(_dbfs(x[3 * seg : 3 * seg + lead]) - spec.room_floor_dbfs) < 1.0
    frame_db = [_dbfs(x[k : k + 320]) for k in range(0, len(x) - 319, 320)]
    assert min(frame_db) > spec.room_floor_dbfs - 2.0
    # audio_noise: white noise 10 dB above the utterance's active power, over the whole segment.
    assert -32.0 < _dbfs(x[seg : seg + lead]) < -12.0


def test_replay_memory_measurement_replays_every_frame(tmp_path: Path) -> None:
    from udml_stream.benchmarks.logs import replay_memory

    res = replay_memory(tmp_path, 0.02)  # 21 frames of 640×480×3
    assert res["messages"] == int(0.02e9 // (640 * 480 * 3))
    assert res["rss_peak_MB"] >= res["rss_before_MB"] > 0
    assert not list(tmp_path.glob("*.mcap"))  # the big file is removed


def test_pack_frames_sizes_numpy_payloads_by_bytes() -> None:
    from udml_stream.logs import pack_frames, unpack_frames

    arr = np.arange(6, dtype=np.int16).reshape(2, 3)  # len() is 2, nbytes is 12
    out = unpack_frames(pack_frames([b"hdr", arr]))
    assert [bytes(f) for f in out] == [b"hdr", arr.tobytes()]
