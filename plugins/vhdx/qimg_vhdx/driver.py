"""The VHDX format (Microsoft "VHDX Format Specification" v1.00).

Layout: file identifier, two headers (CRC-32C, the higher sequence number wins), two region
tables naming the BAT and the metadata region, a log (replayed on a read-write open), then
payload blocks located by the BAT (``array('Q')``; one sector-bitmap entry after every
``chunk_ratio`` payload entries). New blocks go to the end of the file (1 MiB aligned): data
first, then the BAT entry. Block status is reported as qemu-img 7.2 does (its vhdx driver has
none): the whole disk is data.
"""
from __future__ import annotations

import os
import sys
from array import array

from qimg import limits
from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, Status
from qimg.driver import CheckResult, Format
from qimg.errors import CorruptImage, NotSupported, QimgError
from qimg.image import zero_fill
from qimg.options import BOOL, SIZE, STRING, Option
from qimg.tables import le64_bytes as _le64

from .structs import (
    BAT_GUID,
    BAT_OFFSET_SHIFT,
    BAT_STATE_MASK,
    FILE_PARAMETERS_GUID,
    FILE_SIGNATURE,
    FP_HAS_PARENT,
    HEADER1_OFFSET,
    HEADER2_OFFSET,
    HEADER_SECTION_END,
    HEADER_SIZE,
    LOGICAL_SECTOR_GUID,
    META_IS_REQUIRED,
    META_IS_VIRTUAL_DISK,
    METADATA_GUID,
    METADATA_TABLE_SIZE,
    PAGE83_GUID,
    PARENT_LOCATOR_GUID,
    PAYLOAD_FULLY_PRESENT,
    PAYLOAD_ZERO,
    PHYSICAL_SECTOR_GUID,
    REGION1_OFFSET,
    REGION2_OFFSET,
    REGION_TABLE_SIZE,
    VIRTUAL_DISK_SIZE_GUID,
    ZERO_GUID,
    FileIdentifier,
    FileParameters,
    Header,
    MetadataEntry,
    MetadataTableHeader,
    MiB,
    RegionEntry,
    RegionTableHeader,
    crc_with_zero_field,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

TiB = 1 << 40
MAX_SIZE = 64 * TiB
MIN_BLOCK, MAX_BLOCK = 1 * MiB, 256 * MiB
MAX_TABLE_ENTRIES = 2047
#: the payload area starts this far after the metadata region (as qemu-img lays it out)
PAYLOAD_GAP = 4 * MiB
MAX_LOG = 1 << 32

_LE = sys.byteorder == "little"


def _auto_block_size(size: int) -> int:
    if size > 32 * TiB:
        return 64 * MiB
    if size > 100 * (1 << 30):
        return 32 * MiB
    if size > 1 << 30:
        return 16 * MiB
    return 8 * MiB


def _chunk_ratio(block_size: int, logical_sector: int) -> int:
    return ((1 << 23) * logical_sector) // block_size


def _bat_entries(size: int, block_size: int, chunk_ratio: int) -> tuple[int, int]:
    """(payload blocks, BAT entries) of a non-differencing image."""
    blocks = (size + block_size - 1) // block_size
    if blocks == 0:
        return 0, 0
    return blocks, blocks + (blocks - 1) // chunk_ratio


def _header_bytes(h: dict[str, Any]) -> bytes:
    h = dict(h, checksum=0)
    raw = Header.build(h)
    return raw[:4] + crc_with_zero_field(raw).to_bytes(4, "little") + raw[8:]


def _region_table(entries: list[tuple[bytes, int, int, int]]) -> bytes:
    body = bytearray(REGION_TABLE_SIZE)
    body[:16] = RegionTableHeader.build(dict(signature=b"regi", checksum=0, entry_count=len(entries), reserved=0))
    for i, (g, off, n, req) in enumerate(entries):
        body[16 + 32 * i:48 + 32 * i] = RegionEntry.build(dict(guid=g, file_offset=off, length=n, required=req))
    body[4:8] = crc_with_zero_field(bytes(body)).to_bytes(4, "little")
    return bytes(body)


class VhdxFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = frozenset()
    format_name = "vhdx"
    #: QEMU creates the (empty) file before checking the options: a refused create leaves it
    create_failure = "empty"
    create_opts = [
        Option("size", SIZE, "Virtual disk size; max of 64TB."),
        Option("log_size", SIZE, "Log size; min 1MB.", 1048576),
        Option("block_size", SIZE, "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.", 0),
        Option("subformat", STRING, "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'."),
        Option("block_state_zero", BOOL, "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  "
               "Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic."),
    ]

    # -- create ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        if size > MAX_SIZE:
            raise QimgError("Image size too large; max of 64TB")
        sub = opts.get("subformat") or "dynamic"
        if sub not in ("dynamic", "fixed"):
            raise QimgError(f"Parameter 'subformat' does not accept value '{sub}'")
        fixed = sub == "fixed"
        zero_state = opts.get("block_state_zero")
        zero_state = True if zero_state is None else bool(zero_state)
        log_size = opts.get("log_size")
        log_size = MiB if log_size is None else int(log_size)
        log_size = (log_size + MiB - 1) // MiB * MiB
        if log_size < MiB:
            raise QimgError("Log size must be a multiple of 1 MB")
        if log_size > MAX_LOG - MiB:
            raise QimgError("Log size must be smaller than 4 GB")
        bs = int(opts.get("block_size") or 0)
        if bs == 0:
            bs = _auto_block_size(size)
        bs = min(max(bs, MIN_BLOCK), MAX_BLOCK)
        if bs & (bs - 1):
            raise QimgError("Block size must be a power of two")
        size = (size + 511) & ~511
        logical = 512
        ratio = _chunk_ratio(bs, logical)
        blocks, nentries = _bat_entries(size, bs, ratio)
        bat_offset = HEADER_SECTION_END + log_size
        bat_length = max(MiB, (nentries * 8 + MiB - 1) // MiB * MiB)
        meta_offset = bat_offset + bat_length
        meta_length = MiB
        payload = meta_offset + meta_length + PAYLOAD_GAP

        bat = array("Q", [0]) * nentries
        for b in range(blocks):
            i = b + b // ratio
            if zero_state:
                bat[i] = PAYLOAD_ZERO
            elif fixed:
                bat[i] = PAYLOAD_FULLY_PRESENT | ((payload + b * bs) // MiB) << BAT_OFFSET_SHIFT
        import uuid  # not at start-up (uuid imports platform)

        file_guid, data_guid = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
        import random  # not at start-up (random imports hashlib, math...)

        seq = random.getrandbits(32)
        hdr = dict(signature=b"head", checksum=0, sequence_number=seq, file_write_guid=file_guid,
                   data_write_guid=data_guid, log_guid=ZERO_GUID, log_version=0, version=1,
                   log_length=log_size, log_offset=HEADER_SECTION_END, reserved=bytes(4016))
        import qimg

        creator = f"QEMU v{qimg.QEMU_COMPAT_VERSION}".encode("utf-16-le")
        ident = FileIdentifier.build(dict(signature=FILE_SIGNATURE, creator=creator + bytes(512 - len(creator))))
        regions = _region_table([(BAT_GUID, bat_offset, bat_length, 0), (METADATA_GUID, meta_offset, meta_length, 0)])
        meta = bytearray(METADATA_TABLE_SIZE)
        items = [
            (FILE_PARAMETERS_GUID, FileParameters.build(dict(block_size=bs, flags=1 if fixed else 0)), META_IS_REQUIRED),
            (VIRTUAL_DISK_SIZE_GUID, size.to_bytes(8, "little"), META_IS_VIRTUAL_DISK | META_IS_REQUIRED),
            (PAGE83_GUID, uuid.uuid4().bytes_le, META_IS_VIRTUAL_DISK | META_IS_REQUIRED),
            (LOGICAL_SECTOR_GUID, logical.to_bytes(4, "little"), META_IS_VIRTUAL_DISK | META_IS_REQUIRED),
            (PHYSICAL_SECTOR_GUID, (512).to_bytes(4, "little"), META_IS_VIRTUAL_DISK | META_IS_REQUIRED),
        ]
        meta[:32] = MetadataTableHeader.build(dict(signature=b"metadata", reserved=0, entry_count=len(items),
                                                   reserved2=bytes(20)))
        values = bytearray()
        for i, (g, val, flags) in enumerate(items):
            meta[32 + 32 * i:64 + 32 * i] = MetadataEntry.build(dict(
                item_id=g, offset=METADATA_TABLE_SIZE + len(values), length=len(val), flags=flags, reserved=0))
            values += val
        file = open_protocol(filename, create=True, writable=True)
        try:
            file.truncate(0)
            file.pwrite(0, ident)
            file.pwrite(HEADER1_OFFSET, _header_bytes(hdr))
            file.pwrite(HEADER2_OFFSET, _header_bytes(dict(hdr, sequence_number=seq + 1)))
            file.pwrite(REGION1_OFFSET, regions)
            file.pwrite(REGION2_OFFSET, regions)
            raw_bat = _le64(bat)
            file.pwrite(bat_offset, raw_bat + bytes(bat_length - len(raw_bat)))
            file.pwrite(meta_offset, bytes(meta))
            file.pwrite(meta_offset + METADATA_TABLE_SIZE, bytes(values))
            file.truncate(payload + (size if fixed else 0))
        except OSError as e:
            raise QimgError(f"Could not create '{filename}': {os.strerror(e.errno or 5)}") from None
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self.file_size = file.size()
        if file.pread(0, 8) != FILE_SIGNATURE:
            raise QimgError("Image is not in VHDX format")
        self._read_headers()
        self._read_regions()
        self._headers_updated = False
        self.log_replayed = False
        log_off, log_len = self.hdr["log_offset"], self.hdr["log_length"]
        if self.hdr["log_guid"] != ZERO_GUID:
            if log_off % MiB or log_len % MiB or log_off < HEADER_SECTION_END or not 0 < log_len <= MAX_LOG:
                raise CorruptImage("Invalid VHDX log location")
            from .log import Log  # only an image with a log needs it

            log = Log(file, log_off, log_len, self.hdr["log_guid"])
            entries = log.active_sequence()
            if entries and not writable:
                raise QimgError(f"VHDX image file '{filename}' opened read-only, but contains a log that needs to be "
                                f"replayed\nTo replay the log, run:\nqimg check -r all '{filename}'")
            if writable:
                Log.replay(file, entries)
                self.log_replayed = bool(entries)
                self.file_size = file.size()
                self._update_headers(log_guid=ZERO_GUID)
                self._read_regions()
        self._read_metadata()
        self._read_bat()

    def _read_headers(self) -> None:
        best = None
        for off in (HEADER1_OFFSET, HEADER2_OFFSET):
            raw = self.file.pread(off, HEADER_SIZE)
            if len(raw) < HEADER_SIZE or raw[:4] != b"head":
                continue
            h = Header.parse(raw)
            if h.checksum != crc_with_zero_field(raw) or h.version != 1:
                continue
            if best is None or h.sequence_number > best[1]["sequence_number"]:
                best = (off, dict((k, v) for k, v in h.items() if not k.startswith("_")))
        if best is None:
            raise QimgError("No valid VHDX header found")
        self.hdr_slot, self.hdr = best

    def _read_regions(self) -> None:
        # like qemu-img, only the first copy is used: a damaged first table is an error
        for off in (REGION1_OFFSET,):
            raw = self.file.pread(off, REGION_TABLE_SIZE)
            if len(raw) < REGION_TABLE_SIZE or raw[:4] != b"regi":
                continue
            t = RegionTableHeader.parse(raw)
            if t.checksum != crc_with_zero_field(raw) or t.entry_count > MAX_TABLE_ENTRIES:
                continue
            found: dict[bytes, tuple[int, int]] = {}
            for i in range(t.entry_count):
                e = RegionEntry.parse(raw[16 + 32 * i:48 + 32 * i])
                if e.file_offset % MiB or e.length % MiB or e.file_offset < HEADER_SECTION_END:
                    raise CorruptImage("Invalid VHDX region table entry")
                if e.guid in found:
                    raise CorruptImage("Duplicate VHDX region table entry")
                if e.guid not in (BAT_GUID, METADATA_GUID) and e.required & 1:
                    raise NotSupported("Unsupported required VHDX region")
                found[e.guid] = (e.file_offset, e.length)
            if BAT_GUID not in found or METADATA_GUID not in found:
                raise CorruptImage("VHDX region table lacks the BAT or the metadata region")
            self.bat_region = found[BAT_GUID]
            self.meta_region = found[METADATA_GUID]
            limits.check_no_overlap([(*self.bat_region, "BAT region"), (*self.meta_region, "metadata region")])
            return
        raise QimgError("No valid VHDX region table found")

    def _read_metadata(self) -> None:
        moff, mlen = self.meta_region
        if mlen < METADATA_TABLE_SIZE:
            raise CorruptImage("VHDX metadata region is too small")
        raw = limits.read_exact(self.file, moff, METADATA_TABLE_SIZE, "VHDX metadata table")
        t = MetadataTableHeader.parse(raw)
        if t.signature != b"metadata" or t.entry_count > MAX_TABLE_ENTRIES:
            raise CorruptImage("Invalid VHDX metadata table")
        items: dict[bytes, bytes] = {}
        known = {FILE_PARAMETERS_GUID: 8, VIRTUAL_DISK_SIZE_GUID: 8, PAGE83_GUID: 16, LOGICAL_SECTOR_GUID: 4,
                 PHYSICAL_SECTOR_GUID: 4}
        for i in range(t.entry_count):
            e = MetadataEntry.parse(raw[32 + 32 * i:64 + 32 * i])
            if e.item_id == PARENT_LOCATOR_GUID:
                raise NotSupported("VHDX differencing images (with a parent) are not supported")
            if e.item_id not in known:
                if e.flags & META_IS_REQUIRED:
                    raise NotSupported("Unsupported required VHDX metadata item")
                continue
            if e.length != known[e.item_id] or e.offset < METADATA_TABLE_SIZE or e.offset + e.length > mlen:
                raise CorruptImage("Invalid VHDX metadata entry")
            items[e.item_id] = limits.read_exact(self.file, moff + e.offset, e.length, "VHDX metadata item")
        for g in (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, LOGICAL_SECTOR_GUID, PHYSICAL_SECTOR_GUID):
            if g not in items:
                raise CorruptImage("VHDX metadata item missing")
        fp = FileParameters.parse(items[FILE_PARAMETERS_GUID])
        if fp.flags & FP_HAS_PARENT:
            raise NotSupported("VHDX differencing images (with a parent) are not supported")
        bs = fp.block_size
        if not MIN_BLOCK <= bs <= MAX_BLOCK or bs & (bs - 1):
            raise CorruptImage(f"Invalid VHDX block size {bs}")
        self.block_size = bs
        self.logical_sector = int.from_bytes(items[LOGICAL_SECTOR_GUID], "little")
        if self.logical_sector not in (512, 4096):
            raise NotSupported(f"Unsupported VHDX logical sector size {self.logical_sector}")
        self.physical_sector = int.from_bytes(items[PHYSICAL_SECTOR_GUID], "little")
        self._size = int.from_bytes(items[VIRTUAL_DISK_SIZE_GUID], "little")
        if self._size > MAX_SIZE or self._size % self.logical_sector:
            raise CorruptImage(f"Invalid VHDX virtual disk size {self._size}")
        self.chunk_ratio = _chunk_ratio(bs, self.logical_sector)

    def _read_bat(self) -> None:
        boff, blen = self.bat_region
        self.blocks, n = _bat_entries(self._size, self.block_size, self.chunk_ratio)
        nbytes = limits.table_bytes(n, 8, "BAT")
        if nbytes > blen:
            raise CorruptImage("VHDX BAT region is too small for the disk size")
        self.bat = array("Q")
        self.bat.frombytes(limits.read_exact(self.file, boff, nbytes, "BAT") if nbytes else b"")
        if not _LE:
            self.bat.byteswap()
        # every present block lies in the file and overlaps no metadata and no other block
        fixed = [(0, HEADER_SECTION_END), (self.hdr["log_offset"], self.hdr["log_length"]), self.bat_region,
                 self.meta_region]
        starts: list[int] = []
        bs = self.block_size
        for b in range(self.blocks):
            e = self.bat[b + b // self.chunk_ratio]
            if e & BAT_STATE_MASK != PAYLOAD_FULLY_PRESENT:
                continue
            off = (e >> BAT_OFFSET_SHIFT) * MiB
            if off >= self.file_size:
                raise CorruptImage(f"VHDX BAT entry {b} start offset {off} points after end of file "
                                   f"({self.file_size}). Image has probably been truncated.")
            used = min(bs, self._size - b * bs)  # the last block may extend past the disk
            if off + used - 1 >= self.file_size:
                raise CorruptImage(f"VHDX BAT entry {b} end offset {off + used - 1} points after end of file "
                                   f"({self.file_size}). Image has probably been truncated.")
            starts.append((off, used))
        starts.sort()
        for (a, na), (b2, nb) in zip(starts, starts[1:], strict=False):
            if b2 < a + na:
                raise CorruptImage(f"VHDX region {b2}-{b2 + nb} overlaps with region {a}-{a + na}")
        for s, n in starts:
            for fo, fl in fixed:
                if s < fo + fl and fo < s + n:
                    raise CorruptImage(f"VHDX region {s}-{s + n} overlaps with region {fo}-{fo + fl}")
        self.end = max([self.file_size] + [s + n for s, n in starts])

    # -- headers ----------------------------------------------------------------------------------------
    def _update_headers(self, *, log_guid: bytes | None = None, new_guids: bool = False) -> None:
        """Write both headers in turn (the inactive one first), as the spec's update procedure."""
        import uuid

        file_guid = uuid.uuid4().bytes_le if new_guids else self.hdr["file_write_guid"]
        for _ in range(2):
            h = dict(self.hdr)
            h["sequence_number"] = (h["sequence_number"] + 1) & 0xFFFFFFFFFFFFFFFF
            h["file_write_guid"] = file_guid
            if new_guids:
                h["data_write_guid"] = uuid.uuid4().bytes_le
            if log_guid is not None:
                h["log_guid"] = log_guid
            slot = HEADER2_OFFSET if self.hdr_slot == HEADER1_OFFSET else HEADER1_OFFSET
            self.file.pwrite(slot, _header_bytes(h))
            self.file.flush()
            self.hdr, self.hdr_slot = h, slot

    # -- facts --------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cluster_size(self) -> int | None:
        return self.block_size

    def info_extra(self) -> dict[str, Any]:
        return {"dirty-flag": False}

    # -- I/O ------------------------------------------------------------------------------------------------
    def _entry(self, b: int) -> int:
        return self.bat[b + b // self.chunk_ratio]

    def block_status(self, offset: int, length: int) -> Status:
        # qemu-img 7.2's vhdx driver reports no block status: the whole disk reads as data
        return Status(DATA | ALLOCATED, length)

    def read(self, offset: int, buf: memoryview) -> None:
        bs = self.block_size
        pos, total = 0, len(buf)
        while pos < total:
            b, within = divmod(offset + pos, bs)
            n = min(total - pos, bs - within)
            # merge consecutive blocks stored contiguously
            e = self._entry(b)
            view = buf[pos:pos + n]
            if e & BAT_STATE_MASK == PAYLOAD_FULLY_PRESENT:
                host = (e >> BAT_OFFSET_SHIFT) * MiB + within
                got = self.file.preadinto(host, view)
                if got < n:
                    zero_fill(view[got:])
            else:
                # zero, unmapped, undefined and not present blocks read as zeroes (no parent)
                zero_fill(view)
            pos += n

    def _bat_sector(self, i: int) -> tuple[int, bytes]:
        """The 4 KiB BAT sector holding entry ``i``: (file offset, current bytes)."""
        first = i // 512 * 512
        raw = _le64(self.bat[first:first + 512])
        return self.bat_region[0] + first * 8, raw + bytes(4096 - len(raw))

    def write(self, offset: int, data: memoryview) -> None:
        if not self._headers_updated:
            lo, ln = self.hdr["log_offset"], self.hdr["log_length"]
            if (lo % MiB or ln % MiB or lo < HEADER_SECTION_END or not MiB <= ln <= MAX_LOG or lo + ln > self.file_size
                    or any(lo < o + n and o < lo + ln for o, n in (self.bat_region, self.meta_region))):
                raise CorruptImage("Invalid VHDX log location: refusing to write to the image")
            # a new log GUID (the BAT changes go through the log) and new write GUIDs
            import random
            import uuid

            from .log import LogWriter

            self._log = LogWriter(self.file, self.hdr["log_offset"], self.hdr["log_length"],
                                  uuid.uuid4().bytes_le, random.getrandbits(48) + 1)
            self._update_headers(new_guids=True, log_guid=self._log.guid)
            self._headers_updated = True
        bs = self.block_size
        pos, total = 0, len(data)
        while pos < total:
            b, within = divmod(offset + pos, bs)
            n = min(total - pos, bs - within)
            e = self._entry(b)
            piece = data[pos:pos + n]
            if e & BAT_STATE_MASK == PAYLOAD_FULLY_PRESENT:
                self.file.pwrite((e >> BAT_OFFSET_SHIFT) * MiB + within, piece)
            else:
                # a new block at the end of the file reads as zeroes where not written
                host = (self.end + MiB - 1) // MiB * MiB
                self.end = host + bs
                self.file.pwrite(host + within, piece)
                if self.file.size() < self.end:
                    self.file.truncate(self.end)
                self.file_size = max(self.file_size, self.end)
                i = b + b // self.chunk_ratio
                self.bat[i] = PAYLOAD_FULLY_PRESENT | (host // MiB) << BAT_OFFSET_SHIFT
                self._log.write_sector(*self._bat_sector(i))
            pos += n

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        try:
            if self.writable and self._headers_updated and self.hdr["log_guid"] != ZERO_GUID:
                # everything logged was applied: an empty log again
                self.file.flush()
                self._update_headers(log_guid=ZERO_GUID)
        finally:
            self.file.close()

    def check(self, fix: set[str]) -> CheckResult:
        # consistency of the BAT was verified when opening; an image that opens is clean. A log
        # replayed by this open counts as a repaired corruption, as in qemu-img.
        res = CheckResult(filename=self.filename, format="vhdx")
        if self.log_replayed:
            res.corruptions = res.corruptions_fixed = 1
            self.log_replayed = False
        return res
