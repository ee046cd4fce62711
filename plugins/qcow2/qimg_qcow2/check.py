"""qcow2 consistency check and repair (``qemu-img check [-r leaks|all]``).

The expected refcount of every host cluster is rebuilt by walking all metadata (header, active
and snapshot L1/L2 tables, snapshot table, refcount table and blocks, crypto header, bitmap
directory and tables) and compared with the stored refcounts. The order of the walk, the message
lines and the counters follow qemu-img 7.2 so that both print the same report for the same image.

Stored metadata is read straight from the file (after the driver flushed its caches); repairs are
written through the driver's own APIs (``set_refcount``, ``write_l1``, the L2 cache) so its
in-memory model stays consistent, except the full refcount rebuild, which writes new structures
and then hands them to the driver with :func:`_install_reftable`.
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
#: most host clusters a check keeps expected refcounts for (memory cap against hostile offsets;
#: the array holds one refcount-width item per cluster, as QEMU's does)
MAX_CHECK_CLUSTERS = 1 << 27


def _new_table(refcount_order: int, n: int) -> array:
    """Expected refcounts, one item per host cluster, as wide as the image's refcounts."""
    bits = 1 << refcount_order
    code = "B" if bits <= 8 else "H" if bits == 16 else "I" if bits == 32 else "Q"
    table = array(code)
    _grow(table, n)
    return table


def _grow(table: array, n: int) -> None:
    if n > len(table):
        table.frombytes(bytes((n - len(table)) * table.itemsize))
REFT_RESERVED_MASK = 0x1FF
# extended L2: the two halves of the subcluster bitmap
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZEROES = 0xFFFFFFFF << 32


_LITTLE = sys.byteorder == "little"


def _be_u64_array(data: bytes) -> array:
    arr = array("Q")
    arr.frombytes(data)
    if arr.itemsize != 8:  # pragma: no cover - exotic platforms
        raise QimgError("array('Q') is not 64-bit on this platform")
    if struct.pack("=H", 1) != struct.pack(">H", 1):
        arr.byteswap()
    return arr


class _StoredRefcounts:
    """Read-only view of the refcounts as stored on disk (refcount table + blocks)."""

    def __init__(self, drv: "Qcow2Format") -> None:
        h = drv.header
        self.file = drv.file
        self.cluster_bits = h.cluster_bits
        self.cluster_size = 1 << h.cluster_bits
        self.bits = 1 << h.refcount_order
        self.block_bits = h.cluster_bits + 3 - h.refcount_order  # log2(entries per block)
        nbytes = min(h.refcount_table_clusters * self.cluster_size, S.MAX_REFTABLE_SIZE)
        self.table = _be_u64_array(self._read(h.refcount_table_offset, nbytes))
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
            self.raw[index] = _encode_refcounts(blk, self.bits)
            self.modified.add(index)


