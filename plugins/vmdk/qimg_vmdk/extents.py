"""VMDK extents: flat, zero and hosted sparse (plain or stream-optimized compressed grains).

Each extent answers for guest offsets relative to its own start. Sparse extents keep the
grain directory as an ``array('I')`` (capped by :mod:`qimg.limits`) and grain tables in a
small LRU; compressed grains are inflated with a cap of one grain, one grain cached.
"""
from __future__ import annotations

import zlib
from array import array
from collections import OrderedDict

from qimg import limits
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO
from qimg.errors import CorruptImage, NotSupported, QimgError
from qimg.image import zero_fill
from qimg.tables import le32_bytes as _le32
from qimg.tables import le32_table as _u32

from .structs import (
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_RGD,
    FLAG_ZERO_GRAIN,
    GD_AT_END,
    GRAIN_MARKER_SIZE,
    MAGIC,
    SECTOR,
    Marker,
    SparseHeader,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable  # noqa: F401 - for the string type alias below
    from typing import Any

CowRead = "Callable[[int, memoryview], None]"  # (extent-relative offset, buffer)

UNALLOC, ZEROES, PLAIN, COMPRESSED, PENDING = 0, 1, 2, 3, 4
#: partly written grains of a stream-optimized extent kept in memory until complete
MAX_PENDING = 32
GT_CACHE = 256
#: QEMU's limits: at most 512 entries per grain table, grains of at most 128 MiB
MAX_GTES = 512
MAX_GRAIN_SECTORS = (128 << 20) // SECTOR



class Extent:
    """Base: ``length`` bytes of the guest disk; ``type_name`` as ``info`` shows it."""

    type_name = ""
    cluster_size: int | None = None
    compressed = False
    #: opened read-only although the image is writable (RDONLY/NOACCESS in the descriptor)
    read_only = False

    def __init__(self, file: Any, name: str, length: int) -> None:
        self.file = file
        self.name = name
        self.length = length

    def status(self, off: int, n: int) -> tuple[int, int, int | None]:
        """(flags, length, host offset) of the run at ``off``."""
        raise NotImplementedError

    def read(self, off: int, view: memoryview, cow: CowRead) -> None:
        raise NotImplementedError

    def write(self, off: int, data: memoryview | None, length: int, cow: CowRead) -> None:
        """Write ``data`` (None: ``length`` zero bytes) at extent offset ``off``."""
        raise QimgError("Operation not supported")

    def write_compressed(self, off: int, data: memoryview) -> None:
        raise NotSupported("Compression is not supported for this image format")

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.compressed:
            d["compressed"] = True
        d["virtual-size"] = self.length
        d["filename"] = self.name
        if self.cluster_size:
            d["cluster-size"] = self.cluster_size
        d["format"] = self.type_name
        return d

    def allocated_size(self) -> int:
        if self.file is None:
            return 0
        return self.file.allocated_size() or 0

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()


class UnopenedExtent(Extent):
    """An extent file untrusted mode does not open: reported by ``info``, refused on I/O."""

    def __init__(self, owner: str, name: str, length: int, type_name: str) -> None:
        super().__init__(None, name, length)
        self.owner = owner
        self.type_name = type_name

    def _refuse(self):
        from qimg.untrusted import refuse_named_file

        return refuse_named_file(self.owner, "extent", self.name)

    def status(self, off, n):
        raise self._refuse()

    def read(self, off, view, cow):
        raise self._refuse()

    def write(self, off, data, length, cow):
        raise self._refuse()


class ZeroExtent(Extent):
    type_name = "ZERO"

    def status(self, off, n):
        return ZERO | ALLOCATED, n, None

    def read(self, off, view, cow):
        zero_fill(view)


class FlatExtent(Extent):
    """Guest bytes stored as-is at ``base`` in the extent file (holes read as zeroes)."""

    type_name = "FLAT"

    def __init__(self, file, name, length, base: int) -> None:
        super().__init__(file, name, length)
        self.base = base

    def status(self, off, n):
        for start, k, is_data in self.file.data_extents(self.base + off, n):
            flags = DATA | ALLOCATED | OFFSET_VALID
            if not is_data:
                flags |= ZERO
            return flags, k, start
        return ZERO | ALLOCATED, n, None

    def read(self, off, view, cow):
        got = self.file.preadinto(self.base + off, view)
        if got < len(view):
            zero_fill(view[got:])

    def write(self, off, data, length, cow):
        if data is None:
            self.file.write_zeroes(self.base + off, length)
        else:
            self.file.pwrite(self.base + off, data)


class SparseExtent(Extent):
    """A hosted sparse extent (``KDMV``): grain directory -> grain tables -> grains."""

    type_name = "SPARSE"

    def __init__(self, file, name: str, length: int | None, *, writable: bool) -> None:
        raw = file.pread(0, SECTOR)
        if len(raw) < SECTOR or raw[:4] != MAGIC:
            raise QimgError("Image not in VMDK format")
        h = SparseHeader.parse(raw)
        if h.version > 3:
            raise QimgError(f"Unsupported VMDK version {h.version}", 95)
        self.file_size = file.size()
        self.gd_at_end = h.gd_offset == GD_AT_END
        if self.gd_at_end:
            h = self._footer(file, h)
        self.h = h
        if not 0 < h.num_gtes_per_gt <= MAX_GTES:
            raise CorruptImage("L2 table size too big" if h.num_gtes_per_gt else "Invalid L2 table size")
        if not 0 < h.grain_size <= MAX_GRAIN_SECTORS:
            raise CorruptImage("Invalid granularity, image may be corrupt")
        if h.capacity * SECTOR > limits.MAX_IMAGE_SIZE:
            raise CorruptImage("Invalid capacity, image may be corrupt")
        self.grain = h.grain_size * SECTOR
        self.gtes = h.num_gtes_per_gt
        self.capacity = h.capacity * SECTOR
        super().__init__(file, name, self.capacity if length is None else length)
        self.cluster_size = self.grain
        self.compressed = bool(h.flags & FLAG_COMPRESSED)
        self.markers = bool(h.flags & FLAG_MARKERS)
        self.zero_grain = bool(h.flags & FLAG_ZERO_GRAIN)
        self.writable = writable
        span = self.grain * self.gtes
        n_gd = (self.capacity + span - 1) // span
        nbytes = limits.table_bytes(n_gd, 4, "L1 table")
        self.gd = self._read_dir(h.gd_offset, n_gd, nbytes, "grain directory")
        self.rgd: array | None = None
        if h.flags & FLAG_RGD and h.rgd_offset and h.rgd_offset != GD_AT_END:
            if not self.compressed:
                self.rgd = self._read_dir(h.rgd_offset, n_gd, nbytes, "redundant grain directory")
            elif not self.gd_at_end:
                # QEMU's stream-optimized files keep both directories in the header area and
                # QEMU updates both; a broken redundant one only loses the copy
                try:
                    self.rgd = self._read_dir(h.rgd_offset, n_gd, nbytes, "redundant grain directory")
                except CorruptImage:
                    self.rgd = None
        self.gt_bytes = 4 * self.gtes
        self._gts: OrderedDict[int, array] = OrderedDict()
        self.end = (self.file_size + SECTOR - 1) // SECTOR * SECTOR
        # QEMU allocates a whole grain for each compressed grain it appends (the next one is
        # packed after the compressed bytes): the file ends at least a grain past the last one
        self.min_file_end = 0
        self._grain_cache: tuple[int, bytes] | None = None
        self.dirty = False
        # stream-optimized grains written in part: grain index -> (data, written-bytes mask)
        self.pending: OrderedDict[int, tuple[bytearray, bytearray]] = OrderedDict()

    # -- metadata -------------------------------------------------------------------------
    def _footer(self, file, h):
        """Stream-optimized images may keep the real header in a footer before the EOS marker."""
        if self.file_size < 3 * SECTOR:
            raise CorruptImage("Invalid footer")
        raw = file.pread(self.file_size - 2 * SECTOR, SECTOR)
        mark = Marker.parse(file.pread(self.file_size - 3 * SECTOR, 16))
        if raw[:4] != MAGIC or mark.size != 0 or mark.type != 3:
            raise CorruptImage("Invalid footer")
        f = SparseHeader.parse(raw)
        if f.gd_offset == GD_AT_END or f.version != h.version:
            raise CorruptImage("Invalid footer")
        return f

    def _read_dir(self, sector: int, count: int, nbytes: int, what: str) -> array:
        off = sector * SECTOR
        limits.check_extent(off, nbytes, self.file_size, what)
        return _u32(file_read(self.file, off, nbytes))

    def _gt(self, gti: int) -> array | None:
        a = self._gts.get(gti)
        if a is not None:
            self._gts.move_to_end(gti)
            return a
        sec = self.gd[gti]
        if not sec:
            return None
        off = sec * SECTOR
        if off + self.gt_bytes > self.file_size:
            raise CorruptImage(f"Grain table {gti} at {off:#x} is past the end of the image")
        a = _u32(file_read(self.file, off, self.gt_bytes))
        self._gts[gti] = a
        if len(self._gts) > GT_CACHE:
            self._gts.popitem(last=False)
        return a

    def _kind(self, e: int) -> int:
        if e == 0:
            return UNALLOC
        if e == 1 and self.zero_grain:
            return ZEROES
        # a plain grain past the end of the file reads as zeroes and maps as data (as QEMU)
        if e * SECTOR >= self.file_size and self.compressed:
            raise CorruptImage(f"Grain offset {e * SECTOR:#x} is past the end of the image")
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
            return DATA | ALLOCATED, k, None
        return DATA | ALLOCATED | OFFSET_VALID, k, host

    # -- reads ---------------------------------------------------------------------------------
    def read(self, off, view, cow):
        pos, total = 0, len(view)
        while pos < total:
            kind, host, k = self._run(off + pos, total - pos)
            part = view[pos : pos + k]
            if kind == PLAIN:
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
            else:
                cow(off + pos, part)
            pos += k

    def _read_compressed(self, off: int, view: memoryview) -> None:
        g = self.grain
        pos = 0
        while pos < len(view):
            gi, within = divmod(off + pos, g)
            k = min(len(view) - pos, g - within)
            data = self._grain_data(gi)
            view[pos : pos + k] = data[within : within + k]
            pos += k

    def _grain_data(self, gi: int) -> bytes:
        if self._grain_cache is not None and self._grain_cache[0] == gi:
            return self._grain_cache[1]
        gti, k = divmod(gi, self.gtes)
        gt = self._gt(gti)
        e = gt[k] if gt is not None else 0
        off = e * SECTOR
        g = self.grain
        if self.markers:
            mark = Marker.parse(self.file.pread(off, 16))
            if mark.size == 0 or mark.size > 2 * g + 1024:
                raise CorruptImage(f"Invalid compressed grain at {off:#x}")
            comp = self.file.pread(off + GRAIN_MARKER_SIZE, mark.size)
        else:
            comp = self.file.pread(off, min(2 * g + 1024, max(0, self.file_size - off)))
        try:
            d = zlib.decompressobj()
            out = d.decompress(comp, g)
        except zlib.error:
            raise CorruptImage(f"Could not decompress the grain at {off:#x}") from None
        if len(out) < g:
            out += bytes(g - len(out))
        self._grain_cache = (gi, out)
        return out

    # -- writes ----------------------------------------------------------------------------------
    def _store(self, gti: int, k: int, vals: array) -> None:
        """Grain table entries: the table, then its redundant copy."""
        data = _le32(vals)
        self.file.pwrite(self.gd[gti] * SECTOR + 4 * k, data)
        if self.rgd is not None and self.rgd[gti]:
            roff = self.rgd[gti] * SECTOR
            if roff + self.gt_bytes <= self.file_size:
                self.file.pwrite(roff + 4 * k, data)
        gt = self._gts.get(gti)
        if gt is not None:
            gt[k : k + len(vals)] = vals

    def _alloc(self, nbytes: int) -> int:
        off = self.end
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
                if piece is None:
                    self.file.write_zeroes(host, b - a)
                else:
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
        gt = self._gt(gti)
        if gt is None:
            raise QimgError("Could not write: the grain table is not allocated")
        if gt[k] != 0 or gi in self.pending:
            raise QimgError("Could not write to allocated cluster for streamOptimized")
        self._store(gti, k, array("I", [self._append_compressed(gi, data)]))
        if self.pending:
            self._finalize_pending(gi, gi + 1)

    def check(self) -> tuple[int, list[str]]:
        """Grain offsets past the end of the file are corruptions (as qemu-img check)."""
        errors = 0
        msgs: list[str] = []
        for gti in range(len(self.gd)):
            if not self.gd[gti]:
                continue
            try:
                gt = self._gt(gti)
            except CorruptImage as e:
                errors += 1
                msgs.append(f"ERROR: {e.message}")
                continue
            for k, e in enumerate(gt):
                if e > 1 or (e == 1 and not self.zero_grain):
                    if e * SECTOR >= self.file_size:
                        errors += 1
                        sector = (gti * self.gtes + k) * self.h.grain_size
                        msgs.append(f"ERROR: cluster offset for sector {sector} points after EOF")
        return errors, msgs


def file_read(file: Any, off: int, n: int) -> bytes:
    data = file.pread(off, n)
    if len(data) < n:
        raise CorruptImage(f"Could not read {n} bytes of metadata at {off:#x}")
    return data


def _pwritev(file: Any, off: int, bufs: list) -> None:
    pwritev = getattr(file, "pwritev", None)
    if pwritev is not None and len(bufs) > 1:
        pwritev(off, bufs)
        return
    for b in bufs:
        file.pwrite(off, b)
        off += len(b)
