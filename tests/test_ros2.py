"""ROS 2 bags in and out (udml_stream.logs.ros2): real bags written with rosbags' own writer,
converted into udml logs, trained from, exported and read back with rosbags and mcap."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from udml_stream.logs import LogWriter, iter_wire, ros2
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Heartbeat, Label, decode, encode

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # ROS time: wall clock
SR = 16000
CHUNK = 800  # 50 ms


def _img(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _pcm(i: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    return rng.integers(-3000, 3000, CHUNK, dtype=np.int16)


def _write_bag(path: Path, seconds: float = 3.0, storage=StoragePlugin.MCAP,
               corrupt_frame: int | None = None) -> None:
    """10 fps rgb8 frames (rows padded), 50 ms int16 AudioStamped chunks, PNG frames on a
    second camera, labels (Int32) at 0 s and 1.5 s, a condition (String) at 0 s."""
    store = ros2._typestore(["audio_common_msgs/msg/AudioStamped"])
    T = store.types
    w = Writer(path, version=9, storage_plugin=storage)
    w.open()
    cam = w.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
    png = w.add_connection("/cam/compressed", "sensor_msgs/msg/CompressedImage", typestore=store)
    mic = w.add_connection("/audio", "audio_common_msgs/msg/AudioStamped", typestore=store)
    lab = w.add_connection("/truth", "std_msgs/msg/Int32", typestore=store)
    cond = w.add_connection("/cond", "std_msgs/msg/String", typestore=store)
    events = []
    for k, t_s in enumerate((0.0, 1.5)):
        events.append((T0 + int(t_s * NS), lab, "std_msgs/msg/Int32",
                       T["std_msgs/msg/Int32"](data=(3, 5)[k])))
    events.append((T0, cond, "std_msgs/msg/String", T["std_msgs/msg/String"](data="clean")))
    for i in range(int(seconds * 10) + 1):
        t = T0 + i * NS // 10
        img = _img(i)
        padded = np.zeros((24, 100), np.uint8)  # step 100 > 32 * 3: row padding to drop
        padded[:, :96] = img[..., ::-1].reshape(24, 96)  # stored as rgb8
        msg = T["sensor_msgs/msg/Image"](header=ros2._header(store, t, "cam"), height=24,
                                          width=32, encoding="rgb8", is_bigendian=0, step=100,
                                          data=padded.reshape(-1))
        events.append((t + 2_000_000, cam, "sensor_msgs/msg/Image", msg))
        ok, enc = cv2.imencode(".png", img)
        assert ok
        events.append((t + 3_000_000, png, "sensor_msgs/msg/CompressedImage",
                       T["sensor_msgs/msg/CompressedImage"](
                           header=ros2._header(store, t, "cam"), format="png",
                           data=enc.reshape(-1))))
    for j in range(int(seconds * SR) // CHUNK):
        t = T0 + j * CHUNK * NS // SR
        _, msg = ros2._ros_message(store, AudioChunk("mic", j, t, samples=_pcm(j),
                                                     sample_rate=SR), "condition")
        events.append((t + CHUNK * NS // SR + 1_000_000, mic,
                       "audio_common_msgs/msg/AudioStamped", msg))
    for n, (ts, conn, typ, msg) in enumerate(sorted(events, key=lambda e: e[0])):
        raw = store.serialize_cdr(msg, typ)
        if corrupt_frame is not None and conn is cam and n // 3 == corrupt_frame:
            raw = raw[:40]  # truncated CDR: must be counted and skipped
            corrupt_frame = None
        w.write(conn, ts, raw)
    w.close()


def _by_topic(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for rec in iter_wire(path):
        out.setdefault(rec.topic, []).append((rec, decode(rec.frames)))
    return out


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "robot"
    _write_bag(path, corrupt_frame=7)
    return path


def test_convert_image_audio_labels(bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "log.mcap"
    rep = ros2.convert(bag, out, {"image": "/cam/image_raw", "audio": "/audio",
                                  "label": "/truth", "condition": "/cond"})
    assert rep.topics == {"camera": "/cam/image_raw", "mic": "/audio", "label": "/truth",
                          "condition": "/cond"}
    assert rep.written == {"camera": 30, "mic": 60, "label": 2, "condition": 1}
    assert rep.skipped == {"/cam/image_raw: does not deserialize": 1}
    got = _by_topic(out)
    frames = [m for _, m in got["camera"]]
    assert all(isinstance(f, CameraFrame) and f.encoding == "rgb8" for f in frames)
    assert [f.seq for f in frames] == list(range(30))
    # Row padding dropped, pixels as stored (rgb8), capture time from header.stamp.
    kept = [i for i in range(31) if (T0 + i * NS // 10) in {f.capture_ns for f in frames}]
    assert len(kept) == 30
    for f, i in zip(frames, kept, strict=True):
        np.testing.assert_array_equal(f.image, _img(i)[..., ::-1])
        assert f.capture_ns == T0 + i * NS // 10 and f.clock == "realtime"
    chunks = [m for _, m in got["mic"]]
    assert all(c.samples.dtype == np.int16 and c.sample_rate == SR for c in chunks)
    np.testing.assert_array_equal(chunks[4].samples, _pcm(4))
    assert chunks[4].capture_ns == T0 + 4 * CHUNK * NS // SR
    labels = [m for _, m in got["label"]]
    assert [(m.label, m.name) for m in labels] == [(3, "3"), (5, "5")]
    # The official mcap reader reads the converted log; log time is the bag's receive time.
    with open(out, "rb") as fh:
        topics = {ch.topic for _, ch, _ in make_reader(fh).iter_messages()}
    assert topics == {"camera", "mic", "label", "condition"}
    assert got["camera"][0][0].log_ns == T0 + 2_000_000


def test_compressed_images_and_autodetected_audio(bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "png.mcap"
    rep = ros2.convert(bag, out, {"image": "/cam/compressed"})  # audio: the only audio topic
    assert rep.topics == {"camera": "/cam/compressed", "mic": "/audio"}
    frames = [m for _, m in _by_topic(out)["camera"]]
    assert len(frames) == 31 and frames[0].encoding == "bgr8"
    np.testing.assert_array_equal(frames[5].image, _img(5))  # PNG is lossless


def test_ros_drivers_audio_with_info_topic_in_sqlite3(tmp_path: Path) -> None:
    store = ros2._typestore(["audio_common_msgs/msg/AudioDataStamped"])
    T = store.types
    path = tmp_path / "drivers"
    w = Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3)
    w.open()
    info = w.add_connection("/audio_info", "audio_common_msgs/msg/AudioInfo", typestore=store)
    mic = w.add_connection("/audio_stamped", "audio_common_msgs/msg/AudioDataStamped",
                           typestore=store)
    stereo = np.arange(2 * 441, dtype="<i2").reshape(441, 2)
    for j in range(4):
        t = T0 + j * 10_000_000
        msg = T["audio_common_msgs/msg/AudioDataStamped"](
            header=ros2._header(store, t, "mic"),
            audio=T["audio_common_msgs/msg/AudioData"](
                data=np.frombuffer((stereo + j).tobytes(), np.uint8)))
        w.write(mic, t + 20_000_000, store.serialize_cdr(msg, "audio_common_msgs/msg/AudioDataStamped"))
    # The info arrives after the first chunk (it is published every 5 s): it still applies.
    w.write(info, T0 + 25_000_000, store.serialize_cdr(T["audio_common_msgs/msg/AudioInfo"](
        channels=2, sample_rate=44100, sample_format="S16LE", bitrate=0, coding_format="wave"),
        "audio_common_msgs/msg/AudioInfo"))
    w.close()
    rep = ros2.convert(path, tmp_path / "a.mcap")
    assert rep.written == {"mic": 4}
    chunks = [m for _, m in _by_topic(tmp_path / "a.mcap")["mic"]]
    assert chunks[2].sample_rate == 44100 and chunks[2].samples.shape == (441, 2)
    np.testing.assert_array_equal(chunks[2].samples, stereo + 2)
    assert chunks[2].capture_ns == T0 + 20_000_000


def test_bad_mappings_name_the_topic_and_the_types(bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.mcap"
    with pytest.raises(ros2.BagError, match=r"no topic '/nope'.*sensor_msgs/msg/Image"):
        ros2.convert(bag, out, {"image": "/nope"})
    with pytest.raises(ros2.BagError, match=r"audio=/truth: the topic carries std_msgs/msg/Int32"):
        ros2.convert(bag, out, {"image": "/cam/image_raw", "audio": "/truth"})
    with pytest.raises(ros2.BagError, match="several image topics"):
        ros2.convert(bag, out)
    with pytest.raises(ros2.BagError, match="unknown role 'depth'"):
        ros2.parse_map(["depth=/x"])
    with pytest.raises(ros2.BagError, match="not a readable rosbag2"):
        ros2.convert(tmp_path, out, {"image": "/x"})
    assert not out.exists()
    assert ros2.parse_map(["image=/a", "audio = /b"]) == {"image": "/a", "audio": "/b"}


def _with_results(src: Path, dst: Path) -> None:
    """``src`` plus a fusion result per camera frame and a heartbeat (what a recording holds)."""
    w = LogWriter(dst)
    for rec in iter_wire(src):
        msg = decode(rec.frames)
        w.write(rec.topic, rec.frames[1:], rec.seq, rec.capture_ns, rec.log_ns, msg.kind,
                msg.stream, msg.clock)
        if isinstance(msg, CameraFrame):
            res = FusionResult("fused", msg.seq, msg.capture_ns, rec.log_ns, "realtime",
                               probs=[0.1] * 10, pred=3, class_names=[str(d) for d in range(10)],
                               sigma_hat={"image": 0.25}, weights={"image": 1.5, "audio": 0.0},
                               present={"image": True, "audio": False},
                               source_seq={"camera": msg.seq}, latency_ns={"inference": 7},
                               conflict=msg.seq % 2 == 1)
            f = encode(res)
            w.write("fused", f[1:], res.seq, res.capture_ns, rec.log_ns + 1, res.kind, "fused",
                    "realtime")
    hb = encode(Heartbeat("hb.fusion", 0, T0, T0, "realtime", node="fusion"))
    w.write("hb.fusion", hb[1:], 0, T0, T0, "heartbeat", "hb.fusion", "realtime")
    w.finish()


def test_export_reads_back_and_reconverts_byte_identical(bag: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.mcap"
    ros2.convert(bag, first, {"image": "/cam/image_raw", "audio": "/audio", "label": "/truth",
                              "condition": "/cond"})
    full = tmp_path / "full.mcap"
    _with_results(first, full)
    out_bag = tmp_path / "exported"
    rep = ros2.export(full, out_bag)
    assert rep.written == {"/camera": 30, "/mic": 60, "/fused": 30, "/label": 2, "/condition": 1}
    assert rep.skipped == {"hb.fusion: heartbeat not exported": 1}
    # rosbags reads it with only the definitions stored in the bag (no type store given).
    with AnyReader([out_bag]) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        fused = [r.deserialize(raw, c.msgtype) for c, _, raw in r.messages()
                 if c.topic == "/fused"]
    assert types["/fused"] == ros2.FUSION_RESULT_TYPE
    assert types["/mic"] == "audio_common_msgs/msg/AudioStamped"
    f0 = fused[0]
    assert f0.pred == 3 and list(f0.modalities) == ["audio", "image"]
    np.testing.assert_allclose(f0.weights, [0.0, 1.5])
    assert np.isnan(f0.sigma_hat[0]) and f0.sigma_hat[1] == 0.25 and np.isnan(f0.audio_valid)
    assert list(f0.latency_stages) == ["inference"] and list(f0.latency_ns) == [7]
    assert [bool(f.conflict) for f in fused[:2]] == [False, True]
    # The official mcap reader sees ROS 2 schemas (what Foxglove decodes).
    (mcap_file,) = out_bag.glob("*.mcap")
    with open(mcap_file, "rb") as fh:
        summary = make_reader(fh).get_summary()
    schemas = {s.name: s for s in summary.schemas.values()}
    assert schemas[ros2.FUSION_RESULT_TYPE].encoding == "ros2msg"
    assert b"float32[] weights" in schemas[ros2.FUSION_RESULT_TYPE].data
    assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    # Converted back: payloads byte-identical, same stamps, same clock.
    again = tmp_path / "again.mcap"
    ros2.convert(out_bag, again, {"image": "/camera", "audio": "/mic", "label": "/label",
                                  "condition": "/condition"})
    a, b = _by_topic(first), _by_topic(again)
    assert set(a) == set(b)
    for topic in ("camera", "mic"):
        assert len(a[topic]) == len(b[topic])
        for (ra, ma), (rb, mb) in zip(a[topic], b[topic], strict=True):
            assert bytes(ra.frames[2]) == bytes(rb.frames[2])  # the payload frame
            assert (ra.log_ns, ma.capture_ns, ma.seq, ma.clock) == \
                (rb.log_ns, mb.capture_ns, mb.seq, mb.clock)
    assert [(m.label, m.name, m.capture_ns) for _, m in a["label"]] == \
        [(m.label, m.name, m.capture_ns) for _, m in b["label"]]
    with pytest.raises(ros2.BagError, match="exists"):
        ros2.export(full, out_bag)


def test_monotonic_log_round_trips_its_clock(tmp_path: Path) -> None:
    src = tmp_path / "mono.mcap"
    w = LogWriter(src)
    for i in range(3):
        f = encode(CameraFrame("camera", i, 5 * NS + i, 5 * NS + i, "monotonic",
                               image=np.full((2, 3), i, np.uint8), encoding="mono8"))
        w.write("camera", f[1:], i, 5 * NS + i, T0 + i, "camera_frame", "camera", "monotonic")
        lab = encode(Label("label", i, 5 * NS, 5 * NS, "monotonic", label=i, name=str(i)))
        w.write("label", lab[1:], i, 5 * NS, T0, "label", "label", "monotonic")
    w.finish()
    ros2.export(src, tmp_path / "b", storage="sqlite3")
    rep = ros2.convert(tmp_path / "b", tmp_path / "back.mcap", {"label": "/label"})
    assert rep.clock == "monotonic"
    back = [m for _, m in _by_topic(tmp_path / "back.mcap")["camera"]]
    assert [(m.capture_ns, m.clock, m.encoding) for m in back] == \
        [(5 * NS + i, "monotonic", "mono8") for i in range(3)]


def test_converted_bag_trains(bag: Path, tmp_path: Path) -> None:
    """A converted bag is training data: read through the fusion node's pairing, labelled by
    the bag's label topic, and a few training steps run on it."""
    from udml_stream.data.logset import LogSource, read_split
    from udml_stream.train.config import parse_config
    from udml_stream.train.trainer import train

    out = tmp_path / "log.mcap"
    ros2.convert(bag, out, {"image": "/cam/image_raw", "audio": "/audio", "label": "/truth"})
    split, stats = read_split("train", [out], LogSource())
    # Frames whose whole 1 s window lies inside one label's span: 1.0-1.4 s (digit 3) and
    # 2.5-3.0 s (digit 5), less the frame lost to the corrupt message.
    assert set(split.labels.tolist()) == {3, 5} and stats.decode_errors == 0
    assert len(split) >= 8
    cfg = parse_config({
        "data": {"source": "logs", "logs": {"train": [str(out)], "val": [str(out)]}},
        "train": {"epochs": 1, "samples_per_epoch": 0, "clean_epochs": 1, "batch_size": 4,
                  "quality_start_epoch": 1, "lr_drop_epoch": 1, "device": "cpu",
                  "out_dir": str(tmp_path / "run")}})
    res = train(cfg, resume=False, progress=False)
    assert res.best_path.exists()


