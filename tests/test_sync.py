"""Time sync: the audio ring's continuous timeline (NaN marks a missing sample) and the pairing
policy."""

from __future__ import annotations

import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame
from udml_stream.sync import AudioRing, Pairer, PairingConfig, valid_fraction

SR = 1000  # 1 kHz keeps the arithmetic readable: 1 sample = 1 ms
MS = 1_000_000


def chunk(seq: int, t_ms: int, n: int = 20, value: float | None = None) -> AudioChunk:
    x = np.arange(t_ms, t_ms + n, dtype=np.float32) if value is None else np.full(n, value, np.float32)
    return AudioChunk("mic", seq, t_ms * MS, samples=x, sample_rate=SR)


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan, np.float32)


def test_ring_window_ends_at_the_requested_instant() -> None:
    ring = AudioRing(SR, capacity_s=1.0)
    assert ring.window(0, 10) is None  # empty
    for i in range(10):
        ring.push(chunk(i, 1000 + 20 * i))
    assert ring.end_ns == 1200 * MS and ring.start_ns == 1000 * MS
    w = ring.window(1150 * MS, 50)
    np.testing.assert_array_equal(w, np.arange(1100, 1150, dtype=np.float32))
    # Parts of a window the ring does not hold are NaN: not captured yet, or older than the ring.
    np.testing.assert_array_equal(ring.window(1201 * MS, 10),
                                  np.r_[np.arange(1191, 1200, dtype=np.float32), _nan(1)])
    np.testing.assert_array_equal(ring.window(1030 * MS, 50),
                                  np.r_[_nan(20), np.arange(1000, 1030, dtype=np.float32)])
    # Nothing of the window held → None.
    assert ring.window(1000 * MS, 50) is None  # ends where the ring starts
    assert ring.window(1260 * MS, 50) is None  # starts where the ring ends
    assert ring.window(1150 * MS, 0) is None


def test_ring_with_less_audio_than_a_window_nan_prefixes_it() -> None:
    ring = AudioRing(SR, capacity_s=5.0)
    for i in range(20):  # 0.4 s of audio
        ring.push(chunk(i, 20 * i))
    w = ring.window(400 * MS, 1000)  # a 1 s window
    assert w is not None and w.shape == (1000,) and w.dtype == np.float32
    assert np.isnan(w[:600]).all()
    np.testing.assert_array_equal(w[600:], np.arange(0, 400, dtype=np.float32))
    assert valid_fraction(w) == 0.4
    assert ring.gap_samples == 0  # not a gap: the stream had not started


def test_clean_stream_has_no_nan() -> None:
    ring = AudioRing(SR, capacity_s=2.0, tolerance_ns=5 * MS)
    jitter = [0, 3, -2, 4, -4, 1]
    for i in range(100):
        ring.push(chunk(i, 20 * i + jitter[i % len(jitter)], value=0.0))  # digital silence
    w = ring.window(ring.end_ns, 1000)
    assert ring.gap_samples == 0 and valid_fraction(w) == 1.0
    np.testing.assert_array_equal(w, np.zeros(1000, np.float32))  # real zeros stay zeros


def test_ring_absorbs_jitter_marks_gaps_nan_and_resets_on_restart() -> None:
    ring = AudioRing(SR, capacity_s=1.0, tolerance_ns=5 * MS)
    ring.push(chunk(0, 0))
    ring.push(chunk(1, 23))  # 3 ms jitter: laid end to end
    assert ring.end_ns == 40 * MS and ring.gap_samples == 0
    ring.push(chunk(2, 100, value=7.0))  # 60 ms lost
    assert ring.gap_samples == 60 and ring.end_ns == 120 * MS
    w = ring.window(120 * MS, 120)
    np.testing.assert_array_equal(w[:40], np.r_[np.arange(0, 20), np.arange(23, 43)])
    assert np.isnan(w[40:100]).all()  # the gap, exactly where it was, not zeros
    np.testing.assert_array_equal(w[100:], np.full(20, 7.0, np.float32))
    assert valid_fraction(w) == 60 / 120
    assert ring.window(100 * MS, 60) is None  # wholly inside the gap: nothing held
    ring.push(chunk(0, 10))  # the source restarted
    assert ring.resets == 1 and ring.end_ns == 30 * MS
    assert ring.window(10 * MS, 50) is None and ring.start_ns == 10 * MS


