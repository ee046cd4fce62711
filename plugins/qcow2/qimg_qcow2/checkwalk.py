"""The walks of qcow2's check (QEMU's check_refcounts_l1/l2, check_refblocks and
calculate_refcounts): the expected refcount of every host cluster, counted by walking all
metadata (header, active and snapshot L1/L2 tables, snapshot table, refcount table and blocks,
crypto header, bitmap directory and tables), and the stored refcounts read from the file.

The order of the walk, the message lines and the counters follow qemu-img 7.2 so that both print
the same report for the same image. Stored metadata is read straight from the file (after the
driver flushed its caches). The comparison and the repairs are repair.py's; check.py runs it all.
"""
from __future__ import annotations

import errno
import os
import struct
import sys
from array import array

from qimg.compat import program
from qimg.driver import CheckResult
from qimg.errors import QimgError
from qimg.tables import same_run, zero_run

from . import structs as S
from .overlap import ACTIVE_L2, STRUCTURE_NAMES, find_overlap, signal_corruption

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format

class CheckFailed(QimgError):
    """The check stopped (qemu-img: ``Check failed: <reason>``) after printing ``messages``."""

    def __init__(self, reason: str, messages: list[str]) -> None:
        super().__init__(reason)
        self.messages = list(messages)


FIX_LEAKS = "leaks"
FIX_ERRORS = "errors"

CHECK_FRAG_INFO = 2
#: QEMU's block layer refuses requests beyond this offset (EIO)
BDRV_MAX_LENGTH = ((1 << 63) - 1) & ~((1 << 30) - 1)
#: most host clusters a check keeps expected refcounts for in one array (as QEMU does: one
#: refcount-width item per cluster); a larger file's are kept in chunks (SparseTable)
MAX_CHECK_CLUSTERS = 1 << 27
#: most host clusters a check looks at all (a file this large is refused: its per-block
#: comparison alone would take minutes; QEMU's array would need gigabytes)
MAX_SPARSE_CLUSTERS = 1 << 34


class SparseTable:
    """Expected refcounts of a file with more than MAX_CHECK_CLUSTERS clusters, as an array
    would hold them (indexes, slices, ``len``, ``typecode``) but in chunks made when a cluster
    in them is first counted: memory follows the metadata, not the file's size."""

    CHUNK_BITS = 16

    def __init__(self, typecode: str, n: int) -> None:
        self.typecode = typecode
        self.itemsize = array(typecode).itemsize
        self.n = n
        self.chunks: dict[int, array] = {}

    def __len__(self) -> int:
        return self.n

    def grow(self, n: int) -> None:
        self.n = max(self.n, n)

    def _chunk(self, index: int) -> array:
        c = self.chunks.get(index)
        if c is None:
            c = self.chunks[index] = array(self.typecode, bytes(self.itemsize << self.CHUNK_BITS))
        return c

    def __getitem__(self, k):  # noqa: ANN001 - an int or a slice, as array's
        if isinstance(k, slice):
            out = array(self.typecode)
            pos, stop = k.start, min(k.stop, self.n)
            while pos < stop:
                ci, off = pos >> self.CHUNK_BITS, pos & ((1 << self.CHUNK_BITS) - 1)
                m = min(stop - pos, (1 << self.CHUNK_BITS) - off)
                c = self.chunks.get(ci)
                out.extend(c[off:off + m] if c is not None else array(self.typecode, bytes(m * self.itemsize)))
                pos += m
            return out
        c = self.chunks.get(k >> self.CHUNK_BITS)
        return c[k & ((1 << self.CHUNK_BITS) - 1)] if c is not None else 0

    def __setitem__(self, k, v) -> None:  # noqa: ANN001 - an int or a slice, as array's
        if isinstance(k, slice):
            pos, i = k.start, 0
            while i < len(v):
                off = pos & ((1 << self.CHUNK_BITS) - 1)
                m = min(len(v) - i, (1 << self.CHUNK_BITS) - off)
                self._chunk(pos >> self.CHUNK_BITS)[off:off + m] = v[i:i + m]
                pos += m
                i += m
            self.n = max(self.n, pos)
            return
        self._chunk(k >> self.CHUNK_BITS)[k & ((1 << self.CHUNK_BITS) - 1)] = v
        self.n = max(self.n, k + 1)


