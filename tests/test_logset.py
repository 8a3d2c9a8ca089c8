"""Training from logs: AV-Digits emitted as MCAP sessions, read back through the fusion node's
decode and sync into the same samples, and `udml train` on a logs config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.data import avdigits
from udml_stream.data.logset import LogSource, read_split
from udml_stream.data.sessions import SessionSpec, write_session
from udml_stream.errors import ConfigError
from udml_stream.logs import LogError
from udml_stream.model import checkpoint
from udml_stream.train.config import load_config


@pytest.fixture(scope="module")
def sessions(small_data: avdigits.AVDigits, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, avdigits.Split]]:
    """Train (640 samples) and val (80) sessions of the small balanced build."""
    d = tmp_path_factory.mktemp("sessions")
    out = {}
    for name, n in (("train", 640), ("val", 80)):
        split = small_data.splits[name].subset(n, seed=1)
        path = d / f"{name}.mcap"
        write_session(split, path, small_data.sample_rate, small_data.class_names)
        out[name] = (path, split)
    return out


def test_session_is_a_normal_log_with_realistic_rates(sessions) -> None:
    path, split = sessions["val"]
    with open(path, "rb") as fh:
        summary = make_reader(fh).get_summary()
    assert summary is not None
    counts = {summary.channels[c].topic: n
              for c, n in summary.statistics.channel_message_counts.items()}
    spec = SessionSpec()
    seconds = len(split) * 1.1  # one-second window + 0.1 s gap per sample
    assert counts["label"] == counts["condition"] == len(split)
    assert counts["camera"] == round(seconds * spec.fps)
    assert counts["mic"] == int(seconds * 16000) // spec.chunk_samples
    encodings = {ch.message_encoding for ch in summary.channels.values()}
    assert encodings == {"udml-wire/1"}


def test_log_dataset_yields_the_split_one_for_one(sessions) -> None:
    path, split = sessions["val"]
    got, stats = read_split("val", [path])
    assert len(got) == len(split) == stats.samples
    np.testing.assert_array_equal(got.labels, split.labels)
    rows = np.arange(len(split))
    want, have = split.batch(rows), got.batch(rows)
    # Images travel as uint8 frames: equal up to rounding the (PCA-weakened) pixels.
    assert np.abs(have["image"] - want["image"]).max() <= 0.5 + 1e-4
    # Audio travels as int16 PCM and is re-assembled by the fusion node's ring buffer: equal up
    # to quantisation, except where the (0 dB background) waveform exceeds full scale and clips.
    inside = np.abs(want["audio"]) < 1.0
    assert inside.mean() > 0.999
    assert np.abs(have["audio"] - want["audio"])[inside].max() <= 1.5 / 32768
    np.testing.assert_allclose(have["audio"][~inside], np.sign(want["audio"][~inside]), atol=1e-4)
    # Every frame is accounted for: the paired one per segment, the others straddle labels.
    assert stats.frames == 11 * len(split)
    assert (stats.unlabelled + stats.samples + stats.no_audio + stats.superseded
            + stats.pending_at_end + stats.other_condition) == stats.frames
    assert stats.decode_errors == 0


def test_condition_filter_and_missing_labels(sessions, tmp_path: Path) -> None:
    path, _ = sessions["val"]
    with pytest.raises(LogError, match="no labelled"):
        read_split("val", [path], LogSource(conditions=("camera_noise",)))
    with pytest.raises(LogError, match="label topic 'truth'"):
        read_split("val", [path], LogSource(label_topic="truth"))
    with pytest.raises(ConfigError, match="no log matches"):
        read_split("val", [tmp_path / "nothing-*.mcap"])


def test_truncated_session_gives_the_samples_before_the_damage(sessions, tmp_path: Path) -> None:
    path, split = sessions["val"]
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    got, _ = read_split("val", [cut])
    assert 0 < len(got) < len(split)
    np.testing.assert_array_equal(got.labels, split.labels[: len(got)])


def test_udml_train_from_logs_beats_chance(sessions, cache_dir: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "logs.toml"
    cfg_path.write_text(
        '[data]\nsource = "logs"\n'
        f'[data.logs]\ntrain = ["{sessions["train"][0]}"]\nval = ["{sessions["val"][0]}"]\n'
        '[model]\nmethod = "udml"\n'
        '[train]\nepochs = 4\nsamples_per_epoch = 0\nclean_epochs = 1\nquality_start_epoch = 2\n'
        'lr_drop_epoch = 5\n'
        f'out_dir = "{tmp_path / "run"}"\ndevice = "cpu"\n')
    r = CliRunner().invoke(app, ["train", str(cfg_path), "--export", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    _, meta = checkpoint.load(tmp_path / "ckpt")
    assert meta["preset"] == "logs" and meta["val_acc"] > 0.3  # chance is 0.1
    # With no flag, a log-trained checkpoint is scored on the held-out logs of its config (here
    # the validation log: it names no test logs); an AV-Digits preset can still be named.
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "ckpt"), "--cache-dir", str(cache_dir),
                                 "--limit", "50"])
    assert r.exit_code == 0, r.output
    assert "logs" in r.output and "clean" in r.output


def test_logs_config_names_the_missing_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[data]\nsource = "logs"\n[data.logs]\ntrain = ["a.mcap"]\n')
    with pytest.raises(ConfigError, match=r"data\.logs\.val"):
        load_config(cfg)


def test_log_dataset_pairs_frames_as_the_polling_live_node_does(tmp_path: Path) -> None:
    """Audio in 100 ms chunks behind a 33 ms camera: frames wait past the 60 ms slop. The live
    node polls its pairer every few ms, so a waiting frame goes out when its slop runs out; the
    log data set must keep and supersede the same frames (it used to supersede nearly all)."""
    from udml_stream.logs.writer import LogWriter
    from udml_stream.messages import AudioChunk, CameraFrame, Label, encode
    from udml_stream.sync import Pairer, PairingConfig

    ms, sr = 1_000_000, 16000
    events = []  # (log time, message)
    t0 = 1000 * ms
    events.append((t0, Label("label", 0, t0, label=3, name="three")))
    for i in range(60):
        t = t0 + 100 * ms + 33 * ms * i
        events.append((t, CameraFrame("camera", i, t, image=np.zeros((4, 4), np.uint8),
                                      encoding="mono8")))
    for k in range(22):  # 100 ms chunks, each received when it ends (+2 ms)
        t = t0 + 100 * ms * k
        events.append((t + 102 * ms, AudioChunk("mic", k, t, samples=np.full(1600, 1000, np.int16),
                                               sample_rate=sr)))
    events.sort(key=lambda e: e[0])
    path = tmp_path / "paced.mcap"
    out = LogWriter(path)
    for log_ns, m in events:
        out.write(m.stream, encode(m)[1:], m.seq, m.capture_ns, log_ns, m.kind, m.stream, m.clock)
    out.finish()

    # The live node: every received message added at its arrival, the pairer polled each ms.
    live = Pairer(PairingConfig(sample_rate=sr, window_samples=800))
    released = 0
    queue = [e for e in events if not isinstance(e[1], Label)]
    now = queue[0][0]
    while queue or live.pending is not None:
        while queue and queue[0][0] <= now:
            live.add(queue.pop(0)[1], now)
        while (s := live.ready(now)) is not None:
            released += s.frame is not None
        now += ms
    src = LogSource(window_samples=800, min_audio_valid=0.0)
    _, stats = read_split("paced", [path], src)
    assert stats.superseded == live.frames_superseded < 30
    assert stats.samples + stats.no_audio + stats.unlabelled == released
    assert stats.per_file == {str(path): {"frames": 60, "samples": stats.samples,
                                          "superseded": stats.superseded}}