def test_gap_longer_than_the_ring_and_non_finite_samples() -> None:
    ring = AudioRing(SR, capacity_s=0.1, tolerance_ns=5 * MS)
    ring.push(chunk(0, 0))
    ring.push(chunk(1, 5020, value=1.0))  # 5 s lost: more than the ring holds
    assert ring.gap_samples == 5000 and ring.end_ns == 5040 * MS
    w = ring.window(5040 * MS, 100)
    assert np.isnan(w[:80]).all() and (w[80:] == 1.0).all()
    x = np.array([1.0, np.inf, -np.inf, np.nan, 2.0], np.float32)
    ring.push(AudioChunk("mic", 2, 5040 * MS, samples=x, sample_rate=SR))
    w = ring.window(5045 * MS, 5)
    np.testing.assert_array_equal(w, [1.0, np.nan, np.nan, np.nan, 2.0])  # inf is no sample


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
    assert s.audio_valid == 1.0 and p.partial_windows == p.missing_samples == 0
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
            assert out.frame is None and out.audio is not None and out.audio_valid == 1.0
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


def test_pairer_sends_partial_windows_with_their_valid_fraction() -> None:
    cfg = PairingConfig(sample_rate=SR, window_samples=100, slop_ns=50 * MS,
                        camera_deadline_ns=200 * MS, audio_deadline_ns=100 * MS, fallback_hz=10)
    p = Pairer(cfg)
    p.ring.tolerance_ns = 5 * MS
    # Only 40 ms of audio so far: the frame goes out with a NaN-prefixed window, not without audio.
    p.add(chunk(0, 0), now_ns=21 * MS)
    p.add(chunk(1, 20), now_ns=41 * MS)
    p.add(_frame(0, 40), now_ns=42 * MS)
    s = p.ready(42 * MS)
    assert s is not None and s.audio is not None and s.audio.shape == (100,)
    assert np.isnan(s.audio[:60]).all() and s.audio_valid == 0.4
    assert s.source_seq == {"camera": 0, "mic": 1}
    assert p.partial_windows == 1 and p.missing_samples == 60
    # A 30 ms dropout inside the next window: NaN where it was, counted.
    p.add(chunk(2, 70), now_ns=91 * MS)
    p.add(chunk(3, 90), now_ns=111 * MS)
    assert p.ring.gap_samples == 30
    p.add(_frame(1, 110), now_ns=111 * MS)
    s = p.ready(111 * MS)
    assert s is not None and s.audio_valid == 0.7  # window 10..110 ms, gap 40..70 ms
    np.testing.assert_array_equal(s.audio[:30], np.arange(10, 40, dtype=np.float32))
    assert np.isnan(s.audio[30:60]).all() and not np.isnan(s.audio[60:]).any()
    assert p.partial_windows == 2 and p.missing_samples == 60 + 30
    # The audio stream dies: frames go out without audio, valid 0, and are not partial windows.
    p.add(_frame(2, 300), now_ns=300 * MS)
    s = p.ready(300 * MS)
    assert s is not None and s.audio is None and s.audio_valid == 0.0 and "mic" not in s.source_seq
    assert p.partial_windows == 2


def test_audio_only_fallback_needs_a_usable_window() -> None:
    cfg = PairingConfig(sample_rate=SR, window_samples=100, camera_deadline_ns=50 * MS,
                        audio_deadline_ns=100 * MS, fallback_hz=1000, fallback_min_valid=0.5)
    p = Pairer(cfg)
    sent = []
    for i in range(6):  # no camera at all; audio starts from nothing
        p.add(chunk(i, 20 * i), now_ns=(20 * i + 21) * MS)
        out = p.ready((20 * i + 21) * MS)
        sent.append(None if out is None else out.audio_valid)
    # 20, 40 ms held of a 100 ms window: below the threshold, nothing; then partial windows.
    assert sent == [None, None, 0.6, 0.8, 1.0, 1.0]
    assert p.partial_windows == 2 and p.missing_samples == 40 + 20


def test_frames_keep_flowing_when_the_audio_runs_behind_the_camera() -> None:
    """Audio 100 ms behind a 30 fps camera: every frame is superseded before its audio arrives,
    yet the pairer releases one within the slop (the wait starts with the first frame waiting)."""
    cfg = PairingConfig(sample_rate=SR, window_samples=200, slop_ns=60 * MS)
    p = Pairer(cfg)
    out = []
    for i in range(60):  # 2 s of frames every 33 ms; the audio covers t - 100 ms
        t = 1000 + 33 * i
        p.add(chunk(i, t - 120, n=33), t * MS)
        p.add(CameraFrame("camera", i, t * MS, image=np.zeros((2, 2), np.uint8), encoding="mono8"),
              t * MS)
        s = p.ready(t * MS + 1)
        if s is not None:
            out.append(s)
    assert len(out) >= 20, len(out)
    assert all(s.audio is not None for s in out)


