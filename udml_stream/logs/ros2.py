"""ROS 2 bags in and out, without a ROS install (the pure-Python ``rosbags`` library).

``convert`` reads a rosbag2 (MCAP or sqlite3 storage, a bag folder or its single file) and
writes a udml log with the streams the live nodes publish: ``camera`` frames from
``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage``, ``mic`` chunks from the audio
messages of either ``audio_common_msgs`` package (see ``AUDIO_*`` below), and ``label`` /
``condition`` ground truth from ``std_msgs`` integers or strings. Capture times come from
``header.stamp``; the bag's receive time is the log time.

``export`` writes a udml log as a rosbag2 (MCAP storage by default): camera frames as
``sensor_msgs/msg/Image``, audio as ``audio_common_msgs/msg/AudioStamped``, fusion results as
``udml_msgs/msg/FusionResult`` (definition below, stored in the bag so ROS tools and Foxglove
decode it), labels as ``std_msgs/msg/Int32`` and conditions as ``std_msgs/msg/String``. A log
exported and converted back has byte-identical image and audio payloads and the same stamps.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.errors import UdmlError
from udml_stream.logs.reader import iter_wire
from udml_stream.logs.writer import LogWriter
from udml_stream.messages import (
    AudioChunk,
    CameraFrame,
    DecodeError,
    FusionResult,
    Label,
    Message,
    decode,
    encode,
)

log = logging.getLogger(__name__)


class BagError(UdmlError):
    """A bag cannot be read or written as asked (the message names the topic and what fits)."""


# ---- message definitions ------------------------------------------------------------------

#: audio_common (github.com/mgonzs13/audio_common): self-describing stamped chunks; ``format``
#: is a PortAudio sample format code.
AUDIO_STAMPED_FAMILY = {
    "audio_common_msgs/msg/AudioData": "float32[] float32_data\nint32[] int32_data\n"
                                       "int16[] int16_data\nint8[] int8_data\nuint8[] uint8_data\n",
    "audio_common_msgs/msg/AudioInfo": "int32 format\nint32 channels\nint32 rate\nint32 chunk\n",
    "audio_common_msgs/msg/Audio": "audio_common_msgs/AudioData audio_data\n"
                                   "audio_common_msgs/AudioInfo info\n",
    "audio_common_msgs/msg/AudioStamped": "std_msgs/Header header\naudio_common_msgs/Audio audio\n",
}
#: audio_common (github.com/ros-drivers/audio_common, ros2 branch): raw bytes, with the rate,
#: channels and sample format on a separate AudioInfo topic (``audio_info``, every 5 s).
AUDIO_DRIVERS_FAMILY = {
    "audio_common_msgs/msg/AudioData": "uint8[] data\n",
    "audio_common_msgs/msg/AudioDataStamped": "std_msgs/Header header\n"
                                              "audio_common_msgs/AudioData audio\n",
    "audio_common_msgs/msg/AudioInfo": "uint8 channels\nuint32 sample_rate\nstring sample_format\n"
                                       "uint32 bitrate\nstring coding_format\n",
}
FUSION_RESULT_TYPE = "udml_msgs/msg/FusionResult"
FUSION_RESULT_MSG = """\
# One udml_stream fusion result (docs/wire-format.md, fusion_result).
# header.stamp: capture time of the fused camera frame; header.frame_id: the result stream.
std_msgs/Header header
string[] class_names
float32[] probs
int32 pred
# Per modality, in the order of `modalities`: estimated noise scale (NaN: none), effective
# logit multiplier (0 when absent) and presence.
string[] modalities
float32[] sigma_hat
float32[] weights
bool[] present
# Share of the fused audio window that was recorded; NaN when the result does not say.
float32 audio_valid
# The streams' own answers disagreed and the conflict rule decided (false when not said).
bool conflict
string[] source_streams
int64[] source_seq
string[] latency_stages
int64[] latency_ns
"""

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
AUDIO_TYPES = ("audio_common_msgs/msg/AudioStamped", "audio_common_msgs/msg/AudioDataStamped",
               "audio_common_msgs/msg/AudioData")
INFO_TYPES = ("audio_common_msgs/msg/AudioInfo",)
_INT_TYPES = tuple(f"std_msgs/msg/{t}" for t in ("Int8", "Int16", "Int32", "Int64", "UInt8",
                                                  "UInt16", "UInt32", "UInt64"))
LABEL_TYPES = (*_INT_TYPES, "std_msgs/msg/String")
CONDITION_TYPES = ("std_msgs/msg/String",)
#: ``--map`` roles: what each may name, and the udml topic it becomes.
ROLES: dict[str, tuple[tuple[str, ...], str]] = {
    "image": (IMAGE_TYPES, "camera"),
    "audio": (AUDIO_TYPES, "mic"),
    "audio_info": (INFO_TYPES, ""),
    "label": (LABEL_TYPES, "label"),
    "condition": (CONDITION_TYPES, "condition"),
}

# PortAudio sample formats (portaudio.h) as audio_common's AudioInfo.format carries them.
PA_FLOAT32, PA_INT32, PA_INT16, PA_INT8, PA_UINT8 = 1, 2, 8, 16, 32
_PA_FIELDS = {PA_FLOAT32: "float32_data", PA_INT32: "int32_data", PA_INT16: "int16_data",
              PA_INT8: "int8_data", PA_UINT8: "uint8_data"}
# GStreamer raw audio formats of ros-drivers' AudioInfo.sample_format: dtype and full scale.
_GST_FORMATS = {"S16LE": ("<i2", 0), "F32LE": ("<f4", 0), "S32LE": ("<i4", 2**31),
                "S8": ("i1", 128), "U8": ("u1", 128)}
_NS = 1_000_000_000
#: Class names of a label given as an index or a name (AV-Digits: the digits).
CLASS_NAMES = tuple(str(d) for d in range(10))


def _typestore(msgtypes: Iterable[str] = (), embedded: Iterable[Any] = ()) -> Any:
    """A ROS 2 (Humble) type store plus the audio and udml definitions.

    Definitions a bag embeds win over the built-in ones. The two audio_common packages share a
    package name with different ``AudioData``/``AudioInfo`` layouts, so the built-in family is
    the one whose message types the bag uses (``AudioStamped``: mgonzs13's; else ros-drivers').
    """
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg
    from rosbags.typesys import get_typestore as _store

    store = _store(Stores.ROS2_HUMBLE)
    found: dict[str, Any] = {}
    try:
        for conn in embedded:
            fmt, text = conn.msgdef.format, conn.msgdef.data
            if fmt == MessageDefinitionFormat.MSG and text:
                found.update(get_types_from_msg(text, conn.msgtype))
            elif fmt == MessageDefinitionFormat.IDL and text:
                sep = "=" * 80 + "\n"
                for part in (text.split(sep)[1:] if text.startswith(sep + "IDL: ") else [text]):
                    found.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith(
                        "IDL: ") else part))
        types = set(msgtypes)
        stamped = {"audio_common_msgs/msg/AudioStamped", "audio_common_msgs/msg/Audio"} & types
        family = AUDIO_STAMPED_FAMILY if (stamped or not types & set(AUDIO_TYPES)) \
            else AUDIO_DRIVERS_FAMILY
        for name, text in (*family.items(), (FUSION_RESULT_TYPE, FUSION_RESULT_MSG)):
            if name not in found:
                found.update(get_types_from_msg(text, name))
        store.register({k: v for k, v in found.items() if k not in store.fielddefs})
    except TypesysError as err:
        raise BagError(f"a message definition in the bag does not parse: {err}") from None
    return store


# ---- convert: bag → udml log ---------------------------------------------------------------


class _SkipError(Exception):
    """One message that cannot be converted: counted under ``reason`` and left out."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ConvertReport:
    """What ``convert`` wrote, from which bag topics, and what it left out (and why)."""

    output: Path
    topics: dict[str, str]  # udml topic → bag topic
    written: dict[str, int] = field(default_factory=dict)  # udml topic → messages
    skipped: dict[str, int] = field(default_factory=dict)  # "bag topic: reason" → messages
    clock: str = "realtime"


