"""One fusion service for many robots: namespaced streams, per-robot lanes, batched inference
(in memory on the shipped checkpoint) and a running fusion node serving two robots."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from udml_stream.errors import ConfigError
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Heartbeat, encode_bytes
from udml_stream.messages.topics import check_robot_names, namespaced
from udml_stream.serve import FusionRunner, FusionService
from udml_stream.sync import PairingConfig
from udml_stream.transport import Subscriber

ROOT = Path(__file__).parent.parent
CKPT = ROOT / "checkpoints" / "default"
MS = 1_000_000
T0 = 5_000_000_000


@pytest.fixture(scope="module")
def runner() -> FusionRunner:
    return FusionRunner(CKPT, "cpu", 1)


def _service(runner: FusionRunner, robots: list[str], **kw: object) -> FusionService:
    return FusionService(runner, PairingConfig(sample_rate=runner.sample_rate,
                                               window_samples=runner.window_samples),
                         robots=robots, **kw)


def _traffic(robot: str, digit_img: np.ndarray, n_chunks: int = 50, seq0: int = 0,
             t0: int = T0) -> list:
    """1 s of a robot's audio (20 ms chunks) and then one frame at its end."""
    rng = np.random.default_rng(seq0)
    out: list = [AudioChunk(namespaced(robot, "mic"), seq0 + i, t0 + i * 20 * MS,
                            samples=(0.05 * rng.standard_normal(320)).astype(np.float32))
                 for i in range(n_chunks)]
    out.append(CameraFrame(namespaced(robot, "camera"), seq0, t0 + n_chunks * 20 * MS,
                           image=digit_img))
    return out


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_robot_names_are_checked() -> None:
    check_robot_names(["alpha", "bravo-2"])
    for bad in (["a/b"], [""], ["a", "a"], ["cam*"], [" a"]):
        with pytest.raises(ValueError, match="robot name"):
            check_robot_names(bad)
    assert namespaced("alpha", "camera") == "alpha/camera" and namespaced("", "mic") == "mic"


def test_each_robot_gets_its_own_results_fused_in_one_batch(runner: FusionRunner) -> None:
    robots = ["alpha", "bravo", "charlie"]
    imgs = _images(3)
    svc = _service(runner, robots)
    assert sorted(svc.topics) == sorted(f"{r}/{s}" for r in robots for s in ("camera", "mic"))
    now = T0 + 2 * 10**9
    for r, img in zip(robots, imgs, strict=True):
        for m in _traffic(r, img):
            svc.add(m, now)
    res = svc.results(now)
    assert sorted(r.stream for r in res) == [f"{r}/fused" for r in sorted(robots)]
    assert svc.batches == {3: 1}  # all three due together: one forward pass
    # A batched answer is the robot's own: the same as fusing that robot alone.
    for r, img in zip(robots, imgs, strict=True):
        alone = _service(runner, [r])
        for m in _traffic(r, img):
            alone.add(m, now)
        (single,) = alone.results(now)
        (mine,) = [x for x in res if x.stream == f"{r}/fused"]
        np.testing.assert_allclose(mine.probs, single.probs, rtol=1e-4, atol=1e-6)
        assert mine.source_seq == {f"{r}/camera": 0, f"{r}/mic": 49}
        assert mine.seq == 0 and mine.present == {"image": True, "audio": True}
        assert mine.conflict == single.conflict and isinstance(mine.conflict, bool)
    # Each robot's heartbeat counts the results the conflict rule answered.
    counters = svc.counters(now)
    assert [counters[f"{r}/conflicts"] for r in robots] == [int(x.conflict) for x in
                                                            sorted(res, key=lambda x: x.stream)]


def test_a_robot_with_a_broken_stream_does_not_touch_the_others(runner: FusionRunner) -> None:
    robots = ["alpha", "bravo"]
    img = _images(1)[0]
    svc = _service(runner, robots)
    ref = _service(runner, ["alpha"])
    now = T0 + 2 * 10**9
    for m in _traffic("alpha", img):
        svc.add(m, now)
        ref.add(m, now)
    # bravo: its microphone sends NaN (a dead ADC) and one empty frame, then a good frame.
    for i in range(50):
        svc.add(AudioChunk("bravo/mic", i, T0 + i * 20 * MS,
                           samples=np.full(320, np.nan, np.float32)), now)
    svc.add(CameraFrame("bravo/camera", 0, T0 + 999 * MS, image=np.zeros((0, 0, 3), np.uint8)),
            now)
    svc.add(CameraFrame("bravo/camera", 1, T0 + 1000 * MS, image=img), now)
    svc.add(CameraFrame("delta/camera", 0, T0 + 1000 * MS, image=img), now)  # not in the fleet
    res = {r.stream: r for r in svc.results(now)}
    (alpha_alone,) = ref.results(now)
    np.testing.assert_allclose(res["alpha/fused"].probs, alpha_alone.probs, rtol=1e-4, atol=1e-6)
    assert res["bravo/fused"].present == {"image": True, "audio": False}
    c = svc.counters(now)
    assert c["bravo/rejected.empty_frame"] == 1 and c.get("alpha/rejected.empty_frame", 0) == 0
    assert c["bravo/audio_nonfinite_chunks"] == 50
    assert c.get("alpha/audio_nonfinite_chunks", 0) == 0
    assert c["rejected.other_topic"] == 1
    assert c["alpha/results"] == 1 and c["bravo/results"] == 1 and c["results"] == 2


