"""Wire format v1: message dataclasses and the multipart codec (numpy + msgpack, no pickle).

See ``docs/wire-format.md`` for the byte-level description.
"""

from udml_stream.messages.codec import (
    FORMAT_VERSION,
    AudioChunk,
    CameraFrame,
    Clock,
    DecodeError,
    FusionResult,
    Heartbeat,
    Label,
    Message,
    decode,
    encode,
    encode_bytes,
)

__all__ = [
    "FORMAT_VERSION",
    "AudioChunk",
    "CameraFrame",
    "Clock",
    "DecodeError",
    "FusionResult",
    "Heartbeat",
    "Label",
    "Message",
    "decode",
    "encode",
    "encode_bytes",
]
