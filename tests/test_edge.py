"""The fusion node's edge policy: every input of issue 9 is served or rejected by name, in memory
(the real runner on the shipped checkpoint, no sockets) and against a running fusion node."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from scipy import signal

from udml_stream.benchmarks.flood import with_header
from udml_stream.launch.config import write_launch
from udml_stream.messages import (
    AudioChunk,
    CameraFrame,
    DecodeError,
    FusionResult,
    Heartbeat,
    Label,
    decode,
    encode_bytes,
)
from udml_stream.serve import FusionRunner, FusionService
from udml_stream.serve.ratelimit import RateLimitFilter
from udml_stream.sync import PairingConfig
from udml_stream.sync.edge import EDGE_REASONS, Edge
from udml_stream.sync.resample import StreamResampler, rate_ratio
from udml_stream.transport import Subscriber

ROOT = Path(__file__).parent.parent
CKPT = ROOT / "checkpoints" / "default"
MS = 1_000_000
T0 = 5_000_000_000


def frame(seq: int = 0, t_ns: int = T0, img: np.ndarray | None = None, enc: str = "bgr8",
          **kw: object) -> CameraFrame:
    img = np.zeros((48, 64, 3), np.uint8) if img is None else img
    return CameraFrame("camera", seq, t_ns, image=img, encoding=enc, **kw)


def audio(seq: int, rate: int = 16000, t_ns: int | None = None, x: np.ndarray | None = None,
          t0: int = T0, seq0: int = 0) -> AudioChunk:
    """Chunk ``seq`` of a 20 ms stream that starts at ``t0`` with sequence number ``seq0``."""
    if x is None:
        x = (0.1 * np.sin(np.arange(rate // 50) * 0.3 + seq)).astype(np.float32)
    return AudioChunk("mic", seq0 + seq, t0 + seq * 20 * MS if t_ns is None else t_ns,
                      samples=x, sample_rate=rate)


# ---- the inputs of issue 9 -----------------------------------------------------------------


def issue_inputs(t0: int = T0, seq0: int = 0) -> dict[str, list[list[bytes]]]:
    """Each input the issue lists, as wire frames: a 1 s audio stream starting at ``t0`` (seq
    from ``seq0``) and then a camera frame at its end, one of the two carrying the fault."""

    def a(i: int, **kw: object) -> list[bytes]:
        return encode_bytes(audio(i, t0=t0, seq0=seq0, **kw))

    def xs(x: np.ndarray) -> list[list[bytes]]:
        return [a(i, x=x) for i in range(50)]

    good_audio = [a(i) for i in range(50)]
    t = t0 + 50 * 20 * MS
    cam = encode_bytes(frame(seq0, t))
    ts = with_header(cam, extra=msgpack.Timestamp(1, 2))
    rear = encode_bytes(CameraFrame("camera_rear", seq0, t, image=np.zeros((48, 64, 3), np.uint8)))
    return {
        "audio 44.1 kHz": [a(i, rate=44100) for i in range(50)] + [cam],
        "camera [0,0,3]": [*good_audio, encode_bytes(frame(seq0, t, np.zeros((0, 0, 3), np.uint8)))],
        "camera [480,0,3]": [*good_audio, encode_bytes(frame(seq0, t, np.zeros((480, 0, 3), np.uint8)))],
        "mono8 [480,640,1]": [*good_audio, encode_bytes(frame(seq0, t, np.zeros((480, 640, 1), np.uint8),
                                                      "mono8"))],
        "audio [320,0]": [*xs(np.zeros((320, 0), np.float32)), cam],
        "t_publish_ns 2**64-1": [*good_audio, with_header(cam, t_publish_ns=2**64 - 1)],
        "NaN audio": [*xs(np.full(320, np.nan, np.float32)), cam],
        "Inf audio": [*xs(np.full(320, np.inf, np.float32)), cam],
        "rgb8": [*good_audio, encode_bytes(frame(seq0, t, np.zeros((48, 64, 3), np.uint8), "rgb8"))],
        "duplicate seq": [f for f in good_audio for _ in range(2)] + [cam],
        "reordered seq": [good_audio[i ^ 1] for i in range(50)] + [cam],
        "clock jump": good_audio[:25] + [a(i, t_ns=t0 + (i * 20 + 131) * MS)
                                          for i in range(25, 50)] + [cam],
        "Timestamp extension": [*good_audio, ts],
        "topic camera_rear": [*good_audio, rear],
        "audio beyond full scale": [*xs(np.full(320, 1e30, np.float32)), cam],
    }


@pytest.fixture(scope="module")
def runner() -> FusionRunner:
    r = FusionRunner(CKPT, "cpu", 1)
    assert r.sample_rate == 16000
    return r


def new_service(runner: FusionRunner) -> FusionService:
    return FusionService(runner, PairingConfig(sample_rate=runner.sample_rate,
                                               window_samples=runner.window_samples))


def drive(service: FusionService, inputs: list[list[bytes]]) -> tuple[list[FusionResult], dict]:
    """Decode and feed ``inputs`` 20 ms apart; every result is re-encoded (it must fit the wire).
    Returns the results and the tally of decode rejections by reason."""
    results, decode_rejects, now = [], {}, T0
    for frames in inputs:
        now += 20 * MS
        try:
            msg = decode(frames)
        except DecodeError as err:
            decode_rejects[err.reason] = decode_rejects.get(err.reason, 0) + 1
            continue
        service.add(msg, now)
        results += service.results(now)
    results += service.results(now + 200 * MS)  # past the slop: nothing left waiting
    for r in results:
        assert isinstance(decode(encode_bytes(r)), FusionResult)
    return results, decode_rejects


EXPECT = {  # input → (what the last result fused, counters that must be non-zero)
    "audio 44.1 kHz": ({"image": True, "audio": True}, ["audio_resampled_chunks"]),
    "camera [0,0,3]": (None, ["rejected.empty_frame"]),
    "camera [480,0,3]": (None, ["rejected.empty_frame"]),
    "mono8 [480,640,1]": ({"image": True, "audio": True}, []),
    "audio [320,0]": ({"image": True, "audio": False}, ["rejected.empty_audio"]),
    "t_publish_ns 2**64-1": (None, []),  # decode: timestamp
    "NaN audio": ({"image": True, "audio": False}, ["audio_nonfinite_chunks"]),
    "Inf audio": ({"image": True, "audio": False}, ["audio_nonfinite_samples"]),
    "rgb8": ({"image": True, "audio": True}, []),
    "duplicate seq": ({"image": True, "audio": True}, ["rejected.duplicate_seq"]),
    "reordered seq": ({"image": True, "audio": True}, ["rejected.reordered_seq"]),
    "clock jump": ({"image": True, "audio": True}, ["audio_reanchors"]),
    "Timestamp extension": (None, []),  # decode: ext_type
    "topic camera_rear": (None, ["rejected.other_topic"]),
    "audio beyond full scale": ({"image": True, "audio": True}, ["audio_clipped_chunks"]),
}


@pytest.mark.parametrize("name", list(EXPECT))
def test_every_issue_input_is_served_or_counted(runner: FusionRunner, name: str) -> None:
    service = new_service(runner)
    results, decode_rejects = drive(service, issue_inputs()[name])
    present, nonzero = EXPECT[name]
    counters = service.counters(T0)
    for key in nonzero:
        assert counters.get(key, 0) > 0, (key, counters)
    with_frame = [r for r in results if "camera" in r.source_seq]
    if present is None:  # the frame was rejected: no result describes it
        assert not with_frame
        assert decode_rejects or any(k.startswith("rejected.") for k in counters)
    else:
        assert with_frame and with_frame[-1].present == present, results[-1:]
    for r in results:
        assert np.isfinite(r.probs).all() and abs(sum(r.probs) - 1) < 1e-4
    if name == "t_publish_ns 2**64-1":
        assert decode_rejects == {"timestamp": 1}
    if name == "Timestamp extension":
        assert decode_rejects == {"ext_type": 1}


def test_rgb_frames_are_turned_to_bgr_and_mono_loses_its_channel_axis() -> None:
    edge = Edge("camera", "mic", 16000)
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    out = edge.admit(frame(0, img=img, enc="rgb8"))
    assert out.encoding == "bgr8" and (out.image[..., 2] == 200).all() and (out.image[..., 0] == 0).all()
    mono = edge.admit(frame(1, T0 + 1, np.full((4, 4, 1), 7, np.uint8), "mono8"))
    assert mono.image.shape == (4, 4) and (mono.image == 7).all()


def test_edge_rejections_have_named_reasons() -> None:
    edge = Edge("camera", "mic", 16000)
    cases = [
        (CameraFrame("camera_rear", 0, T0, image=np.zeros((2, 2, 3), np.uint8)), "other_topic"),
        (Label("camera", 0, T0, label=1), "wrong_kind"),
        (CameraFrame("cam2", 0, T0, topic="camera", image=np.zeros((2, 2, 3), np.uint8)),
         "stream_mismatch"),
        (frame(0, img=np.zeros((0, 5, 3), np.uint8)), "empty_frame"),
        (audio(0, x=np.zeros(0, np.float32)), "empty_audio"),
        (audio(0, rate=16001), "sample_rate"),
        (Heartbeat("mic", 0, T0), "wrong_kind"),
    ]
    for msg, reason in cases:
        assert edge.admit(msg) is None, reason
        assert edge.last_rejection.reason == reason and reason in EDGE_REASONS
    assert edge.admit(audio(5)) is not None
    assert edge.admit(audio(5)) is None and edge.last_rejection.reason == "duplicate_seq"
    assert edge.admit(audio(4)) is None and edge.last_rejection.reason == "reordered_seq"
    # seq back to 0 while time goes on: a restarted sender, served and counted.
    assert edge.admit(audio(0, t_ns=T0 + 10**9)) is not None
    assert edge.degraded["stream_restarts"] == 1
    assert sum(edge.rejected.values()) == len(cases) + 2 and edge.accepted == 2


def test_lost_messages_are_counted_from_admitted_seqs_only() -> None:
    """A rejected message with a stale seq is not a gap in the stream; a skipped seq is."""
    edge = Edge("camera", "mic", 16000)
    for seq in (0, 1, 4):  # 2 and 3 never arrived
        assert edge.admit(audio(seq)) is not None
    assert edge.admit(audio(1)) is None  # a stale replay: rejected, loses nothing
    assert edge.admit(audio(5)) is not None
    assert edge.lost["mic"] == 2 and edge.lost["camera"] == 0


def test_non_finite_samples_become_missing_and_are_counted() -> None:
    edge = Edge("camera", "mic", 16000)
    x = np.array([0.5, np.nan, np.inf, -np.inf, 2.0, -0.25], np.float32)
    out = edge.admit(audio(0, x=x))
    np.testing.assert_array_equal(out.samples, [0.5, np.nan, np.nan, np.nan, 1.0, -0.25])
    assert edge.counters() == {"audio_clipped_chunks": 1, "audio_nonfinite_chunks": 1,
                               "audio_nonfinite_samples": 3}
    out = edge.admit(audio(1, x=np.array([[16384, 1], [-32768, 1]], np.int16)))
    np.testing.assert_array_equal(out.samples, np.array([0.5, -1.0], np.float32))


def test_chunked_resampling_equals_resampling_the_whole_stream() -> None:
    assert rate_ratio(44100, 16000) == (160, 441) and rate_ratio(16001, 16000) is None
    x = np.random.default_rng(0).normal(0, 0.1, 44100).astype(np.float32)
    ref = signal.resample_poly(x.astype(np.float64), 160, 441)
    for n in (882, 1000, 37):  # chunk sizes that do and do not divide evenly
        r = StreamResampler(44100, 16000)
        y = np.concatenate([r.push(x[i : i + n])[0] for i in range(0, x.size, n)])
        assert 15_950 <= y.size <= 16_000  # all but the last ~0.6 ms held for the filter
        np.testing.assert_allclose(y, ref[: y.size], atol=1e-6)


def test_resampled_chunks_keep_their_place_on_the_timeline() -> None:
    """44.1 kHz chunks of 1024 samples (23.2 ms, not a whole number of output samples): the
    output stamps stay on the input's timeline, so the ring never re-anchors or gaps."""
    svc_edge = Edge("camera", "mic", 16000)
    from udml_stream.sync import AudioRing

    ring = AudioRing(16000, capacity_s=5.0, tolerance_ns=1 * MS)
    for i in range(400):  # 9.3 s
        t = T0 + i * 1024 * 10**9 // 44100
        x = np.zeros(1024, np.float32)
        out = svc_edge.admit(AudioChunk("mic", i, t, samples=x, sample_rate=44100))
        if out is not None:
            ring.push(out)
    assert ring.reanchors == 0 and ring.gap_samples == 0 and ring.resets == 0


