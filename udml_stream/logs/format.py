"""How one multipart wire message is stored in one MCAP message record.

Channel ``message_encoding`` is ``udml-wire/1``; the record's data is a msgpack array of binary
strings: ``[header_frame, *payload_frames]`` exactly as they travelled (the topic is the channel's
topic). ``log_time`` is the recorder's receive time (wall clock, ns), ``publish_time`` the
message's capture time (in the clock its header names; the channel metadata repeats it) and
``sequence`` its sequence number.
"""

from __future__ import annotations

import msgpack

MESSAGE_ENCODING = "udml-wire/1"
SCHEMA_NAME = "udml.wire.v1"


def pack_frames(frames: list[bytes]) -> bytes:
    """The record data for ``[header, *payload]`` frames (topic excluded)."""
    return msgpack.packb([bytes(f) for f in frames], use_bin_type=True)


def unpack_frames(data: bytes) -> list[bytes]:
    """Inverse of ``pack_frames``; raises ``ValueError`` on anything else."""
    try:
        frames = msgpack.unpackb(data, raw=False)
    except Exception as err:
        raise ValueError(f"record is not a udml-wire/1 frame list: {err}") from None
    if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
        raise ValueError("record is not a list of binary frames")
    return frames
