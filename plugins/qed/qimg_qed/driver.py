"""The QED format (QEMU Enhanced Disk), after docs/interop/qed_spec.txt.

Layout: header cluster(s), an L1 table, then L2 tables and data clusters in any order. An
L2 entry is 0 (unallocated: read the backing file), 1 (zero cluster) or a cluster offset.
Tables are kept as ``array('Q')`` windows: L1 holds only the entries the image size needs,
L2 tables are cached in windows of at most ``L2_WINDOW`` entries, so memory never follows a
hostile table size. Allocating writes store the data first, then the L2 table, then L1;
the NEED_CHECK feature bit brackets them and is cleared on flush/close.
"""
from __future__ import annotations

import os
from array import array
from collections import OrderedDict

from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO, Status
from qimg.driver import CheckResult, Format
from qimg.errors import QimgError
from qimg.image import is_zero, zero_fill
from qimg.limits import check_disk_size, einval, qemu_length
from qimg.options import SIZE, STRING, Option
from qimg.overlap import MetadataMap
from qimg.tables import le64_bytes as _to_le
from qimg.tables import le64_table as _from_le

from .structs import (
    F_BACKING_FILE,
    F_BACKING_FORMAT_NO_PROBE,
    F_NEED_CHECK,
    HEADER_SIZE,
    KNOWN_FEATURES,
    MAGIC,
    Header,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

CLUSTER_MIN, CLUSTER_MAX = 1 << 12, 1 << 26
TABLE_MIN, TABLE_MAX = 1, 16
DEFAULT_CLUSTER, DEFAULT_TABLE = 64 * 1024, 4
#: longest backing name accepted (QEMU's PATH_MAX buffer)
MAX_BACKING_NAME = 4095
#: L2 entries per cached window (512 KiB) and windows kept
L2_WINDOW = 65536
L2_CACHE = 32

UNALLOC, ZEROES, DATA_RUN = 0, 1, 2



def _pow2_in(v: int, lo: int, hi: int) -> bool:
    return lo <= v <= hi and v & (v - 1) == 0


def _max_image_size(cluster_size: int, table_size: int) -> int:
    n = table_size * cluster_size // 8
    # QEMU computes this in 64-bit arithmetic: 4 MiB+ clusters wrap to 0 and refuse every size
    return (n * n * cluster_size) & 0xFFFFFFFFFFFFFFFF


class QedFormat(Format):
    #: a table is allocated after the data of the first write into it: convert splits writes as qemu-img
    layout_follows_requests = True
    #: (truncate_zeroes_backing_area stays False: growing cannot zero the new area, QEMU's
    #: supported_truncate_flags lack BDRV_REQ_ZERO_WRITE, so resize refuses when a backing file
    #: would show through there)
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = frozenset()
    format_name = "qed"
    #: QEMU creates the (empty) file before checking the options: a refused create leaves it
    create_failure = "empty"
    supports_backing = True
    create_opts = [
        Option("backing_file", STRING, "File name of a base image"),
        Option("backing_fmt", STRING, "Image format of the base image"),
        Option("cluster_size", SIZE, "Cluster size (in bytes)", DEFAULT_CLUSTER),
        Option("size", SIZE, "Virtual disk size"),
        Option("table_size", SIZE, "L1/L2 table size (in clusters)"),
    ]

    # -- create -----------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        cs = opts.get("cluster_size")
        cs = DEFAULT_CLUSTER if cs is None else int(cs)
        ts = opts.get("table_size")
        ts = DEFAULT_TABLE if ts is None else int(ts)
        from qimg.units import sector_round

        size = sector_round(size)
        if not _pow2_in(cs, CLUSTER_MIN, CLUSTER_MAX):
            raise QimgError(f"QED cluster size must be within range [{CLUSTER_MIN}, {CLUSTER_MAX}] and power of 2")
        if not _pow2_in(ts, TABLE_MIN, TABLE_MAX):
            raise QimgError(f"QED table size must be within range [{TABLE_MIN}, {TABLE_MAX}] and power of 2")
        limit = _max_image_size(cs, ts)
        if size > limit:
            raise QimgError(
                f"QED image size must be a non-zero multiple of cluster size and less than {limit} bytes")
        backing = opts.get("backing_file") or ""
        bname = os.fsencode(backing)
        if HEADER_SIZE + len(bname) > cs or len(bname) > MAX_BACKING_NAME:
            raise QimgError("Backing file name too long")
        features = 0
        if bname:
            features |= F_BACKING_FILE
            if opts.get("backing_fmt") == "raw":
                features |= F_BACKING_FORMAT_NO_PROBE
        head = Header.build(dict(
            magic=MAGIC, cluster_size=cs, table_size=ts, header_size=1, features=features,
            compat_features=0, autoclear_features=0, l1_table_offset=cs, image_size=size,
            backing_filename_offset=HEADER_SIZE if bname else 0, backing_filename_size=len(bname),
        ))
        file = open_protocol(filename, create=True, writable=True)
        try:
            file.truncate(0)
            file.pwrite(0, head + bname)
            # the L1 table is written (allocated) like qemu-img does; the rest of cluster 0 is a hole
            file.write_zeroes(cs, ts * cs)
            file.truncate((1 + ts) * cs)
        except OSError as e:
            raise QimgError(f"Could not create '{filename}': {os.strerror(e.errno or 5)}") from None
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        # past the end of a short file QEMU's block layer reads zeroes: a truncated header with
        # the magic fails on its fields ("QED cluster size is invalid"), as qemu-img's
        raw = file.pread(0, HEADER_SIZE).ljust(HEADER_SIZE, b"\0")
        if raw[:4] != MAGIC:
            raise QimgError("Image not in QED format")
        h = Header.parse(raw)
        self.h = h
        if h.features & ~KNOWN_FEATURES:
            raise QimgError(f"Unsupported QED features: {h.features & ~KNOWN_FEATURES:x}")
        cs = h.cluster_size
        if not _pow2_in(cs, CLUSTER_MIN, CLUSTER_MAX):
            raise QimgError("QED cluster size is invalid")
        if not _pow2_in(h.table_size, TABLE_MIN, TABLE_MAX):
            raise QimgError("QED table size is invalid")
        self.cs = cs
        self.nelems = h.table_size * cs // 8
        self.table_bytes = h.table_size * cs
        self.data_start = h.header_size * cs
        # as QEMU, the file ends at its last whole cluster: a partial one holds nothing
        self.file_size = qemu_length(file.size()) // cs * cs
        if not self._image_size_ok(h.image_size):
            raise QimgError("QED image size is invalid")
        if not self._table_ok(h.l1_table_offset):
            raise QimgError("QED table offset is invalid")
        if h.header_size > 0xFFFFFFFF // cs:
            raise QimgError("QED header size is too large")
        if h.features & F_BACKING_FILE:
            off, n = h.backing_filename_offset, h.backing_filename_size
            if off + n > self.data_start:
                raise QimgError("QED backing filename offset is invalid")
            if n > MAX_BACKING_NAME:  # QEMU's qed_read_string: no room in its buffer (EINVAL)
                raise QimgError("Failed to read backing filename")
            name = file.pread(off, n).split(b"\0", 1)[0]
            self.backing_filename = os.fsdecode(name) or None
            if self.backing_filename and h.features & F_BACKING_FORMAT_NO_PROBE:
                self.backing_format = "raw"
        self._end = self.file_size
        check_disk_size(h.image_size)
        self._meta: MetadataMap | None = None  # built on the first write
        self._l2cache: OrderedDict[tuple[int, int], array] = OrderedDict()
        self._load_l1()
        self._marked_dirty = False
        self._open_repairs = 0
        if writable:
            changed = False
            if h.autoclear_features:
                h.autoclear_features = 0
                changed = True
            if h.features & F_NEED_CHECK:
                res = self.check({"leaks", "errors"})
                # a check command right after this open reports what was repaired here
                self._open_repairs = res.corruptions_fixed
                if res.corruptions == res.corruptions_fixed and not res.check_errors:
                    h.features &= ~F_NEED_CHECK
                    changed = True
            if changed:
                self._write_header()
                self.file.flush()

    def _image_size_ok(self, size: int) -> bool:
        return size % 512 == 0 and size <= _max_image_size(self.cs, self.h.table_size)

    def _cluster_ok(self, off: int) -> bool:
        return off % self.cs == 0 and self.data_start <= off < self.file_size

    def _table_ok(self, off: int) -> bool:
        # like qemu-img, the last cluster of the table must start past the first (so
        # table_size=1 tables are refused) and lie in the file
        end = off + (self.h.table_size - 1) * self.cs
        return end > off and self._cluster_ok(off) and self._cluster_ok(end)

    def _l1_entries_needed(self, size: int) -> int:
        span = self.nelems * self.cs
        return (size + span - 1) // span

    def _load_l1(self) -> None:
        n = self._l1_entries_needed(self.h.image_size)
        buf = bytearray(8 * n)
        self.file.preadinto(self.h.l1_table_offset, memoryview(buf))
        self.l1 = _from_le(bytes(buf))

    def _write_header(self) -> None:
        self.file.pwrite(0, Header.build(self.h))

    # -- facts ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.h.image_size

    @property
    def cluster_size(self) -> int | None:
        return self.cs

    def info_extra(self) -> dict[str, Any]:
        # qemu-img reports QED images as clean even with NEED_CHECK set
        return {"cluster-size": self.cs, "dirty-flag": False}

    @property
    def needs_check(self) -> bool:
        return bool(self.h.features & F_NEED_CHECK)

    # -- tables -------------------------------------------------------------------------
    def _l2_offset(self, l1i: int) -> int:
        off = self.l1[l1i]
        if off and not self._table_ok(off):
            raise einval()  # QEMU's EINVAL for a table outside the file
        return off

    def _l2_window(self, l2off: int, wi: int) -> array:
        key = (l2off, wi)
        a = self._l2cache.get(key)
        if a is not None:
            self._l2cache.move_to_end(key)
            return a
        n = min(L2_WINDOW, self.nelems - wi * L2_WINDOW)
        buf = bytearray(8 * n)
        self.file.preadinto(l2off + 8 * wi * L2_WINDOW, memoryview(buf))
        a = _from_le(bytes(buf))
        self._l2cache[key] = a
        if len(self._l2cache) > L2_CACHE:
            self._l2cache.popitem(last=False)
        return a

    def _entries(self, l2off: int, i: int, n: int) -> array:
        """L2 entries ``i .. i+n`` of one table (all zero for an unallocated table)."""
        if not l2off:
            return array("Q", [0]) * n
        out = array("Q")
        while n > 0:
            wi, k = divmod(i, L2_WINDOW)
            win = self._l2_window(l2off, wi)
            m = min(n, len(win) - k)
            out.extend(win[k : k + m])
            i += m
            n -= m
        return out

    def _metadata(self) -> MetadataMap:
        """Header clusters, L1 and L2 tables: what a write must not overwrite."""
        if self._meta is None:
            ranges = [(0, self.data_start, "the header"), (self.h.l1_table_offset, self.table_bytes, "L1 table")]
            ranges += [(off, self.table_bytes, "L2 table") for off in set(self.l1) if off]
            self._meta = MetadataMap(ranges)
        return self._meta

    def _store_entries(self, l2off: int, i: int, vals: array) -> None:
        if self.writable:
            self._metadata().guard(l2off + 8 * i, 8 * len(vals), own=(l2off, l2off + self.table_bytes, "L2 table"))
        self.file.pwrite(l2off + 8 * i, _to_le(vals))
        pos = 0
        while pos < len(vals):
            wi, k = divmod(i + pos, L2_WINDOW)
            m = min(len(vals) - pos, L2_WINDOW - k)
            win = self._l2cache.get((l2off, wi))
            if win is not None:
                win[k : k + m] = vals[pos : pos + m]
            pos += m

    def _kind(self, entry: int) -> int:
        if entry == 0:
            return UNALLOC
        if entry == 1:
            return ZEROES
        if not self._cluster_ok(entry):
            raise einval()  # QEMU's EINVAL for an entry outside the file
        return DATA_RUN

    def _run(self, offset: int, length: int) -> tuple[int, int, int]:
        """(kind, host offset, bytes) of the uniform run at ``offset`` (one L2 table at most)."""
        cs = self.cs
        idx = offset // cs
        l1i, l2i = divmod(idx, self.nelems)
        in_table = (self.nelems - l2i) * cs - offset % cs
        length = min(length, in_table)
        l2off = self._l2_offset(l1i)
        if not l2off:
            return UNALLOC, 0, length
        wi, k = divmod(l2i, L2_WINDOW)
        win = self._l2_window(l2off, wi)
        first = win[k]
        kind = self._kind(first)
        need = (offset % cs + length + cs - 1) // cs
        stop = min(len(win), k + need)
        j = k + 1
        if kind == DATA_RUN:
            nxt = first + cs
            while j < stop and win[j] == nxt:
                nxt += cs
                j += 1
        else:
            while j < stop and win[j] == first:
                j += 1
        n = min(length, (j - k) * cs - offset % cs)
        host = first + offset % cs if kind == DATA_RUN else 0
        return kind, host, n

    # -- I/O ------------------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        kind, host, n = self._run(offset, length)
        while n < length:
            try:
                k2, h2, n2 = self._run(offset + n, length - n)
            except QimgError:
                break  # a bad entry further on fails the query that starts there
            if k2 != kind or (kind == DATA_RUN and h2 != host + n):
                break
            n += n2
        if kind == UNALLOC:
            return Status(0, n)
        if kind == ZEROES:
            return Status(ZERO | ALLOCATED, n)
        return Status(DATA | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)

    def read(self, offset: int, buf: memoryview) -> None:
        pos, total = 0, len(buf)
        while pos < total:
            kind, host, n = self._run(offset + pos, total - pos)
            view = buf[pos : pos + n]
            if kind == DATA_RUN:
                got = self.file.preadinto(host, view)
                if got < n:
                    zero_fill(view[got:])
            elif kind == UNALLOC:
                self.read_backing(offset + pos, view)
            else:
                zero_fill(view)
            pos += n

    def _mark_dirty(self) -> None:
        if not self._marked_dirty and not self.h.features & F_NEED_CHECK:
            self.h.features |= F_NEED_CHECK
            self._write_header()
            self.file.flush()
        self._marked_dirty = True

    def _alloc(self, nclusters: int) -> int:
        off = self._end
        self._metadata().guard(off, nclusters * self.cs)
        self._end += nclusters * self.cs
        self.file_size = max(self.file_size, self._end)
        return off

    def write(self, offset: int, data: memoryview) -> None:
        self._write(offset, data, len(data))

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._write(offset, None, length)

    def _write(self, offset: int, data: memoryview | None, length: int) -> None:
        """Write ``data`` (None: ``length`` zero bytes) table by table."""
        total = length
        span = self.nelems * self.cs
        pos = 0
        while pos < total:
            off = offset + pos
            n = min(total - pos, span - off % span)
            self._write_table(off, None if data is None else data[pos : pos + n], n)
            pos += n

    def _write_table(self, offset: int, data: memoryview | None, length: int) -> None:
        """A write within one L2 table: data clusters first, then the table entries."""
        cs = self.cs
        c0 = offset // cs
        c1 = (offset + length + cs - 1) // cs
        l1i, i0 = divmod(c0, self.nelems)
        l2off = self._l2_offset(l1i)
        ents = self._entries(l2off, i0, c1 - c0)
        new = array("Q", ents)
        changed = False
        j = 0
        while j < len(ents):
            kind = self._kind(ents[j])
            k = j + 1
            if kind == DATA_RUN:
                while k < len(ents) and ents[k] == ents[k - 1] + cs and self._kind(ents[k]) == DATA_RUN:
                    k += 1
            else:
                while k < len(ents) and self._kind(ents[k]) != DATA_RUN:
                    k += 1
            g0 = max(offset, (c0 + j) * cs)  # guest range of this segment touched by the write
            g1 = min(offset + length, (c0 + k) * cs)
            piece = None if data is None else data[g0 - offset : g1 - offset]
            if kind == DATA_RUN:
                host = ents[j] + g0 - (c0 + j) * cs
                self._metadata().guard(host, g1 - g0)
                if piece is None:
                    self.file.write_zeroes(host, g1 - g0)
                else:
                    self.file.debug_event("write_aio")  # (QEMU's blkdebug events)
                    self.file.pwrite(host, piece)
                j = k
                continue
            if piece is None:
                changed |= self._zero_segment(j, k, ents, new, c0, g0, g1)
                j = k
                continue
            self._alloc_segment(j, k, ents, new, c0, g0, piece)
            changed = True
            j = k
        if not changed:
            return
        self._mark_dirty()
        if not l2off:
            l2off = self._alloc(self.h.table_size)
            self.file.write_zeroes(l2off, self.table_bytes)
            self._metadata().add(l2off, self.table_bytes, "L2 table")
            self._store_entries(l2off, i0, new)
            self.l1[l1i] = l2off
            l1 = self.h.l1_table_offset
            self._metadata().guard(l1 + 8 * l1i, 8, own=(l1, l1 + self.table_bytes, "L1 table"))
            self.file.pwrite(l1 + 8 * l1i, _to_le(array("Q", [l2off])))
        else:
            self._store_entries(l2off, i0, new)

    def _zero_segment(self, j: int, k: int, ents: array, new: array, c0: int, g0: int, g1: int) -> bool:
        """Zero guest ``g0..g1`` over unallocated/zero clusters: whole clusters become zero
        clusters, partial ones are allocated (with copy-on-write) unless already zero."""
        cs = self.cs
        changed = False
        z0 = (g0 + cs - 1) // cs
        z1 = g1 // cs
        for c in range(z0, z1):
            if new[c - c0] != 1:
                new[c - c0] = 1
                changed = True
        edges = []
        if g0 < z0 * cs:
            edges.append((g0, min(g1, z0 * cs)))
        if g1 > z1 * cs and z1 >= z0:
            edges.append((z1 * cs, g1))
        for e0, e1 in edges:
            c = e0 // cs
            if ents[c - c0] == 1:
                continue  # already reads as zeroes
            self._alloc_segment(c - c0, c - c0 + 1, ents, new, c0, e0, memoryview(bytes(e1 - e0)))
            changed = True
        return changed

    def _alloc_segment(self, j: int, k: int, ents: array, new: array, c0: int, g0: int, piece: memoryview) -> None:
        """Allocate clusters ``c0+j .. c0+k`` and write ``piece`` at guest ``g0`` with COW edges."""
        cs = self.cs
        self._mark_dirty()
        start = (c0 + j) * cs
        end = (c0 + k) * cs
        g1 = g0 + len(piece)
        host = self._alloc(k - j)
        bufs: list = []
        if g0 > start:
            head = bytearray(g0 - start)
            if ents[j] == 0:
                self.read_backing(start, memoryview(head))
            bufs.append(head)
        bufs.append(piece)
        if g1 < end:
            tail = bytearray(end - g1)
            if ents[k - 1] == 0:
                self.read_backing(g1, memoryview(tail))
            bufs.append(tail)
        self.file.debug_event("write_aio")
        pwritev = getattr(self.file, "pwritev", None)
        if pwritev is not None and len(bufs) > 1:
            pwritev(host, bufs)
        else:
            pos = host
            for b in bufs:
                self.file.pwrite(pos, b)
                pos += len(b)
        for c in range(j, k):
            new[c] = host + (c - j) * cs

    def flush(self) -> None:
        self.file.flush()
        if self._marked_dirty:
            self.h.features &= ~F_NEED_CHECK
            self._write_header()
            self.file.flush()
            self._marked_dirty = False

    def close(self) -> None:
        try:
            if self.writable:
                self.flush()
        finally:
            self.file.close()

    # -- metadata ---------------------------------------------------------------------------
    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        if preallocation != "off":
            raise QimgError(f"Unsupported preallocation mode '{preallocation}'")
        if not self._image_size_ok(size):
            raise QimgError("Invalid image size specified")
        if size < self.h.image_size:
            raise QimgError("Shrinking images is currently not supported")
        self.h.image_size = size
        self._write_header()
        self._load_l1()
        self._meta = None

    def change_backing_file(self, filename: str | None, fmt: str | None) -> None:
        h = self.h
        name = os.fsencode(filename or "")
        # as QEMU: unknown compat features may keep data after the header (ENOTSUP), and the
        # header with its name must fit the header clusters (ENOSPC)
        if filename is not None and h.compat_features:
            raise QimgError("Operation not supported")
        if HEADER_SIZE + len(name) > self.data_start:
            raise QimgError("No space left on device")
        if len(name) > MAX_BACKING_NAME:
            raise QimgError("Backing file name too long")
        h.features &= ~(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE)
        # qemu-img keeps the name's offset even when it drops the name
        h.backing_filename_offset, h.backing_filename_size = HEADER_SIZE, 0
        if name:
            h.features |= F_BACKING_FILE
            if fmt == "raw":
                h.features |= F_BACKING_FORMAT_NO_PROBE
            h.backing_filename_offset, h.backing_filename_size = HEADER_SIZE, len(name)
            self.file.pwrite(HEADER_SIZE, name)
        self._write_header()
        self.backing_filename = filename or None
        self.backing_format = "raw" if name and fmt == "raw" else None

    def _all_l1_entries(self):
        """Non-zero ``(index, entry)`` of the whole L1 table (qemu-img checks all of it, not
        only the part the image size uses), read in windows."""
        n = self.nelems
        for w in range(0, n, L2_WINDOW):
            k = min(L2_WINDOW, n - w)
            buf = bytearray(8 * k)
            self.file.preadinto(self.h.l1_table_offset + 8 * w, memoryview(buf))
            if is_zero(buf):
                continue
            for i, e in enumerate(_from_le(bytes(buf))):
                if e:
                    yield w + i, (self.l1[w + i] if w + i < len(self.l1) else e)

    def check(self, fix: set[str]) -> CheckResult:
        """Walk L1/L2: every cluster referenced once, every offset valid.

        Invalid table entries are corruptions (cleared when fixing errors); clusters no
        table refers to are leaks (harmless, QED has no refcounts to repair).
        """
        cs = self.cs
        res = CheckResult(filename=self.filename, format="qed")
        res.total_clusters = (self.h.image_size + cs - 1) // cs
        fix_errors = bool(fix) and self.writable  # QEMU's QED check repairs everything with any -r
        nclusters = self.file_size // cs
        used = bytearray((nclusters + 7) // 8)

        def mark(off: int, count: int) -> bool:
            """Mark clusters used; False if one was already referenced."""
            ok = True
            c = off // cs
            for i in range(c, min(c + count, nclusters)):
                bit = 1 << (i & 7)
                if used[i >> 3] & bit:
                    ok = False
                used[i >> 3] |= bit
            return ok

        for c in range(0, min(self.h.header_size, nclusters)):
            mark(c * cs, 1)
        mark(self.h.l1_table_offset, self.h.table_size)
        allocated = fragmented = 0
        for l1i, l2off in self._all_l1_entries():
            if not self._table_ok(l2off):
                # an invalid offset is cleared when repairing (a shared one cannot be, as in qemu-img)
                res.corruptions += 1
                if fix_errors:
                    if l1i < len(self.l1):
                        self.l1[l1i] = 0
                    self.file.pwrite(self.h.l1_table_offset + 8 * l1i, bytes(8))
                    res.corruptions_fixed += 1
                continue
            if not mark(l2off, self.h.table_size):
                res.corruptions += 1
                continue
            last = 0
            for wi in range((self.nelems + L2_WINDOW - 1) // L2_WINDOW):
                win = self._l2_window(l2off, wi)
                bad: list[int] = []
                for k, e in enumerate(win):
                    if e <= 1:
                        continue
                    # counted before validation, as qemu-img does
                    allocated += 1
                    if last and last + cs != e:
                        fragmented += 1
                    last = e
                    if not self._cluster_ok(e):
                        bad.append(k)
                    elif not mark(e, 1):
                        res.corruptions += 1  # shared: reported, not repairable
                res.corruptions += len(bad)
                if bad and fix_errors:
                    for k in bad:
                        self._store_entries(l2off, wi * L2_WINDOW + k, array("Q", [0]))
                    res.corruptions_fixed += len(bad)
        # clusters after the header that nothing refers to
        data_from = min(self.h.header_size, nclusters)
        for i in range(data_from, nclusters):
            if not used[i >> 3] & (1 << (i & 7)):
                res.leaks += 1
        res.allocated_clusters = allocated
        res.fragmented_clusters = fragmented
        res.compressed_clusters = 0
        if self._open_repairs:
            res.corruptions += self._open_repairs
            res.corruptions_fixed += self._open_repairs
            self._open_repairs = 0
        if fix_errors and res.corruptions_fixed:
            self.file.flush()
        return res