def test_convert_and_export_command_lines(bag: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from udml_stream.cli.main import app

    log = tmp_path / "log.mcap"
    r = CliRunner().invoke(app, ["log", "convert", str(bag), "-o", str(log), "--map",
                                 "image=/cam/image_raw", "--map", "audio=/audio"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and log.is_file()
    r = CliRunner().invoke(app, ["log", "export", str(log), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b").is_dir()
    r = CliRunner().invoke(app, ["log", "convert", str(bag), "-o", str(tmp_path / "x.mcap"),
                                 "--map", "image=/nope"])
    assert r.exit_code == 2 and "/nope" in r.output


def test_a_log_trained_checkpoint_evaluates_with_no_flag(bag: Path, tmp_path: Path) -> None:
    """`udml eval CHECKPOINT` of a checkpoint trained from logs scores the held-out logs its
    config names (here: the test log), with no --preset."""
    from udml_stream_apps.training import evaluate

    from udml_stream.train.config import parse_config
    from udml_stream.train.trainer import train

    out = tmp_path / "log.mcap"
    ros2.convert(bag, out, {"image": "/cam/image_raw", "audio": "/audio", "label": "/truth"})
    cfg = parse_config({
        "data": {"source": "logs", "logs": {"train": [str(out)], "val": [str(out)],
                                            "test": [str(out)]}},
        "train": {"epochs": 1, "samples_per_epoch": 0, "clean_epochs": 1, "batch_size": 4,
                  "quality_start_epoch": 1, "lr_drop_epoch": 1, "device": "cpu",
                  "out_dir": str(tmp_path / "run")}})
    res = train(cfg, resume=False, progress=False)
    result = evaluate.main(res.best_path, tmp_path, 0, None, "cpu")
    assert result["preset"] == "logs" and result["n_test"] >= 8
    assert 0.0 <= result["clean"] <= 1.0
