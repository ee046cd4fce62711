"""The parallels format: Parallels/Virtuozzo expandable images as QEMU's block/parallels.c.

A 64-byte header, the BAT (one u32 per cluster: its offset in sectors, or in clusters for
"WithouFreSpacExt" images; 0 unallocated, reading as zeroes), the data area from ``data_off``.
New clusters go at ``data_end`` (the end of the data area), which QEMU grows by
``prealloc-size`` (128 MiB) at a time, zero-filled (``prealloc-mode=falloc``) or by truncating
(``truncate``); closing a writable image trims the file to ``data_end``. BAT changes are written
at flush and close, in QEMU's 16 KiB blocks; ``inuse`` marks an image open for writing.

Profiles (:mod:`qimg.compat`): 7.2 refuses to open an unclean image read-write; 10.0 checks
``data_off`` and the BAT on open and repairs a writable image (printing its check lines),
reuses free clusters inside the data area, discards whole clusters and checks for duplicate
BAT entries. Both read-only opens validate the Format Extension cluster (its dirty bitmaps are
not persistent for QEMU: nothing shows them).

No write lands on the header, the BAT or the extension cluster (:mod:`qimg.overlap`), whatever
a hostile BAT says: QEMU 7.2 would write there.
"""
from __future__ import annotations

import struct
from array import array

from qimg import api, compat
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, Status
from qimg.driver import CheckResult, Format
from qimg.errors import QimgError
from qimg.image import zero_fill
from qimg.limits import eio, request_ok
from qimg.options import SIZE, STRING, Option
from qimg.overlap import MetadataMap
from qimg.tables import equal_run, nonzero_max, nonzero_spans

