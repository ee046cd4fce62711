"""Refcount table, refcount blocks and the cluster allocator (mixed into the driver).

Refcount blocks are cached as raw big-endian ``bytearray`` (sub-byte widths pack entries LSB
first within each byte, as the spec says); entries are decoded on access.
"""
from __future__ import annotations

import errno
import struct

from qimg.errors import CorruptImage, QimgError

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


class RefcountMixin:
    # -- block access ------------------------------------------------------------
    def _rb_load(self: "Qcow2Format", off: int) -> bytearray:
        if off & (self.cluster_size - 1):
            self._refblock_unaligned(off)
        if off + self.cluster_size > BDRV_MAX_LENGTH:
            # a corrupt reftable entry: QEMU's block layer refuses requests this far (EIO);
            # nearer offsets past the end of the file read as zeroes, as there
            raise CorruptImage("Input/output error")
        data = bytearray(self.file.pread(off, self.cluster_size))
        if len(data) < self.cluster_size:
            data += bytes(self.cluster_size - len(data))
        return data

    def _refblock_unaligned(self: "Qcow2Format", off: int, ti: int | None = None) -> None:
        """QEMU's corruption report of an unaligned refcount block (fatal when writable)."""
        if ti is None:
            ti = next((i for i, e in enumerate(self.refcount_table) if e & REFT_OFFSET_MASK == off), 0)
        self._corrupt(f"Refblock offset {chex(off)} unaligned (reftable index: {chex(ti)})")

    def _rb_store(self: "Qcow2Format", off: int, blk: bytearray) -> None:
        self.pre_write(1 << 4, off, len(blk))  # overlap.REFCOUNT_BLOCK: its own cluster is fine
        meta_pwrite(self.file, off, blk, "refcount block")

    def _rb_get(self: "Qcow2Format", blk: bytearray, i: int) -> int:
        order = self.refcount_order
        if order >= 3:
            w = 1 << (order - 3)
            return int.from_bytes(blk[i * w : i * w + w], "big")
        bits = 1 << order
        per = 8 >> order
        return (blk[i // per] >> ((i % per) * bits)) & ((1 << bits) - 1)

    def _rb_set(self: "Qcow2Format", blk: bytearray, i: int, v: int) -> None:
        order = self.refcount_order
        if order >= 3:
            w = 1 << (order - 3)
            blk[i * w : i * w + w] = v.to_bytes(w, "big")
            return
        bits = 1 << order
        per = 8 >> order
        sh = (i % per) * bits
        mask = ((1 << bits) - 1) << sh
        blk[i // per] = (blk[i // per] & ~mask) | (v << sh)

    def _rb_all_zero_from(self: "Qcow2Format", blk: bytearray, i: int) -> bool:
        """True when entries i.. of a block are all zero (checked in C)."""
        start = (i << self.refcount_order) >> 3
        part = self.refcount_order < 3 and (i << self.refcount_order) & 7
        if part:
            if blk[start] >> part:
                return False
            start += 1
        return blk[start:] == bytes(len(blk) - start)

    # -- refcount table ------------------------------------------------------------
    def _reftable_entry_write(self: "Qcow2Format", ti: int) -> None:
        self._meta_gen += 1
        if self._reftable_pending:
            return
        meta_pwrite(self.file, self.header.refcount_table_offset + ti * 8, struct.pack(">Q", self.refcount_table[ti]),
                    "refcount table")

    def get_refcount(self: "Qcow2Format", ci: int) -> int:
        ti = ci >> self.rb_bits
        if ti >= len(self.refcount_table):
            return 0
        off = self.refcount_table[ti] & REFT_OFFSET_MASK
        if not off:
            return 0
        return self._rb_get(self.refblock_cache.get(off), ci & (self.refblock_entries - 1))

    def _refblock_for(self: "Qcow2Format", ci: int) -> tuple[int, bytearray]:
        """The (offset, block) holding cluster ``ci``'s refcount, allocating it if missing.

        A new block goes to the first free cluster (describing itself when it falls in its own
        range); a full reftable is replaced by a bigger one at the end of the covered area, as
        QEMU lays it out. ``self._eagain`` tells allocators to search again.
        """
        ti = ci >> self.rb_bits
        off = self.refcount_table[ti] & REFT_OFFSET_MASK if ti < len(self.refcount_table) else 0
        if off:
            if off & (self.cluster_size - 1):
                self._refblock_unaligned(off, ti)
            return off, self.refblock_cache.get(off)
        nb = self._find_free(1)
        if nb == ci:
            nb = self._find_free(1, ci + 1)
        if nb == 0:
            # the header's cluster reads as free: the refcounts are broken (QEMU's words)
            self._corrupt("Preventing invalid allocation of refcount block at offset 0")
        self.free_cluster_index = nb + 1
        noff = nb << self.cluster_bits
        if (nb >> self.rb_bits) == ti:
            blk = bytearray(self.cluster_size)
            self._rb_set(blk, nb & (self.refblock_entries - 1), 1)
        else:
            self._set_refcount(nb, self.get_refcount(nb) + 1)
            blk = bytearray(self.cluster_size)
        self.refblock_cache.put(noff, blk, dirty=True)
        self.refblock_cache.flush()
        if ti < len(self.refcount_table):
            self.refcount_table[ti] = noff
            self._reftable_entry_write(ti)
            return noff, blk
        from .resize import refcount_area

        self._eagain = True
        # the area starts after every block needed so far, the new one (and its cluster) included
        used = -(-max(ci + 1, nb + 1) // self.refblock_entries)
        refcount_area(self, (used * self.refblock_entries) << self.cluster_bits, 0, exact=False,
                      new_index=ti, new_block=noff)
        return noff, self.refblock_cache.get(noff)

    def _set_refcount(self: "Qcow2Format", ci: int, v: int) -> None:
        if v < 0 or v > self.max_refcount:
            raise CorruptImage("Invalid argument")  # QEMU: EINVAL
        off, blk = self._refblock_for(ci)
        self._rb_set(blk, ci & (self.refblock_entries - 1), v)
        self.refblock_cache.mark_dirty(off)
        if v == 0:
            if ci < self.free_cluster_index:
                self.free_cluster_index = ci
            if self.free_byte_offset and (self.free_byte_offset >> self.cluster_bits) == ci:
                # the partly used compressed cluster is gone: never pack into it again
                self.free_byte_offset = 0

    def set_refcount(self: "Qcow2Format", ci: int, v: int) -> None:
        self._set_refcount(ci, v)

    def update_refcount(self: "Qcow2Format", offset: int, length: int, delta: int) -> None:
        if length <= 0:
            return
        cb = self.cluster_bits
        first, last = offset >> cb, (offset + length - 1) >> cb
        for ci in range(first, last + 1):
            try:
                # as QEMU, the block is loaded (allocated if missing) and marked dirty before
                # the new value is checked: a refused update still writes the block back
                off, blk = self._refblock_for(ci)
                self.refblock_cache.mark_dirty(off)
                v = self._rb_get(blk, ci & (self.refblock_entries - 1)) + delta
                if v < 0 or v > self.max_refcount:
                    # QEMU: EINVAL, and the clusters already changed are changed back
                    raise CorruptImage("Invalid argument")
                self._set_refcount(ci, v)
            except QimgError:
                if not self._dead:
                    for cj in range(first, ci):
                        self._set_refcount(cj, self.get_refcount(cj) - delta)
                raise

    # -- allocation ----------------------------------------------------------------
    def _find_free(self: "Qcow2Format", n: int, start: int | None = None) -> int:
        """First index of ``n`` consecutive clusters with refcount 0, from ``start``."""
        ci = self.free_cluster_index if start is None else start
        ci = max(ci, 0)
        run_start, run = ci, 0
        ent = self.refblock_entries
        limit = (MAX_FILE_OFFSET >> self.cluster_bits) - n
        while run < n:
            if ci > limit:
                raise QimgError("Image is too big: no room for more clusters (File too large)")
            ti = ci >> self.rb_bits
            off = self.refcount_table[ti] & REFT_OFFSET_MASK if ti < len(self.refcount_table) else 0
            idx = ci & (ent - 1)
            if not off:
                # a whole uncovered block is free
                step = ent - idx
                if run == 0:
                    run_start = ci
                run += step
                ci += step
                continue
            blk = self.refblock_cache.get(off)
            if self._rb_all_zero_from(blk, idx):
                if run == 0:
                    run_start = ci
                run += ent - idx
                ci += ent - idx
                continue
            if self.refcount_order >= 3:
                # byte-wide refcounts: zero entries found and counted with C searches
                w = 1 << (self.refcount_order - 3)
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
                if self._rb_get(blk, idx) == 0:
                    if run == 0:
                        run_start = ci
                    run += 1
                else:
                    run = 0
                idx += 1
                ci += 1
        return run_start

    def alloc_clusters(self: "Qcow2Format", n: int) -> int:
        """Allocate ``n`` contiguous clusters (refcount 1) and return the host offset."""
        while True:
            start = self._find_free(n)
            self.free_cluster_index = start + n
            if self._bulk_claim(start, n):
                return start << self.cluster_bits
            done = start
            retry = False
            for ci in range(start, start + n):
                self._eagain = False
                self._refblock_for(ci)
                if not self._eagain:
                    self._set_refcount(ci, self.get_refcount(ci) + 1)
                    done = ci + 1
                else:
                    # new refcount metadata may sit where we meant to go: undo and search again
                    for cj in range(start, done):
                        self._set_refcount(cj, self.get_refcount(cj) - 1)
                    retry = True
                    break
            if not retry:
                return start << self.cluster_bits

    def alloc_clusters_at(self: "Qcow2Format", offset: int, n: int) -> int:
        """Allocate as many of the ``n`` clusters from ``offset`` as are free in a row (QEMU's
        qcow2_alloc_clusters_at: a write continues its host range where it can); return how
        many (0: the first one is taken)."""
        cb = self.cluster_bits
        first = offset >> cb
        while True:
            k = 0
            while k < n and self.get_refcount(first + k) == 0:
                k += 1
            if not k or self._bulk_claim(first, k):
                return k
            done = first
            retry = False
            for ci in range(first, first + k):
                self._eagain = False
                self._refblock_for(ci)
                if not self._eagain:
                    self._set_refcount(ci, self.get_refcount(ci) + 1)
                    done = ci + 1
                else:
                    # new refcount metadata may have landed in the range: undo and count again
                    for cj in range(first, done):
                        self._set_refcount(cj, self.get_refcount(cj) - 1)
                    retry = True
                    break
            if not retry:
                return k

    def _bulk_claim(self: "Qcow2Format", start: int, n: int) -> bool:
        """Set the refcounts of free clusters start..start+n-1 to 1 with one slice assignment
        per refcount block; False (nothing changed) when a block is missing or the width is
        below a byte, and the per-cluster path must run."""
        order = self.refcount_order
        if order < 3:
            return False
        w = 1 << (order - 3)
        ent, rb = self.refblock_entries, self.rb_bits
        segs = []
        ci, end = start, start + n
        while ci < end:
            ti = ci >> rb
            off = self.refcount_table[ti] & REFT_OFFSET_MASK if ti < len(self.refcount_table) else 0
            if not off or off & (self.cluster_size - 1):
                return False
            blk = self.refblock_cache.get(off)
            a = ci & (ent - 1)
            b = min(ent, a + end - ci)
            if blk[a * w : b * w] != bytes((b - a) * w):
                return False
            segs.append((off, blk, a, b))
            ci += b - a
        one = (1).to_bytes(w, "big")
        for off, blk, a, b in segs:
            blk[a * w : b * w] = one * (b - a)
            self.refblock_cache.mark_dirty(off)
        return True

    def alloc_bytes(self: "Qcow2Format", size: int) -> int:
        """Byte-granular allocation for compressed clusters (packed one after another)."""
        cs = self.cluster_size
        off = self.free_byte_offset
        if off and off % cs:
            in_cluster = cs - off % cs
            nxt = (off // cs) + 1
            fits = size <= in_cluster or (
                self.get_refcount(nxt) == 0 and nxt >= self.free_cluster_index)
            if fits and self.get_refcount(off // cs) < self.max_refcount:
                self.update_refcount(off, 1, 1)
                if size > in_cluster:
                    self._set_refcount(nxt, 1)
                    if self.free_cluster_index <= nxt:
                        self.free_cluster_index = nxt + 1
                self.free_byte_offset = (off + size) if (off + size) % cs else 0
                return off
        off = self.alloc_clusters((size + cs - 1) // cs)
        if off == 0:
            self._corrupt("Preventing invalid allocation of compressed cluster at offset 0")
        self.free_byte_offset = (off + size) if (off + size) % cs else 0
        return off

    def free_clusters(self: "Qcow2Format", offset: int, length: int, discard: bool = False) -> bool:
        """Drop a reference to every cluster of the range. As QEMU's qcow2_free_clusters, a
        failure is reported on stderr and otherwise ignored (the clusters leak): False.
        ``discard``: clusters no longer used are discarded in the file (the kinds of frees QEMU
        passes down by default: snapshot data and tables, shrinking, bitmap data)."""
        try:
            self.update_refcount(offset, length, -1)
        except (QimgError, OSError) as e:
            import sys

            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            sys.stderr.write(f"qcow2_free_clusters failed: {reason}\n")
            return False
        if discard:
            self.discard_unused(offset, length)
        return True

    def discard_unused(self: "Qcow2Format", offset: int, length: int) -> None:
        """Discard (punch) the clusters of a range whose refcount is zero."""
        cb, cs = self.cluster_bits, self.cluster_size
        for ci in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
            if self.get_refcount(ci) == 0:
                self.file.discard(ci << cb, cs)
