"""Where guest clusters are: the L2 tables and the lookup through them (the driver's
``clusters``; the lookup half of QEMU's qcow2-cluster.c).

``extent`` answers a whole run of one L2 table at once (standard, zero and compressed clusters,
extended L2 subclusters) and reports bad entries as QEMU does; the write side is allocate.py.
Reads may run in several threads at once: the L2 cache is locked, the rest is read-only.
"""
from __future__ import annotations

from array import array

from qimg.errors import CorruptImage
from qimg.tables import same_run, zero_run

from . import structs as S
from .cache import TableCache

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format

# extent kinds returned by ClusterMap.extent
UNALLOC, ZEROES, NORMAL, COMPRESSED = 0, 1, 2, 3
#: an extended L2 entry's bitmap: every subcluster allocated, every subcluster zero
ALL_ALLOC = 0xFFFFFFFF
ALL_ZERO = 0xFFFFFFFF << 32
#: overlap.py's bit for an active L2 table (its own writes may touch it)
_OL_ACTIVE_L2 = 1 << 2

# runs in L1/L2 tables: whole-range C comparisons (qimg.tables), never entry by entry
_zero_run = zero_run
_same_run = same_run


class ClusterMap:
    """The L2 tables of one image (``cache``, through :meth:`get_l2`) and the guest-to-host
    lookup (:meth:`extent`). The active L1 table is the driver's ``l1``."""

    def __init__(self, drv: "Qcow2Format", cache_size: int) -> None:
        self.drv = drv
        self.cluster_bits = drv.cluster_bits
        self.cluster_size = drv.cluster_size
        self.l2_bits = drv.l2_bits
        self.l2_entries = drv.l2_entries
        self.extended_l2 = drv.extended_l2
        self.subcluster_size = drv.subcluster_size
        # compressed cluster descriptors
        self.csize_shift = drv.csize_shift
        self.csize_mask = drv.csize_mask
        self.coffset_mask = drv.coffset_mask
        # the L2 tables depend on their refcounts: dirty refcount blocks go out first
        self.cache = TableCache(cache_size, self.load, self.store, drv.refcounts.cache.flush)

    def get_l2(self, off: int, l1_index: int | None = None) -> array:
        """The L2 table at ``off``; ``l1_index``: the L1 entry it came from, for QEMU's
        corruption report of an unaligned offset (the image is then marked corrupt)."""
        if off & (self.cluster_size - 1):
            if l1_index is not None:
                self.drv.corrupt(f"L2 table offset {S.chex(off)} unaligned (L1 index: {S.chex(l1_index)})")
            raise CorruptImage(f"L2 table offset {S.chex(off)} unaligned")
        return self.cache.get(off)

    def new_l2(self, off: int, arr: array) -> None:
        self.cache.put(off, arr, dirty=True)

    def load(self, off: int) -> array:
        return self.drv.read_table(off, self.cluster_size // 8)

    def store(self, off: int, arr: array) -> None:
        self.drv.write_table(off, arr, _OL_ACTIVE_L2)

    def compressed_info(self, e: int) -> tuple[int, int]:
        off = e & self.coffset_mask
        nsec = ((e >> self.csize_shift) & self.csize_mask) + 1
        return off, nsec * 512 - (off & 511)

    def compressed_clusters(self, e: int) -> tuple[int, int]:
        off, n = self.compressed_info(e)
        first = off & ~(self.cluster_size - 1)
        last = (off + n - 1) & ~(self.cluster_size - 1)
        return first, (last - first) // self.cluster_size + 1

    def extent(self, offset: int, length: int, merge_compressed: bool = True) -> tuple[int, int, int]:
        """(kind, run length, host offset or L2 entry) for the run at guest ``offset``."""
        cb, cs = self.cluster_bits, self.cluster_size
        gci = offset >> cb
        l1i = gci >> self.l2_bits
        table_end = (l1i + 1) << (self.l2_bits + cb)
        end = min(offset + length, table_end)
        l1 = self.drv.l1
        if l1i >= len(l1):
            return UNALLOC, offset + length - offset, 0
        l2off = l1[l1i] & S.L1E_OFFSET_MASK
        if not l2off:
            # skip all following empty L1 entries at once
            n_l1 = len(l1) - l1i
            z = _zero_run(l1, l1i, n_l1) if l1[l1i] == 0 else 1
            run_end = min(offset + length, (l1i + z) << (self.l2_bits + cb))
            return UNALLOC, run_end - offset, 0
        tbl = self.get_l2(l2off, l1i)
        i = gci & (self.l2_entries - 1)
        n = ((end - 1) >> cb) - gci + 1  # clusters touched
        in_cl = offset & (cs - 1)
        if not self.extended_l2:
            e = tbl[i]
            kind, host = self._classify(e, l2off, i, gci << cb)
            if kind == ZEROES and self.drv.header.version < 3:
                self.drv.corrupt(f"Zero cluster entry found in pre-v3 image (L2 offset: {S.chex(l2off)}, "
                                 f"L2 index: {S.chex(i)})")
            elif kind == COMPRESSED and self.drv.data_file is not None:
                self._compressed_with_data_file(l2off, i)
            if kind == UNALLOC:
                k = max(_zero_run(tbl, i, n), 1) if e == 0 else self._class_run(tbl, i, n, UNALLOC, l2off)
                if k == n and end == table_end and offset + length > end:
                    # the rest of this table is empty: go on over empty L1 entries
                    z = _zero_run(l1, l1i + 1, len(l1) - l1i - 1)
                    return UNALLOC, min(offset + length, (l1i + 1 + z) << (self.l2_bits + cb)) - offset, 0
            elif kind == NORMAL:
                k = _same_run(tbl, e, cs, i, n)
            elif kind == COMPRESSED:
                k = self._class_run(tbl, i, n, COMPRESSED, l2off) if merge_compressed else 1
                host = e
            else:
                k = self._zero_cluster_run(tbl, i, n, host)
            run_end = min(end, (gci + k) << cb)
            if kind == NORMAL or (kind == ZEROES and host):
                host += in_cl
            return kind, run_end - offset, host
        return self._extent_ext(tbl, l2off, i, n, offset, end, merge_compressed)

    def _classify(self, e: int, l2off: int, i: int, guest: int | None = None,
                  validate: bool = True) -> tuple[int, int]:
        """(kind, host) of a standard L2 entry; ``validate``: the cluster is the one a request
        starts in, whose host offset QEMU checks (the following ones are only counted)."""
        if e & S.OFLAG_COMPRESSED:
            return COMPRESSED, e
        host = e & S.L2E_OFFSET_MASK
        if e & S.OFLAG_ZERO and not self.extended_l2:
            if validate and host & (self.cluster_size - 1):
                self._unaligned(host, l2off, i)
            return ZEROES, host
        if host:
            if validate:
                if host & (self.cluster_size - 1):
                    self._unaligned(host, l2off, i)
                if guest is not None and self.drv.data_file is not None and host != guest:
                    self._data_file_mismatch(host, guest, i)
            return NORMAL, host
        if self.drv.data_file is not None and e & S.OFLAG_COPIED:
            return NORMAL, 0
        return UNALLOC, 0

    def _unaligned(self, host: int, l2off: int, i: int) -> None:
        self.drv.corrupt(f"Cluster allocation offset {S.chex(host)} unaligned (L2 offset: {S.chex(l2off)}, "
                      f"L2 index: {S.chex(i)})")

    def _data_file_mismatch(self, host: int, guest: int, i: int) -> None:
        self.drv.corrupt(f"External data file host cluster offset {S.chex(host)} does not match guest cluster "
                      f"offset: {S.chex(guest)}, L2 index: {S.chex(i)})")

    def _compressed_with_data_file(self, l2off: int, i: int) -> None:
        self.drv.corrupt(f"Compressed cluster entry found in image with external data file (L2 offset: "
                      f"{S.chex(l2off)}, L2 index: {S.chex(i)})")

    def _class_run(self, tbl: array, i: int, n: int, kind: int, l2off: int) -> int:
        k = 1
        while k < n:
            if self._classify(tbl[i + k], l2off, i + k, validate=False)[0] != kind:
                break
            k += 1
        return k

    def _zero_cluster_run(self, tbl: array, i: int, n: int, host: int) -> int:
        """Zero clusters from ``tbl[i]`` of one kind, as QEMU counts a run: without a host
        offset (ZERO_PLAIN), or with offsets that follow each other (ZERO_ALLOC), so that
        ``map`` shows each kind as its own extent."""
        cs, k = self.cluster_size, 1
        while k < n:
            e = tbl[i + k]
            if e & S.OFLAG_COMPRESSED or not e & S.OFLAG_ZERO:
                break
            if (e & S.L2E_OFFSET_MASK) != (host + k * cs if host else 0):
                break
            k += 1
        return k

    def at_zero(self, offset: int, host: int) -> bool:
        """Whether ``host`` 0 from :meth:`extent` for the unallocated subclusters at guest
        ``offset`` is a real host offset: guest cluster 0's in an external data file (the
        cluster allocated: COPIED) and not "no cluster" (no L2 table, or an unallocated one)."""
        if host or self.drv.data_file is None:
            return False
        gci = offset >> self.cluster_bits
        l1i = gci >> self.l2_bits
        l2off = self.drv.l1[l1i] & S.L1E_OFFSET_MASK if l1i < len(self.drv.l1) else 0
        if not l2off:
            return False
        e = self.get_l2(l2off, l1i)[2 * (gci & (self.l2_entries - 1))]
        return not e & S.OFLAG_COMPRESSED and bool(e & S.OFLAG_COPIED)

    def ext_invalid(self, e: int, bm: int) -> bool:
        """QEMU's QCOW2_SUBCLUSTER_INVALID: an allocated cluster with subclusters both allocated
        and zero, or an unallocated one with allocated subclusters."""
        if e & S.OFLAG_COMPRESSED:
            return False
        if e & S.L2E_OFFSET_MASK or (self.drv.data_file is not None and e & S.OFLAG_COPIED):
            return bool((bm >> 32) & bm & ALL_ALLOC)
        return bool(bm & ALL_ALLOC)

    def invalid_entry(self, l2off: int, i: int, write: bool = False) -> None:
        # (QEMU's read path words it with two spaces before the parenthesis, its write path one)
        gap = " " if write else "  "
        self.drv.corrupt(f"Invalid cluster entry found{gap}(L2 offset: {S.chex(l2off)}, L2 index: {S.chex(i)})")

    def _extent_ext(self, tbl: array, l2off: int, i: int, n: int, offset: int, end: int,
                    merge_compressed: bool = True) -> tuple[int, int, int]:
        cb, cs, scs = self.cluster_bits, self.cluster_size, self.subcluster_size
        e, bm = tbl[2 * i], tbl[2 * i + 1]
        in_cl = offset & (cs - 1)
        if e & S.OFLAG_COMPRESSED:
            if self.drv.data_file is not None:
                self._compressed_with_data_file(l2off, i)
            # one cluster per run when the caller reads the data (each is decompressed alone)
            k = 1
            while merge_compressed and k < n and tbl[2 * (i + k)] & S.OFLAG_COMPRESSED:
                k += 1
            return COMPRESSED, min(end, ((offset >> cb) + k) << cb) - offset, e
        if self.ext_invalid(e, bm):
            self.invalid_entry(l2off, i)
        host = e & S.L2E_OFFSET_MASK
        alloc_ok = bool(host) or (self.drv.data_file is not None and bool(e & S.OFLAG_COPIED))
        if alloc_ok:
            if host & (cs - 1):
                self._unaligned(host, l2off, i)
            if self.drv.data_file is not None and host != (offset >> cb) << cb:
                self._data_file_mismatch(host, (offset >> cb) << cb, i)
        sc = in_cl // scs

        def sc_kind(bmv: int, j: int) -> int:
            if (bmv >> (32 + j)) & 1:
                return ZEROES
            if (bmv >> j) & 1:
                return NORMAL if alloc_ok else UNALLOC
            return UNALLOC

        kind = sc_kind(bm, sc)
        j = sc + 1
        while j < 32 and sc_kind(bm, j) == kind:
            j += 1
        run_end = min(end, ((offset >> cb) << cb) + j * scs)
        if j == 32 and run_end < end:
            # whole rest of this cluster matches: extend over following identical clusters
            if kind == NORMAL and bm & ALL_ALLOC == ALL_ALLOC and not bm >> 32:
                rest = n - 1
                if rest:
                    ents = tbl[2 * (i + 1) : 2 * (i + n) : 2]
                    bms = tbl[2 * (i + 1) + 1 : 2 * (i + n) + 1 : 2]
                    k = min(_same_run(ents, e + cs, cs), _same_run(bms, bm, 0))
                    run_end = min(end, (((offset >> cb) + 1 + k) << cb))
            elif kind == UNALLOC and e == 0 and bm == 0:
                z = _zero_run(tbl, 2 * i, n, 2)
                zb = _zero_run(tbl, 2 * i + 1, n, 2)
                run_end = min(end, ((offset >> cb) + max(1, min(z, zb))) << cb)
            elif host and n > 1 and (kind == ZEROES and bm >> 32 == ALL_ALLOC and not bm & ALL_ALLOC
                                     or kind == UNALLOC and not bm):
                # preallocated clusters whose subclusters all read as zeroes or are all
                # unallocated (extended L2 preallocation=metadata): contiguous hosts with the
                # same bitmap are one run, as for normal clusters
                ents = tbl[2 * (i + 1) : 2 * (i + n) : 2]
                bms = tbl[2 * (i + 1) + 1 : 2 * (i + n) + 1 : 2]
                k = min(_same_run(ents, e + cs, cs), _same_run(bms, bm, 0))
                run_end = min(end, (((offset >> cb) + 1 + k) << cb))
            elif kind == ZEROES and bm >> 32 == ALL_ALLOC and not host:
                bms = tbl[2 * i + 1 : 2 * (i + n) + 1 : 2]
                ents = tbl[2 * i : 2 * (i + n) : 2]
                k = min(_same_run(bms, bm, 0), _zero_run(ents, 0, len(ents)))
                run_end = min(end, ((offset >> cb) + max(1, k)) << cb)
        if run_end < end and not (run_end & (cs - 1)):
            # QEMU counts on into the next cluster of the request and checks it before anything
            # else: an invalid one fails the request that reaches it
            nxt = i + ((run_end >> cb) - (offset >> cb))
            if self.ext_invalid(tbl[2 * nxt], tbl[2 * nxt + 1]):
                self.invalid_entry(l2off, nxt)
        if kind in (NORMAL, ZEROES):
            hoff = host + in_cl if alloc_ok else 0
        else:
            hoff = host + in_cl if alloc_ok else -1
        return kind, run_end - offset, hoff
