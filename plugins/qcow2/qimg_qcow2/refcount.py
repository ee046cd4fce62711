"""Refcount table, refcount blocks and the cluster allocator: the driver's ``refcounts``
(QEMU's qcow2-refcount.c, the allocation part).

Refcount blocks are cached as raw big-endian ``bytearray`` (sub-byte widths pack entries LSB
first within each byte, as the spec says); entries are decoded on access.
"""
from __future__ import annotations

import errno
import struct
from array import array

from qimg.errors import CorruptImage, QimgError

from . import structs as S
from .cache import TableCache
from .structs import MAX_FILE_OFFSET, REFT_OFFSET_MASK, chex

#: QEMU's block layer refuses requests past this offset (BDRV_MAX_LENGTH)
BDRV_MAX_LENGTH = ((1 << 63) - 1) & ~((1 << 30) - 1)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from qimg.protocol import Protocol

    from .driver import Qcow2Format


def meta_pwrite(file: "Protocol", offset: int, data: bytes | bytearray | memoryview, what: str) -> None:
    """Write metadata; an offset the file system refuses (a corrupt table offset) fails the
    request with its errno, as in QEMU (``what`` names the structure, for tracing)."""
    try:
        file.pwrite(offset, data)
    except OSError as e:
        if e.errno not in (errno.EFBIG, errno.EINVAL):
            raise
        from .overlap import RequestFailed

        raise RequestFailed(e.errno) from None


