"""Encode messages to ZeroMQ multipart frames and decode them with full validation.

A message is ``[topic, header, *payload]``: the topic as UTF-8 bytes (the SUB prefix filter),
a msgpack map, and zero or more raw payload frames (one for camera frames and audio chunks).
Decoding never trusts the peer: every field is type-checked, the dtype comes from a whitelist,
payload sizes must match ``shape`` exactly and stay under the limits, timestamps and sequence
numbers lie in ``[0, 2**63)``; any violation raises ``DecodeError`` with a named ``reason`` (one of
``DECODE_REASONS``). Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgpack
import numpy as np

from udml_stream.errors import UdmlError

FORMAT_VERSION = 1
Clock = Literal["monotonic", "realtime"]
CLOCKS = ("monotonic", "realtime")
#: dtypes a payload may carry (little-endian on the wire).
DTYPES = {"uint8": np.dtype("u1"), "int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_DIMS = 4
MAX_TOPIC_BYTES = 256
#: Payloads at least this large are handed to ZeroMQ without a copy (FIELD.md: ~64 kB break-even).
ZERO_COPY_MIN_BYTES = 64 * 1024
#: Timestamps and sequence numbers must lie in [0, MAX_INT): any difference of two of them (a
#: latency) then still fits a signed 64-bit int, which is what msgpack and the results carry.
MAX_INT = 2**63

#: Why a message was rejected by ``decode``: reason name → what it means (docs/wire-format.md).
DECODE_REASONS: dict[str, str] = {
    "frames": "wrong number of frames (fewer than 2, or payload frames not as the kind needs)",
    "too_large": "topic, header or payload over its size limit",
    "not_msgpack": "topic not UTF-8, or header not valid msgpack",
    "ext_type": "a msgpack extension type (Timestamp included) anywhere in the header",
    "not_map": "header is not a msgpack map",
    "version": "wire format version is not 1",
    "kind": "unknown message kind",
    "clock": "unknown clock",
    "field": "a required header key is missing or has the wrong type",
    "timestamp": "t_capture_ns or t_publish_ns outside [0, 2**63)",
    "seq": "seq outside [0, 2**63)",
    "dtype": "payload dtype not allowed",
    "shape": "shape is not 1..4 non-negative ints",
    "payload_size": "payload size differs from prod(shape) x itemsize",
    "encoding": "camera encoding does not fit the array",
    "audio_format": "audio sample_rate, n_samples, shape or dtype inconsistent",
}


class DecodeError(UdmlError):
    """A received message is malformed; it must be counted and dropped, never crash a node.

    ``reason`` is one of ``DECODE_REASONS`` (what nodes count by); the text says what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Message:
    """Fields every message carries. Timestamps are integer nanoseconds of ``clock``."""

    stream: str
    seq: int
    capture_ns: int
    publish_ns: int = 0
    clock: Clock = "monotonic"
    topic: str = ""  # defaults to ``stream`` when encoding

    kind: ClassVar[str] = ""


@dataclass
class CameraFrame(Message):
    """One video frame, ``image`` ``[H, W, C]`` (or ``[H, W]``) uint8, with its pixel encoding."""

    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))
    encoding: str = "bgr8"  # bgr8 | rgb8 | mono8

    kind: ClassVar[str] = "camera_frame"


@dataclass
class AudioChunk(Message):
    """A block of audio samples ``[N]`` or ``[N, channels]`` (float32 in [-1, 1] or int16).
    ``capture_ns`` is the time of the block's first sample (ADC time mapped to ``clock``)."""

    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16000

    kind: ClassVar[str] = "audio_chunk"


@dataclass
class FusionResult(Message):
    """The fusion node's output for one camera frame."""

    probs: list[float] = field(default_factory=list)
    pred: int = -1
    class_names: list[str] = field(default_factory=list)
    sigma_hat: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)
    source_seq: dict[str, int] = field(default_factory=dict)
    latency_ns: dict[str, int] = field(default_factory=dict)
    # Share of the fused audio window that was measured (NaN marks a missing sample); optional
    # on the wire: None when the sender did not say (results written before the field existed).
    audio_valid: float | None = None
    # The streams' own answers disagreed and the switch rule's conflict rule decided (the
    # product of their posteriors, as far as the gates keep each open); optional on the wire:
    # None when the sender did not say.
    conflict: bool | None = None

    kind: ClassVar[str] = "fusion_result"


@dataclass
class Heartbeat(Message):
    """Liveness of a node: its name, state and free-form counters."""

    node: str = ""
    state: str = "ok"
    counters: dict[str, int] = field(default_factory=dict)

    kind: ClassVar[str] = "heartbeat"


