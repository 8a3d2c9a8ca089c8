"""Viewer records in Foxglove's well-known schemas, JSON-encoded: the one place that turns udml
messages into what Foxglove shows without plugins.

Two users, one set of encoders:

* ``viewer_message`` — ``udml record --foxglove`` writes, next to each wire channel, a channel
  ``<topic>/foxglove``: ``foxglove.RawImage`` for camera frames, ``foxglove.RawAudio`` (16-bit
  PCM) for audio chunks and ``udml.FusionResult`` for fusion results, stamped with the log time.
* ``view_record`` — the live view (``udml view``) and ``udml log export --format foxglove``
  publish the *viewer channels*: ``/<topic>/image`` (``foxglove.CompressedImage`` JPEG, or
  ``foxglove.RawImage``), ``/<topic>/level`` (``udml.AudioLevel``: RMS and peak dBFS per chunk)
  and ``/<topic>/view`` (``udml.FusionResult``: σ̂, weights, probabilities, the prediction),
  stamped with the capture time. The leading slash keeps Foxglove's message-path syntax plain
  (``/fused/view.weights.image``).

Bytes travel base64-encoded, as Foxglove's JSON encoding of its schemas expects. The wire
channels stay the source of truth; nothing here is read back by udml.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Message

_TIME = {"type": "object", "properties": {"sec": {"type": "integer"},
                                          "nsec": {"type": "integer"}}}
_BYTES = {"type": "string", "contentEncoding": "base64"}
_NUMBER_MAP = {"type": "object", "additionalProperties": {"type": "number"}}

RAW_IMAGE_SCHEMA = {
    "title": "foxglove.RawImage", "type": "object",
    "properties": {
        "timestamp": _TIME, "frame_id": {"type": "string"}, "width": {"type": "integer"},
        "height": {"type": "integer"}, "encoding": {"type": "string"},
        "step": {"type": "integer"}, "data": _BYTES,
    },
}
COMPRESSED_IMAGE_SCHEMA = {
    "title": "foxglove.CompressedImage", "type": "object",
    "properties": {"timestamp": _TIME, "frame_id": {"type": "string"}, "data": _BYTES,
                   "format": {"type": "string"}},
}
RAW_AUDIO_SCHEMA = {
    "title": "foxglove.RawAudio", "type": "object",
    "properties": {
        "timestamp": _TIME, "data": _BYTES, "format": {"type": "string"},
        "sample_rate": {"type": "integer"}, "number_of_channels": {"type": "integer"},
    },
}
AUDIO_LEVEL_SCHEMA = {
    "title": "udml.AudioLevel", "type": "object",
    "properties": {
        "timestamp": _TIME, "stream": {"type": "string"},
        "rms_dbfs": {"type": ["number", "null"]}, "peak_dbfs": {"type": ["number", "null"]},
        "valid": {"type": "number"}, "samples": {"type": "integer"},
        "sample_rate": {"type": "integer"},
    },
}
FUSION_SCHEMA = {
    "title": "udml.FusionResult", "type": "object",
    "properties": {
        "timestamp": _TIME, "stream": {"type": "string"}, "seq": {"type": "integer"},
        "pred": {"type": "integer"}, "label": {"type": "string"},
        "confidence": {"type": "number"},
        "probs": {"type": "array", "items": {"type": "number"}},
        "class_names": {"type": "array", "items": {"type": "string"}},
        "weights": _NUMBER_MAP, "sigma_hat": _NUMBER_MAP,
        "present": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "audio_valid": {"type": ["number", "null"]}, "conflict": {"type": ["boolean", "null"]},
        "latency_ms": _NUMBER_MAP,
    },
}
#: The quietest level reported: digital silence would be -inf dBFS, which JSON cannot carry.
FLOOR_DBFS = -120.0


def _stamp(ns: int) -> dict[str, int]:
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def _b64(buf: Any) -> str:
    return base64.b64encode(buf).decode()


@dataclass(frozen=True)
class ViewOptions:
    """How the viewer channels show camera frames."""

    image: str = "jpeg"  # jpeg: foxglove.CompressedImage; raw: foxglove.RawImage
    jpeg_quality: int = 75  # 0..100; 75 keeps a 640×480 frame near 25 kB (docs/view.md)

    def check(self) -> None:
        """Raise ``ValueError`` naming the option that cannot work."""
        if self.image not in ("jpeg", "raw"):
            raise ValueError(f"image = {self.image!r}; expected jpeg or raw")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality = {self.jpeg_quality}; expected 0..100")


@dataclass(frozen=True)
class ViewRecord:
    """One viewer message: its channel topic, schema (name and JSON schema) and JSON data."""

    topic: str
    schema_name: str
    schema: dict[str, Any]
    data: bytes
    stamp_ns: int


#: Viewer channel suffix of each message kind.
VIEW_SUFFIX = {CameraFrame.kind: "image", AudioChunk.kind: "level", FusionResult.kind: "view"}


def view_topic(topic: str, kind: str) -> str:
    """The viewer channel of wire topic ``topic`` carrying messages of ``kind``
    (``camera`` → ``/camera/image``, ``robot1/fused`` → ``/robot1/fused/view``)."""
    return f"/{topic.strip('/')}/{VIEW_SUFFIX[kind]}"


# ---- encoders (one per viewer schema) -------------------------------------------------------


def raw_image(msg: CameraFrame, stamp_ns: int) -> bytes:
    """``foxglove.RawImage`` JSON of a camera frame (pixels as they travelled)."""
    img = np.ascontiguousarray(msg.image)
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    return json.dumps({"timestamp": _stamp(stamp_ns), "frame_id": msg.stream, "width": w,
                       "height": h, "encoding": msg.encoding, "step": w * ch,
                       "data": _b64(img)}).encode()


def compressed_image(msg: CameraFrame, stamp_ns: int, quality: int) -> bytes:
    """``foxglove.CompressedImage`` JSON of a camera frame as JPEG (OpenCV; a 640×480 frame
    at quality 75 is ~25 kB instead of 921 kB raw, docs/view.md)."""
    img = msg.image
    if msg.encoding == "rgb8":  # OpenCV's encoder expects BGR channel order
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} {msg.encoding} frame as JPEG")
    return json.dumps({"timestamp": _stamp(stamp_ns), "frame_id": msg.stream,
                       "data": _b64(jpg), "format": "jpeg"}).encode()


def raw_audio(msg: AudioChunk, stamp_ns: int) -> bytes:
    """``foxglove.RawAudio`` JSON (16-bit PCM) of an audio chunk."""
    x = msg.samples
    pcm = x if x.dtype == np.int16 else np.clip(np.round(np.nan_to_num(x) * 32767), -32768, 32767)
    return json.dumps({"timestamp": _stamp(stamp_ns), "format": "pcm-s16",
                       "data": _b64(pcm.astype("<i2").tobytes()),
                       "sample_rate": msg.sample_rate,
                       "number_of_channels": 1 if x.ndim == 1 else x.shape[1]}).encode()


def _dbfs(x: float) -> float:
    return max(FLOOR_DBFS, 20 * math.log10(x)) if x > 0 else FLOOR_DBFS


def audio_level(samples: np.ndarray) -> tuple[float | None, float | None, float]:
    """(RMS dBFS, peak dBFS, share of samples measured) of a chunk. Full scale is 1.0 for
    float audio and 32768 for int16; NaN marks a missing sample (a gap) and is left out, and a
    chunk with no measured sample has no level (None)."""
    x = samples.astype(np.float64, copy=False).reshape(-1)
    if samples.dtype == np.int16:
        x = x / 32768.0
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 0:
        return None, None, 0.0
    v = x[ok] if n < x.size else x
    return _dbfs(float(np.sqrt(np.mean(v * v)))), _dbfs(float(np.max(np.abs(v)))), n / x.size


def level_record(msg: AudioChunk, stamp_ns: int) -> bytes:
    """``udml.AudioLevel`` JSON of an audio chunk: its level as a plottable time series."""
    rms, peak, valid = audio_level(msg.samples)
    return json.dumps({"timestamp": _stamp(stamp_ns), "stream": msg.stream,
                       "rms_dbfs": None if rms is None else round(rms, 2),
                       "peak_dbfs": None if peak is None else round(peak, 2),
                       "valid": valid, "samples": int(msg.samples.shape[0]),
                       "sample_rate": msg.sample_rate}).encode()


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def fusion_record(msg: FusionResult, stamp_ns: int) -> bytes:
    """``udml.FusionResult`` JSON: prediction, probabilities, σ̂ and weight per modality.

    ``probs`` is a list (``.probs[3]`` in a Plot panel), ``label`` the predicted class name
    (an Indicator or State Transitions panel), σ̂ and weights are maps by modality
    (``.weights.image``). Non-finite numbers become null: JSON has no NaN.
    """
    label = msg.class_names[msg.pred] if 0 <= msg.pred < len(msg.class_names) else ""
    return json.dumps({
        "timestamp": _stamp(stamp_ns), "stream": msg.stream, "seq": msg.seq, "pred": msg.pred,
        "label": label, "confidence": max(msg.probs, default=0.0),
        "probs": [_finite(p) for p in msg.probs], "class_names": list(msg.class_names),
        "weights": {k: _finite(v) for k, v in msg.weights.items()},
        "sigma_hat": {k: _finite(v) for k, v in msg.sigma_hat.items()},
        "present": msg.present,
        "audio_valid": None if msg.audio_valid is None else _finite(msg.audio_valid),
        "conflict": msg.conflict,
        "latency_ms": {k: v / 1e6 for k, v in msg.latency_ns.items()},
    }).encode()


# ---- the two users ----------------------------------------------------------------------------


def viewer_message(msg: Message, log_ns: int) -> tuple[str, dict[str, Any], bytes] | None:
    """(schema name, JSON schema, JSON data) of the ``udml record --foxglove`` record for
    ``msg`` (raw image, raw PCM audio, fusion result; stamped ``log_ns``), or None."""
    if isinstance(msg, CameraFrame):
        return "foxglove.RawImage", RAW_IMAGE_SCHEMA, raw_image(msg, log_ns)
    if isinstance(msg, AudioChunk):
        return "foxglove.RawAudio", RAW_AUDIO_SCHEMA, raw_audio(msg, log_ns)
    if isinstance(msg, FusionResult):
        return "udml.FusionResult", FUSION_SCHEMA, fusion_record(msg, log_ns)
    return None


def view_schema(msg: Message, opts: ViewOptions) -> tuple[str, dict[str, Any]] | None:
    """(schema name, JSON schema) of ``msg``'s viewer channel, or None for kinds not shown."""
    if isinstance(msg, CameraFrame):
        return (("foxglove.CompressedImage", COMPRESSED_IMAGE_SCHEMA) if opts.image == "jpeg"
                else ("foxglove.RawImage", RAW_IMAGE_SCHEMA))
    if isinstance(msg, AudioChunk):
        return "udml.AudioLevel", AUDIO_LEVEL_SCHEMA
    if isinstance(msg, FusionResult):
        return "udml.FusionResult", FUSION_SCHEMA
    return None


def view_data(msg: Message, opts: ViewOptions) -> bytes:
    """The JSON data of ``msg`` on its viewer channel, stamped with its capture time."""
    t = msg.capture_ns
    if isinstance(msg, CameraFrame):
        return (compressed_image(msg, t, opts.jpeg_quality) if opts.image == "jpeg"
                else raw_image(msg, t))
    if isinstance(msg, AudioChunk):
        return level_record(msg, t)
    if isinstance(msg, FusionResult):
        return fusion_record(msg, t)
    raise ValueError(f"{msg.kind} messages have no viewer channel")


def view_record(msg: Message, opts: ViewOptions | None = None) -> ViewRecord | None:
    """The viewer record of ``msg`` (live view, ``log export --format foxglove``), or None for
    kinds not shown (heartbeats, labels)."""
    opts = opts or ViewOptions()
    schema = view_schema(msg, opts)
    if schema is None:
        return None
    return ViewRecord(view_topic(msg.topic or msg.stream, msg.kind), schema[0], schema[1],
                      view_data(msg, opts), msg.capture_ns)
