"""VHDX log: find the active sequence of entries and replay it (spec section 2.3).

The log is a circular buffer of entries (``loge`` header, ``desc``/``zero`` descriptors,
``data`` sectors). Only a sequence whose every entry validates (signature, CRC-32C, log GUID,
consecutive sequence numbers, data sector sequence numbers) is replayed. Memory is one entry
at a time, capped at the log size (itself capped by the caller).
"""
from __future__ import annotations

from dataclasses import dataclass

from qimg.errors import CorruptImage

from .structs import (
    LOG_DESCRIPTOR_SIZE,
    LOG_HEADER_SIZE,
    LOG_SECTOR,
    LogDescriptor,
    LogEntryHeader,
    crc_with_zero_field,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: largest log entry accepted (the spec allows the whole log; 32 MiB is far above real use)
MAX_ENTRY = 32 << 20


@dataclass
class LogEntry:
    pos: int
    length: int
    seq: int
    tail: int
    flushed_file_offset: int
    last_file_offset: int
    data: bytes


class Log:
    def __init__(self, file: Any, offset: int, length: int, log_guid: bytes) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        self.guid = log_guid

    def _read(self, pos: int, n: int) -> bytes:
        """``n`` bytes at log position ``pos``, wrapping around the end of the buffer."""
        out = bytearray()
        while n > 0:
            k = min(n, self.length - pos)
            chunk = self.file.pread(self.offset + pos, k)
            if len(chunk) < k:
                raise CorruptImage("The VHDX log is past the end of the file")
            out += chunk
            n -= k
            pos = (pos + k) % self.length
        return bytes(out)

    def entry_at(self, pos: int) -> LogEntry | None:
        """The valid entry starting at ``pos`` or None."""
        head = self._read(pos, LOG_HEADER_SIZE)
        if head[:4] != b"loge":
            return None
        h = LogEntryHeader.parse(head)
        if (h.log_guid != self.guid or h.entry_length % LOG_SECTOR or not 0 < h.entry_length <= self.length
                or h.entry_length > MAX_ENTRY or h.tail % LOG_SECTOR or h.tail >= self.length):
            return None
        desc_bytes = LOG_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * h.descriptor_count
        desc_sectors = (desc_bytes + LOG_SECTOR - 1) // LOG_SECTOR
        if desc_sectors * LOG_SECTOR > h.entry_length:
            return None
        data = self._read(pos, h.entry_length)
        if crc_with_zero_field(data) != h.checksum:
            return None
        ndata = 0
        for i in range(h.descriptor_count):
            d = LogDescriptor.parse(data[LOG_HEADER_SIZE + i * LOG_DESCRIPTOR_SIZE:])
            if d.signature not in (b"desc", b"zero") or d.sequence_number != h.sequence_number:
                return None
            if d.signature == b"desc":
                ndata += 1
        if (desc_sectors + ndata) * LOG_SECTOR != h.entry_length:
            return None
        for k in range(ndata):
            s = data[(desc_sectors + k) * LOG_SECTOR:(desc_sectors + k + 1) * LOG_SECTOR]
            hi = int.from_bytes(s[4:8], "little")
            lo = int.from_bytes(s[-4:], "little")
            if s[:4] != b"data" or (hi << 32 | lo) != h.sequence_number:
                return None
        return LogEntry(pos, h.entry_length, h.sequence_number, h.tail, h.flushed_file_offset,
                        h.last_file_offset, data)

    def active_sequence(self) -> list[LogEntry]:
        """Entries to replay, oldest first; empty when the log holds no valid sequence."""
        best: LogEntry | None = None
        for pos in range(0, self.length, LOG_SECTOR):
            e = self.entry_at(pos)
            if e is not None and (best is None or e.seq > best.seq):
                best = e
        if best is None:
            return []
        seq: list[LogEntry] = []
        pos = best.tail
        for _ in range(self.length // LOG_SECTOR + 1):
            e = self.entry_at(pos)
            if e is None or (seq and e.seq != seq[-1].seq + 1):
                raise CorruptImage("The VHDX log is corrupt: its active sequence is incomplete")
            seq.append(e)
            if e.pos == best.pos:
                return seq
            pos = (pos + e.length) % self.length
        raise CorruptImage("The VHDX log is corrupt: its active sequence does not end")

    @staticmethod
    def replay(file: Any, entries: list[LogEntry], keep: Any = None) -> None:
        """Apply the entries' descriptors to the file, in order; ``keep`` (a
        :class:`qimg.overlap.MetadataMap`) says where no descriptor may write (refused first)."""
        if not entries:
            return
        head = entries[-1]
        if file.size() < head.flushed_file_offset:
            raise CorruptImage("The VHDX log cannot be replayed: the file is shorter than the log expects")
        for e in entries:
            h = LogEntryHeader.parse(e.data)
            desc_sectors = (LOG_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * h.descriptor_count + LOG_SECTOR - 1) // LOG_SECTOR
            k = 0
            for i in range(h.descriptor_count):
                d = LogDescriptor.parse(e.data[LOG_HEADER_SIZE + i * LOG_DESCRIPTOR_SIZE:])
                if d.file_offset % LOG_SECTOR:
                    raise CorruptImage("The VHDX log is corrupt: unaligned descriptor")
                if d.signature == b"zero":
                    # for "zero" the 8-byte field holds the length
                    if d.leading_bytes % LOG_SECTOR:
                        raise CorruptImage("The VHDX log is corrupt: unaligned zero descriptor")
                    if keep is not None:
                        keep.guard(d.file_offset, d.leading_bytes)
                    file.write_zeroes(d.file_offset, d.leading_bytes)
                else:
                    s = e.data[(desc_sectors + k) * LOG_SECTOR:(desc_sectors + k + 1) * LOG_SECTOR]
                    sector = (d.leading_bytes.to_bytes(8, "little") + s[8:LOG_SECTOR - 4]
                              + d.trailing_bytes.to_bytes(4, "little"))
                    if keep is not None:
                        keep.guard(d.file_offset, LOG_SECTOR)
                    file.pwrite(d.file_offset, sector)
                    k += 1
        if file.size() < head.last_file_offset:
            file.truncate(head.last_file_offset)
        file.flush()


def build_entry(seq: int, tail: int, log_guid: bytes, file_size: int, file_offset: int, sector: bytes) -> bytes:
    """One log entry carrying one 4 KiB sector (a ``desc`` descriptor and its ``data`` sector)."""
    length = 2 * LOG_SECTOR
    entry = bytearray(length)
    entry[:LOG_HEADER_SIZE] = LogEntryHeader.build(dict(
        signature=b"loge", checksum=0, entry_length=length, tail=tail, sequence_number=seq, descriptor_count=1,
        reserved=0, log_guid=log_guid, flushed_file_offset=file_size, last_file_offset=file_size))
    entry[LOG_HEADER_SIZE:LOG_HEADER_SIZE + LOG_DESCRIPTOR_SIZE] = LogDescriptor.build(dict(
        signature=b"desc", trailing_bytes=int.from_bytes(sector[-4:], "little"),
        leading_bytes=int.from_bytes(sector[:8], "little"), file_offset=file_offset, sequence_number=seq))
    d = LOG_SECTOR
    entry[d:d + 4] = b"data"
    entry[d + 4:d + 8] = (seq >> 32).to_bytes(4, "little")
    entry[d + 8:d + LOG_SECTOR - 4] = sector[8:LOG_SECTOR - 4]
    entry[d + LOG_SECTOR - 4:d + LOG_SECTOR] = (seq & 0xFFFFFFFF).to_bytes(4, "little")
    entry[4:8] = crc_with_zero_field(bytes(entry)).to_bytes(4, "little")
    return bytes(entry)


class LogWriter:
    """Metadata updates through the log (spec 2.3): entry, flush, then the update in place.

    Each entry is applied right after it is durable, so every entry is its own tail; an
    interrupted update is replayed on the next read-write open (by qimg or qemu-img).
    """

    def __init__(self, file: Any, offset: int, length: int, log_guid: bytes, seq: int) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        self.guid = log_guid
        self.seq = seq
        self.pos = 0

    def write_sector(self, file_offset: int, sector: bytes) -> None:
        if self.pos + 2 * LOG_SECTOR > self.length:
            self.pos = 0
        entry = build_entry(self.seq, self.pos, self.guid, self.file.size(), file_offset, sector)
        self.file.flush()  # the data the entry refers to is on disk first
        self.file.pwrite(self.offset + self.pos, entry)
        self.file.flush()
        self.file.pwrite(file_offset, sector)
        self.pos += len(entry)
        self.seq += 1