@dataclass
class Label(Message):
    """Ground truth for the samples captured from ``capture_ns`` on (logs, demos, training)."""

    label: int = -1
    name: str = ""

    kind: ClassVar[str] = "label"


KINDS: dict[str, type[Message]] = {
    c.kind: c for c in (CameraFrame, AudioChunk, FusionResult, Heartbeat, Label)
}
_ENCODINGS = {"bgr8": 3, "rgb8": 3, "mono8": 1}


# ---- encoding ------------------------------------------------------------------------------


#: Allowed dtypes by value (native little-endian spellings hash alike): one dict lookup per payload.
_DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}


def _payload_frame(arr: np.ndarray) -> tuple[str, list[int], Any]:
    name = _DTYPE_NAMES.get(arr.dtype)
    if name is None:  # a byte-swapped spelling of an allowed dtype is converted to little-endian
        name = next((n for n, dt in DTYPES.items() if dt == arr.dtype.newbyteorder("<")), None)
        if name is None:
            raise UdmlError(f"payload dtype {arr.dtype} is not allowed; use one of "
                            f"{sorted(DTYPES)}")
        arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    # Large payloads travel as the array's own buffer (pyzmq sends it without copying).
    return name, list(arr.shape), (arr if arr.nbytes >= ZERO_COPY_MIN_BYTES else arr.tobytes())


_packer = threading.local()


def _pack(header: dict[str, Any]) -> bytes:
    """``msgpack.packb(header, use_bin_type=True)`` with one reused packer per thread (packb
    builds and frees a packer and its buffer on every call)."""
    packer = getattr(_packer, "p", None)
    if packer is None:
        packer = _packer.p = msgpack.Packer(use_bin_type=True)
    return packer.pack(header)


def encode(msg: Message) -> list[Any]:
    """Multipart frames ``[topic, header, *payload]`` for ``msg`` (send with ``copy=False``
    for large payloads; small ones are already bytes)."""
    topic = (msg.topic or msg.stream).encode()
    # Camera frames and audio chunks are built in one literal each (the per-message hot path);
    # key order is the wire order, the same for every kind: common fields first.
    if isinstance(msg, CameraFrame):
        dtype, shape, frame = _payload_frame(msg.image)
        header: dict[str, Any] = {
            "v": FORMAT_VERSION, "kind": msg.kind, "stream": msg.stream, "seq": int(msg.seq),
            "t_capture_ns": int(msg.capture_ns), "t_publish_ns": int(msg.publish_ns),
            "clock": msg.clock, "dtype": dtype, "shape": shape, "encoding": msg.encoding}
        return [topic, _pack(header), frame]
    if isinstance(msg, AudioChunk):
        dtype, shape, frame = _payload_frame(msg.samples)
        header = {
            "v": FORMAT_VERSION, "kind": msg.kind, "stream": msg.stream, "seq": int(msg.seq),
            "t_capture_ns": int(msg.capture_ns), "t_publish_ns": int(msg.publish_ns),
            "clock": msg.clock, "dtype": dtype, "shape": shape, "encoding": "pcm",
            "sample_rate": int(msg.sample_rate), "n_samples": int(msg.samples.shape[0])}
        return [topic, _pack(header), frame]
    header = {
        "v": FORMAT_VERSION, "kind": msg.kind, "stream": msg.stream, "seq": int(msg.seq),
        "t_capture_ns": int(msg.capture_ns), "t_publish_ns": int(msg.publish_ns),
        "clock": msg.clock,
    }
    if isinstance(msg, FusionResult):
        header.update(
            probs=[float(p) for p in msg.probs], pred=int(msg.pred),
            class_names=list(msg.class_names),
            sigma_hat={k: float(v) for k, v in msg.sigma_hat.items()},
            weights={k: float(v) for k, v in msg.weights.items()},
            present={k: bool(v) for k, v in msg.present.items()},
            source_seq={k: int(v) for k, v in msg.source_seq.items()},
            latency_ns={k: int(v) for k, v in msg.latency_ns.items()},
        )
        if msg.audio_valid is not None:
            header["audio_valid"] = float(msg.audio_valid)
        if msg.conflict is not None:
            header["conflict"] = bool(msg.conflict)
    elif isinstance(msg, Heartbeat):
        header.update(node=msg.node, state=msg.state,
                      counters={k: int(v) for k, v in msg.counters.items()})
    elif isinstance(msg, Label):
        header.update(label=int(msg.label), name=msg.name)
    return [topic, _pack(header)]