def parse_map(items: Sequence[str]) -> dict[str, str]:
    """``["image=/cam/image_raw", "audio=/audio"]`` → ``{"image": "/cam/image_raw", …}``."""
    out: dict[str, str] = {}
    for item in items:
        role, sep, topic = item.partition("=")
        role, topic = role.strip(), topic.strip()
        if not sep or not role or not topic:
            raise BagError(f"--map {item!r}: expected ROLE=/topic, e.g. image=/camera/image_raw")
        if role not in ROLES:
            raise BagError(f"--map {item!r}: unknown role {role!r}; expected one of "
                           f"{', '.join(ROLES)}")
        if role in out:
            raise BagError(f"--map names {role!r} twice ({out[role]} and {topic})")
        out[role] = topic
    return out


def _open_reader(bag: Path) -> Any:
    from rosbags.rosbag2 import Reader

    bag = Path(bag)
    if not bag.exists():
        raise BagError(f"bag {bag} not found")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as err:  # rosbags raises several types for what is not a bag
        raise BagError(f"{bag} is not a readable rosbag2 (a folder with metadata.yaml, or its "
                       f".mcap / .db3 file): {type(err).__name__}: {err}") from None
    return reader


def _resolve(mapping: Mapping[str, str], topics: dict[str, str]) -> dict[str, str]:
    """Role → bag topic, checked against the bag; image/audio/audio_info found when unique."""
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(topics.items())) or "none"
    out: dict[str, str] = {}
    for role, topic in mapping.items():
        if role not in ROLES:
            raise BagError(f"unknown mapping role {role!r}; expected one of {', '.join(ROLES)}")
        want = ROLES[role][0]
        if topic not in topics:
            raise BagError(f"{role}={topic}: the bag has no topic {topic!r} (expected one of "
                           f"type {' or '.join(want)}); its topics: {listing}")
        if topics[topic] not in want:
            raise BagError(f"{role}={topic}: the topic carries {topics[topic]}; {role} takes "
                           f"{' or '.join(want)}")
        out[role] = topic
    for role in ("image", "audio", "audio_info"):
        if role in out:
            continue
        fits = [t for t, ty in topics.items() if ty in ROLES[role][0]]
        if len(fits) == 1:
            out[role] = fits[0]
        elif len(fits) > 1 and role != "audio_info":
            raise BagError(f"the bag has several {role} topics ({', '.join(sorted(fits))}): "
                           f"choose one with --map {role}=TOPIC")
    if "image" not in out and "audio" not in out:
        raise BagError(f"the bag has no image ({' or '.join(IMAGE_TYPES)}) and no audio "
                       f"({' or '.join(AUDIO_TYPES)}) topic; its topics: {listing}")
    if out.get("audio") and topics[out["audio"]] != AUDIO_TYPES[0] and "audio_info" not in out:
        raise BagError(f"audio={out['audio']} ({topics[out['audio']]}) needs the rate and format "
                       f"of its {INFO_TYPES[0]} topic; none is in the bag ({listing}); "
                       "record it too (audio_capture publishes it on audio_info)")
    return out


