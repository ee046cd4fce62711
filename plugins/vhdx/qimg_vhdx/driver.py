"""The VHDX format (Microsoft "VHDX Format Specification" v1.00).

Layout: file identifier, two headers (CRC-32C, the higher sequence number wins), two region
tables naming the BAT and the metadata region, a log (replayed on a read-write open), then
payload blocks located by the BAT (``array('Q')``; one sector-bitmap entry after every
``chunk_ratio`` payload entries). New blocks go to the end of the file (1 MiB aligned): data
first, then the BAT entry. Block status is reported as qemu-img 7.2 does (its vhdx driver has
none): the whole disk is data.
"""
from __future__ import annotations

import errno
import os
import sys
from array import array

from qimg import api, limits
from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, Status
from qimg.compat import program
from qimg.driver import CheckResult, Format
from qimg.errors import CorruptImage, QimgError, bad_value
from qimg.image import zero_fill
from qimg.options import BOOL, SIZE, STRING, Option
from qimg.overlap import MetadataMap
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
#: a BAT entry's low byte -> 1 when its state is "payload fully present" (bytes.translate)
_FULLY_PRESENT = bytes(int(b & BAT_STATE_MASK == PAYLOAD_FULLY_PRESENT) for b in range(256))


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
    # QEMU counts in uint32: for an empty image, blocks - 1 wraps and the table is as long as
    # 2^32 - 1 blocks' sector bitmaps (a 64 MiB BAT with 8 MiB blocks)
    return blocks, blocks + ((blocks - 1) & 0xFFFFFFFF) // chunk_ratio


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
        from qimg.units import sector_round

        size = sector_round(size)
        if size > MAX_SIZE:
            raise QimgError("Image size too large; max of 64TB")
        sub = opts.get("subformat") or "dynamic"
        if sub not in ("dynamic", "fixed"):
            raise bad_value("subformat", sub)
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
    # QEMU's vhdx_open, step by step: most refusals carry only an errno (EINVAL, ENOTSUP), which
    # qemu-img prints as "Could not open 'x': Could not open 'x': Invalid argument"
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self.file_size = limits.qemu_length(file.size())  # as QEMU measures it: whole sectors
        if file.pread(0, 8) != FILE_SIGNATURE:
            raise self._fail(errno.EINVAL)
        self._read_headers()
        self._headers_updated = False
        self.log_replayed = False
        self._regions: list[tuple[int, int]] = []  # QEMU's overlap list: log, then the regions
        self._read_log()
        self._read_regions()
        self._read_metadata()
        self._read_bat()
        limits.check_disk_size(self._size)
        self._meta: MetadataMap | None = None  # built on the first write
        # qemu-img check opens without the BAT check and reports what it finds instead
        if not options.get("check"):
            problems = self._bat_problems(stop_at_first=True)
            if problems:
                api.warn(f"{program()}: {problems[0]}")
                raise self._fail(errno.EINVAL)

    def _fail(self, code: int) -> QimgError:
        return limits.open_errno(self.filename, code)

    def _read_headers(self) -> None:
        valid: list[tuple[int, dict[str, Any], bytes]] = []
        for off in (HEADER1_OFFSET, HEADER2_OFFSET):
            raw = self.file.pread(off, HEADER_SIZE).ljust(HEADER_SIZE, b"\0")
            h = Header.parse(raw)
            if h.checksum != crc_with_zero_field(raw) or h.signature != b"head" or h.version != 1:
                continue
            valid.append((off, dict((k, v) for k, v in h.items() if not k.startswith("_")), raw))
        if not valid:
            raise QimgError("No valid VHDX header found")
        if len(valid) == 2:
            (o1, h1, r1), (o2, h2, r2) = valid
            if h1["sequence_number"] == h2["sequence_number"]:
                # Disk2VHD writes two identical headers; different ones with one number are corrupt
                # (QEMU compares them with the checksum field zeroed)
                if r1[:4] + r1[8:] != r2[:4] + r2[8:]:
                    raise QimgError("No valid VHDX header found")
                valid = [valid[0]]
            elif h2["sequence_number"] > h1["sequence_number"]:
                valid = [valid[1]]
        self.hdr_slot, self.hdr = valid[0][0], valid[0][1]

    def _read_log(self) -> None:
        lo, ln = self.hdr["log_offset"], self.hdr["log_length"]
        self._regions.append((lo, ln))
        if lo < MiB or lo % MiB or self.hdr["log_version"] != 0:
            raise self._fail(errno.EINVAL)
        if self.hdr["log_guid"] == ZERO_GUID or ln == 0:
            return
        if ln % MiB:
            raise self._fail(errno.EINVAL)
        from .log import Log  # only an image with a log needs it

        log = Log(self.file, lo, ln, self.hdr["log_guid"])
        entries = log.active_sequence()
        if entries and not self.writable:
            from qimg.compat import fixed_name  # qemu-img spells its name out in this hint

            raise QimgError(f"VHDX image file '{self.filename}' opened read-only, but contains a log that needs to "
                            f"be replayed\nTo replay the log, run:\n{fixed_name()} check -r all '{self.filename}'")
        if self.writable:
            # a log writes where it says: never into the header section or into the log itself
            keep = MetadataMap([(0, HEADER_SECTION_END, "the VHDX header section"), (lo, ln, "the VHDX log")])
            Log.replay(self.file, entries, keep)
            self.log_replayed = bool(entries)
            self.file_size = limits.qemu_length(self.file.size())
            self._update_headers(log_guid=ZERO_GUID)

    def _overlap_check(self, start: int, length: int) -> str | None:
        """QEMU's vhdx_region_check against the registered regions: the message, or None."""
        end = start + length
        for rs, rn in self._regions:
            re_ = rs + rn
            if not (start >= re_ or end <= rs):
                # QEMU prints the end with "%." PRIu64: a zero end prints as nothing
                return f"VHDX region {start}-{end} overlaps with region {rs}-{re_ if re_ else ''}"
        return None

    def _read_regions(self) -> None:
        # like qemu-img, only the first copy is used: a damaged first table is an error
        raw = self.file.pread(REGION1_OFFSET, REGION_TABLE_SIZE).ljust(REGION_TABLE_SIZE, b"\0")
        t = RegionTableHeader.parse(raw)
        if t.checksum != crc_with_zero_field(raw) or t.signature != b"regi" or t.entry_count > MAX_TABLE_ENTRIES:
            raise self._fail(errno.EINVAL)
        found: dict[bytes, tuple[int, int]] = {}
        for i in range(t.entry_count):
            e = RegionEntry.parse(raw[16 + 32 * i:48 + 32 * i])
            clash = self._overlap_check(e.file_offset, e.length)
            if clash:
                api.warn(f"{program()}: {clash}")
                raise self._fail(errno.EINVAL)
            self._regions.append((e.file_offset, e.length))
            if e.guid in (BAT_GUID, METADATA_GUID):
                if e.guid in found:
                    raise self._fail(errno.EINVAL)
                found[e.guid] = (e.file_offset, e.length)
            elif e.required & 1:
                raise self._fail(errno.ENOTSUP)
        if BAT_GUID not in found or METADATA_GUID not in found:
            raise self._fail(errno.EINVAL)
        self.bat_region = found[BAT_GUID]
        self.meta_region = found[METADATA_GUID]

    def _pread(self, offset: int, length: int) -> bytes:
        """QEMU's bdrv_pread: zeroes past the end of the file, EIO past the block layer's limit."""
        if not limits.request_ok(offset, length):
            raise self._fail(errno.EIO)
        return self.file.pread(offset, length).ljust(length, b"\0")

    def _read_metadata(self) -> None:
        moff = self.meta_region[0]
        raw = self._pread(moff, METADATA_TABLE_SIZE)
        t = MetadataTableHeader.parse(raw)
        if t.signature != b"metadata" or t.entry_count * 32 > METADATA_TABLE_SIZE - 32:
            raise self._fail(errno.EINVAL)
        entries: dict[bytes, int] = {}  # item -> offset in the region
        known = (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, PAGE83_GUID, LOGICAL_SECTOR_GUID,
                 PHYSICAL_SECTOR_GUID, PARENT_LOCATOR_GUID)
        for i in range(t.entry_count):
            e = MetadataEntry.parse(raw[32 + 32 * i:64 + 32 * i])
            if e.item_id in known:
                if e.item_id in entries:
                    raise self._fail(errno.EINVAL)
                entries[e.item_id] = e.offset
            elif e.flags & META_IS_REQUIRED:
                raise self._fail(errno.ENOTSUP)
        if len(entries) != 5 or PARENT_LOCATOR_GUID in entries:
            raise self._fail(errno.ENOTSUP)

        def item(g: bytes, n: int) -> bytes:
            return self._pread(moff + entries[g], n)

        fp = FileParameters.parse(item(FILE_PARAMETERS_GUID, 8))
        if fp.flags & FP_HAS_PARENT:
            raise self._fail(errno.EINVAL)  # a parent without a parent locator
        size = int.from_bytes(item(VIRTUAL_DISK_SIZE_GUID, 8), "little")
        self.logical_sector = int.from_bytes(item(LOGICAL_SECTOR_GUID, 4), "little")
        self.physical_sector = int.from_bytes(item(PHYSICAL_SECTOR_GUID, 4), "little")
        bs = fp.block_size
        if not MIN_BLOCK <= bs <= MAX_BLOCK:
            raise self._fail(errno.EINVAL)
        if self.logical_sector != 512:
            raise self._fail(errno.ENOTSUP)
        self.chunk_ratio = _chunk_ratio(bs, self.logical_sector)
        if bs & (bs - 1) or self.chunk_ratio & (self.chunk_ratio - 1):
            raise self._fail(errno.EINVAL)
        self.block_size = bs
        # the disk is a whole number of logical sectors (QEMU's total_sectors)
        self._size = size // self.logical_sector * self.logical_sector

    def _read_bat(self) -> None:
        boff, blen = self.bat_region
        bs = self.block_size
        # QEMU counts in 32 bits (a size past 2^32 blocks wraps; an empty disk needs a whole chunk)
        blocks = -(-self._size // bs) & 0xFFFFFFFF
        n = (blocks + (((blocks - 1) & 0xFFFFFFFF) >> (self.chunk_ratio.bit_length() - 1))) & 0xFFFFFFFF
        self.blocks = blocks
        self.bat_entries = n
        if n > blen // 8:
            raise self._fail(errno.EINVAL)
        nbytes = limits.table_bytes(n, 8, "BAT")
        if not limits.request_ok(boff, blen):
            raise self._fail(errno.EIO)
        self.bat = array("Q")
        self.bat.frombytes(self._pread(boff, nbytes) if nbytes else b"")
        if not _LE:
            self.bat.byteswap()
        self.end = self.file_size

    def _bat_problems(self, stop_at_first: bool = False) -> list[str]:
        """QEMU's vhdx_check_bat_entries: present blocks past the end of the file or over the
        log, the BAT or the metadata region (the messages; empty: all is well)."""
        out: list[str] = []
        bs, fsize = self.block_size, self.file_size
        payblocks = self.chunk_ratio
        bat = self.bat
        # the entries whose state is "fully present", found in C: each entry's low byte (its
        # state bits), mapped to 1 for that state, 0 otherwise; only those are visited
        low = bytes(memoryview(bat).cast("B")[0 if _LE else 7 :: 8]).translate(_FULLY_PRESENT)
        i = -1
        while (i := low.find(1, i + 1)) >= 0:
            e = bat[i]
            off = e & ~((1 << BAT_OFFSET_SHIFT) - 1)
            # QEMU sizes the last block by the BAT index, not the block number
            left = (self._size - i * bs) & 0xFFFFFFFFFFFFFFFF
            length = min(bs, left)
            if off > (1 << 63) - 1 - bs:
                out.append(f"VHDX BAT entry {i} offset overflow.")
            if off >= fsize:
                out.append(f"VHDX BAT entry {i} start offset {off} points after end of file ({fsize}). "
                           "Image has probably been truncated.")
            elif off + length > fsize:
                out.append(f"VHDX BAT entry {i} end offset {off + length - 1} points after end of file "
                           f"({fsize}). Image has probably been truncated.")
            if stop_at_first and out:
                return out
            if payblocks:
                payblocks -= 1
                clash = self._overlap_check(off, bs)
                if clash:
                    out.append(clash)
                    if stop_at_first:
                        return out
            else:
                payblocks = self.chunk_ratio
        return out

    def _metadata(self) -> MetadataMap:
        """The header section, the log, the BAT and the metadata region: no write lands there."""
        if self._meta is None:
            self._meta = MetadataMap([
                (0, HEADER_SECTION_END, "the VHDX header section"),
                (self.hdr["log_offset"], self.hdr["log_length"], "the VHDX log"),
                (*self.bat_region, "the VHDX BAT"),
                (*self.meta_region, "the VHDX metadata region"),
            ])
        return self._meta

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
        i = b + b // self.chunk_ratio
        if i >= len(self.bat):  # a disk size QEMU's 32-bit block count wrapped
            raise limits.eio()
        return self.bat[i]

    def block_status(self, offset: int, length: int) -> Status:
        # qemu-img 7.2's vhdx driver reports no block status: the whole disk reads as data
        return Status(DATA | ALLOCATED, length)

    def read(self, offset: int, buf: memoryview) -> None:
        bs = self.block_size
        pos, total = 0, len(buf)
        while pos < total:
            b, within = divmod(offset + pos, bs)
            n = min(total - pos, bs - within)
            e = self._entry(b)
            view = buf[pos:pos + n]
            if e & BAT_STATE_MASK == PAYLOAD_FULLY_PRESENT:
                host = (e >> BAT_OFFSET_SHIFT) * MiB + within
                if not limits.request_ok(host, n):
                    raise limits.eio()
                got = self.file.preadinto(host, view)
                if got < n:
                    zero_fill(view[got:])
            else:
                # zero, unmapped, undefined and not present blocks read as zeroes (no parent)
                zero_fill(view)
            pos += n

    def _bat_sector(self, i: int) -> tuple[int, bytes]:
        """The 4 KiB BAT sector holding entry ``i``: (file offset, its bytes with our entries)."""
        first = i // 512 * 512
        off = self.bat_region[0] + first * 8
        sector = bytearray(self._pread(off, 4096))
        raw = _le64(self.bat[first:first + 512])
        sector[:len(raw)] = raw
        return off, bytes(sector)

    def write(self, offset: int, data: memoryview) -> None:
        meta = self._metadata()
        if not self._headers_updated:
            lo, ln = self.hdr["log_offset"], self.hdr["log_length"]
            if not MiB <= ln <= MAX_LOG or ln % MiB:
                raise CorruptImage("Invalid VHDX log location: refusing to write to the image")
            meta.guard(lo, ln, own=(lo, lo + ln, "the VHDX log"))
            # a new log GUID (the BAT changes go through the log) and new write GUIDs
            import random
            import uuid

            from .log import LogWriter

            self._log = LogWriter(self.file, self.hdr["log_offset"], self.hdr["log_length"],
                                  uuid.uuid4().bytes_le, random.getrandbits(48) + 1)
            self._update_headers(new_guids=True, log_guid=self._log.guid)
            self._headers_updated = True
        bs = self.block_size
        bat = (self.bat_region[0], self.bat_region[0] + self.bat_region[1], "the VHDX BAT")
        pos, total = 0, len(data)
        while pos < total:
            b, within = divmod(offset + pos, bs)
            n = min(total - pos, bs - within)
            e = self._entry(b)
            piece = data[pos:pos + n]
            if e & BAT_STATE_MASK == PAYLOAD_FULLY_PRESENT:
                host = (e >> BAT_OFFSET_SHIFT) * MiB + within
                meta.guard(host, n)
                self.file.pwrite(host, piece)
            else:
                # a new block at the end of the file reads as zeroes where not written
                host = (self.end + MiB - 1) // MiB * MiB
                meta.guard(host, bs)
                i = b + b // self.chunk_ratio
                sector = self._bat_sector(i)
                meta.guard(sector[0], len(sector[1]), own=bat)
                self.end = host + bs
                self.file.pwrite(host + within, piece)
                if self.file.size() < self.end:
                    self.file.truncate(self.end)
                self.file_size = max(self.file_size, self.end)
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
        # the BAT checks QEMU makes on open (skipped when opening for a check), each problem a
        # corruption; a log replayed by this open counts as a repaired corruption
        res = CheckResult(filename=self.filename, format="vhdx")
        for msg in self._bat_problems():
            res.messages.append(f"{program()}: {msg}")
            res.corruptions += 1
        if self.log_replayed:
            res.corruptions_fixed += 1
            self.log_replayed = False
        return res
