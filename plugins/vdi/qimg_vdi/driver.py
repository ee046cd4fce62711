"""The vdi format: VirtualBox disk images, dynamic and static, 1 MiB blocks.

Blocks are appended in the data area in allocation order (block ``n`` of the data area
is at ``offset_data + n * block_size``; the header's ``blocks_allocated`` is the next free
index). A new block is written whole (zeroes around the guest data), then the header count
and the block map entry, as qemu-img does.
"""
from __future__ import annotations

from array import array

from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO, Status
from qimg.driver import CheckResult, Format
from qimg.errors import CorruptImage, NotSupported, QimgError
from qimg.image import zero_fill
from qimg.options import BOOL, SIZE, Option
from qimg.overlap import MetadataMap
from qimg.protocol import ZERO_CHUNK
from qimg.tables import consecutive_run, equal_run, read_table
from qimg.tables import le32_bytes as _le_bytes

from .structs import HEADER_SIZE, SIGNATURE, TEXT, TYPE_DYNAMIC, TYPE_STATIC, VERSION_1_1, Header

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

BLOCK_SIZE = 1 << 20
#: entries >= this are not allocated (0xffffffff free, 0xfffffffe discarded): they read as zeroes
FIRST_UNALLOCATED = 0xFFFFFFFE
#: qemu-img's limits: the block map must stay below 2 GiB
MAX_BLOCKS = 0x1FFFFF80
MAX_DISK_SIZE = MAX_BLOCKS * BLOCK_SIZE
#: block map entries we hold in memory at most (256 MiB, a 64 TiB disk)
MAX_BMAP_ENTRIES = 1 << 26


class VdiFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = frozenset()
    format_name = "vdi"
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
        Option("static", BOOL, "VDI static (pre-allocated) image"),
    ]
    # the order and defaults of qemu-img's "Formatting ..." line
    create_print_order = ("size", "static")
    create_print_defaults = {"static": "off"}

    # -- create -------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        from qimg.units import sector_round

        disk_size = sector_round(size)
        if disk_size > MAX_DISK_SIZE:
            open_protocol(filename, create=True, writable=True).close()  # QEMU created it first
            raise QimgError(f"Unsupported VDI image size (size is {disk_size:#x}, "
                            f"max supported is {MAX_DISK_SIZE:#x})")
        static = bool(opts.get("static"))
        blocks = -(-disk_size // BLOCK_SIZE)
        bmap_bytes = -(-blocks * 4 // SECTOR) * SECTOR
        offset_data = HEADER_SIZE + bmap_bytes
        no_geometry = dict(cylinders=0, heads=0, sectors=0, sector_size=0)
        import uuid  # only create needs it (uuid imports platform)

        header = Header.build(dict(
            text=TEXT.ljust(64, b"\0"),
            signature=SIGNATURE,
            version=VERSION_1_1,
            header_size=0x180,
            image_type=TYPE_STATIC if static else TYPE_DYNAMIC,
            image_flags=0,
            description=bytes(256),
            offset_bmap=HEADER_SIZE,
            offset_data=offset_data,
            legacy_geometry=dict(no_geometry, sector_size=SECTOR),
            unused=0,
            disk_size=disk_size,
            block_size=BLOCK_SIZE,
            block_extra=0,
            blocks_in_image=blocks,
            blocks_allocated=blocks if static else 0,
            uuid_image=uuid.uuid4().bytes,
            uuid_last_snap=uuid.uuid4().bytes,
            uuid_link=bytes(16),
            uuid_parent=bytes(16),
            lchs_geometry=no_geometry,
        ))
        file = open_protocol(filename, create=True, writable=True)
        try:
            file.truncate(0)
            file.pwrite(0, header)
            # the block map in bounded pieces (a 2 GiB map for the largest disks)
            step = 1 << 18
            for first in range(0, blocks, step):
                n = min(step, blocks - first)
                if static:
                    piece = _le_bytes(array("I", range(first, first + n)))
                else:
                    piece = b"\xff\xff\xff\xff" * n
                file.pwrite(HEADER_SIZE + first * 4, piece)
            pad = bmap_bytes - blocks * 4
            if pad:
                file.pwrite(HEADER_SIZE + blocks * 4, bytes(pad))
            if static:
                file.truncate(offset_data + blocks * BLOCK_SIZE)
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        raw = file.pread(0, HEADER_SIZE).ljust(HEADER_SIZE, b"\0")
        h = Header.parse(raw)
        if h.disk_size > MAX_DISK_SIZE:
            raise QimgError(f"Unsupported VDI image size (size is {h.disk_size:#x}, "
                            f"max supported is {MAX_DISK_SIZE:#x})")
        # odd sizes (VBoxManage convertfromraw makes them) round up to a sector
        disk_size = -(-h.disk_size // SECTOR) * SECTOR
        if h.signature != SIGNATURE:
            raise QimgError(f"Image not in VDI format (bad signature {h.signature:08x})")
        if h.version != VERSION_1_1:
            raise QimgError(f"unsupported VDI image (version {h.version >> 16}.{h.version & 0xFFFF})")
        if h.offset_bmap % SECTOR:
            raise QimgError(f"unsupported VDI image (unaligned block map offset {h.offset_bmap:#x})")
        if h.offset_data % SECTOR:
            raise QimgError(f"unsupported VDI image (unaligned data offset {h.offset_data:#x})")
        if h.legacy_geometry.sector_size != SECTOR:
            raise QimgError(f"unsupported VDI image (sector size {h.legacy_geometry.sector_size} is not {SECTOR})")
        if h.block_size != BLOCK_SIZE:
            raise QimgError(f"unsupported VDI image (block size {h.block_size} is not {BLOCK_SIZE})")
        room = h.blocks_in_image * BLOCK_SIZE
        if disk_size > room:
            raise QimgError(f"unsupported VDI image (disk size {disk_size}, image bitmap has room for {room})")
        if any(h.uuid_link):
            raise QimgError("unsupported VDI image (non-NULL link UUID)")
        if any(h.uuid_parent):
            raise QimgError("unsupported VDI image (non-NULL parent UUID)")
        if h.blocks_in_image > MAX_BLOCKS:
            raise QimgError(f"unsupported VDI image (too many blocks {h.blocks_in_image}, max is {MAX_BLOCKS})")
        blocks = h.blocks_in_image
        self.header = h
        self.static = h.image_type == TYPE_STATIC
        self._size = disk_size
        self.offset_data = h.offset_data
        # read at its first use (see bmap): info needs only the header
        self._bmap: array | None = None
        self.blocks_allocated = h.blocks_allocated
        # the highest data-area index in use (allocation must not reuse it): found at the first
        # allocation, so that commands that only read never walk the map for it
        self._top: int | None = None
        self._block_buf: bytearray | None = None
        # the header and the block map (whole sectors, as QEMU writes them): no block may overlap them
        self._meta = MetadataMap([(0, HEADER_SIZE, "the header"),
                                  (h.offset_bmap, -(-blocks * 4 // SECTOR) * SECTOR, "the block map")])

    @property
    def bmap(self) -> array:
        """The block map, read at its first use: ``info`` of the largest image QEMU opens
        (512 TiB, a 2 GiB map, in a 1 KiB file: iotest 084) reads the header alone, as
        qemu-img's does. Beyond qemu-img, which reads the whole map at open, a command that
        walks the map refuses one over MAX_BMAP_ENTRIES (256 MiB) rather than hold it."""
        if self._bmap is None:
            blocks = self.header.blocks_in_image
            if blocks > MAX_BMAP_ENTRIES:
                raise QimgError(f"unsupported VDI image (too many blocks {blocks}, qimg supports at most "
                                f"{MAX_BMAP_ENTRIES})")
            # as QEMU, a block map reaching past the end of the file reads zeroes there
            self._bmap = read_table(self.file, self.header.offset_bmap, blocks, "I", big_endian=False)
        return self._bmap

    # -- facts ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cluster_size(self) -> int | None:
        return BLOCK_SIZE

    def info_extra(self) -> dict[str, Any]:
        return {"cluster-size": BLOCK_SIZE}

    # -- block status --------------------------------------------------------------------
    def qemu_status_end(self, offset: int) -> int:
        """End of the run one QEMU block-status call reports: one block (``compare -s`` sees it)."""
        return (offset // BLOCK_SIZE + 1) * BLOCK_SIZE

    def block_status(self, offset: int, length: int) -> Status:
        idx, within = divmod(offset, BLOCK_SIZE)
        last = -(-(offset + length) // BLOCK_SIZE)
        entry = self.bmap[idx]
        if entry >= FIRST_UNALLOCATED:
            run_end = self._unallocated_end(idx, last) * BLOCK_SIZE
            # no backing file: unallocated blocks read as zeroes (qemu-img map says zero, present)
            return Status(ZERO | ALLOCATED, min(length, run_end - offset))
        # following blocks stored right after this one extend the run
        nxt = idx + 1
        while nxt < last and self.bmap[nxt] == entry + (nxt - idx):
            nxt += 1
        n = min(length, (nxt - idx) * BLOCK_SIZE - within)
        host = self.offset_data + entry * BLOCK_SIZE + within
        if not self.static:
            return Status(DATA | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)
        # for static images qemu-img looks into the file: holes show as zero data
        for start, k, is_data in self.file.data_extents(host, n):
            flags = DATA | ALLOCATED | OFFSET_VALID | (0 if is_data else ZERO)
            return Status(flags, k, start, self.file.filename)
        return Status(DATA | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)

    # -- I/O ----------------------------------------------------------------------------
    def _pieces(self, offset: int, length: int):
        """(pos in request, block index, offset in block, length) for each block touched."""
        pos = 0
        while pos < length:
            idx, within = divmod(offset + pos, BLOCK_SIZE)
            k = min(length - pos, BLOCK_SIZE - within)
            yield pos, idx, within, k
            pos += k

    def _host(self, entry: int, within: int) -> int:
        return self.offset_data + entry * BLOCK_SIZE + within

    def read(self, offset: int, buf: memoryview) -> None:
        for pos, idx, within, k in self._pieces(offset, len(buf)):
            view = buf[pos : pos + k]
            entry = self.bmap[idx]
            if entry >= FIRST_UNALLOCATED:
                zero_fill(view)
                continue
            got = self.file.preadinto(self._host(entry, within), view)
            if got < k:
                zero_fill(view[got:])

    def write(self, offset: int, data: memoryview) -> None:
        for pos, idx, within, k in self._pieces(offset, len(data)):
            chunk = data[pos : pos + k]
            entry = self.bmap[idx]
            if entry >= FIRST_UNALLOCATED:
                self._allocate(idx, within, chunk)
            else:
                if entry >= self.header.blocks_in_image:
                    # a corrupt map entry points past the image: refuse before writing there
                    raise CorruptImage(f"'{self.filename}': block index {idx} too large, is {entry} "
                                       "(run 'qimg check')")
                host = self._host(entry, within)
                self._meta.guard(host, k)
                self.file.pwrite(host, chunk)

    def _allocate(self, idx: int, within: int, chunk: memoryview) -> None:
        """Append a block: the whole block (zero padded), then the header count, then the map entry."""
        entry = self.blocks_allocated
        if self._top is None:
            self._top = max((e + k - 1 for _, e, k in self._allocated_runs()), default=-1)
        if entry >= self.header.blocks_in_image or entry <= self._top:
            raise QimgError(f"'{self.filename}': the block map and the allocated block count disagree; "
                            "cannot allocate (run 'qimg check')")
        host = self._host(entry, 0)
        self._meta.guard(host, BLOCK_SIZE)
        if len(chunk) == BLOCK_SIZE:
            self.file.pwrite(host, chunk)
        else:
            if self._block_buf is None:
                self._block_buf = bytearray(BLOCK_SIZE)
            buf = memoryview(self._block_buf)
            zero_fill(buf)
            buf[within : within + len(chunk)] = chunk
            self.file.pwrite(host, buf)
        self.blocks_allocated = entry + 1
        self._top = entry
        # blocks_allocated sits at byte 388 of the header
        self.file.pwrite(388, self.blocks_allocated.to_bytes(4, "little"))
        self.file.pwrite(self.header.offset_bmap + idx * 4, entry.to_bytes(4, "little"))
        self.bmap[idx] = entry

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        # QEMU's vdi has no zero-write operation: its block layer writes zero data, which
        # allocates the unallocated blocks too (convert -n to a vdi fills it)
        for pos, idx, within, k in self._pieces(offset, length):
            entry = self.bmap[idx]
            if entry >= FIRST_UNALLOCATED:
                super().write_zeroes(offset + pos, k, unmap)
                continue
            if entry >= self.header.blocks_in_image:
                raise CorruptImage(f"'{self.filename}': block index {idx} too large, is {entry} "
                                   "(run 'qimg check')")
            host = self._host(entry, within)
            self._meta.guard(host, k)
            done = 0
            while done < k:
                n = min(len(ZERO_CHUNK), k - done)
                self.file.pwrite(host + done, memoryview(ZERO_CHUNK)[:n])
                done += n

    def _unallocated_end(self, i: int, last: int) -> int:
        """The first block from ``i`` (unallocated) up to ``last`` that is allocated, or last:
        a run of free entries, of discarded ones, of free ones... (C comparisons per run)."""
        bmap = self.bmap
        while i < last and bmap[i] >= FIRST_UNALLOCATED:
            i += equal_run(bmap, i, bmap[i], last - i)
        return i

    def _allocated_runs(self) -> Iterator[tuple[int, int, int]]:
        """(first block, its entry, count) of each run of allocated blocks whose entries count
        up by one, in block order; unallocated runs are skipped (C operations per run, not
        per entry)."""
        bmap = self.bmap
        n = len(bmap)
        i = 0
        while i < n:
            entry = bmap[i]
            if entry >= FIRST_UNALLOCATED:
                i = self._unallocated_end(i, n)
                continue
            k = consecutive_run(bmap, i, entry, FIRST_UNALLOCATED - entry)  # none unallocated
            yield i, entry, k
            i += k

    # -- check --------------------------------------------------------------------------
    def check(self, fix: set[str]) -> CheckResult:
        if fix:
            raise NotSupported("This image format does not support checks", exit_code=63)
        res = CheckResult(filename=self.filename, format=self.format_name)
        blocks = self.header.blocks_in_image
        owner = bytearray(blocks)  # 1 where a data-area block is already referenced
        counted = 0
        for first, e0, k in self._allocated_runs():
            if e0 + k <= blocks and owner.find(1, e0, e0 + k) < 0:
                owner[e0 : e0 + k] = b"\x01" * k  # a run in range that nothing else uses
                counted += k
                continue
            for block, entry in enumerate(range(e0, e0 + k), first):
                if entry < blocks:
                    counted += 1
                    if owner[entry]:
                        res.messages.append(f"ERROR: block index {entry} also used by {entry}")
                        res.corruptions += 1
                    else:
                        owner[entry] = 1
                else:
                    res.messages.append(f"ERROR: block index {block} too large, is {entry}")
                    res.corruptions += 1
        if counted != self.header.blocks_allocated:
            res.messages.append(f"ERROR: allocated blocks mismatch, is {counted}, "
                                f"should be {self.header.blocks_allocated}")
            res.corruptions += 1
        return res