def _stamp_ns(header: Any, fallback: int, skipped: Counter, topic: str) -> int:
    ns = int(header.stamp.sec) * _NS + int(header.stamp.nanosec)
    if ns <= 0:  # an unset header: the bag's receive time is the best capture time left
        skipped[f"{topic}: stamp unset, bag time used (converted)"] += 1
        return fallback
    return ns


_IMAGE_CHANNELS = {"bgr8": 3, "rgb8": 3, "mono8": 1, "8uc1": 1, "8uc3": 3, "bgra8": 4, "rgba8": 4}


def image_array(msg: Any) -> tuple[np.ndarray, str]:
    """(uint8 array, wire encoding) of a ``sensor_msgs/msg/Image``; ``_SkipError`` when unusable."""
    enc = str(msg.encoding).lower()
    if enc not in _IMAGE_CHANNELS:
        raise _SkipError("unsupported image encoding", f"encoding {msg.encoding!r}; expected one of "
                    f"{', '.join(_IMAGE_CHANNELS)}")
    h, w, c, step = int(msg.height), int(msg.width), _IMAGE_CHANNELS[enc], int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if h == 0 or w == 0:
        raise _SkipError("empty image", "zero height or width")
    if step < w * c or data.size < h * step:
        raise _SkipError("image size", f"{data.size} bytes, step {step}, for {h}x{w}x{c}")
    rows = data[: h * step].reshape(h, step)[:, : w * c]  # drop any row padding
    img = rows.reshape(h, w) if c == 1 else rows.reshape(h, w, c)
    out_enc = {"8uc1": "mono8", "8uc3": "bgr8", "bgra8": "bgr8", "rgba8": "rgb8"}.get(enc, enc)
    return np.ascontiguousarray(img[..., :3] if c == 4 else img), out_enc