def encode_bytes(msg: Message) -> list[bytes]:
    """``encode(msg)`` as the plain bytes a subscriber receives (payload arrays copied), for
    code that edits or stores frames rather than sending them."""
    return [bytes(memoryview(f)) if isinstance(f, np.ndarray) else bytes(f) for f in encode(msg)]


# ---- decoding ------------------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> Any:
    raise DecodeError("ext_type", f"msgpack extension type {code} is not allowed")


def _reject_timestamps(obj: Any) -> None:
    """msgpack decodes its Timestamp extension (type -1) itself, without calling ``ext_hook``;
    the wire format forbids every extension type, so find any such value in the header."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, msgpack.Timestamp):
            raise DecodeError("ext_type", "msgpack Timestamp extension (type -1) is not allowed")
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def _get(h: dict[str, Any], key: str, typ: type | tuple[type, ...], kind: str) -> Any:
    if key not in h:
        raise DecodeError("field", f"{kind} header lacks {key!r}")
    val = h[key]
    if (typ is int and isinstance(val, bool)) or not isinstance(val, typ):
        raise DecodeError("field", f"{kind} header field {key!r} has type "
                          f"{type(val).__name__}; expected {typ}")
    return val


def _map(h: dict[str, Any], key: str, vtyp: type | tuple[type, ...], kind: str) -> dict[str, Any]:
    val = _get(h, key, dict, kind)
    for k, v in val.items():
        if not isinstance(k, str) or not isinstance(v, vtyp):
            raise DecodeError("field", f"{kind} header field {key!r} must map str to {vtyp}")
    return val


def _payload_view(buf: Any) -> memoryview:
    return buf.buffer if hasattr(buf, "buffer") else memoryview(buf)


def _to_array(view: memoryview, dt: np.dtype, shape: list[int], frame: Any,
              zero_copy: bool) -> np.ndarray:
    # A payload of ZERO_COPY_MIN_BYTES or more received as a zmq.Frame may stay in it: libzmq
    # gives a message larger than its 8 KiB receive batch its own allocation, so the array pins
    # exactly its bytes. Smaller ones share that batch buffer (holding them would pin it: the
    # "zero-copy leak" of FIELD.md), and plain bytes would give a read-only array: both copy,
    # into a bytearray (half the time of numpy's frombuffer + copy on a cold cache).
    if not (zero_copy and view.nbytes >= ZERO_COPY_MIN_BYTES and hasattr(frame, "buffer")):
        view = bytearray(view)  # type: ignore[assignment]
    arr = np.frombuffer(view, dtype=dt)
    return arr if len(shape) == 1 else arr.reshape(shape)


def _array(h: dict[str, Any], frames: list[Any], kind: str, zero_copy: bool = False
           ) -> np.ndarray:
    if len(frames) != 3:
        raise DecodeError("frames", f"{kind} needs exactly one payload frame, got "
                          f"{len(frames) - 2}")
    dtype_name = _get(h, "dtype", str, kind)
    if dtype_name not in DTYPES:
        raise DecodeError("dtype", f"{kind} dtype {dtype_name!r} is not allowed; expected one "
                          f"of {sorted(DTYPES)}")
    shape = _get(h, "shape", list, kind)
    if not 1 <= len(shape) <= MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_PAYLOAD_BYTES
            for d in shape):
        raise DecodeError("shape", f"{kind} shape {shape!r} is invalid (1..{MAX_DIMS} "
                          "non-negative ints)")
    dt = DTYPES[dtype_name]
    want = math.prod(shape) * dt.itemsize
    if want > MAX_PAYLOAD_BYTES:
        raise DecodeError("too_large", f"{kind} shape {shape} needs {want} bytes; limit "
                          f"{MAX_PAYLOAD_BYTES}")
    view = _payload_view(frames[2])
    if view.nbytes != want:
        raise DecodeError("payload_size", f"{kind} payload has {view.nbytes} bytes; shape "
                          f"{shape} × {dtype_name} needs {want}")
    return _to_array(view, dt, shape, frames[2], zero_copy)


#: Header keys of camera frames and audio chunks in the order ``encode`` writes them.
_CAMERA_KEYS = ("v", "kind", "stream", "seq", "t_capture_ns", "t_publish_ns", "clock", "dtype",
                "shape", "encoding")
_AUDIO_KEYS = (*_CAMERA_KEYS, "sample_rate", "n_samples")


def _decode_fast(h: dict[str, Any], frames: list[Any], topic: str, zero_copy: bool
                 ) -> Message | None:
    """A camera frame or audio chunk whose header has exactly the keys ``encode`` writes, in
    its order, each of exactly the right type and in range, decoded in one pass; None for
    anything else, which the full validation then accepts or rejects with its reason. It
    accepts a subset of what the full path accepts and builds the same message: every value is
    type-checked (``type(x) is int`` also excludes bools), so no msgpack extension can hide in
    the header either."""
    keys = tuple(h)
    if keys == _AUDIO_KEYS:
        v, kind, stream, seq, t_cap, t_pub, clock, dtype_name, shape, enc, rate, n = h.values()
    elif keys == _CAMERA_KEYS:
        v, kind, stream, seq, t_cap, t_pub, clock, dtype_name, shape, enc = h.values()
        rate = n = None
    else:
        return None
    if not (type(v) is int and v == FORMAT_VERSION and type(clock) is str and clock in CLOCKS
            and type(stream) is str and type(seq) is int and 0 <= seq < MAX_INT
            and type(t_cap) is int and 0 <= t_cap < MAX_INT
            and type(t_pub) is int and 0 <= t_pub < MAX_INT and type(enc) is str
            and type(dtype_name) is str and dtype_name in DTYPES
            and type(shape) is list and 1 <= len(shape) <= MAX_DIMS):
        return None
    dt = DTYPES[dtype_name]
    want = dt.itemsize
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_PAYLOAD_BYTES:
            return None
        want *= d
    payload = frames[2]
    view = payload.buffer if hasattr(payload, "buffer") else memoryview(payload)
    if want > MAX_PAYLOAD_BYTES or view.nbytes != want:
        return None
    if kind == "audio_chunk" and rate is not None:
        if not (type(rate) is int and 0 < rate <= 384_000 and type(n) is int and n == shape[0]
                and len(shape) <= 2 and dtype_name != "uint8"):
            return None
        samples = _to_array(view, dt, shape, payload, zero_copy)
        return AudioChunk(stream, seq, t_cap, t_pub, clock, topic, samples, rate)
    if kind == "camera_frame" and rate is None:
        ndim = len(shape)
        if not (dtype_name == "uint8" and ndim in (2, 3) and enc in _ENCODINGS
                and (1 if ndim == 2 else shape[-1]) == _ENCODINGS[enc]):
            return None
        image = _to_array(view, dt, shape, payload, zero_copy)
        return CameraFrame(stream, seq, t_cap, t_pub, clock, topic, image, enc)
    return None


def decode(frames: list[Any], zero_copy: bool = False) -> Message:
    """Validate and decode multipart ``frames`` (bytes or ``zmq.Frame``); raises ``DecodeError``.

    Payload arrays are copies (writable, owning their memory), except with ``zero_copy``: then
    a payload of at least ``ZERO_COPY_MIN_BYTES`` that arrived as a ``zmq.Frame`` is a writable
    view of that frame, which the array keeps alive (no copy of a 900 kB camera frame). Only a
    receiver whose frames come from the network may ask for it: over ``inproc://`` a frame can
    share memory with the sender's array or another subscriber's."""
    if len(frames) < 2:
        raise DecodeError("frames", f"a message has at least 2 frames (topic, header), got "
                          f"{len(frames)}")
    # bytes and zmq.Frames are read in place (len, str and msgpack take any buffer; a frame's
    # len is its size in bytes); anything else is turned into bytes first.
    topic_b, header_b = frames[0], frames[1]
    if type(topic_b) is not bytes and not hasattr(topic_b, "buffer"):
        topic_b = bytes(topic_b)
    if type(header_b) is not bytes and not hasattr(header_b, "buffer"):
        header_b = bytes(header_b)
    if len(topic_b) > MAX_TOPIC_BYTES:
        raise DecodeError("too_large", f"topic is {len(topic_b)} bytes; limit {MAX_TOPIC_BYTES}")
    if len(header_b) > MAX_HEADER_BYTES:
        raise DecodeError("too_large", f"header is {len(header_b)} bytes; limit "
                          f"{MAX_HEADER_BYTES}")
    try:
        topic = str(topic_b, "utf-8")
        # msgpack ≥ 1.0 (a dependency pin) defaults to raw=False, strict_map_key=True.
        h = msgpack.unpackb(header_b, ext_hook=_ext_hook)
    except DecodeError:
        raise
    except Exception as err:  # msgpack raises several unrelated types on garbage
        # Some of them carry no text; the type name keeps the log line informative.
        raise DecodeError("not_msgpack", f"header is not valid msgpack/UTF-8: "
                          f"{type(err).__name__} {err}".rstrip()) from None
    if type(h) is dict and len(frames) == 3:
        msg = _decode_fast(h, frames, topic, zero_copy)
        if msg is not None:
            return msg
    if not isinstance(h, dict):
        raise DecodeError("not_map", f"header must be a map, got {type(h).__name__}")
    _reject_timestamps(h)
    version = h.get("v")
    if version != FORMAT_VERSION:
        raise DecodeError("version", f"wire format version {version!r} is not supported "
                          f"(expected {FORMAT_VERSION})")
    kind = _get(h, "kind", str, "message")
    if kind not in KINDS:
        raise DecodeError("kind", f"unknown message kind {kind!r}; expected one of "
                          f"{sorted(KINDS)}")
    clock = _get(h, "clock", str, kind)
    if clock not in CLOCKS:
        raise DecodeError("clock", f"{kind} clock {clock!r}; expected one of {CLOCKS}")
    common = {
        "stream": _get(h, "stream", str, kind), "seq": _get(h, "seq", int, kind),
        "capture_ns": _get(h, "t_capture_ns", int, kind),
        "publish_ns": _get(h, "t_publish_ns", int, kind), "clock": clock, "topic": topic,
    }
    for key in ("capture_ns", "publish_ns"):
        if not 0 <= common[key] < MAX_INT:
            raise DecodeError("timestamp", f"{kind} t_{key} = {common[key]} is outside "
                              "[0, 2**63)")
    if not 0 <= common["seq"] < MAX_INT:
        raise DecodeError("seq", f"{kind} seq = {common['seq']} is outside [0, 2**63)")
    if kind in ("camera_frame", "audio_chunk"):
        arr = _array(h, frames, kind, zero_copy)
        if kind == "camera_frame":
            enc = _get(h, "encoding", str, kind)
            channels = 1 if arr.ndim == 2 else arr.shape[-1]
            if enc not in _ENCODINGS or arr.ndim not in (2, 3) or channels != _ENCODINGS[enc] \
                    or arr.dtype != np.uint8:
                raise DecodeError("encoding", f"camera_frame encoding {enc!r} does not fit a "
                                  f"{arr.dtype} array of shape {list(arr.shape)}")
            return CameraFrame(**common, image=arr, encoding=enc)
        rate = _get(h, "sample_rate", int, kind)
        n = _get(h, "n_samples", int, kind)
        if not 0 < rate <= 384_000 or arr.ndim > 2 or n != arr.shape[0] or arr.dtype == np.uint8:
            raise DecodeError("audio_format", f"audio_chunk with rate {rate}, n_samples {n}, "
                              f"shape {list(arr.shape)}, dtype {arr.dtype} is inconsistent")
        return AudioChunk(**common, samples=arr, sample_rate=rate)
    if len(frames) != 2:
        raise DecodeError("frames", f"{kind} carries no payload frames, got {len(frames) - 2}")
    num = (int, float)
    if kind == "fusion_result":
        probs = _get(h, "probs", list, kind)
        if not all(isinstance(p, num) for p in probs):
            raise DecodeError("field", "fusion_result probs must be numbers")
        names = _get(h, "class_names", list, kind)
        if not all(isinstance(n, str) for n in names):
            raise DecodeError("field", "fusion_result class_names must be strings")
        valid = h.get("audio_valid")  # optional: absent in older results
        if valid is not None and (isinstance(valid, bool) or not isinstance(valid, num)):
            raise DecodeError("field", f"fusion_result header field 'audio_valid' has type "
                              f"{type(valid).__name__}; expected a number")
        conflict = h.get("conflict")  # optional: absent in older results
        if conflict is not None and not isinstance(conflict, bool):
            raise DecodeError("field", f"fusion_result header field 'conflict' has type "
                              f"{type(conflict).__name__}; expected a boolean")
        return FusionResult(
            **common, probs=[float(p) for p in probs], pred=_get(h, "pred", int, kind),
            class_names=names, sigma_hat=_map(h, "sigma_hat", num, kind),
            weights=_map(h, "weights", num, kind), present=_map(h, "present", bool, kind),
            source_seq=_map(h, "source_seq", int, kind),
            latency_ns=_map(h, "latency_ns", int, kind),
            audio_valid=None if valid is None else float(valid), conflict=conflict)
    if kind == "heartbeat":
        return Heartbeat(**common, node=_get(h, "node", str, kind),
                         state=_get(h, "state", str, kind),
                         counters=_map(h, "counters", int, kind))
    return Label(**common, label=_get(h, "label", int, kind), name=_get(h, "name", str, kind))