class _Checker:
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
            _grow(table, last + 1)
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
        l1 = _be_u64_array(self.read(l1_offset, present))
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

    def _load_l2(self, l2_offset: int) -> tuple[array, array | None]:
        present = max(0, min(self.cluster_size, (self.file_len - l2_offset + 15) & ~15))
        raw = _be_u64_array(self.read(l2_offset, present))
        if self.extended_l2:
            return raw[0::2], raw[1::2]
        return raw, None

    def check_l2(self, res: CheckResult, table: array, l2_offset: int, flags: int, active: bool,
                 frag: list[int]) -> None:
        entries, bitmaps = self._load_l2(l2_offset)
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
            _grow(table, end)
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
        from .overlap import ACTIVE_L2, STRUCTURE_NAMES, find_overlap

        ol = self.drv.overlap
        if ol is None:
            return None
        bit = find_overlap(self.drv, ol.mask & ~ACTIVE_L2, offset, size)
        return STRUCTURE_NAMES[bit.bit_length() - 1] if bit else None

    def signal_overlap(self, name: str) -> None:
        """A repair would overwrite metadata: QEMU marks the image corrupt and refuses (the
        message joins the check's own lines, in order)."""
        from .overlap import signal_corruption

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
            l2 = drv.get_l2(l2_offset)
            if self.extended_l2:
                # as QEMU: allocated subclusters become zero ones, the others stay as they were
                # (unallocated ones read the backing file)
                l2[2 * index] = 0
                l2[2 * index + 1] = (bitmap | (bitmap << 32)) & L2_BITMAP_ALL_ZEROES
            else:
                l2[index] = S.OFLAG_ZERO
            drv.l2_cache.mark_dirty(l2_offset)
            drv.flush_caches()
        except (OSError, QimgError) as exc:
            self.say(f"ERROR: Failed to overwrite L2 table entry: {_strerror(exc)}")
            return False
        return True

    # -- refcount blocks ---------------------------------------------------------------
    def check_refblocks(self, res: CheckResult, table: array, stored: _StoredRefcounts) -> bool:
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
                    self.say(f"{program()}: Could not resize file: {_strerror(exc)}")
                    self.say(f"ERROR could not resize image: {_strerror(exc)}")
                    rebuild = True
                    continue
                if (offset + self.cluster_size) >> self.cluster_bits > MAX_CHECK_CLUSTERS:
                    # the in-memory refcount array would be too big: give up as on ENOMEM
                    self.file.truncate(old_len)
                    res.check_errors += 1
                    raise CheckFailed("Cannot allocate memory", self.msgs)
                self.file_len = self.file.size()
                nb = -(-self.file_len // self.cluster_size)
                if nb > len(table):
                    _grow(table, nb)
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
    def calculate(self, res: CheckResult, stored: _StoredRefcounts, snapshots: list) -> tuple[array, bool]:
        h = self.h
        nb_clusters = -(-self.file_len // self.cluster_size)
        if nb_clusters > MAX_CHECK_CLUSTERS:
            res.check_errors += 1
            raise CheckFailed("File too large", self.msgs)
        table = _new_table(self.h.refcount_order, nb_clusters)
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

    def compare(self, res: CheckResult, stored: _StoredRefcounts, table: array, fix: set[str],
                highest: list[int]) -> bool:
        rebuild = False
        bb = stored.block_bits
        per = 1 << bb
        nb = len(table)
        for base in range(0, nb, per):
            end = min(nb, base + per)
            try:
                blk = stored.raw_block(base >> bb)
            except OSError:
                offset = stored.table[base >> bb] & S.REFT_OFFSET_MASK
                if offset & (self.cluster_size - 1):
                    # QEMU's refcount lookup reports the unaligned block as a corruption
                    from .overlap import signal_corruption

                    signal_corruption(self.drv, f"Refblock offset {S.chex(offset)} unaligned (reftable index: "
                                                f"{S.chex(base >> bb)})", say=self.say)
                for i in range(base, end):
                    self.say(f"Can't get refcount for cluster {i}: Input/output error")
                    res.check_errors += 1
                continue
            if stored.bits >= 8 and self._same_block(blk, stored.bits >> 3, base, end, table, highest):
                continue
            blk = stored.block(base >> bb)
            want = table[base:end].tolist()
            have = blk[: end - base] if blk is not None else [0] * (end - base)
            for k in range(end - base - 1, -1, -1):
                if have[k] or want[k]:
                    highest[0] = max(highest[0], base + k)
                    break
            if have == want:
                continue
            for k in range(end - base):
                r1, r2 = have[k], want[k]
                if r1 == r2:
                    continue
                i = base + k
                fixed = None
                if r1 == 0:
                    rebuild = True
                elif r1 > r2 and FIX_LEAKS in fix:
                    fixed = "leaks"
                elif r1 < r2 and FIX_ERRORS in fix:
                    fixed = "errors"
                word = "Repairing" if fixed else ("ERROR" if r1 < r2 else "Leaked")
                self.say(f"{word} cluster {i} refcount={r1} reference={r2}")
                if fixed:
                    try:
                        self.drv.refcounts.set(i, r2)
                        stored.set_cached(i, r2)
                        if r2 == 0:
                            self.file.discard(i << self.cluster_bits, self.cluster_size)
                    except (OSError, QimgError):
                        pass
                    else:
                        if fixed == "leaks":
                            res.leaks_fixed += 1
                        else:
                            res.corruptions_fixed += 1
                        continue
                if r1 < r2:
                    res.corruptions += 1
                else:
                    res.leaks += 1
        return rebuild

    @staticmethod
    def _same_block(raw: bytes | None, w: int, base: int, end: int, table: array, highest: list[int]) -> bool:
        """True when the stored refcounts of clusters base..end-1 (``raw``, ``w`` bytes each,
        big-endian) equal the computed ones; then ``highest`` is updated as compare() does.
        Compared in C; False (nothing done) when they differ."""
        want = table[base:end]
        if w > 1 and _LITTLE:
            want.byteswap()
        want = want.tobytes()
        have = raw[: len(want)] if raw is not None else bytes(len(want))
        if have != want:
            return False
        used = len(have.rstrip(b"\0"))
        if used:
            highest[0] = max(highest[0], base + (used - 1) // w)
        return True

    # -- OFLAG_COPIED --------------------------------------------------------------------
    def check_oflag_copied(self, res: CheckResult) -> None:
        drv = self.drv
        if FIX_ERRORS in self.fix:
            repair = True
        elif FIX_LEAKS in self.fix:
            repair = not res.check_errors and not res.corruptions and not res.leaks
        else:
            repair = False
        word = "Repairing" if repair else "ERROR"
        stored = _StoredRefcounts(drv)
        l1 = _be_u64_array(self.read(self.h.l1_table_offset, self.h.l1_size * 8))
        for i, e in enumerate(l1):
            l2_offset = e & S.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                rc = stored.get(l2_offset >> self.cluster_bits)
            except OSError:
                continue
            if (rc == 1) != bool(e & S.OFLAG_COPIED):
                res.corruptions += 1
                self.say(f"{word} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}")
                if repair:
                    new = e | S.OFLAG_COPIED if rc == 1 else e & ~S.OFLAG_COPIED
                    try:
                        drv.l1[i] = new
                        drv.write_l1(i, 1)
                    except (OSError, QimgError):
                        res.check_errors += 1
                        return
                    res.corruptions -= 1
                    res.corruptions_fixed += 1
            entries, _ = self._load_l2(l2_offset)
            dirty: list[tuple[int, int]] = []
            for j, le in self._copied_suspects(entries, stored):
                if not le or le & S.OFLAG_COMPRESSED:
                    continue
                off = le & S.L2E_OFFSET_MASK
                if not off and not (self.data_file and le & S.OFLAG_COPIED):
                    continue
                if self.data_file:
                    rc = 1
                else:
                    try:
                        rc = stored.get(off >> self.cluster_bits)
                    except OSError:
                        continue
                if (rc == 1) != bool(le & S.OFLAG_COPIED):
                    res.corruptions += 1
                    self.say(f"{word} OFLAG_COPIED data cluster: l2_entry={le:x} refcount={rc}")
                    if repair:
                        dirty.append((j, le | S.OFLAG_COPIED if rc == 1 else le & ~S.OFLAG_COPIED))
            if dirty:
                name = self.overlap(l2_offset, self.cluster_size)
                if name is not None:
                    self.signal_overlap(name)
                    self.say("ERROR: Could not write L2 table; metadata overlap check failed: Input/output error")
                    res.check_errors += 1
                    raise CheckFailed("Input/output error", self.msgs)
                try:
                    l2 = drv.get_l2(l2_offset)
                    step = 2 if self.extended_l2 else 1
                    for j, v in dirty:
                        l2[j * step] = v
                    drv.l2_cache.mark_dirty(l2_offset)
                    drv.flush_caches()
                except (OSError, QimgError) as exc:
                    self.say(f"ERROR: Could not write L2 table: {_strerror(exc)}")
                    res.check_errors += 1
                    return
                res.corruptions -= len(dirty)
                res.corruptions_fixed += len(dirty)

    def _copied_suspects(self, entries: array, stored: _StoredRefcounts) -> "list[tuple[int, int]] | enumerate":
        """(index, entry) of the L2 entries whose OFLAG_COPIED may disagree with the stored
        refcount (a superset, in entry order: the caller checks each): all of them with a data
        file; otherwise the runs of contiguous normal clusters whose stored refcounts are not
        all 1 (with the flag) or all the same other value (without), compared in C."""
        if self.data_file:
            return enumerate(entries)
        om, comp, copied = S.L2E_OFFSET_MASK, S.OFLAG_COMPRESSED, S.OFLAG_COPIED
        cs, cb = self.cluster_size, self.cluster_bits
        per = 1 << stored.block_bits
        out: list[tuple[int, int]] = []
        n = len(entries)
        i = 0
        while i < n:
            e = entries[i]
            if not e:
                i += zero_run(entries, i, n - i)
                continue
            if e & comp or not e & om:
                i += 1
                continue
            k = same_run(entries, e, cs, i)
            first = (e & om) >> cb
            want = 1 if e & copied else None
            done = 0
            while done < k:  # one refcount block at a time
                m = min(k - done, per - ((first + done) & (per - 1)))
                rc = stored.uniform(first + done, m, want)
                if rc is None or (rc == 1) != bool(want):
                    out.extend((j, entries[j]) for j in range(i + done, i + done + m))
                done += m
            i += k
        return out

    # -- rebuild ------------------------------------------------------------------------
    def _pre_write(self, offset: int, size: int, line: str) -> None:
        """The overlap check of a rebuilt structure; a hit ends the check (QEMU's words)."""
        from .overlap import STRUCTURE_NAMES, find_overlap

        ol = self.drv.overlap
        bit = find_overlap(self.drv, ol.mask, offset, size) if ol is not None else 0
        if bit:
            self.signal_overlap(STRUCTURE_NAMES[bit.bit_length() - 1])
            self.say(line.format(os.strerror(errno.EIO)))
            raise CheckFailed(os.strerror(errno.EIO), self.msgs)

    def rebuild_refcounts(self, table: array) -> None:
        """Write fresh refcount blocks and table for the computed refcounts ``table`` and switch
        to them, laid out as QEMU 7.2's rebuild_refcount_structure: blocks in cluster order, each
        in the first free cluster from the start of the range it covers; then the table in the
        first free clusters of the image, the blocks covering it written again (and all of it
        once more while the table has to grow). The old structures become leaks."""
        cs = self.cluster_size
        rc_bits = 1 << self.h.refcount_order
        per_block = cs * 8 // rc_bits
        reftable: list[int] = []

        def alloc(count: int, first_free: list[int]) -> int:
            """QEMU's alloc_clusters_imrt: ``count`` free clusters in a row from first_free[0]
            (which moves to the first free cluster seen), the image growing if needed."""
            cluster, run = first_free[0], 0
            first_gap = True
            while cluster < len(table) and run < count:
                if not table[cluster]:
                    run += 1
                    if first_gap:
                        first_free[0] = cluster
                        first_gap = False
                elif run:
                    run = 0
                cluster += 1
            if run < count:
                _grow(table, cluster + count - run)
            cluster -= run
            for k in range(cluster, cluster + count):
                table[k] = 1
            return cluster

        def write_blocks(first: int, end: int) -> bool:
            """Allocate and write the blocks covering used clusters in [first, end); True when
            the table had to grow."""
            grown = False
            first_free = [0]
            cluster = first
            while cluster < end:
                if not table[cluster]:
                    cluster += 1
                    continue
                index = cluster // per_block
                start = index * per_block
                if index < len(reftable) and reftable[index]:
                    offset = reftable[index]
                else:
                    first_free[0] = max(first_free[0], start)  # not in a block already written
                    offset = alloc(1, first_free) * cs
                    if index >= len(reftable):
                        entries = -(-(index + 1) * 8 // cs) * cs // 8
                        reftable.extend([0] * (entries - len(reftable)))
                        grown = True
                    reftable[index] = offset
                self._pre_write(offset, cs, program() + ": ERROR writing refblock: {}")
                vals = table[start:start + per_block].tolist()
                vals += [0] * (per_block - len(vals))
                self.file.pwrite(offset, _encode_refcounts(vals, rc_bits))
                cluster = start + per_block
            return grown

        write_blocks(0, len(table))
        while True:
            rt_clusters = -(-len(reftable) * 8 // cs)
            rt_offset = alloc(rt_clusters, [0]) * cs
            first = rt_offset // cs
            if not write_blocks(first, first + rt_clusters):
                break
            for k in range(first, first + rt_clusters):
                table[k] = 0
        rt = array("Q", reftable)
        raw = rt.tobytes() if struct.pack("=H", 1) == struct.pack(">H", 1) else _swapped(rt)
        self._pre_write(rt_offset, len(raw), program() + ": ERROR writing reftable: {}")
        self.file.pwrite(rt_offset, raw)
        self.file.flush()
        _install_reftable(self.drv, rt_offset, rt_clusters, rt)
        self.file_len = self.file.size()


def _swapped(arr: array) -> bytes:
    a = array("Q", arr)
    a.byteswap()
    return a.tobytes()


def _encode_refcounts(vals: list[int], bits: int) -> bytes:
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


def _install_reftable(drv: "Qcow2Format", offset: int, clusters: int, table: array) -> None:
    """Make the driver use a newly written refcount table (header updated atomically)."""
    drv.refcounts.cache.clear()
    drv.refcounts.table = table
    drv.header.refcount_table_offset = offset
    drv.header.refcount_table_clusters = clusters
    # refcount table offset and size are adjacent in the header: one write switches both
    drv.file.pwrite(48, struct.pack(">QI", offset, clusters))
    drv.file.flush()
    drv.refcounts.free_cluster_index = 0


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


def check_image(drv: "Qcow2Format", fix: set[str]) -> CheckResult:
    """``qemu-img check`` for an open qcow2 image; ``fix`` is a subset of {"leaks", "errors"}."""
    fix = set(fix)
    if fix and not drv.writable:
        raise QimgError("Cannot repair a read-only image")
    if drv.writable:
        drv.flush_caches()
    c = _Checker(drv, fix)
    res = CheckResult(filename=drv.filename, format="qcow2", image_end_offset=0, total_clusters=0,
                      allocated_clusters=0, fragmented_clusters=0, compressed_clusters=0)
    res.total_clusters = -(-drv.size // c.cluster_size)  # whole sectors, as QEMU
    # the snapshot table's results are kept apart from the refcounts' (which decide about
    # repairs) and added at the end, as qemu-img does
    snap = CheckResult()
    snapshots, table_size = _check_read_snapshot_table(drv, c, fix, snap)
    stored = _StoredRefcounts(drv)
    c.snapshots = snapshots
    c.reftable = stored.table
    table, rebuild = c.calculate(res, stored, snapshots)
    pre = _copy(res)
    highest = [0]
    if c.compare(res, stored, table, set(), highest):
        rebuild = True
    if rebuild and FIX_ERRORS in fix:
        old = _copy(res)
        c.say("Rebuilding refcount structure")
        c.rebuild_refcounts(table)
        res.corruptions = 0
        res.leaks = 0
        stored = _StoredRefcounts(drv)
        # references are counted again for the new structures, without repairing anything
        c.fix = set()
        table, rebuild = c.calculate(res, stored, snapshots)
        c.fix = fix
        fresh_leaks = 0
        if FIX_LEAKS in fix:
            saved = _copy(res)
            tmp = CheckResult()
            highest = [0]
            if c.compare(tmp, stored, table, {FIX_LEAKS}, highest):
                c.say("ERROR rebuilt refcount structure is still broken")
            fresh_leaks = tmp.leaks
            _assign(res, saved)
        if res.corruptions < old.corruptions:
            res.corruptions_fixed += old.corruptions - res.corruptions
        if res.leaks < old.leaks:
            res.leaks_fixed += old.leaks - res.leaks
        res.leaks += fresh_leaks
        drv.flush_caches()
    elif fix:
        if rebuild:
            c.say("ERROR need to rebuild refcount structures")
            raise CheckFailed("Input/output error", c.msgs)
        if res.leaks or res.corruptions:
            _assign(res, pre)
            highest = [0]
            c.compare(res, stored, table, fix, highest)
            drv.flush_caches()
    c.check_oflag_copied(res)
    res.image_end_offset = (highest[0] + 1) * c.cluster_size
    if snap.corruptions and FIX_ERRORS in fix:
        from .snapshot import write_snapshot_table

        # rewriting the table completes short entries (24 bytes of extra data each) and
        # keeps the cut extra data cut
        drv.flush_caches()
        write_snapshot_table(drv, snapshots, old_size=table_size)
        drv.flush_caches()
        snap.corruptions_fixed += snap.corruptions
        snap.corruptions = 0
    res.corruptions += snap.corruptions
    res.corruptions_fixed += snap.corruptions_fixed
    res.check_errors += snap.check_errors
    if fix and not res.check_errors and not res.corruptions:
        _mark_clean(drv)
    res.messages = c.msgs
    return res


def _check_read_snapshot_table(drv: "Qcow2Format", c: _Checker, fix: set[str], snap: CheckResult
                               ) -> tuple[list, int]:
    """QEMU's qcow2_check_read_snapshot_table: the snapshot table as the header on disk names
    it (an open for checking does not read it), its errors and, with ``-r all``, its repairs
    (snapshots beyond QEMU's limits dropped, too much extra data cut). Returns the snapshots
    and the bytes their table takes; raises CheckFailed when it cannot be read."""
    from .snapshot import SNAPSHOT_HEADER_SIZE, SnapshotRepair, read_snapshots, snapshot_table_size

    h = drv.header
    nb, offset = struct.unpack(">IQ", c.read(60, 12))
    reduced = 0
    if nb > S.MAX_SNAPSHOTS and FIX_ERRORS in fix:
        c.say(f"Discarding {nb - S.MAX_SNAPSHOTS} overhanging snapshots")
        reduced = nb - S.MAX_SNAPSHOTS
        nb = S.MAX_SNAPSHOTS
    error = None
    if nb > S.MAX_SNAPSHOTS:
        error = ("snapshot table too large", "File too large")
    elif (1 << 63) - 1 - nb * SNAPSHOT_HEADER_SIZE < offset or offset & (c.cluster_size - 1):
        error = ("snapshot table offset invalid", "Invalid argument")
    if error is not None:
        snap.check_errors += 1
        c.say(f"{program()}: ERROR {error[0]}")
        if nb > S.MAX_SNAPSHOTS:
            c.say(f"You can force-remove all {nb - S.MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all")
        raise CheckFailed(error[1], c.msgs)
    h.nb_snapshots, h.snapshots_offset = nb, offset
    repair = SnapshotRepair(c.say) if FIX_ERRORS in fix else None
    try:
        snapshots = read_snapshots(drv, repair)
    except QimgError as e:
        # qemu-img reports this with error_report (program name first), then gives up
        snap.check_errors += 1
        c.say(f"{program()}: ERROR failed to read the snapshot table: {e.message}")
        hint = getattr(e, "hint", None)
        if hint:
            c.say(hint)
        raise CheckFailed(getattr(e, "reason", "Invalid argument"), c.msgs) from None
    table_size = snapshot_table_size(snapshots)
    if repair is not None:
        reduced += repair.reduced
        snap.corruptions += repair.dropped
        table_size = repair.table_size
    if reduced:
        # the header says so at once (this leaks the dropped entries, which the refcount
        # check repairs)
        h.nb_snapshots = len(snapshots)
        drv.file.pwrite(60, struct.pack(">I", h.nb_snapshots))
        drv.file.flush()
        snap.corruptions_fixed += reduced
    if h.version >= 3:
        # a v3 entry must carry the 64-bit VM state size and the disk size
        for i, sn in enumerate(snapshots):
            if sn.extra_data_size < 16:
                snap.corruptions += 1
                c.say(f"{'Repairing' if FIX_ERRORS in fix else 'ERROR'} snapshot table entry {i} is incomplete")
    return snapshots, table_size


def _copy(res: CheckResult) -> CheckResult:
    return res.copy(messages=[])


def _assign(dst: CheckResult, src: CheckResult) -> None:
    for name in ("check_errors", "corruptions", "leaks", "corruptions_fixed", "leaks_fixed",
                 "allocated_clusters", "fragmented_clusters", "compressed_clusters", "total_clusters"):
        setattr(dst, name, getattr(src, name))


def _mark_clean(drv: "Qcow2Format") -> None:
    """After a successful repair the image is neither dirty nor corrupt any more."""
    h = drv.header
    bits = S.INCOMPAT_DIRTY | S.INCOMPAT_CORRUPT
    if h.version >= 3 and h.incompatible_features & bits:
        drv.flush_caches()
        h.incompatible_features &= ~bits
        drv.update_header()