def compressed_array(msg: Any) -> tuple[np.ndarray, str]:
    """(uint8 array, wire encoding) of a ``sensor_msgs/msg/CompressedImage`` (JPEG, PNG, …)."""
    import cv2

    img = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise _SkipError("image does not decode", f"format {msg.format!r} does not decode")
    if img.dtype != np.uint8:
        raise _SkipError("image not 8-bit", f"{img.dtype} pixels; the wire carries 8-bit images")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:  # OpenCV decodes colour as BGR(A)
        return np.ascontiguousarray(img[..., :3]), "bgr8"
    return img, "mono8"


def _to_float(x: np.ndarray, scale: int, unsigned: bool = False) -> np.ndarray:
    y = x.astype(np.float32)
    return (y - scale if unsigned else y) / np.float32(scale)


def stamped_audio(audio: Any) -> tuple[np.ndarray, int]:
    """(samples [N] or [N, ch], rate) of mgonzs13's ``audio_common_msgs/msg/Audio``."""
    info, data = audio.info, audio.audio_data
    fmt, ch, rate = int(info.format), int(info.channels), int(info.rate)
    name = _PA_FIELDS.get(fmt)
    if name is None:  # a format code this reader does not know: use the one filled array
        filled = [f for f in _PA_FIELDS.values() if len(getattr(data, f, ())) > 0]
        if len(filled) != 1:
            raise _SkipError("unknown audio format", f"format {fmt}, arrays {filled}")
        name = filled[0]
    x = np.asarray(getattr(data, name))
    x = {"int32_data": lambda a: _to_float(a, 2**31), "int8_data": lambda a: _to_float(a, 128),
         "uint8_data": lambda a: _to_float(a, 128, unsigned=True)}.get(name, lambda a: a)(x)
    return _shape_audio(x, ch, rate)


def raw_audio(data: Any, info: Any) -> tuple[np.ndarray, int]:
    """(samples, rate) of ros-drivers' ``AudioData`` bytes as its ``AudioInfo`` describes."""
    coding = str(info.coding_format).lower()
    if coding not in ("", "wave", "wav", "pcm", "raw"):
        raise BagError(f"audio coded as {info.coding_format!r} cannot be converted: record raw "
                       "PCM (audio_capture format:=wave)")
    fmt = str(info.sample_format).upper()
    if fmt not in _GST_FORMATS:
        raise BagError(f"audio sample_format {info.sample_format!r} is not supported; expected "
                       f"one of {', '.join(_GST_FORMATS)}")
    dtype, scale = _GST_FORMATS[fmt]
    raw = np.asarray(data, dtype=np.uint8)
    itemsize = np.dtype(dtype).itemsize
    if raw.size % (itemsize * max(1, int(info.channels))):
        raise _SkipError("audio size", f"{raw.size} bytes is not whole {fmt} frames")
    x = raw.view(dtype)
    if scale:
        x = _to_float(x, scale, unsigned=fmt == "U8")
    return _shape_audio(x, int(info.channels), int(info.sample_rate))


def _shape_audio(x: np.ndarray, ch: int, rate: int) -> tuple[np.ndarray, int]:
    if not 0 < rate <= 384_000 or ch < 1:
        raise _SkipError("audio format", f"rate {rate} Hz, {ch} channels")
    if x.size == 0 or x.size % ch:
        raise _SkipError("audio size", f"{x.size} samples for {ch} channels")
    x = x.astype(x.dtype.newbyteorder("<"), copy=False)
    return (x if ch == 1 else x.reshape(-1, ch)), rate


