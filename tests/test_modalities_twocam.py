"""A second camera end to end: the two-camera preset trained a few steps, served in memory and
by a live fusion node (real ZMQ on loopback, two camera publishers and a microphone), recorded,
read back as a three-stream log data set, and replayed losslessly through a fresh node."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from tests.conftest import SMALL
from tests.test_modalities import TWOCAM
from udml_stream import modalities
from udml_stream.data import avdigits
from udml_stream.data.batching import draw_training_levels, make_batch
from udml_stream.data.logset import LogSource, read_split
from udml_stream.evaluate.field import paper_input
from udml_stream.launch.config import write_launch
from udml_stream.logs import info
from udml_stream.logs.recorder import Recorder, RecorderConfig
from udml_stream.logs.replay import ReplayConfig, Replayer
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, encode_bytes
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet, ModelConfig
from udml_stream.model.preprocess import ImagePrep, LogMelPrep
from udml_stream.serve import FusionRunner, FusionService
from udml_stream.sync import PairingConfig
from udml_stream.train.trainer import train_step
from udml_stream.transport import Subscriber

MS = 1_000_000
STEPS = 6
PREP = {"image": lambda: ImagePrep().params(), "audio": lambda: LogMelPrep().params()}


@pytest.fixture(scope="module")
def twocam_ckpt(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UDML checkpoint over image, image2 and audio, trained a few steps on the preset."""
    t0 = time.perf_counter()
    data = avdigits.load(TWOCAM, cache_dir, **SMALL)
    # Encoders and preprocessing by each stream's kind: nothing here names image2.
    kinds = {m: modalities.kind_of(m) for m in data.modalities}
    cfg = ModelConfig(modalities=data.modalities,
                      encoders={m: k.encoder for m, k in kinds.items()},
                      preprocess={m: PREP[k.name]() for m, k in kinds.items()},
                      num_classes=len(data.class_names), method="udml")
    model = FusionNet(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    train = data.splits["train"]
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 16 of small encoders: more threads only contend
    for _ in range(STEPS):
        rows = rng.choice(len(train), 16, replace=False)
        lv = draw_training_levels(16, data.modalities, rng, 0.5)
        terms = train_step(model, opt, make_batch(train, rows, lv, rng), torch.device("cpu"),
                           True, 5.0, None)
        losses.append(float(terms.total.detach()))
    torch.set_num_threads(threads)
    assert all(np.isfinite(losses))
    print(f"twocam training: {STEPS} steps in {time.perf_counter() - t0:.1f} s, loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    out = tmp_path_factory.mktemp("twocam") / "ckpt"
    checkpoint.save(model, out, list(data.class_names), {"preset": TWOCAM.name})
    return out


def _digits(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_the_paper_condition_scores_each_camera_with_the_other_absent(
        twocam_ckpt: Path, cache_dir: Path) -> None:
    """``eval-field``'s digit-on-paper pass negates every camera that has an input: in one
    camera's alone pass the other is absent (this raised a KeyError on image2 once)."""
    model, _ = checkpoint.load(twocam_ckpt, torch.device("cpu"))
    split = avdigits.load(TWOCAM, cache_dir, **SMALL).splits["test"]
    out = paper_input(model, split, seed=0)
    assert {"image_only", "image2_only"} <= set(out)
    assert all(0.0 <= out[k] <= 1.0 for k in ("fused", "image_only", "image2_only"))
    assert sum(out["share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_service_fuses_two_cameras_and_audio(twocam_ckpt: Path) -> None:
    runner = FusionRunner(twocam_ckpt, "cpu", 1)
    assert runner.kinds == {"image": "image", "image2": "image", "audio": "audio"}
    svc = FusionService(runner, PairingConfig(window_samples=runner.window_samples))
    assert svc.topics == ["camera", "camera2", "mic"]
    t0 = 5_000_000_000
    for i in range(50):  # 1 s of audio
        svc.add(AudioChunk("mic", i, t0 + i * 20 * MS, samples=np.zeros(320, np.float32)),
                t0 + (i + 1) * 20 * MS)
    img = _digits(2)
    now = t0 + 1000 * MS
    svc.add(CameraFrame("camera2", 0, now - 10 * MS, image=img[1]), now)
    svc.add(CameraFrame("camera", 0, now, image=img[0]), now)
    (r,) = svc.results(now)
    assert r.present == {"image": True, "image2": True, "audio": True}
    assert r.source_seq == {"camera": 0, "mic": 49, "camera2": 0}
    assert set(r.weights) == {"image", "image2", "audio"}
    # The second camera stalls: the next frame goes out without it (absent, weight 0).
    now += 200 * MS
    for i in range(50, 60):
        svc.add(AudioChunk("mic", i, t0 + i * 20 * MS, samples=np.zeros(320, np.float32)), now)
    svc.add(CameraFrame("camera", 1, now, image=img[0]), now)
    (r,) = svc.results(now)
    assert r.present["image2"] is False and r.weights["image2"] == 0.0
    assert svc.counters(now)["others_stale"] == 1


@pytest.fixture(scope="module")
def live_session(twocam_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[list[FusionResult], Path]:
    """Two cameras and a microphone publish on their own sockets; a fusion node fuses them and
    a recorder records the three streams. Returns the results and the log."""
    tmp = tmp_path_factory.mktemp("live")
    ctx = zmq.Context.instance()
    socks, eps = {}, {}
    for topic in ("camera", "camera2", "mic"):
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        eps[topic] = f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}"
        socks[topic] = s
    out_ep = f"ipc://{tmp}/fusion"
    launch = tmp / "launch.toml"
    # Only the trigger camera and the mic are named: image2 reads its default topic, camera2.
    write_launch(launch, {"fusion": {
        "program": "fusion", "checkpoint": twocam_ckpt, "device": "cpu", "threads": 1,
        "subscribe": list(eps.values()), "endpoint": out_ep, "heartbeat_s": 0.5}})
    log_path = tmp / "twocam.mcap"
    rec = Recorder(RecorderConfig(list(eps.values()), log_path, chunk_size=256 * 1024))
    th = threading.Thread(target=rec.run)
    th.start()
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(launch),
                             "fusion"], stderr=subprocess.PIPE, text=True)
    img = _digits(2)
    rng = np.random.default_rng(0)
    got: list[FusionResult] = []
    try:
        with Subscriber([out_ep]) as sub:
            end = time.monotonic() + 60
            i = 0
            sent: dict[str, int] = {}  # topic → the last sequence number published on it
            while time.monotonic() < end:
                assert proc.poll() is None, proc.stderr.read()
                t = time.monotonic_ns()
                socks["mic"].send_multipart(encode_bytes(AudioChunk(
                    "mic", i, t - 20 * MS,
                    samples=(0.05 * rng.standard_normal(320)).astype(np.float32))))
                sent["mic"] = i
                if i % 2 == 0:  # 25 fps, the two cameras in step
                    for k, cam in enumerate(("camera", "camera2")):
                        socks[cam].send_multipart(encode_bytes(CameraFrame(
                            cam, i // 2, t, image=img[k])))
                        sent[cam] = i // 2
                i += 1
                got.extend(m for m in sub.receive(20) if isinstance(m, FusionResult))
                if sum(r.present.get("image2", False) for r in got) >= 10:
                    break
            # The recorder's tail: wait until it has taken the last message of every stream.
            tail_end = time.monotonic() + 10
            while time.monotonic() < tail_end and not all(
                    t in rec.stats and rec.stats[t].last_seq >= seq for t, seq in sent.items()):
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(30)
        rec.stop()
        th.join(10)
        for s in socks.values():
            s.close()
    return got, log_path


def test_live_node_fuses_two_cameras_and_audio(live_session) -> None:
    got, _ = live_session
    both = [r for r in got if r.present.get("image2") and r.present.get("image")]
    assert len(both) >= 10, [r.present for r in got[-5:]]
    # The other camera is sampled, not waited for: its newest frame is the trigger frame's
    # twin, or the one before when the twin was still on its way.
    assert all(0 <= r.source_seq["camera"] - r.source_seq["camera2"] <= 1 for r in both)
    assert all(set(r.weights) == {"image", "image2", "audio"} for r in both)


def test_recorded_three_streams_read_back_as_a_log_data_set(live_session) -> None:
    _, log_path = live_session
    topics = info(log_path).topics
    assert {"camera", "camera2", "mic"} <= set(topics)
    src = LogSource(cameras={"image2": "camera2"}, min_audio_valid=0.0)
    split, stats = read_split("live", [log_path], src, labelled=False)
    assert set(split.tables) == {"image", "image2", "audio"}
    assert len(split) > 0 and split.batch(np.arange(len(split)))["image2"].shape[1:] == (28, 28)
    assert stats.no_other_camera < len(split)


def test_lossless_replay_of_three_streams_through_a_fresh_node(live_session, twocam_ckpt: Path,
                                                                tmp_path: Path) -> None:
    _, log_path = live_session
    n_frames = info(log_path).topics["camera"].messages
    rep_ep, out_ep = f"ipc://{tmp_path}/replay", f"ipc://{tmp_path}/fusion"
    launch = tmp_path / "launch.toml"
    write_launch(launch, {"fusion": {
        "program": "fusion", "checkpoint": twocam_ckpt, "device": "cpu", "threads": 1,
        "subscribe": [rep_ep], "endpoint": out_ep,
        "streams": {"image": "camera", "image2": "camera2", "audio": "mic"}}})
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(launch),
                             "fusion"], stderr=subprocess.PIPE, text=True)
    rep = Replayer(ReplayConfig(log_path, rep_ep, lossless=True, results_endpoint=out_ep,
                                topics=["camera", "camera2", "mic"], other_topics=("camera2",),
                                wait_subscribers_s=60))
    try:
        stats = rep.run()
    finally:
        rep.close()
        proc.terminate()
        proc.wait(30)
    assert stats.published["camera"] == n_frames and stats.published["camera2"] > 0
    assert stats.frames_without_result == 0
    with_second = [r for r in stats.results if "camera2" in r.source_seq]
    # Every frame after the first had its twin sent before it.
    assert len(with_second) >= n_frames - 1