from .structs import (
    DEFAULT_CLUSTER_SIZE,
    HEADER_SIZE,
    HEADS,
    INUSE_MAGIC,
    SEC_IN_CYL,
    SECTOR,
    Header,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"WithoutFreeSpace"
MAGIC_EXT = b"WithouFreSpacExt"
VERSION = 2
INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1
#: QEMU's MAX_PARALLELS_IMAGE_FACTOR: a BAT has fewer than 2^32 entries
IMAGE_FACTOR = 1 << 32
#: QEMU writes dirty BAT pieces of 4 host pages
BAT_DIRTY_BLOCK = 4 * 4096
#: QEMU's bdrv_opt_mem_align of a file: the header is written in pieces of this size
MEM_ALIGN = 4096
#: BAT entries qimg holds in memory at most (256 MiB; QEMU allows 2 GiB)
MAX_BAT_ENTRIES = 1 << 26
PREALLOC_SIZE = 128 << 20


def _repairs() -> bool:
    """The 10.0 driver: data_off checks, repair on open, cluster reuse, discard, duplicates."""
    return compat.has("parallels-repair")


class ParallelsFormat(Format):
    format_name = "parallels"
    reopenable = False  # QEMU's driver has no bdrv_reopen_prepare: commit cannot write into it
    #: QEMU's runtime options of the parallels driver
    runtime_options = {"prealloc-size": SIZE, "prealloc-mode": STRING}
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
        Option("cluster_size", SIZE, "Parallels image cluster size"),
    ]
    create_print_order = ("size", "cluster_size")
    create_print_defaults = {"cluster_size": str(DEFAULT_CLUSTER_SIZE)}
    #: QEMU creates the file first: a refused size leaves it empty
    create_failure = "empty"

    # -- create -------------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        # qemu-img's option path rounds both sizes up to whole sectors
        from qimg.units import sector_round

        total = sector_round(size)
        cl = opts.get("cluster_size")
        cl = DEFAULT_CLUSTER_SIZE if cl is None else -(-int(cl) // SECTOR) * SECTOR
        if cl >= INT64_MAX // IMAGE_FACTOR:
            raise QimgError("Cluster size is too large")
        if total >= IMAGE_FACTOR * cl:
            raise QimgError("Image size is too large for this cluster size")
        bat_entries = -(-total // cl)
        # QEMU's 32-bit arithmetic of the BAT's end and the data offset
        bat_end = (HEADER_SIZE + 4 * bat_entries) & 0xFFFFFFFF
        bat_sectors = ((-(-bat_end // cl) * cl) >> 9) & 0xFFFFFFFF
        header = Header.build(dict(
            magic=MAGIC_EXT, version=VERSION, heads=HEADS,
            cylinders=(total // SECTOR // HEADS // SEC_IN_CYL) & 0xFFFFFFFF, tracks=cl >> 9,
            bat_entries=bat_entries, nb_sectors=-(-total // SECTOR), inuse=0, data_off=bat_sectors, flags=0,
            ext_off=0))
        if bat_sectors == 0:
            raise QimgError("Failed to create Parallels image: Invalid argument")
        file = api.open_protocol(filename, create=True, writable=True)
        try:
            file.pwrite(0, header + bytes(SECTOR - HEADER_SIZE))
            file.write_zeroes(SECTOR, (bat_sectors - 1) * SECTOR)
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        v10 = _repairs()
        self._closed = False
        self._check_open = bool(options.get("check") or options.get("_check"))
        if v10:
            self._prealloc_options(options)
        fsize = file.size()
        h = Header.parse(file.pread(0, HEADER_SIZE).ljust(HEADER_SIZE, b"\0"))
        total_sectors = h.nb_sectors
        if h.version != VERSION:
            raise QimgError("Image not in Parallels format")
        if h.magic == MAGIC:
            self.off_multiplier = 1
            total_sectors &= 0xFFFFFFFF
        elif h.magic == MAGIC_EXT:
            self.off_multiplier = h.tracks
        else:
            raise QimgError("Image not in Parallels format")
        self.old_magic = h.magic == MAGIC
        tracks = h.tracks
        if tracks == 0:
            raise QimgError("Invalid image: Zero sectors per track")
        if tracks > INT32_MAX // 513:
            raise QimgError("Invalid image: Too big cluster")
        self.tracks = tracks
        self.cs = tracks * SECTOR
        if v10:
            self.prealloc_size = max(tracks, self._prealloc_bytes >> 9)
        bat_size = h.bat_entries
        if bat_size > INT32_MAX // 4:
            raise QimgError("Catalog too large")
        if v10 and h.ext_off >= INT64_MAX >> 9:
            raise QimgError("Invalid image: Too big offset")
        if bat_size > MAX_BAT_ENTRIES:
            raise QimgError(f"Catalog too large for qimg ({bat_size} entries, at most {MAX_BAT_ENTRIES})")
        self.bat_size = bat_size
        self._size = total_sectors * SECTOR
        # the header and the BAT as QEMU holds them (past the end of the file: zeroes)
        meta_len = HEADER_SIZE + 4 * bat_size
        self.meta = bytearray(meta_len)  # read in place: one buffer, no copies
        file.preadinto(0, memoryview(self.meta))
        self.bat = array("I")
        self.bat.frombytes(memoryview(self.meta)[HEADER_SIZE:])
        if array("I", [1]).tobytes() != b"\1\0\0\0":
            self.bat.byteswap()
        self.header = h
        self.header_unclean = h.inuse == INUSE_MAGIC
        self._dirty_blocks: set[int] = set()
        #: the header's write size (QEMU: its memory alignment, at most the header and BAT)
        self._header_write = min(max(MEM_ALIGN, HEADER_SIZE), meta_len)
        if v10:
            need_check = self.header_unclean
            ok, self.data_start = self._test_data_off(fsize // SECTOR)
            need_check = need_check or not ok
            self.data_end = self.data_start
        else:
            data_end = h.data_off or -(-meta_len // SECTOR) * SECTOR  # QEMU's: bytes taken as sectors
            self.data_end = self._data_end_72(data_end)
            self.data_start = h.data_off or -(-meta_len // SECTOR)
            if self.header_unclean and writable and not self._check_open:
                raise QimgError("parallels: Image was not closed correctly; cannot be opened read/write")
            self._prealloc_options(options)
        self._metadata = MetadataMap([(0, meta_len, "the header and BAT")])
        if h.ext_off:
            self._metadata.add(h.ext_off * SECTOR, self.cs, "the Format Extension")
            if writable:
                api.warn("qimg: warning: Format Extension ignored in RW mode")
            else:
                from .extension import read_format_extension

                read_format_extension(self, h.ext_off * SECTOR)
        if writable:
            self._set_inuse(INUSE_MAGIC)
        self.used: bytearray | None = None
        if v10:
            if bat_size:
                self.data_end = max(self.data_end, nonzero_max(self.bat) * self.off_multiplier + tracks)
            need_check = need_check or self.data_end > fsize // SECTOR
            if not need_check:
                need_check = not self._fill_used(fsize)
            if writable and not self._check_open and need_check:
                from .check import check

                res = check(self, {"errors", "leaks"}, emit=lambda line: api.warn(line))
                if res.check_errors:
                    raise QimgError("Could not repair corrupted image: Input/output error")

    def _prealloc_options(self, options: dict[str, Any]) -> None:
        size = options.get("prealloc-size")
        size = PREALLOC_SIZE if size is None else int(size)
        mode = options.get("prealloc-mode")
        mode = "falloc" if mode is None else mode
        if mode not in ("falloc", "truncate"):
            raise QimgError(f"invalid parameter value: {mode}")
        self.prealloc_mode = mode
        # sectors, at least one cluster (10.0 reads the options before the header)
        self._prealloc_bytes = size
        self.prealloc_size = max(getattr(self, "tracks", 1), size >> 9)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cluster_size(self) -> int | None:
        # QEMU's parallels has no bdrv_get_info: no cluster size for info or convert
        return None

    def _sect(self, idx: int) -> int:
        """BAT entry ``idx`` as a sector offset (QEMU's bat2sect)."""
        return self.bat[idx] * self.off_multiplier

    def _host(self, idx: int) -> int | None:
        """Host byte offset of cluster ``idx``, None when unallocated (QEMU's seek_to_sector)."""
        if idx >= self.bat_size or self.bat[idx] == 0:
            return None
        return self._sect(idx) * SECTOR

    def _test_data_off(self, file_sectors: int) -> tuple[bool, int]:
        """(data_off is sound, the data offset to use): QEMU 10.0's parallels_test_data_off."""
        min_off = -(-(HEADER_SIZE + 4 * self.bat_size) // SECTOR)
        if not self.old_magic:
            min_off = -(-min_off // self.tracks) * self.tracks
        data_off = self.header.data_off
        if data_off == 0 and self.old_magic:
            return True, min_off
        if data_off < min_off or data_off > file_sectors:
            return False, min_off
        return True, data_off

    def _data_end_72(self, data_end: int) -> int:
        """QEMU 7.2's end of the data area (sectors): walking the BAT, an entry at or past the
        end so far moves the end past its cluster (order matters in a hostile BAT). Pieces of
        the BAT wholly below the end are skipped at C speed."""
        bat, mult, tracks = self.bat, self.off_multiplier, self.tracks
        step = 1 << 16
        zeros = array("I", bytes(4)) * step
        for start in range(0, len(bat), step):
            piece = bat[start : start + step]
            if piece == zeros[: len(piece)] or max(piece) * mult < data_end:
                continue  # (an unallocated piece is told by one memcmp, cheaper than max)
            for v in piece:
                if v * mult >= data_end:
                    data_end = v * mult + tracks
        return data_end

    def _cluster_index(self, host: int) -> int:
        """QEMU's host_cluster_index: C's truncating division, as an unsigned 32-bit number."""
        off = host - self.data_start * SECTOR
        q = off // self.cs if off >= 0 else -(-off // self.cs)
        return q & 0xFFFFFFFF

    def _cluster_indexes(self) -> list[int]:
        """QEMU's host_cluster_index of every allocated BAT entry, in BAT order."""
        bat = self.bat
        nz = array("I")
        for i, j in nonzero_spans(bat):
            nz.extend(bat[i:j])
        base, cs = self.data_start * SECTOR, self.cs
        unit = self.off_multiplier * SECTOR
        if unit == cs and base % cs == 0:
            # whole clusters from a cluster-aligned data area: a subtraction
            k = base // cs
            if not nz or min(nz) >= k:
                return [v - k for v in nz]
        return [self._cluster_index(v * unit) for v in nz]

    def _fill_used(self, fsize: int) -> bool:
        """QEMU 10.0's used-cluster bitmap of the data area; False where it found a problem."""
        payload = fsize - self.data_start * SECTOR
        if payload < 0:
            self.used = bytearray()
            return False
        n = -(-payload // self.cs)
        used = self.used = bytearray(n)
        idx = self._cluster_indexes()
        ok = True
        if idx and max(idx) >= n:
            ok = False
            idx = [i for i in idx if i < n]
        if len(set(idx)) != len(idx):
            ok = False
        for i in idx:
            used[i] = 1
        return ok

    def info_extra(self) -> dict[str, Any]:
        return {"dirty-flag": None}  # no bdrv_get_info in QEMU's driver: info shows no dirty flag

    # -- block status -----------------------------------------------------------------------
    def _run(self, idx: int, limit: int) -> int:
        """How many clusters from ``idx`` (at most ``limit``) QEMU's block_status takes as one
        run: unallocated ones, or allocated ones whose host offsets follow each other."""
        bat = self.bat
        first = bat[idx]
        if first == 0:
            return max(1, equal_run(bat, idx, 0, limit))
        step = self.tracks // self.off_multiplier
        # galloping: compare growing pieces of the BAT with the run they would make
        n, k = 1, 1
        while n < limit:
            k = min(k * 2, limit - n)
            start = first + n * step
            if start + k * step > 1 << 32:
                k = max(1, ((1 << 32) - start) // step)
                if start >= 1 << 32:
                    break
            if bat[idx + n : idx + n + k] == array("I", range(start, start + k * step, step)):
                n += k
                continue
            # the run ends inside this piece
            lo, hi = 0, k
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if bat[idx + n : idx + n + mid] == array("I", range(start, start + mid * step, step)):
                    lo = mid
                else:
                    hi = mid - 1
            n += lo
            break
        return n

    def block_status(self, offset: int, length: int) -> Status:
        cs = self.cs
        idx, within = divmod(offset, cs)
        if idx >= self.bat_size:
            return Status(0, length)
        last = (offset + length - 1) // cs
        count = self._run(idx, min(last, self.bat_size - 1) - idx + 1)
        n = min(length, count * cs - within)
        host = self._host(idx)
        if host is None:
            return Status(0, n)
        # QEMU's driver asks no recursion: the file's holes are not looked at
        return Status(DATA | ALLOCATED | OFFSET_VALID, n, host + within, self.file.filename)

    # -- reads ------------------------------------------------------------------------------
    def _pieces(self, offset: int, length: int):
        pos = 0
        while pos < length:
            idx, within = divmod(offset + pos, self.cs)
            k = min(length - pos, self.cs - within)
            yield pos, idx, within, k
            pos += k

    def read(self, offset: int, buf: memoryview) -> None:
        pos, length = 0, len(buf)
        while pos < length:
            st = self.block_status(offset + pos, length - pos)
            view = buf[pos : pos + st.length]
            if st.host_offset is None:
                self.read_backing(offset + pos, view)
            else:
                if not request_ok(st.host_offset, st.length):
                    raise eio()
                got = self.file.preadinto(st.host_offset, view)
                if got < st.length:
                    zero_fill(view[got:])
            pos += st.length

    # -- writes ---------------------------------------------------------------------------
    def write(self, offset: int, data: memoryview) -> None:
        length = len(data)
        pos = 0
        while pos < length:
            idx, within = divmod(offset + pos, self.cs)
            host = self._host(idx)
            if host is None:
                # the unallocated clusters the rest of the request covers, allocated together
                last = (offset + length - 1) // self.cs
                count = 1
                while idx + count <= last and self._host(idx + count) is None:
                    count += 1
                count = self._allocate(idx, count)
                host = self._host(idx)
                k = min(length - pos, count * self.cs - within)
            else:
                k = min(length - pos, self.cs - within)
            self._metadata.guard(host + within, k)
            self.file.pwrite(host + within, data[pos : pos + k])
            pos += k

    def _grow(self, start: int, nbytes: int) -> None:
        """Make room at ``start`` (bytes) as QEMU: truncate, or zero-fill (allocated blocks)."""
        self._metadata.guard(start, nbytes)
        if self.prealloc_mode == "truncate":
            if start + nbytes > self.file.size():
                self.file.truncate(start + nbytes)
        else:
            self.file.write_zeroes(start, nbytes)

    def _allocate(self, idx: int, count: int) -> int:
        """Give clusters ``idx..idx+count-1`` space (QEMU's allocate_clusters); returns how many
        got it (10.0 may find fewer free clusters in a row)."""
        cs = self.cs
        tracks = self.tracks
        # never below the header and the BAT, whatever data_off says
        floor = -(-(HEADER_SIZE + 4 * self.bat_size) // SECTOR)
        if _repairs():
            used = self.used if self.used is not None else bytearray()
            first = used.find(0)
            if first < 0:
                first = len(used)
            if first == len(used):
                nbytes = count * cs + self.prealloc_size * SECTOR
                host = max(self.data_end, floor) * SECTOR
                self._grow(host, nbytes)
                used.extend(bytes(nbytes // cs))
            else:
                nxt = used.find(1, first)
                if nxt < 0:
                    nxt = len(used)
                count = min(count, nxt - first)
                host = self.data_start * SECTOR + first * cs
                if self.prealloc_mode == "falloc" and host < self.data_end * SECTOR:
                    self._metadata.guard(host, cs * count)
                    self.file.write_zeroes(host, cs * count)
            self.used = used
            if self.backing is not None:
                self._copy_backing(idx, count, host)
            ci = self._cluster_index(host)
            for i in range(count):
                if ci + i < len(used):
                    used[ci + i] = 1
            for i in range(count):
                self._set_bat(idx + i, (host // SECTOR) // self.off_multiplier)
                host += cs
            if host > self.data_end * SECTOR:
                self.data_end = host // SECTOR
            return count
        space = count * tracks
        flen = self.file.size() >> 9
        start = max(self.data_end, floor)
        if start + space > flen:
            space += self.prealloc_size
            self._grow(start * SECTOR, space * SECTOR)
        if self.backing is not None:
            self._copy_backing(idx, count, start * SECTOR)
        end = start
        for i in range(count):
            self._set_bat(idx + i, end // self.off_multiplier)
            end += tracks
        self.data_end = end
        return count

    def _copy_backing(self, idx: int, count: int, host: int) -> None:
        """Copy-on-write: the clusters' backing data first (QEMU 10.0 writes it at data_end even
        when it reuses a free cluster elsewhere; qimg writes it where the clusters go)."""
        buf = bytearray(count * self.cs)
        self.read_backing(idx * self.cs, memoryview(buf))
        self._metadata.guard(host, len(buf))
        self.file.pwrite(host, buf)

    def _set_bat(self, idx: int, value: int) -> None:
        value &= 0xFFFFFFFF
        self.bat[idx] = value
        off = HEADER_SIZE + 4 * idx
        struct.pack_into("<I", self.meta, off, value)
        self._dirty_blocks.add(off // BAT_DIRTY_BLOCK)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        # 7.2 has no zero writes: the block layer writes zeroes (allocating); 10.0 discards
        # whole clusters when it can, else the same
        if _repairs():
            self._zero_clusters(offset, length, lambda o, n: super(ParallelsFormat, self).write_zeroes(o, n, unmap))
            return
        super().write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        if _repairs():
            self._zero_clusters(offset, length, None)

    def _zero_clusters(self, offset: int, length: int, fallback) -> None:
        """QEMU 10.0's pdiscard: whole clusters without a backing file are deallocated (the file's
        range punched); anything else is refused (ENOTSUP), and a zero write then writes zeroes."""
        cs = self.cs
        if self.backing is not None or offset % cs or length % cs:
            if fallback is not None:
                fallback(offset, length)
            return
        for idx in range(offset // cs, (offset + length) // cs):
            host = self._host(idx)
            if host is None:
                continue
            self._metadata.guard(host, cs)
            self.file.discard(host, cs)
            self._set_bat(idx, 0)
            if self.used is not None:
                ci = self._cluster_index(host)
                if ci < len(self.used):
                    self.used[ci] = 0

    # -- flush / close ----------------------------------------------------------------------
    def _flush_bat(self) -> None:
        """Write the dirty 16 KiB blocks of the header and BAT (QEMU's flush_to_os)."""
        for block in sorted(self._dirty_blocks):
            off = block * BAT_DIRTY_BLOCK
            piece = bytes(self.meta[off : off + BAT_DIRTY_BLOCK])
            self._metadata.guard(off, len(piece), own=(0, len(self.meta), "the header and BAT"))
            self.file.pwrite(off, piece)
        self._dirty_blocks.clear()

    def _write_meta(self) -> None:
        """The whole header and BAT (QEMU 7.2's check after clearing entries)."""
        self.file.pwrite(0, bytes(self.meta))
        self.file.flush()
        self._dirty_blocks.clear()

    def _set_data_off(self, value: int) -> None:
        """A repaired data offset (10.0's check): written with the header at close."""
        struct.pack_into("<I", self.meta, 48, value)
        self.header.data_off = value
        self.data_start = value

    def _set_inuse(self, value: int) -> None:
        struct.pack_into("<I", self.meta, 44, value)
        self.file.pwrite(0, bytes(self.meta[: self._header_write]))
        self.file.flush()

    def flush(self) -> None:
        if self.writable:
            self._flush_bat()
        self.file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.writable and self.inactive:
                # QEMU 10.0's parallels_close writes nothing on an inactivated node (bitmap and
                # commit inactivate first): the image stays marked in use
                self._flush_bat()
            elif self.writable:
                self._flush_bat()
                self._set_inuse(0)
                # errors are ignored, as QEMU's
                try:
                    self.file.truncate(self.data_end * SECTOR)
                except OSError:
                    pass
        finally:
            self.file.close()

    # -- check ------------------------------------------------------------------------------
    def check(self, fix: set[str]) -> CheckResult:
        from .check import check

        return check(self, fix)