def _label(msg: Any, msgtype: str, class_names: Sequence[str]) -> tuple[int, str]:
    data = msg.data
    if msgtype != "std_msgs/msg/String":
        k = int(data)
        return k, (class_names[k] if 0 <= k < len(class_names) else str(k))
    name = str(data)
    if name in class_names:
        return list(class_names).index(name), name
    try:
        return int(name.strip()), name
    except ValueError:
        raise _SkipError("label not a class", f"{name!r} is not one of {list(class_names)} nor a "
                    "class index") from None


def convert(bag: Path, out_mcap: Path, mapping: Mapping[str, str] | None = None, *,
            clock: str | None = None, class_names: Sequence[str] = CLASS_NAMES,
            compression: str = "zstd") -> ConvertReport:
    """Convert rosbag2 ``bag`` into the udml log ``out_mcap``.

    ``mapping`` maps roles (``image``, ``audio``, ``audio_info``, ``label``, ``condition``) to
    bag topics; ``image``, ``audio`` and ``audio_info`` are found by type when the bag has only
    one such topic. ``clock`` names the clock of the stamps (default: what an exported bag
    says, else ``realtime``, ROS time). A message that does not deserialize or convert is
    counted in the report and left out; a bad mapping raises ``BagError``. The output appears
    only once complete.
    """
    bag, out_mcap = Path(bag), Path(out_mcap)
    if bag.resolve() == out_mcap.resolve():
        raise BagError(f"the output {out_mcap} is the bag; write the log elsewhere")
    reader = _open_reader(bag)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        roles = _resolve(mapping or {}, topics)
        store = _typestore(topics.values(), reader.connections)
        custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
        clock = clock or custom.get("udml.clock") or "realtime"
        if clock not in ("realtime", "monotonic"):
            raise BagError(f"clock {clock!r}; expected realtime or monotonic")
        report = ConvertReport(out_mcap, {ROLES[r][1]: t for r, t in roles.items() if ROLES[r][1]},
                               clock=clock)
        infos = _infos(reader, store, roles.get("audio_info"))
        tmp = out_mcap.with_name(f".{out_mcap.name}.partial")
        out = LogWriter(tmp, compression, library="udml_stream (ros2 convert)")
        try:
            _convert_messages(reader, store, roles, topics, infos, class_names, clock, out, report)
            out.finish({"udml_ros2_convert": {"bag": str(bag), "clock": clock,
                                              **{f"topic.{k}": v for k, v in
                                                 report.topics.items()}}})
            tmp.replace(out_mcap)
        finally:
            out.finish()
            tmp.unlink(missing_ok=True)
    finally:
        reader.close()
    for what, n in report.skipped.items():
        log.warning("%s: %d message(s)", what, n)
    return report


def _infos(reader: Any, store: Any, topic: str | None) -> list[tuple[int, Any]]:
    if topic is None:
        return []
    conns = [c for c in reader.connections if c.topic == topic]
    out = []
    for conn, ts, raw in reader.messages(connections=conns):
        try:
            out.append((ts, store.deserialize_cdr(raw, conn.msgtype)))
        except Exception as err:  # a corrupt info message: the others still describe the data
            log.warning("%s: an AudioInfo message does not deserialize: %s", topic, err)
    if not out:
        raise BagError(f"audio_info={topic} holds no readable AudioInfo message")
    return out