def test_batch_wait_gathers_robots_and_max_batch_caps_a_pass(runner: FusionRunner) -> None:
    robots = [f"r{i}" for i in range(5)]
    imgs = _images(5)
    svc = _service(runner, robots, max_batch=2, batch_wait_ns=10 * MS)
    now = T0 + 2 * 10**9
    for m in _traffic("r0", imgs[0]):
        svc.add(m, now)
    assert svc.results(now) == []  # r0 is due but waits up to 10 ms for batch mates
    for r, img in zip(robots[1:], imgs[1:], strict=True):
        for m in _traffic(r, img):
            svc.add(m, now + 4 * MS)
    first = svc.results(now + 4 * MS)  # full batches go at once; the odd one keeps waiting
    assert len(first) == 4 and svc.batches == {2: 2}
    assert svc.results(now + 13 * MS) == []  # r4 became due at +4 ms: it waits until +14
    rest = svc.results(now + 14 * MS)
    assert [r.stream for r in rest] == ["r4/fused"] and svc.batches == {2: 2, 1: 1}
    # The wait for batch mates is reported as sync wait.
    assert rest[0].latency_ns["sync_wait"] >= 10 * MS


def test_single_robot_service_keeps_its_plain_topics(runner: FusionRunner) -> None:
    svc = _service(runner, [])
    assert sorted(svc.topics) == ["camera", "mic"]
    now = T0 + 2 * 10**9
    for m in _traffic("", _images(1)[0]):
        svc.add(m, now)
    (r,) = svc.results(now)
    assert r.stream == "fused" and "results" in svc.counters(now)
    assert not any("/" in k for k in svc.counters(now))


def test_launch_file_names_a_bad_robot(tmp_path: Path) -> None:
    p = tmp_path / "launch.toml"
    p.write_text('[nodes.fusion]\nprogram = "fusion"\nsubscribe = ["tcp://127.0.0.1:1"]\n'
                 'endpoint = "ipc:///tmp/x"\nrobots = ["a", "a/b"]\n')
    with pytest.raises(ConfigError, match="robots"):
        load_launch(p)


def test_running_fusion_node_serves_two_robots(tmp_path: Path) -> None:
    """Two robots publish on one socket each; one node fuses both and reports each robot's
    counters in its heartbeat."""
    ctx = zmq.Context.instance()
    pubs, eps = {}, []
    for r in ("alpha", "bravo"):
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        eps.append(f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}")
        pubs[r] = s
    out_ep = f"ipc://{tmp_path}/fusion"
    launch = tmp_path / "launch.toml"
    write_launch(launch, {"fusion": {
        "program": "fusion", "checkpoint": CKPT, "device": "cpu", "threads": 1,
        "subscribe": eps, "endpoint": out_ep, "heartbeat_s": 0.2, "robots": ["alpha", "bravo"]}})
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(launch), "fusion"],
                            stderr=subprocess.PIPE, text=True)
    img = _images(1)[0]
    seq = 0
    try:
        with Subscriber([out_ep]) as sub:
            got: list = []
            end = time.monotonic() + 60
            while time.monotonic() < end:
                assert proc.poll() is None, proc.stderr.read()
                t = time.monotonic_ns()
                for r, s in pubs.items():
                    s.send_multipart(encode_bytes(AudioChunk(
                        f"{r}/mic", seq, t - 20 * MS, samples=np.zeros(320, np.float32))))
                    if seq % 2 == 0:
                        s.send_multipart(encode_bytes(CameraFrame(f"{r}/camera", seq // 2, t,
                                                                  image=img)))
                seq += 1
                got.extend(sub.receive(20))
                streams = {m.stream for m in got if isinstance(m, FusionResult)}
                beats = [m for m in got if isinstance(m, Heartbeat) and m.node == "fusion"]
                if (streams == {"alpha/fused", "bravo/fused"} and beats
                        and beats[-1].counters.get("alpha/results", 0) > 0
                        and beats[-1].counters.get("bravo/results", 0) > 0):
                    break
            else:
                raise AssertionError(f"results of both robots not seen: {streams}")
            c = beats[-1].counters
            assert c["internal_errors"] == 0 and c["results"] >= 2
    finally:
        proc.terminate()
        proc.wait(30)
        for s in pubs.values():
            s.close()