def test_warnings_are_rate_limited_per_reason_and_name_it(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RateLimitFilter(period_s=5.0, clock=lambda: now[0])
    lg = logging.getLogger("udml_test.flood")
    lg.addFilter(limiter)
    try:
        with caplog.at_level(logging.WARNING, logger="udml_test.flood"):
            for i in range(20_000):
                err = DecodeError("shape" if i % 2 else "not_msgpack", f"bad {i}")
                lg.warning("dropped a malformed message on %r: %s", "camera", err)
                now[0] += 1e-4  # 20,000 msgs/s for one second
            now[0] = 6.0
            lg.warning("dropped a malformed message on %r: %s", "camera",
                       DecodeError("shape", "again"))
    finally:
        lg.removeFilter(limiter)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # one per reason, then one after the period with the count
    assert lines[0].endswith("not_msgpack: bad 0") and lines[1].endswith("shape: bad 1")
    assert lines[2].endswith("shape: again (+9999 more like this in the last 5 s)")
    assert limiter.seen == {"shape": 10_001, "not_msgpack": 10_000}


def test_absence_is_declared_within_the_deadline_plus_one_poll(runner: FusionRunner) -> None:
    """Frames every 33 ms, then none: camera-absent (audio-only results, a liveness change)
    within the 500 ms deadline plus one 5 ms poll of the last frame's arrival."""
    service = new_service(runner)
    poll = 5 * MS
    last_rx = None
    now = T0
    absent_at = changed_at = None
    for step in range(400):  # 2 s of 5 ms polls
        now = T0 + step * poll
        if step % 4 == 0:
            service.add(audio(step // 4, t_ns=now - 20 * MS), now)
        if step % 7 == 0 and step < 200:
            service.add(frame(step // 7, now - 5 * MS), now)
            last_rx = now
        res = service.results(now)
        if service.liveness_changed(now) and changed_at is None and step >= 200:
            changed_at = now
        if absent_at is None and any(not r.present["image"] for r in res if step > 200):
            absent_at = now
    deadline = 500 * MS
    assert changed_at is not None and changed_at - last_rx <= deadline + poll
    assert absent_at is not None and absent_at - last_rx <= deadline + poll


# ---- against a running fusion node ---------------------------------------------------------


def test_running_fusion_node_survives_every_issue_input(tmp_path: Path) -> None:
    """Every input above over a real socket to a real fusion node, interleaved with good
    traffic: the node stays up, keeps publishing results and counts what it rejected."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    out_ep = f"ipc://{tmp_path}/fusion"
    launch = tmp_path / "launch.toml"
    write_launch(launch, {"fusion": {
        "program": "fusion", "checkpoint": CKPT, "device": "cpu", "threads": 1,
        "subscribe": [f"tcp://127.0.0.1:{port}"], "endpoint": out_ep, "heartbeat_s": 0.2}})
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(launch), "fusion"],
                            stderr=subprocess.PIPE, text=True)
    t_mono = time.monotonic_ns
    seq = {"a": 0, "f": 0}

    def good_traffic(ms: int) -> None:
        """``ms`` of audio and a frame every 40 ms, stamped now (the node's clock)."""
        for _ in range(ms // 20):
            pub.send_multipart(encode_bytes(AudioChunk("mic", seq["a"], t_mono() - 20 * MS,
                                               samples=np.zeros(320, np.float32))))
            seq["a"] += 1
            if seq["a"] % 2 == 0:
                pub.send_multipart(encode_bytes(frame(seq["f"], t_mono())))
                seq["f"] += 1
            time.sleep(0.02)  # paces the sender like a microphone; nothing is asserted on it

    try:
        with Subscriber([out_ep]) as sub:
            got: list = []

            def wait(pred, what: str, timeout_s: float = 30.0) -> None:
                end = time.monotonic() + timeout_s
                while time.monotonic() < end:
                    assert proc.poll() is None, proc.stderr.read()
                    got.extend(sub.receive(50))
                    if pred():
                        return
                    good_traffic(40)
                raise AssertionError(f"fusion node: {what} not seen within {timeout_s}s")

            def n_results() -> int:
                return sum(isinstance(m, FusionResult) for m in got)

            wait(lambda: n_results() >= 3, "first results")
            for name in EXPECT:
                # Each scenario stamped now (the node's clock) with fresh sequence numbers.
                scenario = issue_inputs(t_mono() - 10**9, seq["a"])[name]
                seq["a"] += 100
                for frames in scenario:
                    pub.send_multipart(frames)
                good_traffic(20)
            before = n_results()
            wait(lambda: n_results() >= before + 10, "results after the bad input")

            def hb() -> dict:
                beats = [m for m in got if isinstance(m, Heartbeat) and m.node == "fusion"]
                return beats[-1].counters if beats else {}

            wanted = ["rejected.empty_frame", "rejected.empty_audio", "rejected.timestamp",
                      "rejected.ext_type", "rejected.other_topic", "audio_nonfinite_chunks",
                      "audio_resampled_chunks", "audio_clipped_chunks"]
            wait(lambda: all(hb().get(k, 0) > 0 for k in wanted), "per-reason counters")
            assert hb()["internal_errors"] == 0
            # Its diagnostics travel in the same heartbeat (nothing found on this traffic).
            assert hb()["diag.findings"] == 0 and hb()["diag.image.rotate"] == 0
            # `udml topics` shows the node's rejections by reason, from its heartbeats.
            top = subprocess.run([sys.executable, "-m", "udml_stream.cli.main", "topics", out_ep,
                                  "--seconds", "2"], capture_output=True, text=True, timeout=60)
            assert top.returncode == 0, top.stderr
            line = next(ln for ln in top.stdout.splitlines() if ln.startswith("fusion rejected:"))
            assert "empty_frame=" in line and "timestamp=" in line and "other_topic=" in line
            assert proc.poll() is None
    finally:
        pub.close(linger=0)
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # Rate-limited: one line per reason per period, each naming its reason.
    rejected_lines = [ln for ln in err.splitlines() if "rejected a message" in ln]
    assert rejected_lines and len(rejected_lines) <= 3 * len(EDGE_REASONS), rejected_lines



def test_a_frozen_camera_is_rejected_until_its_picture_changes() -> None:
    rng = np.random.default_rng(3)
    still = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    edge = Edge("camera", "mic", 16000, freeze_ns=300 * MS)
    kept = [edge.admit(frame(i, T0 + i * 33 * MS, still)) is not None for i in range(20)]
    # Unchanged for 300 ms by capture time: frames 0..9 (0..297 ms) pass, the rest are frozen.
    assert kept == [True] * 10 + [False] * 10
    assert edge.rejected["frozen_frame"] == 10
    moved = still.copy()
    moved[::16, ::16] ^= 1  # a real sensor's noise: every sampled pixel changes
    assert edge.admit(frame(20, T0 + 20 * 33 * MS, moved)) is not None
    # Off by default: a synthetic source repeating its frames is served.
    plain = Edge("camera", "mic", 16000)
    assert all(plain.admit(frame(i, T0 + i * 33 * MS, still)) is not None for i in range(20))


def test_a_frozen_camera_goes_absent_and_audio_carries_on(runner: FusionRunner) -> None:
    svc = FusionService(runner, PairingConfig(sample_rate=runner.sample_rate,
                                              window_samples=runner.window_samples),
                        freeze_ns=300 * MS)
    still = np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    results = []
    for i in range(150):  # 3 s: audio every 20 ms, the same frame every 40 ms
        now = T0 + i * 20 * MS
        svc.add(audio(i), now)
        if i % 2 == 0:
            svc.add(frame(i // 2, now, still), now)
        results += svc.results(now)
    late = [r for r in results if r.capture_ns > T0 + 2_000 * MS]
    assert late and all(r.present.get("image") is False or "camera" not in r.source_seq
                        for r in late)
    assert svc.counters(T0 + 3 * 10**9)["rejected.frozen_frame"] > 0
