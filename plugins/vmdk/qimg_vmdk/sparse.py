"""VMDK hosted sparse extents (``KDMV``): plain or stream-optimized compressed grains.

Sparse extents keep the grain directory as an ``array('I')`` (capped by :mod:`qimg.limits`)
and grain tables in a small LRU; compressed grains are inflated with a cap of one grain, one
grain cached.
"""
from __future__ import annotations

import errno
import zlib
from array import array
from collections import OrderedDict

from qimg import limits
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO
from qimg.blockstatus import COMPRESSED as STORED_COMPRESSED
from qimg.errors import CorruptImage, QimgError
from qimg.image import zero_fill
from qimg.tables import le32_bytes as _le32
from qimg.tables import le32_table as _u32

from .extents import COMPRESSED, ERROR, PENDING, PLAIN, U64, UNALLOC, ZEROES, CowRead, Extent
from .structs import (
    COMPRESSION_DEFLATE,
    FLAG_MARKERS,
    FLAG_RGD,
    FLAG_ZERO_GRAIN,
    GD_AT_END,
    GRAIN_MARKER_SIZE,
    MAGIC,
    MARKER_EOS,
    MARKER_FOOTER,
    SECTOR,
    Marker,
    SparseHeader,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: partly written grains of a stream-optimized extent kept in memory until complete
MAX_PENDING = 32
GT_CACHE = 256
#: compressed grains up to this size are inflated whole and cached (QEMU's 64 KiB among them)
GRAIN_CACHE_MAX = 16 << 20
MAX_GTES = 512

#: QEMU's limits on a sparse extent: grains of at most 1 GiB (0x200000 sectors), grain
#: directories of at most 32 Mi entries, grain tables of at most 512 entries
MAX_GRAIN_SECTORS = 0x200000
MAX_L1_ENTRIES = 32 * 1024 * 1024
FOOTER = 1536  # footer marker, footer, end-of-stream marker


def _i64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >= 1 << 63 else v


class SparseExtent(Extent):
    """A hosted sparse extent (``KDMV``): grain directory -> grain tables -> grains, opened
    with QEMU's checks (vmdk_open_vmdk4, vmdk_add_extent, vmdk_init_tables) in its order."""

    type_name = "SPARSE"

    def __init__(self, file, name: str, *, writable: bool, image_file_size: int) -> None:
        h = SparseHeader.parse(file.pread(0, SECTOR).ljust(SECTOR, b"\0"))
        self.file_size = limits.qemu_length(file.size())  # as QEMU measures it: whole sectors
        self.gd_at_end = h.gd_offset == GD_AT_END
        if self.gd_at_end:
            h = self._footer(file, image_file_size)
        self.h = h
        compressed = h.compress_algorithm == COMPRESSION_DEFLATE
        if h.version > 3:
            raise QimgError(f"Unsupported VMDK version {h.version}")
        if h.version == 3 and writable and not compressed:
            raise QimgError("VMDK version 3 must be read only")
        if h.num_gtes_per_gt > MAX_GTES:
            raise CorruptImage("L2 table size too big")
        # QEMU keeps these in 32 bits
        l1_entry_sectors = (h.num_gtes_per_gt * h.grain_size) & 0xFFFFFFFF
        if l1_entry_sectors == 0:
            raise CorruptImage("L1 entry size is invalid")
        l1_size = (((h.capacity + l1_entry_sectors - 1) & U64) // l1_entry_sectors) & 0xFFFFFFFF
        rgd_offset = _i64(h.rgd_offset << 9) if h.flags & FLAG_RGD else 0
        nb_sectors = (self.file_size + SECTOR - 1) // SECTOR
        if nb_sectors < h.overhead:
            raise CorruptImage(f"File truncated, expecting at least {_i64(h.overhead * SECTOR)} bytes")
        if h.grain_size > MAX_GRAIN_SECTORS:
            raise CorruptImage("Invalid granularity, image may be corrupt")
        if l1_size > MAX_L1_ENTRIES:
            raise CorruptImage("L1 size too big")
        self.grain = h.grain_size * SECTOR
        self.gtes = h.num_gtes_per_gt
        self.capacity = h.capacity * SECTOR
        super().__init__(file, name, self.capacity)
        self.cluster_size = self.grain
        self.compressed = compressed
        self.markers = bool(h.flags & FLAG_MARKERS)
        self.zero_grain = bool(h.flags & FLAG_ZERO_GRAIN)
        self.writable = writable
        self.l1_size = l1_size
        nbytes = limits.table_bytes(l1_size, 4, "L1 table")
        self.gd_offset = _i64(h.gd_offset << 9)
        self.gd = self._read_dir(self.gd_offset, nbytes, "l1 table")
        self.rgd_offset = rgd_offset
        self.rgd: array | None = None
        if rgd_offset:
            self.rgd = self._read_dir(rgd_offset, nbytes, "l1 backup table")
        self.gt_bytes = 4 * self.gtes
        self._gts: OrderedDict[int, array] = OrderedDict()
        # where QEMU allocates the next grain: the file's end rounded up to a grain (its
        # ROUND_UP is a mask: exact for the powers of two grains are)
        self.end = ((nb_sectors + h.grain_size - 1) & (-h.grain_size & U64)) * SECTOR
        # QEMU allocates a whole grain for each compressed grain it appends (the next one is
        # packed after the compressed bytes): the file ends at least a grain past the last one
        self.min_file_end = 0
        self._grain_cache: tuple[int, bytes] | None = None
        self.dirty = False
        # stream-optimized grains written in part: grain index -> (data, written-bytes mask)
        self.pending: OrderedDict[int, tuple[bytearray, bytearray]] = OrderedDict()

    # -- metadata -------------------------------------------------------------------------
    @staticmethod
    def _footer(file, image_file_size: int):
        """A stream-optimized extent may keep its header in a footer before the end-of-stream
        marker. QEMU looks for it 1536 bytes before the end of the *image* file (the
        descriptor's, for an extent a descriptor names), rounded up to a sector."""
        at = (image_file_size + SECTOR - 1) // SECTOR * SECTOR - FOOTER
        if not limits.request_ok(at, FOOTER):
            raise CorruptImage("Failed to read footer: Input/output error")
        raw = file.pread(at, FOOTER).ljust(FOOTER, b"\0")
        mark = Marker.parse(raw[:16])
        eos = Marker.parse(raw[1024:1040])
        if (raw[512:516] != MAGIC or mark.size != 0 or mark.type != MARKER_FOOTER or eos.val != 0
                or eos.size != 0 or eos.type != MARKER_EOS):
            raise CorruptImage("Invalid footer")
        return SparseHeader.parse(raw[512:1024])

    def _read_dir(self, off: int, nbytes: int, what: str) -> array:
        """A grain directory as QEMU reads it: zeroes past the end of the file."""
        if not limits.request_ok(off, nbytes):
            raise CorruptImage(f"Could not read {what} from extent '{self.name}': Input/output error")
        return _u32(self.file.pread(off, nbytes).ljust(nbytes, b"\0"))

    def metadata_ranges(self) -> list[tuple[int, int, str]]:
        """Header, directories and the grain tables they name: what no grain may overlap."""
        out = [(0, SECTOR, "the VMDK header")]
        if self.gd_at_end:
            out.append((max(0, self.file_size - FOOTER), FOOTER, "the VMDK footer"))
        out.append((self.gd_offset, 4 * self.l1_size, "the grain directory"))
        out += [(sec * SECTOR, self.gt_bytes, "a grain table") for sec in set(self.gd) if sec]
        if self.rgd is not None:
            out.append((self.rgd_offset, 4 * self.l1_size, "the redundant grain directory"))
            out += [(sec * SECTOR, self.gt_bytes, "a redundant grain table") for sec in set(self.rgd) if sec]
        return out

    def _gt(self, gti: int) -> array | None:
        a = self._gts.get(gti)
        if a is not None:
            self._gts.move_to_end(gti)
            return a
        sec = self.gd[gti]
        if not sec:
            return None
        # a table past the end of the file reads as zeroes, as in QEMU
        a = _u32(self.file.pread(sec * SECTOR, self.gt_bytes).ljust(self.gt_bytes, b"\0"))
        self._gts[gti] = a
        if len(self._gts) > GT_CACHE:
            self._gts.popitem(last=False)
        return a

    def _kind(self, e: int) -> int:
        if e == 0:
            return UNALLOC
        if e == 1 and self.zero_grain:
            return ZEROES
        return COMPRESSED if self.compressed else PLAIN

    def _run(self, off: int, n: int) -> tuple[int, int, int]:
        """(kind, host offset, length) of a uniform run within one grain table."""
        if off >= self.capacity:
            return UNALLOC, 0, n
        n = min(n, self.capacity - off)
        g = self.grain
        gi = off // g
        gti, k = divmod(gi, self.gtes)
        n = min(n, (self.gtes - k) * g - off % g)
        if gti >= self.l1_size:
            # past QEMU's (32-bit) directory: an error for block status, unallocated to a read
            return ERROR, 0, n
        gt = self._gt(gti)
        if gt is None:
            return UNALLOC, 0, n
        first = gt[k]
        kind = self._kind(first)
        stop = min(self.gtes, k + (off % g + n + g - 1) // g)
        j = k + 1
        if kind == PLAIN:
            nxt = first + self.h.grain_size
            while j < stop and gt[j] == nxt:
                nxt += self.h.grain_size
                j += 1
        elif kind == COMPRESSED:
            while j < stop and (gt[j] > 1 or (gt[j] == 1 and not self.zero_grain)):
                j += 1
        else:
            while j < stop and gt[j] == first:
                j += 1
        length = min(n, (j - k) * g - off % g)
        host = first * SECTOR + off % g if kind == PLAIN else 0
        if kind == UNALLOC and self.pending:
            if gi in self.pending:
                return PENDING, 0, min(length, g - off % g)
            later = [p for p in self.pending if gi < p and p * g < off + length]
            if later:
                length = min(later) * g - off
        return kind, host, length

    def status(self, off, n):
        kind, host, k = self._run(off, n)
        if kind == ERROR:
            raise limits.eio()
        while k < n:  # coalesce across grain tables
            k2, h2, n2 = self._run(off + k, n - k)
            if k2 != kind or (kind == PLAIN and h2 != host + k):
                break
            k += n2
        if kind == UNALLOC:
            return 0, k, None
        if kind == ZEROES:
            return ZERO | ALLOCATED, k, None
        if kind in (COMPRESSED, PENDING):
            return DATA | ALLOCATED | STORED_COMPRESSED, k, None
        return DATA | ALLOCATED | OFFSET_VALID, k, host

    # -- reads ---------------------------------------------------------------------------------
    def read(self, off, view, cow):
        pos, total = 0, len(view)
        while pos < total:
            kind, host, k = self._run(off + pos, total - pos)
            part = view[pos : pos + k]
            if kind == PLAIN:
                if not limits.request_ok(host, k):
                    raise limits.eio()
                got = self.file.preadinto(host, part)
                if got < k:
                    zero_fill(part[got:])
            elif kind == COMPRESSED:
                self._read_compressed(off + pos, part)
            elif kind == PENDING:
                gi, within = divmod(off + pos, self.grain)
                part[:] = self.pending[gi][0][within : within + k]
            elif kind == ZEROES:
                zero_fill(part)
            else:  # unallocated, or past QEMU's directory (a read treats both alike)
                cow(off + pos, part)
            pos += k

    def _read_compressed(self, off: int, view: memoryview) -> None:
        g = self.grain
        pos = 0
        while pos < len(view):
            gi, within = divmod(off + pos, g)
            k = min(len(view) - pos, g - within)
            if g <= GRAIN_CACHE_MAX:
                data = self._grain_data(gi, 0, g)
                if within + k > len(data):
                    raise limits.einval()  # the grain inflates to less than the read needs
                view[pos : pos + k] = data[within : within + k]
            else:  # a (hostile) huge grain: inflate it again, keeping only the part wanted
                view[pos : pos + k] = self._grain_data(gi, within, within + k)
            pos += k

    def _compressed_input(self, gi: int):
        """The compressed bytes of grain ``gi`` as QEMU takes them: after the grain marker (its
        size field) or a grain's worth at the entry; in pieces, zeroes past the end of the file."""
        gti, k = divmod(gi, self.gtes)
        gt = self._gt(gti)
        off = (gt[k] if gt is not None else 0) * SECTOR
        g = self.grain
        n = g
        if self.markers:
            head = self.file.pread(off, GRAIN_MARKER_SIZE).ljust(GRAIN_MARKER_SIZE, b"\0")
            n = Marker.parse(head + bytes(4)).size
            off += GRAIN_MARKER_SIZE
        if not n or n > 2 * g:
            raise limits.einval()
        avail = max(0, min(n, self.file_size - off))
        pos = 0
        while pos < avail:
            chunk = self.file.pread(off + pos, min(1 << 20, avail - pos))
            if not chunk:
                break
            yield chunk
            pos += len(chunk)
        if pos < n:
            yield bytes(min(n - pos, 1 << 16))  # zeroes after the end of the file end any stream

    def _grain_data(self, gi: int, lo: int, hi: int) -> bytes:
        """QEMU's uncompress() of grain ``gi``: the stream must end within a grain (else EINVAL);
        the bytes ``lo..hi`` of what it inflates to (a whole grain: cached)."""
        whole = lo == 0 and hi == self.grain
        if whole and self._grain_cache is not None and self._grain_cache[0] == gi:
            return self._grain_cache[1]
        g = self.grain
        d = zlib.decompressobj()
        out = bytearray()
        produced = 0
        try:
            for chunk in self._compressed_input(gi):
                data = chunk
                while data and not d.eof:
                    piece = d.decompress(data, min(1 << 20, g + 1 - produced))
                    a, b = max(lo - produced, 0), min(hi - produced, len(piece))
                    if a < b:
                        out += piece[a:b]
                    produced += len(piece)
                    if produced > g:
                        raise limits.einval()  # more than a grain
                    data = d.unconsumed_tail
                if d.eof:
                    break
        except zlib.error:
            raise limits.einval() from None
        if not d.eof:
            raise limits.einval()
        res = bytes(out)
        if whole:
            self._grain_cache = (gi, res)
        elif produced < hi:
            raise limits.einval()
        return res

    # -- writes ----------------------------------------------------------------------------------
    def _store(self, gti: int, k: int, vals: array) -> None:
        """Grain table entries: the table, then its redundant copy."""
        data = _le32(vals)
        off = self.gd[gti] * SECTOR
        self.meta.guard(off + 4 * k, len(data), own=(off, off + self.gt_bytes, "a grain table"))
        roff = self.rgd[gti] * SECTOR if self.rgd is not None and gti < len(self.rgd) else 0
        if roff:
            self.meta.guard(roff + 4 * k, len(data), own=(roff, roff + self.gt_bytes, "a redundant grain table"))
        self.file.pwrite(off + 4 * k, data)
        if roff:
            self.file.pwrite(roff + 4 * k, data)
        gt = self._gts.get(gti)
        if gt is not None:
            gt[k : k + len(vals)] = vals

    def _alloc(self, nbytes: int) -> int:
        off = self.end
        if off // SECTOR >= 1 << 32:  # QEMU's VMDK_EXTENT_MAX_SECTORS
            raise limits.einval()
        self.meta.guard(off, nbytes)
        self.end += (nbytes + SECTOR - 1) // SECTOR * SECTOR
        self.file_size = max(self.file_size, self.end)
        return off

    def write(self, off, data, length, cow):
        if self.gd_at_end:
            raise QimgError("Cannot write to a stream-optimized image with the grain directory at its end")
        total = length
        span = self.grain * self.gtes
        pos = 0
        while pos < total:
            a = off + pos
            k = min(total - pos, span - a % span)  # one grain table at a time
            self._write_gt(a, None if data is None else data[pos : pos + k], k, cow)
            pos += k

    def _write_gt(self, off: int, data: memoryview | None, length: int, cow: CowRead) -> None:
        g = self.grain
        gs = self.h.grain_size
        g0 = off // g
        g1 = (off + length + g - 1) // g
        gti, k0 = divmod(g0, self.gtes)
        if gti >= self.l1_size:
            raise limits.einval()  # past QEMU's directory
        gt = self._gt(gti)
        if gt is None:
            raise QimgError("Could not write: the grain table is not allocated")
        ents = array("I", gt[k0 : k0 + (g1 - g0)])
        new = array("I", ents)
        j = 0
        while j < len(ents):
            kind = self._kind(ents[j])
            m = j + 1
            if kind == PLAIN:
                while m < len(ents) and ents[m] == ents[m - 1] + gs:
                    m += 1
            else:
                while m < len(ents) and self._kind(ents[m]) == kind:
                    m += 1
            a = max(off, (g0 + j) * g)
            b = min(off + length, (g0 + m) * g)
            piece = None if data is None else data[a - off : b - off]
            if self.compressed:
                if kind != UNALLOC:
                    raise QimgError("Could not write to allocated cluster for streamOptimized")
                self._write_compressed_run(g0 + j, g0 + m, a, b, piece, new, j, cow)
            elif kind == PLAIN:
                host = ents[j] * SECTOR + a - (g0 + j) * g
                self.meta.guard(host, b - a)
                if piece is None:
                    self.file.write_zeroes(host, b - a)
                else:
                    self.file.debug_event("write_aio")  # (QEMU's blkdebug events)
                    self.file.pwrite(host, piece)
            else:
                if piece is None:
                    piece = memoryview(bytes(b - a))
                self._alloc_run(g0 + j, g0 + m, a, piece, kind, new, j, cow)
            j = m
        if new != ents:
            self._store(gti, k0, new)
        if self.pending:
            self._finalize_pending(g0, g1)

    def _alloc_run(self, c0: int, c1: int, a: int, piece: memoryview, kind: int, new: array, j: int,
                   cow: CowRead) -> None:
        g = self.grain
        start, end = c0 * g, c1 * g
        b = a + len(piece)
        bufs: list = []
        if a > start:
            head = bytearray(a - start)
            if kind == UNALLOC:
                cow(start, memoryview(head))
            bufs.append(head)
        bufs.append(piece)
        if b < end:
            tail = bytearray(end - b)
            if kind == UNALLOC:
                cow(b, memoryview(tail))
            bufs.append(tail)
        host = self._alloc(end - start)
        self.file.debug_event("write_aio")
        _pwritev(self.file, host, bufs)
        for i in range(c1 - c0):
            new[j + i] = host // SECTOR + i * self.h.grain_size
        self.dirty = True

    def zero_grains(self, off: int, length: int) -> tuple[int, int]:
        """Zeroed-grain GTEs for the grain-aligned middle of a zero write; returns what is left
        as (head length, tail start) for the caller to write as zeroes."""
        g = self.grain
        z0 = (off + g - 1) // g
        z1 = (off + length) // g
        if not self.zero_grain or z0 >= z1:
            return length, off + length
        c = z0
        while c < z1:
            gti, k = divmod(c, self.gtes)
            n = min(z1 - c, self.gtes - k)
            if gti >= self.l1_size:
                raise limits.einval()
            if self._gt(gti) is None:
                raise QimgError("Could not write: the grain table is not allocated")
            self._store(gti, k, array("I", [1]) * n)
            c += n
        self.dirty = True
        return z0 * g - off, z1 * g

    def _write_compressed_run(self, c0: int, c1: int, a: int, b: int, piece: memoryview | None, new: array,
                              j: int, cow: CowRead) -> None:
        """Whole grains are compressed at once; partial ones wait in memory until complete
        (or until the writer moves past them, or flush)."""
        g = self.grain
        for c in range(c0, c1):
            s, e = c * g, min((c + 1) * g, self.capacity)
            lo, hi = max(a, s), min(b, e)
            chunk = bytes(hi - lo) if piece is None else piece[lo - a : hi - a]
            if lo == s and hi == e and c not in self.pending:
                new[j + c - c0] = self._append_compressed(c, chunk)
                continue
            slot = self.pending.get(c)
            if slot is None:
                buf = bytearray(e - s)
                cow(s, memoryview(buf))
                slot = self.pending[c] = (buf, bytearray(e - s))
            buf, mask = slot
            buf[lo - s : hi - s] = chunk
            mask[lo - s : hi - s] = b"\1" * (hi - lo)
            if mask.count(0) == 0:
                del self.pending[c]
                new[j + c - c0] = self._append_compressed(c, buf)

    def _finalize_pending(self, g0: int = 0, g1: int = 0, everything: bool = False) -> None:
        """Write out pending grains before ``g0`` (a sequential writer is past them), the
        oldest ones beyond the cap, or all of them."""
        for c in list(self.pending):
            if g0 <= c < g1 and not everything:
                continue
            if everything or c < g0 or len(self.pending) > MAX_PENDING:
                buf, _ = self.pending.pop(c)
                gti, k = divmod(c, self.gtes)
                self._store(gti, k, array("I", [self._append_compressed(c, buf)]))

    def flush(self) -> None:
        if self.pending:
            self._finalize_pending(everything=True)
        if self.compressed and self.dirty:
            # the file length QEMU leaves: a grain past the last grain's start, or the end of
            # its compressed bytes; the zeroes after the last grain read as end-of-stream
            want = max(self.end, self.min_file_end)
            if self.file.size() < want:
                self.file.truncate(want)
        self.file.flush()

    def _append_compressed(self, gi: int, chunk: bytes | memoryview) -> int:
        g = self.grain
        if len(chunk) < g:
            chunk = bytes(chunk) + bytes(g - len(chunk))
        comp = zlib.compress(chunk)
        if self.markers:
            blob = Marker.build(dict(val=gi * self.h.grain_size, size=len(comp), type=0))[:GRAIN_MARKER_SIZE] + comp
        else:
            blob = comp
        pad = -len(blob) % SECTOR
        host = self._alloc(len(blob))
        self.file.debug_event("write_compressed")
        self.file.pwrite(host, blob + bytes(pad))
        self.min_file_end = max(self.min_file_end, host + g)
        self.dirty = True
        return host // SECTOR

    def write_compressed(self, off, data):
        if self.gd_at_end:
            raise QimgError("Cannot write to a stream-optimized image with the grain directory at its end")
        g = self.grain
        if off % g or (len(data) != g and off + len(data) != self.capacity):
            raise QimgError("Invalid argument: compressed writes take whole grains")
        gi = off // g
        gti, k = divmod(gi, self.gtes)
        if gti >= self.l1_size:
            raise limits.einval()
        gt = self._gt(gti)
        if gt is None:
            raise QimgError("Could not write: the grain table is not allocated")
        if gt[k] != 0 or gi in self.pending:
            raise QimgError("Could not write to allocated cluster for streamOptimized")
        self._store(gti, k, array("I", [self._append_compressed(gi, data)]))
        if self.pending:
            self._finalize_pending(gi, gi + 1)

    def check(self, first_sector: int) -> tuple[str, int] | None:
        """QEMU's vmdk_co_check over this extent, a grain at a time: a grain past the directory
        fails the lookup (EPERM, QEMU's VMDK_ERROR), an allocated grain must start in the file."""
        g = self.h.grain_size
        span = self.gtes * g  # sectors per grain table
        sectors = self.capacity // SECTOR
        # an entry at or past this sector points after the end of the file
        past_eof = -(-self.file_size // SECTOR)
        for gti in range(-(-sectors // span) if span else 0):
            if gti >= self.l1_size:
                return f"ERROR: could not get cluster_offset for sector {first_sector + gti * span}", errno.EPERM
            gt = self._gt(gti)
            if gt is None:
                continue
            used = -(-(sectors - gti * span) // g)  # entries inside the disk
            if 0 < past_eof and max(gt if used >= len(gt) else gt[:used], default=0) < past_eof:
                continue  # (in C) every entry of the table points into the file
            for k, e in enumerate(gt):
                if gti * span + k * g >= sectors:
                    break
                if e and not (e == 1 and self.zero_grain) and e * SECTOR >= self.file_size:
                    return (f"ERROR: cluster offset for sector {first_sector + gti * span + k * g} points after EOF",
                            errno.EINVAL)
        return None


def _pwritev(file: Any, off: int, bufs: list) -> None:
    pwritev = getattr(file, "pwritev", None)
    if pwritev is not None and len(bufs) > 1:
        pwritev(off, bufs)
        return
    for b in bufs:
        file.pwrite(off, b)
        off += len(b)
