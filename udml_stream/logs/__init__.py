"""MCAP sensor logs that store the exact wire frames: record, read, recover, replay."""

from udml_stream.logs.format import MESSAGE_ENCODING, pack_frames, unpack_frames
from udml_stream.logs.reader import LogError, LogInfo, info, iter_wire, recover
from udml_stream.logs.recorder import Recorder, RecorderConfig
from udml_stream.logs.writer import LogWriter

__all__ = [
    "MESSAGE_ENCODING",
    "LogError",
    "LogInfo",
    "LogWriter",
    "Recorder",
    "RecorderConfig",
    "info",
    "iter_wire",
    "pack_frames",
    "recover",
    "unpack_frames",
]
