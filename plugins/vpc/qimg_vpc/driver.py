"""The vpc format: Microsoft Virtual PC / Hyper-V VHD images, fixed and dynamic.

A fixed image is the guest disk followed by a 512-byte footer. A dynamic image is
``footer copy | dynamic header | BAT | blocks... | footer``; each block is a sector bitmap
followed by ``block_size`` bytes of data. As in qemu-img, the sector bitmaps are written all
ones when a block is allocated and are not consulted on reads; new blocks go where the
footer was, and the footer moves to the new end of the file.
"""
from __future__ import annotations

import sys
import time
from array import array

from qimg import compat
from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO, Status
from qimg.driver import Format
from qimg.errors import QimgError, bad_value
from qimg.image import zero_fill
from qimg.limits import qemu_length, request_ok
from qimg.options import BOOL, SIZE, STRING, Option
from qimg.overlap import MetadataMap
from qimg.tables import equal_run

from .structs import (
    COOKIE,
    DISK_DYNAMIC,
    DISK_FIXED,
    DYN_COOKIE,
    DYN_HEADER_SIZE,
    FOOTER_CHECKSUM_AT,
    FOOTER_SIZE,
    DynHeader,
    Footer,
    build_with_checksum,
    checksum,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: largest CHS geometry a VHD footer can record (cylinders x heads x sectors)
MAX_GEOMETRY = 65535 * 16 * 255
#: largest disk qemu-img accepts: 2040 GiB
MAX_SECTORS = 0xFF000000
#: seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC)
VHD_EPOCH = 946684800
DEFAULT_BLOCK_SIZE = 0x200000
UNALLOCATED = 0xFFFFFFFF
#: BAT entries we keep in memory at most (256 MiB); qemu-img caps at INT_MAX / 4
MAX_BAT_ENTRIES = 1 << 26
#: creator applications whose images take their size from ``current_size``, not CHS
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
#: ... and those whose images take it from CHS (feature vpc-current-size-default: every other)
CHS_CREATORS = (b"vpc ", b"qemu")


def _top_used(part: array) -> int:
    """The largest allocated entry of a piece of the BAT (-1: none): the largest of each run of
    allocated entries, runs told apart by ``index`` and :func:`equal_run` (C per run)."""
    top, i, n = -1, 0, len(part)
    while i < n:
        i += equal_run(part, i, UNALLOCATED)
        if i >= n:
            break
        try:
            j = part.index(UNALLOCATED, i)
        except ValueError:
            j = n
        top = max(top, max(part[i:j]))
        i = j
    return top


def chs_geometry(total_sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for a sector count, per the VHD specification."""
    t = min(total_sectors, MAX_GEOMETRY)
    if t >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = t // spt
    else:
        spt = 17
        cyl_heads = t // spt
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = t // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = t // spt
    return cyl_heads // heads, heads, spt


def create_geometry(size: int, force_size: bool) -> tuple[int, int, int, int]:
    """(cylinders, heads, sectors, disk bytes) qemu-img records for a requested size.

    Without ``force_size`` the size grows to the smallest CHS geometry that holds it; sizes
    beyond the largest geometry (about 127 GiB), and all sizes with ``force_size``, keep the
    requested size (rounded up to a sector) and record the maximum geometry.
    """
    sectors = -(-size // SECTOR)
    if sectors > MAX_SECTORS:
        raise QimgError("The image size is too large for file format 'vpc'")
    if force_size:
        c, h, s = 65535, 16, 255
    else:
        want = min(MAX_GEOMETRY, sectors)
        c = h = s = 0
        extra = 0
        while want > c * h * s:
            c, h, s = chs_geometry(want + extra)
            extra += 1
    total = sectors if c * h * s == MAX_GEOMETRY else c * h * s
    return c, h, s, total * SECTOR


def make_footer(disk_type: int, size: int, geometry: tuple[int, int, int], force_size: bool) -> bytes:
    import uuid  # only create needs it (uuid imports platform)

    c, h, s = geometry
    return build_with_checksum(Footer, dict(
        cookie=COOKIE,
        features=2,
        version=0x00010000,
        data_offset=SECTOR if disk_type == DISK_DYNAMIC else 0xFFFFFFFFFFFFFFFF,
        timestamp=(int(time.time()) - VHD_EPOCH) & 0xFFFFFFFF,
        # "qem2" tells readers (qemu too) to trust current_size rather than the geometry
        creator_app=b"qem2" if force_size else b"qemu",
        creator_version=0x00050003,
        creator_os=b"Wi2k",
        original_size=size,
        current_size=size,
        cylinders=c,
        heads=h,
        sectors=s,
        disk_type=disk_type,
        unique_id=uuid.uuid4().bytes,
        saved_state=0,
    ), FOOTER_CHECKSUM_AT)


def bitmap_size_for(block_size: int) -> int:
    """Bytes of the sector bitmap in front of each block (one bit per sector, whole sectors)."""
    return -(-(block_size // (8 * SECTOR)) // SECTOR) * SECTOR


class VpcFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = {"force_size_calc": STRING}
    strong_runtime_options = ("force_size_calc",)
    format_name = "vpc"
    #: QEMU creates the (empty) file before checking the options: a refused create leaves it
    create_failure = "empty"
    create_opts = [
        Option("force_size", BOOL, "Force disk size calculation to use the actual size specified, "
               "rather than using the nearest CHS-based calculation"),
        Option("size", SIZE, "Virtual disk size"),
        Option("subformat", STRING, "Type of virtual hard disk format. Supported formats are "
               "{dynamic (default) | fixed} "),
    ]
    # the order and defaults of qemu-img's "Formatting ..." line
    create_print_order = ("size", "subformat", "force_size")
    create_print_defaults: dict[str, str] = {}

    # -- create -------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        subformat = opts.get("subformat") or "dynamic"
        if subformat not in ("dynamic", "fixed"):
            raise bad_value("subformat", subformat)
        from qimg.units import sector_round

        force = bool(opts.get("force_size"))
        c, h, s, total = create_geometry(sector_round(size), force)
        if subformat == "fixed":
            footer = make_footer(DISK_FIXED, total, (c, h, s), force)
            file = open_protocol(filename, create=True, writable=True)
            try:
                file.truncate(0)
                file.truncate(total + FOOTER_SIZE)
                # like QEMU's file driver: allocate the first block of a new file
                file.pwrite(0, bytes(min(4096, total + FOOTER_SIZE)))
                file.pwrite(total, footer)
            finally:
                file.close()
            return
        footer = make_footer(DISK_DYNAMIC, total, (c, h, s), force)
        entries = -(-total // DEFAULT_BLOCK_SIZE)
        bat_offset = 3 * SECTOR
        bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
        header = build_with_checksum(DynHeader, dict(
            cookie=DYN_COOKIE,
            data_offset=0xFFFFFFFFFFFFFFFF,
            table_offset=bat_offset,
            version=0x00010000,
            max_table_entries=entries,
            block_size=DEFAULT_BLOCK_SIZE,
            parent_unique_id=bytes(16),
            parent_timestamp=0,
            parent_name=bytes(512),
            parent_locators=[dict(platform_code=bytes(4), data_space=0, data_length=0, data_offset=0)] * 8,
        ), 36)
        buf = bytearray(bat_offset + bat_bytes + FOOTER_SIZE)
        buf[0:FOOTER_SIZE] = footer
        buf[FOOTER_SIZE : FOOTER_SIZE + DYN_HEADER_SIZE] = header
        buf[bat_offset : bat_offset + bat_bytes] = b"\xff" * bat_bytes
        buf[bat_offset + bat_bytes :] = footer
        file = open_protocol(filename, create=True, writable=True)
        try:
            file.truncate(0)
            file.pwrite(0, buf)
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        flen = qemu_length(file.size())  # QEMU's length of the file: whole sectors
        raw = file.pread(0, FOOTER_SIZE).ljust(FOOTER_SIZE, b"\0")
        # a footer copy at offset 0 means a dynamic layout (whatever its type field says);
        # a fixed disk has its footer only at the end
        dynamic = raw[:8] == COOKIE
        if not dynamic:
            if flen < FOOTER_SIZE:
                raise QimgError("File too small for a VHD header")
            raw = file.pread(flen - FOOTER_SIZE, FOOTER_SIZE).ljust(FOOTER_SIZE, b"\0")
            if raw[:8] != COOKIE or int.from_bytes(raw[60:64], "big") != DISK_FIXED:
                raise QimgError("invalid VPC image")
        footer = Footer.parse(raw)
        if checksum(raw, FOOTER_CHECKSUM_AT) != footer.checksum:
            raise QimgError("Incorrect header checksum")
        self._footer_raw = raw
        self.footer = footer
        # I/O follows the type field, as in qemu-img
        self.fixed = footer.disk_type == DISK_FIXED
        self.block_size = 0

        sectors = footer.cylinders * footer.heads * footer.sectors
        mode = options.get("force_size_calc")
        if mode not in (None, "chs", "current_size"):
            raise QimgError(f"Invalid size calculation mode: '{mode}'")
        if compat.has("vpc-current-size-default"):
            use_chs = footer.creator_app in CHS_CREATORS or mode == "chs"
        else:
            use_chs = footer.creator_app not in CURRENT_SIZE_CREATORS or mode == "chs"
        if not use_chs or sectors == MAX_GEOMETRY or mode == "current_size":
            sectors = footer.current_size // SECTOR
        if sectors > MAX_SECTORS:
            raise QimgError(f"Could not open '{filename}': Could not open '{filename}': File too large")
        self._size = sectors * SECTOR
        # what no guest write may overwrite (a fixed disk: the footer at the end)
        self._meta = MetadataMap([(0, FOOTER_SIZE, "the footer copy")] if dynamic else
                                 [(flen - FOOTER_SIZE, FOOTER_SIZE, "the footer")])
        self._last_bitmap = -1
        if dynamic:
            self._open_dynamic(flen)

    def _open_dynamic(self, flen: int) -> None:
        off = self.footer.data_offset
        if not request_ok(off, DYN_HEADER_SIZE):
            raise QimgError("Error reading dynamic VHD header")
        raw = self.file.pread(off, DYN_HEADER_SIZE) if off < flen else b""
        raw = raw.ljust(DYN_HEADER_SIZE, b"\0")
        hdr = DynHeader.parse(raw)
        if hdr.cookie != DYN_COOKIE:
            raise QimgError("Invalid header magic")
        bsize = hdr.block_size
        if bsize < SECTOR or bsize & (bsize - 1):
            raise QimgError(f"Invalid block size {bsize}")
        if self._size // bsize > 0xFFFFFFFF:
            raise QimgError("Too many blocks")
        entries = hdr.max_table_entries
        if entries * bsize < self._size:
            raise QimgError("Page table too small")
        if entries > 0x7FFFFFFF // 4:
            raise QimgError(f"Max Table Entries too large ({entries})")
        self.block_size = bsize
        self.bitmap_size = bitmap_size_for(bsize)
        self.bat_offset = hdr.table_offset
        bat_bytes = entries * 4
        if not request_ok(self.bat_offset, bat_bytes):
            raise QimgError("Error reading pagetable")
        # where the next block goes: after the BAT and after every allocated block
        free = -(-(self.bat_offset + bat_bytes) // SECTOR) * SECTOR
        truncated = QimgError("block-vpc: free_data_block_offset points after the end of file. "
                              "The image has been truncated.")
        if free > flen:
            raise truncated
        needed = -(-self._size // bsize)
        if needed > MAX_BAT_ENTRIES:
            raise QimgError(f"Image too large: {needed} block allocation table entries "
                            f"(at most {MAX_BAT_ENTRIES} supported)")
        # read the whole table in bounded chunks; keep only the entries the disk size uses
        self.bat = array("I")
        top = -1
        chunk = 1 << 20
        pos = 0
        while pos < entries:
            k = min(chunk, entries - pos)
            # past the end of the file the table reads zeroes, as in QEMU
            part = array("I", self.file.pread(self.bat_offset + pos * 4, k * 4).ljust(k * 4, b"\0"))
            if sys.byteorder == "little":
                part.byteswap()
            top = max(top, _top_used(part))
            if pos < needed:
                self.bat.extend(part[: needed - pos])
            pos += k
        if top >= 0:
            free = max(free, top * SECTOR + self.bitmap_size + bsize)
        if free > flen:
            raise truncated
        self.free_offset = free
        self._bitmap = b"\xff" * self.bitmap_size
        self._meta.add(off, DYN_HEADER_SIZE, "the dynamic disk header")
        self._meta.add(self.bat_offset, -(-bat_bytes // SECTOR) * SECTOR, "the block allocation table")

    # -- facts ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cluster_size(self) -> int | None:
        return self.block_size or None

    def info_extra(self) -> dict[str, Any]:
        return {"cluster-size": self.block_size} if not self.fixed else {}

    # -- block status --------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        if self.fixed:
            for start, n, is_data in self.file.data_extents(offset, length):
                flags = DATA | ALLOCATED | OFFSET_VALID | (0 if is_data else ZERO)
                return Status(flags, n, start, self.file.filename)
            return Status(DATA | ALLOCATED | ZERO, length)
        bs = self.block_size
        idx, within = divmod(offset, bs)
        entry = self.bat[idx]
        if entry != UNALLOCATED:
            # blocks are never contiguous in the file (a bitmap sits between them)
            n = min(length, bs - within)
            host = entry * SECTOR + self.bitmap_size + within
            return Status(DATA | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)
        last = -(-(offset + length) // bs)
        run_end = (idx + equal_run(self.bat, idx, 0xFFFFFFFF, last - idx)) * bs
        # no backing file: unallocated blocks read as zeroes (qemu-img map says zero, present)
        return Status(ZERO | ALLOCATED, min(length, run_end - offset))

    # -- I/O ----------------------------------------------------------------------------
    def _pieces(self, offset: int, length: int):
        """(pos in request, block index, offset in block, length) for each block touched."""
        bs = self.block_size
        pos = 0
        while pos < length:
            idx, within = divmod(offset + pos, bs)
            k = min(length - pos, bs - within)
            yield pos, idx, within, k
            pos += k

    def read(self, offset: int, buf: memoryview) -> None:
        if self.fixed:
            got = self.file.preadinto(offset, buf)
            if got < len(buf):
                zero_fill(buf[got:])
            return
        for pos, idx, within, k in self._pieces(offset, len(buf)):
            view = buf[pos : pos + k]
            entry = self.bat[idx]
            if entry == UNALLOCATED:
                zero_fill(view)
                continue
            got = self.file.preadinto(entry * SECTOR + self.bitmap_size + within, view)
            if got < k:
                zero_fill(view[got:])

    def write(self, offset: int, data: memoryview) -> None:
        if self.fixed:
            self._meta.guard(offset, len(data))
            self.file.pwrite(offset, data)
            return
        for pos, idx, within, k in self._pieces(offset, len(data)):
            chunk = data[pos : pos + k]
            entry = self.bat[idx]
            if entry == UNALLOCATED:
                self._allocate(idx, within, chunk)
            else:
                self._write_in_block(entry, within, chunk)

    def _write_in_block(self, entry: int, within: int, chunk: memoryview | None, k: int = 0) -> None:
        """Write into an allocated block (None: ``k`` zero bytes). As QEMU, the block's sector
        bitmap is first set to all ones (once per run of writes to the same block)."""
        bitmap = entry * SECTOR
        host = bitmap + self.bitmap_size + within
        n = k if chunk is None else len(chunk)
        self._meta.guard(host, n)
        if entry != self._last_bitmap:
            self._meta.guard(bitmap, self.bitmap_size)
            self.file.pwrite(bitmap, self._bitmap)
            self._last_bitmap = entry
        if chunk is None:
            self.file.write_zeroes(host, n, False)
        else:
            self.file.pwrite(host, chunk)

    def _allocate(self, idx: int, within: int, chunk: memoryview) -> None:
        """A new block at the footer's place: data, bitmap, moved footer, then the BAT entry."""
        start = self.free_offset
        if start // SECTOR >= UNALLOCATED:
            raise QimgError(f"'{self.filename}': the image file is too large for more blocks")
        data_start = start + self.bitmap_size
        end = data_start + self.block_size
        self._meta.guard(start, end + FOOTER_SIZE - start)
        # zero data is written too (QEMU does: a block filled by zero writes is on disk)
        self.file.pwrite(data_start + within, chunk)
        self.file.pwrite(start, self._bitmap)
        self.file.pwrite(end, self._footer_raw)
        self.free_offset = end
        self.file.pwrite(self.bat_offset + idx * 4, (start // SECTOR).to_bytes(4, "big"))
        self.bat[idx] = start // SECTOR

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        if self.fixed:
            self._meta.guard(offset, length)
            self.file.write_zeroes(offset, length, False)
            return
        # QEMU's vpc has no zero-write operation: its block layer writes zero data, which
        # allocates the unallocated blocks too (convert -n to a vpc fills it)
        for pos, idx, within, k in self._pieces(offset, length):
            entry = self.bat[idx]
            if entry != UNALLOCATED:
                self._write_in_block(entry, within, None, k)
            else:
                super().write_zeroes(offset + pos, k, unmap)

