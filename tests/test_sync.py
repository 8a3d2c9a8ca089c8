"""Time sync: the audio ring's continuous timeline and the pairing policy."""

from __future__ import annotations

import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame
from udml_stream.sync import AudioRing, Pairer, PairingConfig

SR = 1000  # 1 kHz keeps the arithmetic readable: 1 sample = 1 ms
MS = 1_000_000


def chunk(seq: int, t_ms: int, n: int = 20, value: float | None = None) -> AudioChunk:
    x = np.arange(t_ms, t_ms + n, dtype=np.float32) if value is None else np.full(n, value, np.float32)
    return AudioChunk("mic", seq, t_ms * MS, samples=x, sample_rate=SR)


def test_ring_window_ends_at_the_requested_instant() -> None:
    ring = AudioRing(SR, capacity_s=1.0)
    for i in range(10):
        ring.push(chunk(i, 1000 + 20 * i))
    assert ring.end_ns == 1200 * MS and ring.start_ns == 1000 * MS
    w = ring.window(1150 * MS, 50)
    np.testing.assert_array_equal(w, np.arange(1100, 1150, dtype=np.float32))
    assert ring.window(1201 * MS, 10) is None  # not captured yet
    assert ring.window(1030 * MS, 50) is None  # older than the ring holds


def test_ring_absorbs_jitter_fills_gaps_and_resets_on_restart() -> None:
    ring = AudioRing(SR, capacity_s=1.0, tolerance_ns=5 * MS)
    ring.push(chunk(0, 0))
    ring.push(chunk(1, 23))  # 3 ms jitter: laid end to end
    assert ring.end_ns == 40 * MS and ring.gap_samples == 0
    ring.push(chunk(2, 100, value=7.0))  # 60 ms lost
    assert ring.gap_samples == 60 and ring.end_ns == 120 * MS
    np.testing.assert_array_equal(ring.window(100 * MS, 60), np.zeros(60, np.float32))
    ring.push(chunk(0, 10))  # the source restarted
    assert ring.resets == 1 and ring.end_ns == 30 * MS


def test_wraparound_keeps_order() -> None:
    ring = AudioRing(SR, capacity_s=0.1)
    for i in range(20):
        ring.push(chunk(i, 20 * i))
    np.testing.assert_array_equal(ring.window(400 * MS, 100), np.arange(300, 400, dtype=np.float32))


def _frame(seq: int, t_ms: int) -> CameraFrame:
    return CameraFrame("camera", seq, t_ms * MS, image=np.zeros((4, 4, 3), np.uint8))


def test_pairer_waits_for_audio_then_falls_back_when_camera_dies() -> None:
    cfg = PairingConfig(sample_rate=SR, window_samples=100, slop_ns=50 * MS,
                        camera_deadline_ns=200 * MS, audio_deadline_ns=100 * MS, fallback_hz=10)
    p = Pairer(cfg)
    for i in range(10):
        p.add(chunk(i, 20 * i), now_ns=20 * (i + 1) * MS)
    p.add(_frame(0, 210), now_ns=205 * MS)
    assert p.ready(206 * MS) is None  # audio covers up to 200 ms only: wait
    p.add(chunk(10, 200), now_ns=222 * MS)
    s = p.ready(222 * MS)
    assert s is not None and s.frame.seq == 0 and s.source_seq == {"camera": 0, "mic": 10}
    np.testing.assert_array_equal(s.audio, np.arange(110, 210, dtype=np.float32))
    # No audio beyond 220 ms ever comes: the next frame goes out after the slop, without waiting more.
    p.add(_frame(1, 250), now_ns=251 * MS)
    assert p.ready(260 * MS) is None
    s = p.ready(302 * MS)
    assert s is not None and s.frame.seq == 1
    # The camera goes silent; audio continues → audio-only samples at the fallback rate.
    for i in range(11, 40):
        p.add(chunk(i, 20 * i), now_ns=(20 * i + 21) * MS)
        out = p.ready((20 * i + 21) * MS)
        if out is not None:
            assert out.frame is None and out.audio is not None
            break
    else:
        raise AssertionError("no audio-only sample while the camera was dead")
    now = (20 * i + 21) * MS
    assert not p.camera_alive(now) and p.audio_alive(now)
    assert now - 251 * MS > cfg.camera_deadline_ns  # only after the camera's deadline


def test_superseded_frames_are_counted() -> None:
    p = Pairer(PairingConfig(sample_rate=SR, window_samples=10))
    p.add(_frame(0, 0), 0)
    p.add(_frame(1, 33), 1)
    assert p.frames_superseded == 1 and p.pending.seq == 1