def new_table(refcount_order: int, n: int) -> "array | SparseTable":
    """Expected refcounts, one item per host cluster, as wide as the image's refcounts."""
    bits = 1 << refcount_order
    code = "B" if bits <= 8 else "H" if bits == 16 else "I" if bits == 32 else "Q"
    if n > MAX_CHECK_CLUSTERS:
        return SparseTable(code, n)
    table = array(code)
    grow_table(table, n)
    return table


def grow_table(table: "array | SparseTable", n: int) -> None:
    if isinstance(table, SparseTable):
        table.grow(n)
    elif n > len(table):
        table.frombytes(bytes((n - len(table)) * table.itemsize))
REFT_RESERVED_MASK = 0x1FF
# extended L2: the two halves of the subcluster bitmap
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZEROES = 0xFFFFFFFF << 32


LITTLE = sys.byteorder == "little"


def be_u64_array(data: bytes) -> array:
    arr = array("Q")
    arr.frombytes(data)
    if arr.itemsize != 8:  # pragma: no cover - exotic platforms
        raise QimgError("array('Q') is not 64-bit on this platform")
    if struct.pack("=H", 1) != struct.pack(">H", 1):
        arr.byteswap()
    return arr


class StoredRefcounts:
    """Read-only view of the refcounts as stored on disk (refcount table + blocks)."""

    def __init__(self, drv: "Qcow2Format") -> None:
        h = drv.header
        self.file = drv.file
        self.cluster_bits = h.cluster_bits
        self.cluster_size = 1 << h.cluster_bits
        self.bits = 1 << h.refcount_order
        self.block_bits = h.cluster_bits + 3 - h.refcount_order  # log2(entries per block)
        nbytes = min(h.refcount_table_clusters * self.cluster_size, S.MAX_REFTABLE_SIZE)
        self.table = be_u64_array(self._read(h.refcount_table_offset, nbytes))
        self.blocks: dict[int, list[int]] = {}
        self.raw: dict[int, bytes] = {}
        self.modified: set[int] = set()  # blocks repaired: never evicted nor read again

    def _read(self, offset: int, n: int) -> bytes:
        data = self.file.pread(offset, n)
        return data + bytes(n - len(data))

    def _decode(self, raw: bytes) -> list[int]:
        bits = self.bits
        if bits == 16:
            return list(struct.unpack(f">{len(raw) // 2}H", raw))
        if bits == 8:
            return list(raw)
        if bits == 32:
            return list(struct.unpack(f">{len(raw) // 4}I", raw))
        if bits == 64:
            return list(struct.unpack(f">{len(raw) // 8}Q", raw))
        # sub-byte widths: entry 0 in the least significant bits of byte 0
        per = 8 // bits
        mask = (1 << bits) - 1
        table = [[(b >> (k * bits)) & mask for k in range(per)] for b in range(256)]
        out: list[int] = []
        for b in raw:
            out.extend(table[b])
        return out

    def raw_block(self, index: int) -> bytes | None:
        """Refcount block ``index`` as stored; None when there is none; raises OSError(EIO) if bad."""
        if index >= len(self.table):
            return None
        offset = self.table[index] & S.REFT_OFFSET_MASK
        if not offset:
            return None
        if offset & (self.cluster_size - 1):
            raise OSError(errno.EIO, "unaligned refcount block")
        got = self.raw.get(index)
        if got is None:
            got = self._read(offset, self.cluster_size)
            if len(self.raw) >= 16:  # bounded: blocks are mostly visited in order
                for old in self.raw:
                    if old not in self.modified:
                        del self.raw[old]
                        break
            self.raw[index] = got
        return got

    def block(self, index: int) -> list[int] | None:
        """Decoded refcount block ``index``; None when there is none; raises OSError(EIO) if bad."""
        got = self.blocks.get(index)
        if got is None:
            raw = self.raw_block(index)
            if raw is None:
                return None
            got = self._decode(raw)
            if len(self.blocks) >= 16:
                for old in self.blocks:
                    if old not in self.modified:
                        del self.blocks[old]
                        break
            self.blocks[index] = got
        return got

    def uniform(self, first: int, k: int, value: int | None) -> int | None:
        """The stored refcount of clusters first..first+k-1 when they all have the same one
        (``value`` if given, else whatever the first has) and lie in one block, else None;
        compared in C. Refcounts narrower than a byte are not looked at (None)."""
        if self.bits < 8 or (first >> self.block_bits) != ((first + k - 1) >> self.block_bits):
            return None
        try:
            raw = self.raw_block(first >> self.block_bits)
        except OSError:
            return None
        w = self.bits >> 3
        at = (first & ((1 << self.block_bits) - 1)) * w
        if raw is None:
            v = 0
        else:
            v = int.from_bytes(raw[at:at + w], "big")
        if value is not None and v != value:
            return None
        if raw is not None and k > 1 and raw[at:at + k * w] != raw[at:at + w] * k:
            return None
        return v

    def get(self, cluster: int) -> int:
        blk = self.block(cluster >> self.block_bits)
        if blk is None:
            return 0
        return blk[cluster & ((1 << self.block_bits) - 1)]

    def set_cached(self, cluster: int, value: int) -> None:
        index = cluster >> self.block_bits
        blk = self.blocks.get(index)
        if blk is not None:
            blk[cluster & ((1 << self.block_bits) - 1)] = value
            # the stored bytes now follow the decoded block (the driver may not have written yet)
            self.raw[index] = encode_refcounts(blk, self.bits)
            self.modified.add(index)