def refcount_metadata_clusters(clusters: int, cluster_size: int, refcount_order: int,
                               generous: bool = False) -> tuple[int, int]:
    """(refblocks, reftable clusters) needed to count ``clusters`` plus themselves (fixed point)."""
    per_table_cluster = cluster_size // 8
    per_block = cluster_size * 8 >> refcount_order
    table = blocks = 0
    n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
        if n == last:
            if generous:
                clusters += -(-table // 2)
                generous = False
                n = 0
                continue
            return blocks, table


class Refcounts:
    """The refcount table and blocks of one image, and the allocator built on them.

    ``table``: the refcount table (native ints); ``cache``: the refcount blocks (raw
    ``bytearray``). Geometry: ``order`` (log2 of the entry width in bits), ``bits``, ``max``,
    ``block_bits`` (log2 of the entries per block) and ``block_entries``.
    """

    def __init__(self, drv: "Qcow2Format", table: "array", cache_size: int) -> None:
        self.drv = drv
        self.file = drv.file
        self.cluster_bits = drv.cluster_bits
        self.cluster_size = 1 << drv.cluster_bits
        self.table = table
        self.cache = TableCache(cache_size, self.load_block, self.store_block)
        #: where the search for free clusters starts (QEMU's free_cluster_index)
        self.free_cluster_index = 0
        #: the end of the last compressed cluster packed in a partly used cluster (0: none)
        self.free_byte_offset = 0
        #: set by :meth:`block_for` when it replaced the table: the allocator searches again
        self.moved = False
        self.set_order(drv.header.refcount_order)

    def set_order(self, order: int) -> None:
        """The entry width is ``1 << order`` bits (a new image, or amend's refcount_bits)."""
        self.order = order
        self.bits = 1 << order
        self.max = (1 << self.bits) - 1
        self.block_bits = self.cluster_bits + 3 - order
        self.block_entries = 1 << self.block_bits

    # -- block access ------------------------------------------------------------
    def load_block(self, off: int) -> bytearray:
        if off & (self.cluster_size - 1):
            self.block_unaligned(off)
        if off + self.cluster_size > BDRV_MAX_LENGTH:
            # a corrupt reftable entry: QEMU's block layer refuses requests this far (EIO);
            # nearer offsets past the end of the file read as zeroes, as there
            raise CorruptImage("Input/output error")
        data = bytearray(self.file.pread(off, self.cluster_size))
        if len(data) < self.cluster_size:
            data += bytes(self.cluster_size - len(data))
        return data

    def block_unaligned(self, off: int, ti: int | None = None) -> None:
        """QEMU's corruption report of an unaligned refcount block (fatal when writable)."""
        if ti is None:
            ti = next((i for i, e in enumerate(self.table) if e & REFT_OFFSET_MASK == off), 0)
        self.drv.corrupt(f"Refblock offset {chex(off)} unaligned (reftable index: {chex(ti)})")

    def store_block(self, off: int, blk: bytearray) -> None:
        self.drv.pre_write(1 << 4, off, len(blk))  # overlap.REFCOUNT_BLOCK: its own cluster is fine
        meta_pwrite(self.file, off, blk, "refcount block")

    def entry(self, blk: bytearray, i: int) -> int:
        order = self.order
        if order >= 3:
            w = 1 << (order - 3)
            return int.from_bytes(blk[i * w : i * w + w], "big")
        bits = 1 << order
        per = 8 >> order
        return (blk[i // per] >> ((i % per) * bits)) & ((1 << bits) - 1)

    def set_entry(self, blk: bytearray, i: int, v: int) -> None:
        order = self.order
        if order >= 3:
            w = 1 << (order - 3)
            blk[i * w : i * w + w] = v.to_bytes(w, "big")
            return
        bits = 1 << order
        per = 8 >> order
        sh = (i % per) * bits
        mask = ((1 << bits) - 1) << sh
        blk[i // per] = (blk[i // per] & ~mask) | (v << sh)

    def all_zero_from(self, blk: bytearray, i: int) -> bool:
        """True when entries i.. of a block are all zero (checked in C)."""
        start = (i << self.order) >> 3
        part = self.order < 3 and (i << self.order) & 7
        if part:
            if blk[start] >> part:
                return False
            start += 1
        return blk[start:] == bytes(len(blk) - start)

    # -- refcount table ------------------------------------------------------------
    def write_table_entry(self, ti: int) -> None:
        self.drv.meta_gen += 1
        meta_pwrite(self.file, self.drv.header.refcount_table_offset + ti * 8, struct.pack(">Q", self.table[ti]),
                    "refcount table")

    def get(self, ci: int) -> int:
        ti = ci >> self.block_bits
        if ti >= len(self.table):
            return 0
        off = self.table[ti] & REFT_OFFSET_MASK
        if not off:
            return 0
        return self.entry(self.cache.get(off), ci & (self.block_entries - 1))

    def block_for(self, ci: int) -> tuple[int, bytearray]:
        """The (offset, block) holding cluster ``ci``'s refcount, allocating it if missing.

        A new block goes to the first free cluster (describing itself when it falls in its own
        range); a full reftable is replaced by a bigger one at the end of the covered area, as
        QEMU lays it out. ``self.moved`` tells allocators to search again.
        """
        ti = ci >> self.block_bits
        off = self.table[ti] & REFT_OFFSET_MASK if ti < len(self.table) else 0
        if off:
            if off & (self.cluster_size - 1):
                self.block_unaligned(off, ti)
            return off, self.cache.get(off)
        nb = self.find_free(1)
        if nb == ci:
            nb = self.find_free(1, ci + 1)
        if nb == 0:
            # the header's cluster reads as free: the refcounts are broken (QEMU's words)
            self.drv.corrupt("Preventing invalid allocation of refcount block at offset 0")
        self.free_cluster_index = nb + 1
        noff = nb << self.cluster_bits
        if (nb >> self.block_bits) == ti:
            blk = bytearray(self.cluster_size)
            self.set_entry(blk, nb & (self.block_entries - 1), 1)
        else:
            self.set(nb, self.get(nb) + 1)
            blk = bytearray(self.cluster_size)
        self.cache.put(noff, blk, dirty=True)
        self.cache.flush()
        if ti < len(self.table):
            self.table[ti] = noff
            self.write_table_entry(ti)
            return noff, blk
        self.moved = True
        # the area starts after every block needed so far, the new one (and its cluster) included
        used = -(-max(ci + 1, nb + 1) // self.block_entries)
        self.area((used * self.block_entries) << self.cluster_bits, 0, exact=False, new_index=ti, new_block=noff)
        return noff, self.cache.get(noff)

    def set(self, ci: int, v: int) -> None:
        if v < 0 or v > self.max:
            raise CorruptImage("Invalid argument")  # QEMU: EINVAL
        off, blk = self.block_for(ci)
        self.set_entry(blk, ci & (self.block_entries - 1), v)
        self.cache.mark_dirty(off)
        if v == 0:
            if ci < self.free_cluster_index:
                self.free_cluster_index = ci
            if self.free_byte_offset and (self.free_byte_offset >> self.cluster_bits) == ci:
                # the partly used compressed cluster is gone: never pack into it again
                self.free_byte_offset = 0

    def update(self, offset: int, length: int, delta: int) -> None:
        if length <= 0:
            return
        cb = self.cluster_bits
        first, last = offset >> cb, (offset + length - 1) >> cb
        for ci in range(first, last + 1):
            try:
                # as QEMU, the block is loaded (allocated if missing) and marked dirty before
                # the new value is checked: a refused update still writes the block back
                off, blk = self.block_for(ci)
                self.cache.mark_dirty(off)
                v = self.entry(blk, ci & (self.block_entries - 1)) + delta
                if v < 0 or v > self.max:
                    # QEMU: EINVAL, and the clusters already changed are changed back
                    raise CorruptImage("Invalid argument")
                self.set(ci, v)
            except QimgError:
                if not self.drv.stopped:
                    for cj in range(first, ci):
                        self.set(cj, self.get(cj) - delta)
                raise

    def area(self, start: int, additional: int, exact: bool = True,
                  new_index: int | None = None, new_block: int = 0) -> int:
        """Write a new reftable plus the missing refblocks at ``start`` covering ``additional`` more
        clusters; return the first offset after them (QEMU's layout for falloc/full preallocation)."""
        cb, cs = self.cluster_bits, self.cluster_size
        total_blocks, _ = refcount_metadata_clusters((start >> cb) + additional, cs, self.order,
                                                     generous=not exact)
        if total_blocks * 8 > S.MAX_REFTABLE_SIZE:
            raise QimgError("File too large")
        area_index = (start >> cb) >> self.block_bits
        per = cs // 8
        table_size = total_blocks if exact else total_blocks + -(-total_blocks // 2)
        table_size = -(-table_size // per) * per
        if table_size * 8 > S.MAX_REFTABLE_SIZE:
            raise QimgError("File too large")
        table_clusters = table_size * 8 // cs
        new = array("Q", bytes(8 * table_size))
        for i in range(min(len(self.table), table_size)):
            new[i] = self.table[i]
        if new_block:
            new[new_index] = new_block
        missing = sum(1 for i in range(area_index, total_blocks) if not new[i])
        table_off = start + missing * cs
        end_off = table_off + table_clusters * cs
        block_off = start
        for i in range(area_index, total_blocks):
            if new[i]:
                boff = new[i] & S.REFT_OFFSET_MASK
                blk = self.cache.get(boff)
            else:
                boff = block_off
                blk = bytearray(cs)
                self.cache.put(boff, blk, dirty=True)
                new[i] = boff
                block_off += cs
            first = (i * self.block_entries) << cb
            if first < end_off:
                j = (start - first) >> cb if first < start else 0
                e = min((end_off - first) >> cb, self.block_entries)
                for k in range(j, e):
                    self.set_entry(blk, k, 1)
                self.cache.mark_dirty(boff)
        self.cache.flush()
        self.drv.write_table(table_off, new, None)  # QEMU checks no overlap here
        old_off, old_clusters = self.drv.header.refcount_table_offset, self.drv.header.refcount_table_clusters
        self.drv.file.pwrite(48, struct.pack(">QI", table_off, table_clusters))
        self.drv.header.refcount_table_offset, self.drv.header.refcount_table_clusters = table_off, table_clusters
        self.table = new
        self.free(old_off, old_clusters * cs)
        return end_off

    # -- allocation ----------------------------------------------------------------
    def find_free(self, n: int, start: int | None = None) -> int:
        """First index of ``n`` consecutive clusters with refcount 0, from ``start``."""
        ci = self.free_cluster_index if start is None else start
        ci = max(ci, 0)
        run_start, run = ci, 0
        ent = self.block_entries
        limit = (MAX_FILE_OFFSET >> self.cluster_bits) - n
        while run < n:
            if ci > limit:
                raise QimgError("Image is too big: no room for more clusters (File too large)")
            ti = ci >> self.block_bits
            off = self.table[ti] & REFT_OFFSET_MASK if ti < len(self.table) else 0
            idx = ci & (ent - 1)
            if not off:
                # a whole uncovered block is free
                step = ent - idx
                if run == 0:
                    run_start = ci
                run += step
                ci += step
                continue
            blk = self.cache.get(off)
            if self.all_zero_from(blk, idx):
                if run == 0:
                    run_start = ci
                run += ent - idx
                ci += ent - idx
                continue
            if self.order >= 3:
                # byte-wide refcounts: zero entries found and counted with C searches
                w = 1 << (self.order - 3)
                zero = bytes(w)
                while idx < ent and run < n:
                    if run == 0:
                        p = idx * w
                        while True:
                            q = blk.find(zero, p)
                            if q < 0 or q % w == 0:
                                break
                            p = q + 1
                        nxt = ent if q < 0 else q // w
                        ci += nxt - idx
                        idx = nxt
                        if idx >= ent:
                            break
                        run_start = ci
                    seg = blk[idx * w : min(ent, idx + n - run) * w]
                    z = (len(seg) - len(seg.lstrip(b"\0"))) // w
                    run += z
                    idx += z
                    ci += z
                    if run < n and idx < ent:  # a used cluster ends the run
                        run = 0
                        idx += 1
                        ci += 1
                continue
            while idx < ent and run < n:
                if self.entry(blk, idx) == 0:
                    if run == 0:
                        run_start = ci
                    run += 1
                else:
                    run = 0
                idx += 1
                ci += 1
        return run_start

    def alloc(self, n: int) -> int:
        """Allocate ``n`` contiguous clusters (refcount 1) and return the host offset."""
        while True:
            start = self.find_free(n)
            self.free_cluster_index = start + n
            if self.bulk_claim(start, n):
                return start << self.cluster_bits
            done = start
            retry = False
            for ci in range(start, start + n):
                self.moved = False
                self.block_for(ci)
                if not self.moved:
                    self.set(ci, self.get(ci) + 1)
                    done = ci + 1
                else:
                    # new refcount metadata may sit where we meant to go: undo and search again
                    for cj in range(start, done):
                        self.set(cj, self.get(cj) - 1)
                    retry = True
                    break
            if not retry:
                return start << self.cluster_bits

    def alloc_at(self, offset: int, n: int) -> int:
        """Allocate as many of the ``n`` clusters from ``offset`` as are free in a row (QEMU's
        qcow2_alloc_clusters_at: a write continues its host range where it can); return how
        many (0: the first one is taken)."""
        cb = self.cluster_bits
        first = offset >> cb
        while True:
            k = 0
            while k < n and self.get(first + k) == 0:
                k += 1
            if not k or self.bulk_claim(first, k):
                return k
            done = first
            retry = False
            for ci in range(first, first + k):
                self.moved = False
                self.block_for(ci)
                if not self.moved:
                    self.set(ci, self.get(ci) + 1)
                    done = ci + 1
                else:
                    # new refcount metadata may have landed in the range: undo and count again
                    for cj in range(first, done):
                        self.set(cj, self.get(cj) - 1)
                    retry = True
                    break
            if not retry:
                return k

    def bulk_claim(self, start: int, n: int) -> bool:
        """Set the refcounts of free clusters start..start+n-1 to 1 with one slice assignment
        per refcount block; False (nothing changed) when a block is missing or the width is
        below a byte, and the per-cluster path must run."""
        order = self.order
        if order < 3:
            return False
        w = 1 << (order - 3)
        ent, rb = self.block_entries, self.block_bits
        segs = []
        ci, end = start, start + n
        while ci < end:
            ti = ci >> rb
            off = self.table[ti] & REFT_OFFSET_MASK if ti < len(self.table) else 0
            if not off or off & (self.cluster_size - 1):
                return False
            blk = self.cache.get(off)
            a = ci & (ent - 1)
            b = min(ent, a + end - ci)
            if blk[a * w : b * w] != bytes((b - a) * w):
                return False
            segs.append((off, blk, a, b))
            ci += b - a
        one = (1).to_bytes(w, "big")
        for off, blk, a, b in segs:
            blk[a * w : b * w] = one * (b - a)
            self.cache.mark_dirty(off)
        return True

    def alloc_bytes(self, size: int) -> int:
        """Byte-granular allocation for compressed clusters (packed one after another)."""
        cs = self.cluster_size
        off = self.free_byte_offset
        if off and off % cs:
            in_cluster = cs - off % cs
            nxt = (off // cs) + 1
            fits = size <= in_cluster or (
                self.get(nxt) == 0 and nxt >= self.free_cluster_index)
            if fits and self.get(off // cs) < self.max:
                self.update(off, 1, 1)
                if size > in_cluster:
                    self.set(nxt, 1)
                    if self.free_cluster_index <= nxt:
                        self.free_cluster_index = nxt + 1
                self.free_byte_offset = (off + size) if (off + size) % cs else 0
                return off
        off = self.alloc((size + cs - 1) // cs)
        if off == 0:
            self.drv.corrupt("Preventing invalid allocation of compressed cluster at offset 0")
        self.free_byte_offset = (off + size) if (off + size) % cs else 0
        return off

    def free(self, offset: int, length: int, discard: bool = False) -> bool:
        """Drop a reference to every cluster of the range. As QEMU's qcow2_free_clusters, a
        failure is reported on stderr and otherwise ignored (the clusters leak): False.
        ``discard``: clusters no longer used are discarded in the file (the kinds of frees QEMU
        passes down by default: snapshot data and tables, shrinking, bitmap data)."""
        self.file.debug_event("cluster_free")
        try:
            self.update(offset, length, -1)
        except (QimgError, OSError) as e:
            import sys

            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            sys.stderr.write(f"qcow2_free_clusters failed: {reason}\n")
            return False
        if discard:
            self.discard_unused(offset, length)
        return True

    def discard_unused(self, offset: int, length: int) -> None:
        """Discard (punch) the clusters of a range whose refcount is zero."""
        cb, cs = self.cluster_bits, self.cluster_size
        for ci in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
            if self.get(ci) == 0:
                self.file.discard(ci << cb, cs)

    # -- questions about the whole table -------------------------------------------
    def last_used(self) -> int:
        """Index of the last cluster with a nonzero refcount (-1 if none)."""
        ent = self.block_entries
        for ti in range(len(self.table) - 1, -1, -1):
            off = self.table[ti] & REFT_OFFSET_MASK
            if not off:
                continue
            blk = self.cache.get(off)
            if blk.count(0) == len(blk):
                continue
            for i in range(ent - 1, -1, -1):
                if self.entry(blk, i):
                    return ti * ent + i
        return -1

    def count_used(self, end: int, enough: int) -> int:
        """Clusters below ``end`` with a nonzero refcount, counted block by block in C until
        ``enough`` are found (a block that cannot be read raises)."""
        count = 0
        for ti in range(len(self.table)):
            first = ti * self.block_entries
            if first >= end or count >= enough:
                break
            off = self.table[ti] & REFT_OFFSET_MASK
            if off:
                count += self.count_nonzero(self.cache.get(off), min(self.block_entries, end - first))
        return count

    def count_nonzero(self, blk: bytearray, n: int) -> int:
        """Nonzero refcounts among the first ``n`` entries of a block (counted in C)."""
        order = self.order
        if order >= 3:
            w = 1 << (order - 3)
            a = array({1: "B", 2: "H", 4: "I", 8: "Q"}[w])
            a.frombytes(bytes(blk[: n * w]))
            return n - a.count(0)
        nbits = n << order
        v = int.from_bytes(blk[: -(-nbits // 8)], "little") & ((1 << nbits) - 1)
        if order == 1:
            v = (v | (v >> 1)) & int("01" * (nbits // 2 + 1), 2)
        elif order == 2:
            v = (v | (v >> 1) | (v >> 2) | (v >> 3)) & int("0001" * (nbits // 4 + 1), 2)
        return v.bit_count()
