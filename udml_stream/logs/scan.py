"""Walk an MCAP file record by record, trusting only what a checksum vouches for.

The ``mcap`` readers stop at the first damage and do not check chunk CRCs unless asked, so a
bit-flipped chunk either ends the read or (uncompressed) hands out altered messages. This scanner
is what ``udml log info`` and ``udml log recover`` use instead:

* every chunk is decompressed and its uncompressed CRC compared with the one its header stores;
  a chunk that fails (or has no CRC to check) yields nothing and is reported with its byte range
  and the time range its header claims;
* after damage (a record whose length or layout does not add up, a failed chunk, a truncated
  tail) the scan resumes at the next offset where a whole chunk parses *and* passes its CRC;
* channel records are taken from CRC-checked chunks (``LogWriter`` repeats a channel's record
  in every chunk that uses it, so a lost chunk does not orphan the channels of later ones) and,
  for older files, from the summary section when the footer's summary CRC checks out.

Messages outside chunks carry no checksum; ``udml`` never writes them, and they are reported as
damage rather than trusted.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import lz4.frame
import zstandard
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk

from udml_stream.errors import UdmlError

MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 1, 2, 3, 4, 5, 6
_OP_MESSAGE_INDEX, _OP_DATA_END = 7, 15
_REC = struct.Struct("<BQ")  # opcode, content length
_CHUNK_HEAD = struct.Struct("<QQQII")  # start, end, uncompressed size, crc, compression length
_COMPRESSIONS = ("", "zstd", "lz4")
_FOOTER_LEN = 1 + 8 + 8 + 8 + 4  # opcode, length, summary start, summary offset start, crc


class ScanError(UdmlError):
    """The file is not an MCAP log at all (wrong magic, empty)."""


@dataclass
class Damage:
    """One unreadable stretch of a log: byte range, why, and the log times it lies between."""

    start: int
    end: int
    reason: str
    t_first_ns: int | None = None  # log time range the lost data covers (a chunk header's
    t_last_ns: int | None = None  # claim, or the neighbouring good messages after a resync)

    def describe(self) -> str:
        """One line for a report."""
        when = ""
        if self.t_first_ns is not None and self.t_last_ns is not None:
            when = f", log time {self.t_first_ns} … {self.t_last_ns} ns"
        return f"bytes {self.start}–{self.end} ({self.end - self.start} B): {self.reason}{when}"


@dataclass
class ScanReport:
    """What a scan found; complete once the records iterator is exhausted."""

    size: int = 0
    chunks_ok: int = 0
    chunks_bad: int = 0
    messages: int = 0
    orphan_messages: int = 0  # in a good chunk but on a channel whose record was lost
    reached_data_end: bool = False
    summary_ok: bool = False
    damage: list[Damage] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Whether anything was lost or could not be trusted."""
        return bool(self.damage) or self.orphan_messages > 0 or not self.reached_data_end


def _chunk_at(buf: mmap.mmap | bytes, pos: int, size: int) -> tuple[int, Chunk] | str:
    """Parse the chunk record at ``pos``: ``(record end, chunk)`` or why it is not one."""
    if pos + _REC.size > size:
        return "truncated record header"
    op, length = _REC.unpack_from(buf, pos)
    body = pos + _REC.size
    if op != _OP_CHUNK:
        return f"opcode {op} where a chunk was expected"
    if body + length > size:
        return "truncated chunk"
    if length < _CHUNK_HEAD.size + 8:
        return "chunk record too short"
    t0, t1, usize, crc, clen = _CHUNK_HEAD.unpack_from(buf, body)
    cstart = body + _CHUNK_HEAD.size
    if clen > 8 or cstart + clen + 8 > body + length:
        return "chunk layout does not add up"
    try:
        compression = bytes(buf[cstart:cstart + clen]).decode()
    except UnicodeDecodeError:
        return "chunk compression name is not text"
    if compression not in _COMPRESSIONS:
        return f"unknown chunk compression {compression!r}"
    (dlen,) = struct.unpack_from("<Q", buf, cstart + clen)
    dstart = cstart + clen + 8
    if dstart + dlen != body + length:
        return "chunk data length does not match its record length"
    return body + length, Chunk(compression=compression, data=bytes(buf[dstart:dstart + dlen]),
                                message_start_time=t0, message_end_time=t1,
                                uncompressed_crc=crc, uncompressed_size=usize)


def _verified_records(chunk: Chunk) -> list | str:
    """The records of a chunk whose decompressed bytes match its CRC, or why it fails."""
    if chunk.uncompressed_crc == 0:
        return "chunk has no CRC to verify it"  # udml always writes one; unverifiable = untrusted
    try:
        if chunk.compression == "zstd":
            data = zstandard.ZstdDecompressor().decompress(
                chunk.data, max_output_size=chunk.uncompressed_size)
        elif chunk.compression == "lz4":
            data = lz4.frame.decompress(chunk.data)
        else:
            data = chunk.data
    except Exception as err:  # zstd/lz4 raise their own types on corrupt input
        return f"chunk does not decompress ({type(err).__name__})"
    if len(data) != chunk.uncompressed_size:
        return "chunk decompresses to the wrong size"
    if zlib.crc32(data) != chunk.uncompressed_crc:
        return "chunk CRC mismatch"
    try:
        return breakup_chunk(Chunk(compression="", data=data,
                                   message_start_time=chunk.message_start_time,
                                   message_end_time=chunk.message_end_time,
                                   uncompressed_crc=0, uncompressed_size=len(data)))
    except Exception as err:  # cannot happen for a chunk a udml writer made; never trusted
        return f"chunk records do not parse ({type(err).__name__})"