def _convert_messages(reader: Any, store: Any, roles: dict[str, str], topics: dict[str, str],
                      infos: list[tuple[int, Any]], class_names: Sequence[str], clock: str,
                      out: LogWriter, report: ConvertReport) -> None:
    by_topic = {t: r for r, t in roles.items() if r != "audio_info"}
    conns = [c for c in reader.connections if c.topic in by_topic]
    seq: Counter = Counter()
    skipped: Counter = Counter()
    conditions: list[str] = []
    info_i = 0
    for conn, ts, raw in reader.messages(connections=conns):
        role, msgtype = by_topic[conn.topic], conn.msgtype
        udml_topic = ROLES[role][1]
        try:
            try:
                msg = store.deserialize_cdr(raw, msgtype)
            except Exception as err:  # rosbags raises several types for corrupt CDR
                raise _SkipError("does not deserialize", str(err)) from None
            wire: Message
            if role == "image":
                img, enc = (compressed_array(msg) if msgtype.endswith("CompressedImage")
                            else image_array(msg))
                t = _stamp_ns(msg.header, ts, skipped, conn.topic)
                wire = CameraFrame(udml_topic, seq[udml_topic], t, ts, clock, image=img,
                                   encoding=enc)
            elif role == "audio":
                if msgtype == AUDIO_TYPES[0]:
                    x, rate = stamped_audio(msg.audio)
                    t = _stamp_ns(msg.header, ts, skipped, conn.topic)
                else:
                    while info_i + 1 < len(infos) and infos[info_i + 1][0] <= ts:
                        info_i += 1  # the newest info at or before this chunk
                    data = msg.audio.data if msgtype.endswith("Stamped") else msg.data
                    x, rate = raw_audio(data, infos[info_i][1])
                    if msgtype.endswith("Stamped"):
                        t = _stamp_ns(msg.header, ts, skipped, conn.topic)
                    else:  # no stamp: the chunk was published once its last sample was read
                        t = max(0, ts - x.shape[0] * _NS // rate)
                wire = AudioChunk(udml_topic, seq[udml_topic], t, ts, clock, samples=x,
                                  sample_rate=rate)
            elif role == "label":
                k, name = _label(msg, msgtype, class_names)
                wire = Label(udml_topic, seq[udml_topic], ts, ts, clock, label=k, name=name)
            else:
                name = str(msg.data)
                if name not in conditions:
                    conditions.append(name)
                wire = Label(udml_topic, seq[udml_topic], ts, ts, clock,
                             label=conditions.index(name), name=name)
            frames = encode(wire)
            decode(frames)  # what the nodes would reject is left out here too
        except _SkipError as err:
            skipped[f"{conn.topic}: {err.reason}"] += 1
            log.debug("%s at %d: %s", conn.topic, ts, err)
            continue
        except DecodeError as err:
            skipped[f"{conn.topic}: {err.reason}"] += 1
            continue
        out.write(udml_topic, frames[1:], wire.seq, wire.capture_ns, ts, wire.kind, udml_topic,
                  clock)
        seq[udml_topic] += 1
    report.written = dict(seq)
    report.skipped = dict(skipped)
    for role, topic in roles.items():
        if role != "audio_info" and seq[ROLES[role][1]] == 0:
            log.warning("%s=%s: no message converted", role, topic)


# ---- export: udml log → bag ----------------------------------------------------------------


@dataclass
class ExportReport:
    """What ``export`` wrote (ROS topic → messages) and left out."""

    output: Path
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # "udml topic: reason" → messages


def ros_topic(topic: str, namespace: str = "") -> str:
    """A valid ROS 2 topic name for a udml topic (``hb.cam`` → ``/hb_cam``)."""
    name = re.sub(r"[^A-Za-z0-9_/]", "_", topic).strip("/") or "_"
    if name[0].isdigit():
        name = "_" + name
    return f"{namespace.rstrip('/')}/{name}"


def _header(store: Any, ns: int, frame_id: str) -> Any:
    t = store.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
        sec=ns // _NS, nanosec=ns % _NS), frame_id=frame_id)


def _ros_message(store: Any, msg: Message, condition_topic: str) -> tuple[str, Any]:
    """(message type, ROS message) for one udml message; ``_SkipError`` for kinds not exported."""
    t = store.types
    if isinstance(msg, CameraFrame):
        img = np.ascontiguousarray(msg.image)
        h, w = img.shape[:2]
        return IMAGE_TYPES[0], t[IMAGE_TYPES[0]](
            header=_header(store, msg.capture_ns, msg.stream), height=h, width=w,
            encoding=msg.encoding, is_bigendian=0, step=img.nbytes // max(h, 1),
            data=img.reshape(-1))
    if isinstance(msg, AudioChunk):
        x = msg.samples
        ch = 1 if x.ndim == 1 else x.shape[1]
        arrays = {f: np.zeros(0, dt) for f, dt in (("float32_data", np.float32),
                                                   ("int32_data", np.int32),
                                                   ("int16_data", np.int16),
                                                   ("int8_data", np.int8),
                                                   ("uint8_data", np.uint8))}
        fmt = PA_INT16 if x.dtype == np.int16 else PA_FLOAT32
        arrays[_PA_FIELDS[fmt]] = np.ascontiguousarray(x).reshape(-1)
        audio = t["audio_common_msgs/msg/Audio"](
            audio_data=t["audio_common_msgs/msg/AudioData"](**arrays),
            info=t["audio_common_msgs/msg/AudioInfo"](format=fmt, channels=ch,
                                                      rate=msg.sample_rate, chunk=x.shape[0]))
        return AUDIO_TYPES[0], t[AUDIO_TYPES[0]](
            header=_header(store, msg.capture_ns, msg.stream), audio=audio)
    if isinstance(msg, FusionResult):
        mods = sorted({*msg.sigma_hat, *msg.weights, *msg.present})
        f32 = np.float32
        return FUSION_RESULT_TYPE, t[FUSION_RESULT_TYPE](
            header=_header(store, msg.capture_ns, msg.stream), class_names=list(msg.class_names),
            probs=np.asarray(msg.probs, f32), pred=msg.pred, modalities=mods,
            sigma_hat=np.asarray([msg.sigma_hat.get(m, np.nan) for m in mods], f32),
            weights=np.asarray([msg.weights.get(m, 0.0) for m in mods], f32),
            present=np.asarray([bool(msg.present.get(m, False)) for m in mods], bool),
            audio_valid=np.nan if msg.audio_valid is None else msg.audio_valid,
            conflict=bool(msg.conflict), source_streams=list(msg.source_seq),
            source_seq=np.asarray(list(msg.source_seq.values()), np.int64),
            latency_stages=list(msg.latency_ns),
            latency_ns=np.asarray(list(msg.latency_ns.values()), np.int64))
    if isinstance(msg, Label):
        if msg.topic == condition_topic:
            return "std_msgs/msg/String", t["std_msgs/msg/String"](data=msg.name)
        return "std_msgs/msg/Int32", t["std_msgs/msg/Int32"](data=msg.label)
    raise _SkipError(f"{msg.kind} not exported", msg.kind)


def export(log_path: Path, out_bag: Path, *, storage: str = "mcap", namespace: str = "",
           condition_topic: str = "condition") -> ExportReport:
    """Write the udml log ``log_path`` as the rosbag2 folder ``out_bag`` (``storage`` ``mcap``
    or ``sqlite3``): every camera, audio, fusion-result and label topic, each on
    ``namespace/<topic>``, with the message definitions stored in the bag. Heartbeats and
    messages that do not decode are counted and left out."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise BagError(f"storage {storage!r}; expected mcap or sqlite3")
    out_bag = Path(out_bag)
    if out_bag.exists():
        raise BagError(f"{out_bag} exists; a bag is a new folder (remove it or choose another)")
    store = _typestore()
    report = ExportReport(out_bag)
    written: Counter = Counter()
    skipped: Counter = Counter()
    writer = Writer(out_bag, version=8, storage_plugin=plugins[storage])
    conns: dict[tuple[str, str], Any] = {}
    clock = ""
    writer.open()
    try:
        for rec, msg in _decoded(log_path, skipped):
            try:
                msgtype, ros_msg = _ros_message(store, msg, condition_topic)
            except _SkipError as err:
                skipped[f"{rec.topic}: {err.reason}"] += 1
                continue
            if not clock and isinstance(msg, (CameraFrame, AudioChunk)):
                clock = msg.clock
            topic = ros_topic(rec.topic, namespace)
            key = (topic, msgtype)
            if key not in conns:
                conns[key] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[key], rec.log_ns, store.serialize_cdr(ros_msg, msgtype))
            written[topic] += 1
        writer.set_custom_data("udml.clock", clock or "realtime")
        writer.set_custom_data("udml.source", str(log_path))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    report.written, report.skipped = dict(written), dict(skipped)
    return report


def _decoded(path: Path, skipped: Counter) -> Iterator[tuple[Any, Message]]:
    for rec in iter_wire(path):
        try:
            msg = decode(rec.frames)
        except DecodeError as err:
            skipped[f"{rec.topic}: {err.reason}"] += 1
            continue
        yield rec, msg