class Checker:
    def __init__(self, drv: "Qcow2Format", fix: set[str]) -> None:
        self.drv = drv
        self.fix = set(fix)
        h = drv.header
        self.h = h
        self.file = drv.file
        self.cluster_bits = h.cluster_bits
        self.cluster_size = 1 << h.cluster_bits
        self.extended_l2 = bool(h.incompatible_features & S.INCOMPAT_EXTL2)
        self.data_file = bool(h.incompatible_features & S.INCOMPAT_DATA_FILE)
        self.l2_entries = self.cluster_size // (16 if self.extended_l2 else 8)
        self.refcount_max = (1 << (1 << h.refcount_order)) - 1
        # compressed descriptor geometry
        self.csize_shift = 62 - (self.cluster_bits - 8)
        self.csize_mask = (1 << (self.cluster_bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1
        self.msgs: list[str] = []
        self.file_len = self.file.size()
        # for the overlap checks of repairs
        self.snapshots: list = []
        self.reftable: array = array("Q")

    # -- helpers --------------------------------------------------------------
    def say(self, line: str) -> None:
        self.msgs.append(line)

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset``; what lies past the end of the file reads as zeroes."""
        if n <= 0:
            return b""
        try:
            data = self.file.pread(offset, n) if offset < self.file_len else b""
        except (OSError, OverflowError):
            data = b""
        return data + bytes(n - len(data))

    def inc(self, res: CheckResult, table: array, offset: int, size: int) -> None:
        """Count one reference to every cluster of [offset, offset+size) (qcow2_inc_refcounts_imrt)."""
        if size <= 0:
            return
        if offset + size - self.file_len >= self.cluster_size:
            self.say("ERROR: counting reference for region exceeding the end of the file by one "
                     f"cluster or more: offset {offset:#x} size {size:#x}")
            res.corruptions += 1
            return
        first = offset >> self.cluster_bits
        last = (offset + size - 1) >> self.cluster_bits
        if last >= len(table):
            grow_table(table, last + 1)
        for k in range(first, last + 1):
            v = table[k]
            if v == self.refcount_max:
                self.say(f"ERROR: overflow cluster offset={k << self.cluster_bits:#x}")
                self.say("Use qemu-img amend to increase the refcount entry width or qemu-img convert "
                         "to create a clean copy if the image cannot be opened for writing")
                res.corruptions += 1
                continue
            table[k] = v + 1

    # -- L1/L2 walk ------------------------------------------------------------------
    def check_l1(self, res: CheckResult, table: array, l1_offset: int, l1_size: int, flags: int,
                 active: bool) -> None:
        if l1_size == 0:
            return
        self.inc(res, table, l1_offset, l1_size * 8)
        if l1_offset > BDRV_MAX_LENGTH or l1_size * 8 > BDRV_MAX_LENGTH - l1_offset:
            # beyond what QEMU's block layer lets anyone read
            self.say("ERROR: I/O error in check_refcounts_l1")
            res.check_errors += 1
            raise CheckFailed("Input/output error", self.msgs)
        # entries past the end of the file read as zero (unallocated): only read what exists
        present = max(0, min(l1_size * 8, (self.file_len - l1_offset + 7) & ~7))
        l1 = be_u64_array(self.read(l1_offset, present))
        for e in l1:
            if not e:
                continue
            if e & S.L1E_RESERVED_MASK:
                self.say(f"ERROR found L1 entry with reserved bits set: {e:x}")
                res.corruptions += 1
            # a nonzero entry is followed even when its offset is 0 (the header cluster), as QEMU does
            l2_offset = e & S.L1E_OFFSET_MASK
            self.inc(res, table, l2_offset, self.cluster_size)
            if l2_offset & (self.cluster_size - 1):
                self.say(f"ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted")
                res.corruptions += 1
            # contiguity is judged within one L2 table (qemu-img counts no break between tables)
            self.check_l2(res, table, l2_offset, flags, active, [0])

    def load_l2(self, l2_offset: int) -> tuple[array, array | None]:
        present = max(0, min(self.cluster_size, (self.file_len - l2_offset + 15) & ~15))
        raw = be_u64_array(self.read(l2_offset, present))
        if self.extended_l2:
            return raw[0::2], raw[1::2]
        return raw, None

    def check_l2(self, res: CheckResult, table: array, l2_offset: int, flags: int, active: bool,
                 frag: list[int]) -> None:
        entries, bitmaps = self.load_l2(l2_offset)
        if self.data_file:
            self._check_entries(res, table, l2_offset, flags, frag, entries, bitmaps, 0, len(entries))
            return
        # standard L2 table: runs of entries e0, e0+cs, e0+2cs... (same flags, contiguous
        # clusters) are counted at once; whatever else the table holds is walked entry by entry
        cs, cb = self.cluster_size, self.cluster_bits
        om = S.L2E_OFFSET_MASK
        odd = S.OFLAG_COMPRESSED | S.L2E_STD_RESERVED_MASK | (om & (cs - 1))
        frag_info = flags & CHECK_FRAG_INFO
        n = len(entries)
        i = 0
        short = 0
        if bitmaps is not None:
            odd |= S.OFLAG_ZERO
        while i < n:
            e = entries[i]
            bm = bitmaps[i] if bitmaps is not None else 0
            if not e and not bm & L2_BITMAP_ALL_ALLOC:
                k = zero_run(entries, i, n - i)
                if bitmaps is not None:  # and no subcluster allocated
                    k = min(k, max(1, zero_run(bitmaps, i, n - i)))
                i += k
                continue
            if not e or e & odd or short > 64 or (bm >> 32) & bm & L2_BITMAP_ALL_ALLOC:
                # rare entries, or a table too fragmented for runs to pay: entry by entry
                k = 1 if short <= 64 else n - i
                self._check_entries(res, table, l2_offset, flags, frag, entries, bitmaps, i, i + k)
                i += k
                continue
            offset = e & om
            if not offset:
                if bitmaps is not None:
                    self._check_entries(res, table, l2_offset, flags, frag, entries, bitmaps, i, i + 1)
                    i += 1
                    continue
                i += same_run(entries, e, 0, i)  # unallocated (or zero) without a cluster: nothing to count
                continue
            k = same_run(entries, e, cs, i)
            if bitmaps is not None:
                k = min(k, same_run(bitmaps, bm, 0, i))
            if k < 8:
                short += 1
            last = offset + (k - 1) * cs
            if frag_info:
                res.allocated_clusters += k
                if frag[0] and offset != frag[0]:
                    res.fragmented_clusters += 1
                frag[0] = last + cs
            if not self._inc_run(table, offset >> cb, k, last):
                for j in range(k):
                    self.inc(res, table, offset + j * cs, cs)
            i += k

    def _inc_run(self, table: array, first: int, k: int, last: int) -> bool:
        """One reference more for each of the k clusters from ``first`` when that cannot
        overflow nor exceed the file (what inc() would report): in C, the clusters' counts
        being all equal. False (nothing done) otherwise."""
        if last + self.cluster_size - self.file_len >= self.cluster_size:
            return False
        end = first + k
        if end > len(table):
            grow_table(table, end)
        v = table[first]
        if v >= self.refcount_max:
            return False
        code = table.typecode
        if k > 1 and table[first:end] != array(code, [v]) * k:
            return False
        table[first:end] = array(code, [v + 1]) * k
        return True

    def _check_entries(self, res: CheckResult, table: array, l2_offset: int, flags: int, frag: list[int],
                       entries: array, bitmaps: array | None, first: int, end: int) -> None:
        """check_l2's exact walk of entries[first:end], one at a time."""
        cs = self.cluster_size
        for i in range(first, end):
            e = entries[i]
            if not e:
                if bitmaps is not None and bitmaps[i] & L2_BITMAP_ALL_ALLOC:
                    self.say("ERROR: Unallocated cluster has non-zero subcluster allocation map")
                    res.corruptions += 1
                continue
            bm = bitmaps[i] if bitmaps is not None else 0
            if e & S.OFLAG_COMPRESSED:
                if e & S.OFLAG_COPIED:
                    self.say(f"ERROR: coffset=0x{e & self.coffset_mask:x}: copied flag must never be set "
                             "for compressed clusters")
                    e &= ~S.OFLAG_COPIED
                    res.corruptions += 1
                if self.data_file:
                    self.say(f"ERROR compressed cluster {i} with data file, entry=0x{e:x}")
                    res.corruptions += 1
                    continue
                if bm:
                    self.say(f"ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, "
                             f"entry=0x{e:x}")
                    res.corruptions += 1
                    continue
                coffset = e & self.coffset_mask
                nsect = ((e >> self.csize_shift) & self.csize_mask) + 1
                csize = nsect * 512 - (coffset & 511)
                self.inc(res, table, coffset, csize)
                if flags & CHECK_FRAG_INFO:
                    res.allocated_clusters += 1
                    res.compressed_clusters += 1
                    res.fragmented_clusters += 1
                continue
            if e & S.L2E_STD_RESERVED_MASK:
                self.say(f"ERROR found l2 entry with reserved bits set: {e:x}")
                res.corruptions += 1
            offset = e & S.L2E_OFFSET_MASK
            if not self.extended_l2 and e & S.OFLAG_ZERO and not offset:
                continue  # plain zero cluster
            if not offset and not (self.data_file and e & S.OFLAG_COPIED):
                if bm & L2_BITMAP_ALL_ALLOC:
                    self.say("ERROR: Unallocated cluster has non-zero subcluster allocation map")
                    res.corruptions += 1
                continue
            # normal or preallocated-zero cluster
            if self.extended_l2 and (bm >> 32) & bm & L2_BITMAP_ALL_ALLOC:
                self.say(f"ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap")
                res.corruptions += 1
            if offset & (cs - 1):
                res.corruptions += 1
                if self.extended_l2:
                    contains_data = bool(bm & L2_BITMAP_ALL_ALLOC)
                else:
                    contains_data = not (e & S.OFLAG_ZERO)
                if not contains_data:
                    repair = FIX_ERRORS in self.fix
                    self.say(f"{'Repairing' if repair else 'ERROR'} offset={offset:x}: Preallocated cluster is "
                             "not properly aligned; L2 entry corrupted.")
                    if repair:
                        if self._repair_prealloc_zero(res, l2_offset, i, e, bm):
                            res.corruptions -= 1
                            res.corruptions_fixed += 1
                            continue
                        res.check_errors += 1
                else:
                    self.say(f"ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted.")
            if flags & CHECK_FRAG_INFO:
                res.allocated_clusters += 1
                if frag[0] and offset != frag[0]:
                    res.fragmented_clusters += 1
                frag[0] = offset + cs
            if not self.data_file:
                self.inc(res, table, offset, cs)

    def overlap(self, offset: int, size: int) -> str | None:
        """The metadata a repair's write of an active L2 table (or entry) at [offset,
        offset+size) would hit under the image's overlap checks (overlap.py), or None."""
        ol = self.drv.overlap
        if ol is None:
            return None
        bit = find_overlap(self.drv, ol.mask & ~ACTIVE_L2, offset, size)
        return STRUCTURE_NAMES[bit.bit_length() - 1] if bit else None

    def signal_overlap(self, name: str) -> None:
        """A repair would overwrite metadata: QEMU marks the image corrupt and refuses (the
        message joins the check's own lines, in order)."""
        signal_corruption(self.drv, f"Preventing invalid write on metadata (overlaps with {name})", say=self.say)

    def _repair_prealloc_zero(self, res: CheckResult, l2_offset: int, index: int, entry: int,
                              bitmap: int) -> bool:
        drv = self.drv
        esize = 16 if self.extended_l2 else 8
        name = self.overlap(l2_offset + index * esize, esize)
        if name is not None:
            self.signal_overlap(name)
            self.say("ERROR: Overlap check failed")
            res.check_errors += 1
            raise CheckFailed("Input/output error", self.msgs)
        try:
            l2 = drv.clusters.get_l2(l2_offset)
            if self.extended_l2:
                # as QEMU: allocated subclusters become zero ones, the others stay as they were
                # (unallocated ones read the backing file)
                l2[2 * index] = 0
                l2[2 * index + 1] = (bitmap | (bitmap << 32)) & L2_BITMAP_ALL_ZEROES
            else:
                l2[index] = S.OFLAG_ZERO
            drv.clusters.cache.mark_dirty(l2_offset)
            drv.flush_caches()
        except (OSError, QimgError) as exc:
            self.say(f"ERROR: Failed to overwrite L2 table entry: {strerror_of(exc)}")
            return False
        return True

    # -- refcount blocks ---------------------------------------------------------------
    def check_refblocks(self, res: CheckResult, table: array, stored: StoredRefcounts) -> bool:
        rebuild = False
        nb = len(table)
        for i, e in enumerate(stored.table):
            offset = e & S.REFT_OFFSET_MASK
            cluster = offset >> self.cluster_bits
            if e & REFT_RESERVED_MASK:
                self.say(f"ERROR refcount table entry {i} has reserved bits set")
                res.corruptions += 1
                rebuild = True
                continue
            if offset & (self.cluster_size - 1):
                self.say(f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted")
                res.corruptions += 1
                rebuild = True
                continue
            if cluster >= nb:
                res.corruptions += 1
                if FIX_ERRORS not in self.fix:
                    self.say(f"ERROR refcount block {i} is outside image")
                    continue
                # grow the file so that the block lies inside it; its refcount is then rebuilt
                self.say(f"Repairing refcount block {i} is outside image")
                old_len = self.file_len
                if offset > (1 << 63) - 1 - self.cluster_size:
                    self.say("ERROR could not resize image: Invalid argument")
                    rebuild = True
                    continue
                try:
                    self.file.truncate(offset + self.cluster_size)
                except (OSError, OverflowError) as exc:
                    if isinstance(exc, OverflowError):
                        exc = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
                    self.say(f"{program()}: Could not resize file: {strerror_of(exc)}")
                    self.say(f"ERROR could not resize image: {strerror_of(exc)}")
                    rebuild = True
                    continue
                limit = MAX_SPARSE_CLUSTERS if isinstance(table, SparseTable) else MAX_CHECK_CLUSTERS
                if (offset + self.cluster_size) >> self.cluster_bits > limit:
                    # the in-memory refcount array would be too big: give up as on ENOMEM
                    self.file.truncate(old_len)
                    res.check_errors += 1
                    raise CheckFailed("Cannot allocate memory", self.msgs)
                self.file_len = self.file.size()
                nb = -(-self.file_len // self.cluster_size)
                if nb > len(table):
                    grow_table(table, nb)
                res.corruptions -= 1
                res.corruptions_fixed += 1
                self.inc(res, table, offset, self.cluster_size)
                continue
            if offset:
                self.inc(res, table, offset, self.cluster_size)
                if table[cluster] != 1:
                    self.say(f"ERROR refcount block {i} refcount={table[cluster]}")
                    res.corruptions += 1
                    rebuild = True
        return rebuild

    # -- the whole walk ---------------------------------------------------------------
    def calculate(self, res: CheckResult, stored: StoredRefcounts, snapshots: list) -> tuple[array, bool]:
        h = self.h
        nb_clusters = -(-self.file_len // self.cluster_size)
        if nb_clusters > MAX_SPARSE_CLUSTERS:
            res.check_errors += 1
            raise CheckFailed("File too large", self.msgs)
        table = new_table(self.h.refcount_order, nb_clusters)
        self.inc(res, table, 0, self.cluster_size)
        self.check_l1(res, table, h.l1_table_offset, h.l1_size, CHECK_FRAG_INFO, True)
        if self.data_file and snapshots:
            self.say(f"ERROR {len(snapshots)} snapshots in image with data file")
            res.corruptions += 1
        for sn in snapshots:
            if sn.l1_table_offset & (self.cluster_size - 1):
                self.say(f"ERROR snapshot {sn.id} ({sn.name}) l1_offset={sn.l1_table_offset:#x}: "
                         "L1 table is not cluster aligned; snapshot table entry corrupted")
                res.corruptions += 1
                continue
            if sn.l1_size > S.MAX_L1_SIZE // 8:
                self.say(f"ERROR snapshot {sn.id} ({sn.name}) l1_size={sn.l1_size:#x}: "
                         "L1 table is too large; snapshot table entry corrupted")
                res.corruptions += 1
                continue
            self.check_l1(res, table, sn.l1_table_offset, sn.l1_size, 0, False)
        if h.nb_snapshots:
            from .snapshot import snapshot_table_size

            self.inc(res, table, h.snapshots_offset, snapshot_table_size(snapshots))
        self.inc(res, table, h.refcount_table_offset, h.refcount_table_clusters * self.cluster_size)
        if h.crypto_header:
            coff, clen = struct.unpack(">QQ", h.crypto_header[:16])
            self.inc(res, table, coff, clen)
        if h.bitmaps_ext is not None:
            from .bitmap import check_bitmap_refcounts

            check_bitmap_refcounts(self, res, table)
        rebuild = self.check_refblocks(res, table, stored)
        return table, rebuild

    # -- OFLAG_COPIED --------------------------------------------------------------------
    # -- rebuild ------------------------------------------------------------------------
def encode_refcounts(vals: list[int], bits: int) -> bytes:
    if bits == 16:
        return struct.pack(f">{len(vals)}H", *vals)
    if bits == 8:
        return bytes(vals)
    if bits == 32:
        return struct.pack(f">{len(vals)}I", *vals)
    if bits == 64:
        return struct.pack(f">{len(vals)}Q", *vals)
    per = 8 // bits
    out = bytearray(len(vals) // per)
    for i in range(0, len(vals), per):
        b = 0
        for k in range(per):
            b |= vals[i + k] << (k * bits)
        out[i // per] = b
    return bytes(out)


def strerror_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc)