def test_ring_reanchors_when_the_stamps_jump_forward_within_the_old_tolerance() -> None:
    """A 131 ms forward jump of the stamps (the replayed log of issue 9): the timeline follows
    the stamps (a NaN gap where nothing was recorded) instead of lagging them for good."""
    ring = AudioRing(SR, capacity_s=2.0)
    for i in range(10):
        ring.push(chunk(i, 20 * i))
    ring.push(chunk(10, 200 + 131, value=5.0))
    assert ring.reanchors == 1 and ring.resets == 0 and ring.gap_samples == 131
    assert ring.end_ns == (331 + 20) * MS  # on the stamps, not 131 ms behind them
    w = ring.window(351 * MS, 20)
    np.testing.assert_array_equal(w, np.full(20, 5.0, np.float32))


def test_ring_moves_its_timeline_back_when_the_clock_steps_back_and_seq_goes_on() -> None:
    ring = AudioRing(SR, capacity_s=2.0)
    for i in range(10):
        ring.push(chunk(i, 1000 + 20 * i))
    ring.push(chunk(10, 1200 - 131))  # seq continues, the stamp steps back 131 ms
    assert ring.reanchors == 1 and ring.resets == 0 and ring.gap_samples == 0
    assert ring.end_ns == (1069 + 20) * MS
    # The samples held stay, in order, now ending at the new stamps: no audio is thrown away.
    w = ring.window(ring.end_ns, 40)
    np.testing.assert_array_equal(w, np.r_[np.arange(1180, 1200), np.arange(1069, 1089)]
                                  .astype(np.float32))
    ring.push(chunk(0, 900))  # seq back to 0 as well: the source restarted
    assert ring.resets == 1 and ring.start_ns == 900 * MS


def test_pairer_does_not_wait_the_slop_after_a_stamp_jump() -> None:
    cfg = PairingConfig(sample_rate=SR, window_samples=100, slop_ns=60 * MS)
    p = Pairer(cfg)
    for i in range(30):  # audio 20 ms chunks; the stamps jump 131 ms ahead at chunk 15
        t = 20 * i + (131 if i >= 15 else 0)
        p.add(chunk(i, t), now_ns=(t + 21) * MS)
    assert p.ring.reanchors == 1
    t_frame = 20 * 29 + 131 + 10
    p.add(_frame(0, t_frame), now_ns=(t_frame + 1) * MS)
    s = p.ready((t_frame + 1) * MS)  # the audio already covers the frame: out at once
    assert s is not None and s.wait_ns == 0 and s.audio_valid == 1.0


def test_frames_with_no_window_while_audio_lives_are_counted() -> None:
    """Audio stamped on a clock 10 s away from the camera's: the frames go out camera-only,
    but not silently."""
    p = Pairer(PairingConfig(sample_rate=SR, window_samples=100, slop_ns=0))
    for i in range(10):
        p.add(chunk(i, 10_000 + 20 * i), now_ns=(20 * i + 21) * MS)
    p.add(_frame(0, 200), now_ns=201 * MS)
    s = p.ready(201 * MS)
    assert s is not None and s.audio is None and p.windows_missed == 1


def test_audio_lag_fuses_a_frame_without_waiting_for_the_last_chunk() -> None:
    """With audio_lag_ns, a frame whose instant the audio reaches to within the lag goes out at
    once, its window ending where the audio ends; beyond the lag it still waits."""
    cfg = PairingConfig(sample_rate=SR, window_samples=100, slop_ns=50 * MS,
                        audio_lag_ns=20 * MS)
    p = Pairer(cfg)
    for i in range(10):
        p.add(chunk(i, 20 * i), now_ns=20 * (i + 1) * MS)  # audio up to 200 ms
    p.add(_frame(0, 215), now_ns=215 * MS)
    s = p.ready(215 * MS)
    assert s is not None and s.wait_ns == 0
    np.testing.assert_array_equal(s.audio, np.arange(100, 200, dtype=np.float32))
    p.add(_frame(1, 230), now_ns=230 * MS)
    assert p.ready(230 * MS) is None  # 30 ms beyond the audio: more than the lag, it waits
