"""How one multipart wire message is stored in one MCAP message record.

Channel ``message_encoding`` is ``udml-wire/1`` and the record's data holds the frames
``[header_frame, *payload_frames]`` exactly as they travelled (the topic is the channel's topic):

    u32 n_frames | u64 len_0 … u64 len_{n-1} | frame_0 bytes … frame_{n-1} bytes   (little-endian)

A length-prefixed layout rather than a msgpack array so that reading slices the payloads out
of the record without copying them (replay speed). ``log_time`` is the recorder's receive time
(wall clock, ns), ``publish_time`` the message's capture time (in the clock its header names; the
channel metadata repeats it) and ``sequence`` its sequence number.
"""

from __future__ import annotations

import struct
from typing import Any

MESSAGE_ENCODING = "udml-wire/1"
SCHEMA_NAME = "udml.wire.v1"
_MAX_FRAMES = 64


def pack_frames(frames: list[Any]) -> bytes:
    """The record data for ``[header, *payload]`` frames (topic excluded); a frame is any
    contiguous buffer (bytes, memoryview, or the numpy array ``encode`` hands out)."""
    n = len(frames)
    # nbytes, not len(): len() of a numpy payload is its first dimension.
    sizes = [memoryview(f).nbytes for f in frames]
    return b"".join([struct.pack(f"<I{n}Q", n, *sizes), *frames])


def unpack_frames(data: bytes) -> list[memoryview]:
    """Inverse of ``pack_frames`` (zero-copy views into ``data``); ``ValueError`` on anything else."""
    view = memoryview(data)
    if len(view) < 4:
        raise ValueError("record too short for a udml-wire/1 frame list")
    (n,) = struct.unpack_from("<I", view)
    if not 0 < n <= _MAX_FRAMES or len(view) < 4 + 8 * n:
        raise ValueError(f"record claims {n} frames; not a udml-wire/1 frame list")
    lens = struct.unpack_from(f"<{n}Q", view, 4)
    pos = 4 + 8 * n
    if pos + sum(lens) != len(view):
        raise ValueError("udml-wire/1 frame lengths do not add up to the record size")
    out = []
    for ln in lens:
        out.append(view[pos : pos + ln])
        pos += ln
    return out