def _summary_channels(buf: mmap.mmap | bytes, size: int) -> tuple[dict[int, Schema],
                                                                   dict[int, Channel]] | None:
    """Schemas and channels of the summary section, if the footer's summary CRC vouches for it."""
    foot = size - len(MAGIC) - _FOOTER_LEN
    if foot < len(MAGIC) or bytes(buf[size - len(MAGIC):size]) != MAGIC:
        return None
    op, length, summary_start, _offsets, crc = struct.unpack_from("<BQQQI", buf, foot)
    if op != _OP_FOOTER or length != _FOOTER_LEN - _REC.size or summary_start == 0:
        return None
    if not len(MAGIC) <= summary_start < foot or crc == 0:
        return None
    if zlib.crc32(buf[summary_start:size - len(MAGIC) - 4]) != crc:
        return None
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    try:
        for rec in StreamReader(BytesIO(bytes(buf[summary_start:size])), skip_magic=True).records:
            if isinstance(rec, Schema):
                schemas[rec.id] = rec
            elif isinstance(rec, Channel):
                channels[rec.id] = rec
    except Exception:  # a summary we cannot parse is simply not used
        return None
    return schemas, channels


class LogScan:
    """Iterate the CRC-verified messages of one MCAP file; ``report`` fills in as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ScanError(f"log {self.path} not found")
        self.report = ScanReport(size=self.path.stat().st_size)
        self.channels: dict[int, Channel] = {}
        self.schemas: dict[int, Schema] = {}

    def messages(self) -> Iterator[tuple[Channel, Message]]:
        """Yield ``(channel, message)`` from every chunk whose CRC checks, in file order."""
        size = self.report.size
        if size < len(MAGIC):
            raise ScanError(f"{self.path} is not an MCAP log ({size} bytes)")
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if bytes(buf[:len(MAGIC)]) != MAGIC:
                raise ScanError(f"{self.path} is not an MCAP log (no MCAP magic at its start)")
            summary = _summary_channels(buf, size)
            self.report.summary_ok = summary is not None
            fallback = summary[1] if summary else {}
            yield from self._walk(buf, size, fallback)

    def _walk(self, buf: mmap.mmap, size: int, fallback: dict[int, Channel]
              ) -> Iterator[tuple[Channel, Message]]:
        rep = self.report
        pos = len(MAGIC)
        last_t: int | None = None  # log time of the last good message (for damage time ranges)
        while pos < size:
            if pos + _REC.size > size:
                rep.damage.append(Damage(pos, size, "truncated record header", last_t))
                return
            op, length = _REC.unpack_from(buf, pos)
            end = pos + _REC.size + length
            if op == _OP_CHUNK:
                parsed = _chunk_at(buf, pos, size)
                if isinstance(parsed, str):
                    pos = self._resync(buf, pos, size, parsed, last_t)
                    continue
                end, chunk = parsed
                records = _verified_records(chunk)
                if isinstance(records, str):
                    rep.chunks_bad += 1
                    rep.damage.append(Damage(pos, end, records, chunk.message_start_time,
                                             chunk.message_end_time))
                    pos = end
                    continue
                rep.chunks_ok += 1
                for rec in records:
                    if isinstance(rec, Schema):
                        self.schemas[rec.id] = rec
                    elif isinstance(rec, Channel):
                        self.channels[rec.id] = rec
                    elif isinstance(rec, Message):
                        ch = self.channels.get(rec.channel_id) or fallback.get(rec.channel_id)
                        if ch is None:
                            rep.orphan_messages += 1
                            continue
                        rep.messages += 1
                        last_t = rec.log_time
                        yield ch, rec
                pos = end
            elif op == _OP_DATA_END and end <= size:
                rep.reached_data_end = True
                return
            elif op == _OP_MESSAGE and end <= size:
                rep.damage.append(Damage(pos, end, "message outside a chunk (no CRC)", last_t))
                pos = end
            elif op in (_OP_HEADER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE_INDEX) and end <= size:
                if op == _OP_MESSAGE_INDEX and not self._index_fits(buf, pos, length):
                    pos = self._resync(buf, pos, size, "message index does not add up", last_t)
                    continue
                pos = end  # unchecked records outside chunks are not trusted, only skipped
            elif 8 <= op <= 14 and end <= size:
                pos = end  # summary-type records (attachments, metadata …): nothing to copy
            else:
                why = "truncated record" if end > size else f"invalid opcode {op}"
                pos = self._resync(buf, pos, size, why, last_t)

    @staticmethod
    def _index_fits(buf: mmap.mmap, pos: int, length: int) -> bool:
        """A message index is ``u16 channel | u32 array bytes | 16 B entries``: do they add up?"""
        if length < 6:
            return False
        (array_len,) = struct.unpack_from("<I", buf, pos + _REC.size + 2)
        return array_len % 16 == 0 and 6 + array_len == length

    def _resync(self, buf: mmap.mmap, pos: int, size: int, why: str, last_t: int | None) -> int:
        """Record damage from ``pos`` to the next whole, CRC-valid chunk; return its offset."""
        cand = pos + 1
        while True:
            cand = buf.find(bytes([_OP_CHUNK]), cand)
            if cand < 0:
                self.report.damage.append(Damage(pos, size, why + "; no valid chunk after it",
                                                 last_t))
                return size
            parsed = _chunk_at(buf, cand, size)
            if not isinstance(parsed, str) and not isinstance(_verified_records(parsed[1]), str):
                self.report.damage.append(Damage(pos, cand, why, last_t,
                                                 parsed[1].message_start_time))
                return cand
            cand += 1
