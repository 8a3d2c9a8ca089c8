"""Optional viewer channels in Foxglove's well-known schemas, JSON-encoded.

With ``RecorderConfig.foxglove`` the recorder writes, next to each wire channel, a channel
``<topic>/foxglove`` that Foxglove shows without plugins: ``foxglove.RawImage`` for camera frames,
``foxglove.RawAudio`` (16-bit PCM) for audio chunks and a plain JSON channel with a JSON schema for
fusion results (plottable weights and σ̂). The wire channels stay the source of truth.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Message

RAW_IMAGE_SCHEMA = {
    "title": "foxglove.RawImage", "type": "object",
    "properties": {
        "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"},
                                                       "nsec": {"type": "integer"}}},
        "frame_id": {"type": "string"}, "width": {"type": "integer"},
        "height": {"type": "integer"}, "encoding": {"type": "string"},
        "step": {"type": "integer"}, "data": {"type": "string", "contentEncoding": "base64"},
    },
}
RAW_AUDIO_SCHEMA = {
    "title": "foxglove.RawAudio", "type": "object",
    "properties": {
        "timestamp": RAW_IMAGE_SCHEMA["properties"]["timestamp"],
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"}, "sample_rate": {"type": "integer"},
        "number_of_channels": {"type": "integer"},
    },
}
FUSION_SCHEMA = {
    "title": "udml.FusionResult", "type": "object",
    "properties": {"pred": {"type": "integer"}, "label": {"type": "string"},
                   "confidence": {"type": "number"}, "weights": {"type": "object"},
                   "sigma_hat": {"type": "object"}, "present": {"type": "object"},
                   "latency_ms": {"type": "object"}},
}


def _stamp(ns: int) -> dict[str, int]:
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def viewer_message(msg: Message, log_ns: int) -> tuple[str, dict[str, Any], bytes] | None:
    """(schema name, JSON schema, JSON data) of the viewer record for ``msg``, or None."""
    if isinstance(msg, CameraFrame):
        img = msg.image
        h, w = img.shape[:2]
        ch = 1 if img.ndim == 2 else img.shape[2]
        data = {"timestamp": _stamp(log_ns), "frame_id": msg.stream, "width": w, "height": h,
                "encoding": msg.encoding, "step": w * ch,
                "data": base64.b64encode(np.ascontiguousarray(img).tobytes()).decode()}
        return "foxglove.RawImage", RAW_IMAGE_SCHEMA, json.dumps(data).encode()
    if isinstance(msg, AudioChunk):
        x = msg.samples
        pcm = x if x.dtype == np.int16 else np.clip(np.round(x * 32767), -32768, 32767)
        data = {"timestamp": _stamp(log_ns), "format": "pcm-s16",
                "data": base64.b64encode(pcm.astype("<i2").tobytes()).decode(),
                "sample_rate": msg.sample_rate,
                "number_of_channels": 1 if x.ndim == 1 else x.shape[1]}
        return "foxglove.RawAudio", RAW_AUDIO_SCHEMA, json.dumps(data).encode()
    if isinstance(msg, FusionResult):
        label = msg.class_names[msg.pred] if 0 <= msg.pred < len(msg.class_names) else ""
        data = {"pred": msg.pred, "label": label, "confidence": max(msg.probs, default=0.0),
                "weights": msg.weights, "sigma_hat": msg.sigma_hat, "present": msg.present,
                "latency_ms": {k: v / 1e6 for k, v in msg.latency_ns.items()}}
        return "udml.FusionResult", FUSION_SCHEMA, json.dumps(data).encode()
    return None
