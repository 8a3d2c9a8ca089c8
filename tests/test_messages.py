"""Wire format v1: round trips, and every kind of bad input raising one typed error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from udml_stream.messages import (
    AudioChunk,
    CameraFrame,
    DecodeError,
    FusionResult,
    Heartbeat,
    Label,
    decode,
    encode,
    encode_bytes,
)
from udml_stream.messages.codec import DECODE_REASONS, MAX_PAYLOAD_BYTES, ZERO_COPY_MIN_BYTES


def _frame() -> CameraFrame:
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return CameraFrame("camera", 7, 1_000, 2_000, "monotonic", image=img)


def test_round_trip_every_kind() -> None:
    audio = AudioChunk("mic", 3, 5, 6, "realtime", samples=np.linspace(-1, 1, 512, dtype=np.float32),
                       sample_rate=16000)
    result = FusionResult("fused", 9, 10, 11, probs=[0.25, 0.75], pred=1, class_names=["a", "b"],
                          sigma_hat={"image": 1.5}, weights={"image": 0.4, "audio": 1.6},
                          present={"image": True, "audio": True},
                          source_seq={"image": 7, "audio": 3}, latency_ns={"inference": 1200},
                          conflict=True)
    for msg in (_frame(), audio, result, Heartbeat("camera", 1, 2, node="camera", counters={"x": 1}),
                Label("label", 1, 2, label=4, name="4")):
        back = decode(encode_bytes(msg))
        assert type(back) is type(msg)
        for k, v in vars(msg).items():
            got = getattr(back, k)
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got, v)
                assert got.dtype == v.dtype
            elif k == "topic":
                assert got == (v or msg.stream)
            else:
                assert got == v, k


def test_large_payloads_are_not_copied_small_ones_are() -> None:
    frames = encode(_frame())
    assert isinstance(frames[2], np.ndarray) and frames[2].nbytes >= ZERO_COPY_MIN_BYTES
    small = encode(AudioChunk("mic", 0, 0, samples=np.zeros(256, np.float32)))
    assert isinstance(small[2], bytes)


def _header(frames: list) -> dict:
    return msgpack.unpackb(frames[1])


def _with(frames: list, **changes) -> list:
    h = _header(frames)
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


BAD = {  # name → (mutation, what the error must say)
    "garbage": (lambda f: [b"camera", b"\xc1\xff\x00garbage", f[2]], "not valid msgpack"),
    "not a map": (lambda f: [b"camera", msgpack.packb([1, 2, 3]), f[2]], "must be a map"),
    "unknown version": (lambda f: _with(f, v=99), "version 99"),
    "unknown kind": (lambda f: _with(f, kind="teleport"), "unknown message kind"),
    "wrong field type": (lambda f: _with(f, seq="seven"), "'seq' has type str"),
    "bool as int": (lambda f: _with(f, seq=True), "'seq' has type bool"),
    "unknown clock": (lambda f: _with(f, clock="sundial"), "clock 'sundial'"),
    "truncated payload": (lambda f: [f[0], f[1], f[2][:-10]], "payload has 921590 bytes"),
    "shape mismatch": (lambda f: _with(f, shape=[480, 640, 4]), "needs 1228800"),
    "oversized shape": (lambda f: _with(f, shape=[100000, 100000, 3]), "limit"),
    "negative dim": (lambda f: _with(f, shape=[-480, 640, 3]), "shape .* is invalid"),
    "forbidden dtype": (lambda f: _with(f, dtype="object"), "dtype 'object' is not allowed"),
    "encoding mismatch": (lambda f: _with(f, encoding="mono8"), "does not fit"),
    "missing payload": (lambda f: f[:2], "exactly one payload frame"),
    "extra payload": (lambda f: [*f, b"x"], "exactly one payload frame"),
    "one frame": (lambda f: f[:1], "at least 2 frames"),
    "ext type": (lambda f: [f[0], msgpack.packb({"v": 1, "kind": msgpack.ExtType(1, b"x")}), f[2]],
                 "extension type"),
    # msgpack decodes its Timestamp extension itself, without the ext_hook: found by a walk.
    "timestamp ext": (lambda f: _with(f, extra={"when": [msgpack.Timestamp(1, 2)]}),
                      "Timestamp extension"),
    "publish stamp too large": (lambda f: _with(f, t_publish_ns=2**64 - 1), r"outside \[0, 2\*\*63\)"),
    "negative capture stamp": (lambda f: _with(f, t_capture_ns=-1), "t_capture_ns = -1"),
    "seq too large": (lambda f: _with(f, seq=2**63), "seq = "),
    "topic not utf-8": (lambda f: [b"\xff\xfe", f[1], f[2]], "not valid msgpack/UTF-8"),
}
REASON = {  # the named reason each bad input is counted under
    "garbage": "not_msgpack", "not a map": "not_map", "unknown version": "version",
    "unknown kind": "kind", "wrong field type": "field", "bool as int": "field",
    "unknown clock": "clock", "truncated payload": "payload_size", "shape mismatch": "payload_size",
    "oversized shape": "too_large", "negative dim": "shape", "forbidden dtype": "dtype",
    "encoding mismatch": "encoding", "missing payload": "frames", "extra payload": "frames",
    "one frame": "frames", "ext type": "ext_type", "timestamp ext": "ext_type",
    "publish stamp too large": "timestamp", "negative capture stamp": "timestamp",
    "seq too large": "seq", "topic not utf-8": "not_msgpack",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_decode_error(name: str) -> None:
    frames = encode_bytes(_frame())
    mutate, pattern = BAD[name]
    with pytest.raises(DecodeError, match=pattern) as info:
        decode(mutate(frames))
    assert info.value.reason == REASON[name] and info.value.reason in DECODE_REASONS
    assert str(info.value).startswith(f"{REASON[name]}: ")  # a log line always names it


def test_a_result_s_conflict_flag_is_optional_and_must_be_a_boolean() -> None:
    base = FusionResult("fused", 1, 2, 3, probs=[1.0], pred=0, class_names=["a"])
    assert decode(encode_bytes(base)).conflict is None  # a sender that does not say
    frames = encode(base)
    for bad in (1, "yes"):
        with pytest.raises(DecodeError, match="'conflict' has type"):
            decode(_with(frames, conflict=bad))


def test_timestamps_at_the_ends_of_the_range_decode() -> None:
    frames = encode_bytes(_frame())
    back = decode(_with(frames, t_capture_ns=0, t_publish_ns=2**63 - 1, seq=2**63 - 1))
    assert back.capture_ns == 0 and back.publish_ns == 2**63 - 1 and back.seq == 2**63 - 1


def test_audio_consistency_is_checked() -> None:
    frames = encode_bytes(AudioChunk("mic", 0, 0, samples=np.zeros(160, np.float32)))
    with pytest.raises(DecodeError, match="inconsistent") as info:
        decode(_with(frames, n_samples=999))
    assert info.value.reason == "audio_format"
    with pytest.raises(DecodeError, match="inconsistent"):
        decode(_with(frames, sample_rate=0))
    assert MAX_PAYLOAD_BYTES >= 640 * 480 * 3 * 4


def test_unsupported_dtype_cannot_be_encoded() -> None:
    with pytest.raises(Exception, match="not allowed"):
        encode(AudioChunk("mic", 0, 0, samples=np.zeros(4, np.float64)))
