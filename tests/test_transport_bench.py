"""The transport benchmark (ours vs raw pyzmq) and the receive path it measures: real sockets."""

from __future__ import annotations

import time
import weakref
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from udml_stream.benchmarks import transport
from udml_stream.messages import AudioChunk, CameraFrame, Message, decode, encode_bytes
from udml_stream.transport import Publisher, Subscriber


def test_benchmark_receives_every_message_exactly_on_both_paths() -> None:
    res = transport.run(n=25, rounds=2, period_ms=2.0)
    assert set(res["cases"]) == {f"{t}_{b}" for t in ("ipc", "tcp") for b in (921_600, 3_200)}
    for key, c in res["cases"].items():
        # Every message sent was received and held exactly the bytes sent, on both paths.
        assert c["n"] == 50, key
        assert c["lost"] == {"raw": 0, "ours": 0}, key
        assert c["bad_payload"] == {"raw": 0, "ours": 0}, key
        for k in ("raw_p50_ms", "ours_p50_ms", "raw_p99_ms", "ours_p99_ms"):
            assert 0 < c[k] < 1000, (key, k)
        assert c["ratio_p50"] == pytest.approx(c["ours_p50_ms"] / c["raw_p50_ms"], rel=0.01)
        assert len(c["round_ratios_p50"]) == 2
    worst = max(c["ratio_p50"] for c in res["cases"].values())
    assert res["worst_ratio_p50"] == worst
    assert res["goal_met"] == (worst <= transport.GOAL_RATIO_P50)
    md = transport.to_markdown(res, "udml bench transport")
    assert md.startswith("Command: `udml bench transport`") and "ipc, 921,600 B" in md
    assert transport.to_table(res).row_count == 4


def test_payloads_differ_per_message_and_are_checked_exactly() -> None:
    a, b = transport.expected_payload(3_200, 1), transport.expected_payload(3_200, 2)
    assert a.nbytes == 3_200 and not np.array_equal(a, b)
    assert transport._exact(a.tobytes(), 3_200, 1) and not transport._exact(a, 3_200, 2)
    a[100] ^= 1
    assert not transport._exact(a, 3_200, 1)


# ---- the receive path the benchmark measures -------------------------------------------------


def _root(arr: np.ndarray) -> Any:
    """What finally owns an array's memory (an ndarray that owns it, or a buffer's object)."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def _round_trip(endpoint: str, msg: Message) -> Message:
    ctx = zmq.Context()
    try:
        with Publisher(endpoint, ctx=ctx) as pub, Subscriber([pub.endpoint], ctx=ctx) as sub:
            end = time.monotonic() + 5
            while time.monotonic() < end:  # slow joiner: publish until one arrives
                pub.publish(msg)
                got = sub.recv_one(20)
                if got is not None:
                    return got
        raise TimeoutError(f"nothing arrived over {endpoint}")
    finally:
        ctx.destroy(linger=0)


def _camera() -> CameraFrame:
    img = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return CameraFrame("camera", 4, 5, image=img)


def test_a_received_camera_frame_is_the_zmq_frame_itself_writable_and_freed_with_it(
        tmp_path) -> None:
    sent = _camera()
    for ep in ("tcp://127.0.0.1:*", f"ipc://{tmp_path}/cam"):
        got = _round_trip(ep, sent)
        assert isinstance(got, CameraFrame)
        np.testing.assert_array_equal(got.image, sent.image)
        owner = _root(got.image)
        assert isinstance(owner, zmq.Frame), ep  # no 900 kB copy
        assert got.image.flags.writeable and not np.shares_memory(got.image, sent.image)
        got.image[0, 0, 0] ^= 0xFF  # consumers may still edit frames in place
        ref = weakref.ref(owner)
        del got, owner
        assert ref() is None, "the frame must go with the array (no held zero-copy buffers)"


def test_inproc_and_small_payloads_are_copied() -> None:
    # inproc:// frames can share memory with the sender's array: the subscriber copies.
    sent = _camera()
    got = _round_trip("inproc://cam", sent)
    assert isinstance(_root(got.image), bytearray)
    assert not np.shares_memory(got.image, sent.image)
    # Small payloads share libzmq's receive batch buffer: holding them would pin it; copied.
    audio = AudioChunk("mic", 1, 2, samples=np.linspace(-1, 1, 800, dtype=np.float32))
    back = _round_trip("tcp://127.0.0.1:*", audio)
    assert isinstance(back, AudioChunk) and isinstance(_root(back.samples), bytearray)
    np.testing.assert_array_equal(back.samples, audio.samples)
    # Decoding plain bytes always copies (an array over bytes would be read-only).
    arr = decode(encode_bytes(sent), zero_copy=True).image  # type: ignore[attr-defined]
    assert arr.flags.writeable and isinstance(_root(arr), bytearray)


def test_headers_in_another_key_order_take_the_full_validation_to_the_same_message() -> None:
    for msg in (_camera(), AudioChunk("mic", 3, 7, 9, "realtime", samples=np.arange(
            -5, 5, dtype=np.int16).reshape(5, 2), sample_rate=8000)):
        frames = encode_bytes(msg)
        h = msgpack.unpackb(frames[1])
        frames[1] = msgpack.packb(dict(reversed(list(h.items()))))
        a, b = decode(encode_bytes(msg)), decode(frames)
        assert type(a) is type(b)
        for k, v in vars(a).items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(getattr(b, k), v)
                assert getattr(b, k).dtype == v.dtype
            else:
                assert getattr(b, k) == v, k
