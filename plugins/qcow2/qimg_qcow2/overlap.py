"""Metadata overlap protection: no write of the qcow2 driver lands on the image's own metadata.

Before the driver writes guest data or metadata into the image file it asks :func:`pre_write`
whether the target range touches a structure the ``overlap-check`` open option protects (QEMU's
``qcow2_pre_write_overlap_check``). The structures, in the order they are tested (the first one
hit names the error):

======================  ==================  ===========================================
option (bit)            name in the error    range
======================  ==================  ===========================================
``main-header``         qcow2_header         the first cluster (any write starting in it)
``active-l1``           active L1 table      ``l1_table_offset``, ``l1_size`` entries
``refcount-table``      refcount table       the whole refcount table
``snapshot-table``      snapshot table       the snapshot table
``inactive-l1``         inactive L1 table    every snapshot's L1 table
``active-l2``           active L2 table      every cluster an active L1 entry points at
``refcount-block``      refcount block       every cluster a refcount-table entry points at
``inactive-l2``         inactive L2 table    every L2 table of a snapshot (read from the file)
``bitmap-directory``    bitmap directory     the persistent bitmap directory
======================  ==================  ===========================================

Templates: ``none``; ``constant`` (header, active L1, refcount table, snapshot table, bitmap
directory: ranges known without reading tables); ``cached`` (the default: constant plus active
L2, refcount blocks and inactive L1, all from tables already in memory); ``all`` (cached plus
the inactive L2 tables, which reads every snapshot's L1 table from the file at each write).
Each ``overlap-check.<name>`` boolean overrides its bit of the template.

The write range is widened to whole clusters before the tests (the header test alone looks at
the exact start). A hit is fatal, as in QEMU (``qcow2_signal_corruption``): the image is marked
corrupt (the header is rewritten with the incompatible "corrupt" bit), the write fails with
"Input/output error", and the driver becomes unusable: metadata still in its caches is dropped,
never written, so nothing else of the image changes.

Cost: the active L2 and refcount-block tests keep the clusters the L1 table and refcount table
point at in a dict, brought up to date by comparing each table with a copy of it (in C: about a
nanosecond per entry) and re-reading only the entries that changed; a test is then a few
dict lookups per cluster written.
"""
from __future__ import annotations

import errno
import os

from qimg.errors import QimgError

from . import structs as S
from .options import OVERLAP_AREAS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from array import array
    from collections.abc import Callable
    from typing import Any

    from .driver import Qcow2Format

#: the ``overlap-check.<name>`` booleans, in QEMU's bit order
OPTION_NAMES = OVERLAP_AREAS
#: the structure each bit protects, as QEMU names it in the error
STRUCTURE_NAMES = ("qcow2_header", "active L1 table", "active L2 table", "refcount table", "refcount block",
                   "snapshot table", "inactive L1 table", "inactive L2 table", "bitmap directory")
(MAIN_HEADER, ACTIVE_L1, ACTIVE_L2, REFCOUNT_TABLE, REFCOUNT_BLOCK, SNAPSHOT_TABLE, INACTIVE_L1,
 INACTIVE_L2, BITMAP_DIRECTORY) = (1 << i for i in range(len(OPTION_NAMES)))
CONSTANT = MAIN_HEADER | ACTIVE_L1 | REFCOUNT_TABLE | SNAPSHOT_TABLE | BITMAP_DIRECTORY
CACHED = CONSTANT | ACTIVE_L2 | REFCOUNT_BLOCK | INACTIVE_L1
ALL = CACHED | INACTIVE_L2
TEMPLATES = {"none": 0, "constant": CONSTANT, "cached": CACHED, "all": ALL}
DEFAULT = "cached"


class RequestFailed(QimgError, OSError):
    """A request failed with an errno, as QEMU's driver returns it: a QimgError whose message
    is the errno's text, and an OSError, so that commands word it as they word any failed
    write ("error while writing at byte N: File too large", "Block job failed: ...")."""

    def __init__(self, code: int) -> None:
        OSError.__init__(self, code, os.strerror(code))
        self.message = os.strerror(code)
        self.exit_code = 1


class FatalCorruption(RequestFailed):
    """The image was marked corrupt and the driver stopped (QEMU's ``bs->drv = NULL``): the
    request fails with EIO."""

    def __init__(self) -> None:
        super().__init__(errno.EIO)


def mask_from_options(options: dict[str, Any]) -> int:
    """The structures to protect, from the (already checked) open options."""
    chosen = options.get("overlap-check.template") or options.get("overlap-check") or DEFAULT
    template = TEMPLATES.get(chosen, CACHED)
    mask = 0
    for bit, name in enumerate(OPTION_NAMES):
        value = options.get("overlap-check." + name)
        if value is None:
            value = template & (1 << bit)
        if value:
            mask |= 1 << bit
    return mask


class EntryIndex:
    """Host clusters the entries of a table point at (L1 -> L2 tables, refcount table ->
    refcount blocks): ``{cluster index: number of entries}``.

    Kept in step with the live table by comparing it with a private copy (C speed) and looking
    again only at the entries that differ; a different table object is indexed afresh. The
    comparison runs only when the driver's metadata generation moved (every L1 and refcount
    table write bumps it), so a data write costs a few dict lookups."""

    __slots__ = ("_src", "_copy", "_refs", "_mask", "_cb", "_gen")

    def __init__(self, mask: int, cluster_bits: int) -> None:
        self._src: array | None = None
        self._copy: array | None = None
        self._refs: dict[int, int] = {}
        self._mask = mask
        self._cb = cluster_bits
        self._gen = -1

    def clusters(self, table: array, gen: int) -> dict[int, int]:
        copy = self._copy
        if table is not self._src or copy is None or len(table) != len(copy):
            self._rebuild(table)
        elif gen != self._gen and table != copy:
            self._update(table, copy)
        self._gen = gen
        return self._refs

    def _targets(self, entry: int) -> tuple[int, ...]:
        off = entry & self._mask
        if not off:
            return ()
        first = off >> self._cb
        # an unaligned table covers two clusters, as QEMU's range test sees it
        return (first,) if not off & ((1 << self._cb) - 1) else (first, first + 1)

    def _rebuild(self, table: array) -> None:
        from array import array

        refs: dict[int, int] = {}
        mask = self._mask
        for e in table:
            if e & mask:
                for c in self._targets(e):
                    refs[c] = refs.get(c, 0) + 1
        self._refs = refs
        self._src = table
        self._copy = array(table.typecode, table)

    def _update(self, table: array, copy: array) -> None:
        refs = self._refs
        stack = [(0, len(table))]
        while stack:
            lo, hi = stack.pop()
            if hi - lo > 64:
                if table[lo:hi] != copy[lo:hi]:
                    mid = (lo + hi) // 2
                    stack.append((mid, hi))
                    stack.append((lo, mid))
                continue
            for i in range(lo, hi):
                old, new = copy[i], table[i]
                if old == new:
                    continue
                for c in self._targets(old):
                    n = refs.get(c, 0) - 1
                    if n > 0:
                        refs[c] = n
                    else:
                        refs.pop(c, None)
                for c in self._targets(new):
                    refs[c] = refs.get(c, 0) + 1
                copy[i] = new


def _any_in(refs: dict[int, int], first: int, count: int) -> bool:
    if count <= len(refs):
        return any(c in refs for c in range(first, first + count))
    end = first + count
    return any(first <= c < end for c in refs)


class OverlapState:
    """Per-driver state of the checks: the mask and the indexes of the cached tables."""

    __slots__ = ("mask", "l2_index", "refblock_index", "_snap_key", "_snap")

    def pre_write(self, drv: "Qcow2Format", ign: int, offset: int, size: int) -> None:
        """See :func:`pre_write` (a method: the driver reaches it without an import)."""
        if find_overlap(drv, self.mask & ~ign, offset, size):
            pre_write(drv, ign, offset, size)

    def __init__(self, mask: int, cluster_bits: int) -> None:
        self.mask = mask
        self.l2_index = EntryIndex(S.L1E_OFFSET_MASK, cluster_bits)
        self.refblock_index = EntryIndex(S.REFT_OFFSET_MASK, cluster_bits)
        self._snap_key: tuple[int, int] | None = None
        self._snap: tuple[int, list[tuple[int, int]]] = (0, [])

    def snapshots(self, drv: "Qcow2Format") -> tuple[int, list[tuple[int, int]]]:
        """(snapshot table size in bytes, [(L1 offset, L1 entries)] of every snapshot)."""
        h = drv.header
        key = (h.snapshots_offset, h.nb_snapshots)
        if key != self._snap_key:
            self._snap_key = key
            self._snap = (0, [])
            if h.nb_snapshots:
                from .snapshot import read_snapshots, snapshot_table_size

                try:
                    snaps = read_snapshots(drv)
                except (QimgError, OSError):
                    snaps = []  # an unreadable table (open for check): nothing known to protect
                self._snap = (snapshot_table_size(snaps) if snaps else 0,
                              [(sn.l1_table_offset, sn.l1_size) for sn in snaps])
        return self._snap


def find_overlap(drv: "Qcow2Format", chk: int, offset: int, size: int) -> int:
    """The first structure (its bit) among ``chk`` that a write of [offset, offset+size)
    would touch, or 0 (QEMU's ``qcow2_check_metadata_overlap``). Written for speed: it runs
    before every data write."""
    if not size or not chk:
        return 0
    cs = drv.cluster_size
    if chk & MAIN_HEADER and offset < cs:
        return MAIN_HEADER
    # the range widened to whole clusters
    start = offset - (offset & (cs - 1))
    end = offset + size + (-(offset + size) & (cs - 1))
    h = drv.header
    if chk & ACTIVE_L1:
        n = h.l1_size * 8
        first = h.l1_table_offset
        if n and first < end and start < first + n:
            return ACTIVE_L1
    if chk & REFCOUNT_TABLE:
        n = len(drv.refcounts.table) * 8
        first = h.refcount_table_offset
        if n and first < end and start < first + n:
            return REFCOUNT_TABLE
    state: OverlapState = drv.overlap
    if chk & (SNAPSHOT_TABLE | INACTIVE_L1 | INACTIVE_L2) and h.nb_snapshots:
        n, l1s = state.snapshots(drv)
        first = h.snapshots_offset
        if chk & SNAPSHOT_TABLE and n and first < end and start < first + n:
            return SNAPSHOT_TABLE
        if chk & INACTIVE_L1:
            for first, n in l1s:
                if n and first < end and start < first + n * 8:
                    return INACTIVE_L1
    cb = drv.cluster_bits
    c0, count = start >> cb, (end - start) >> cb
    if chk & ACTIVE_L2 and len(drv.l1) and _any_in(state.l2_index.clusters(drv.l1, drv.meta_gen), c0, count):
        return ACTIVE_L2
    if chk & REFCOUNT_BLOCK and _any_in(state.refblock_index.clusters(drv.refcounts.table, drv.meta_gen),
                                        c0, count):
        return REFCOUNT_BLOCK
    if chk & INACTIVE_L2 and h.nb_snapshots:
        for first, n in state.snapshots(drv)[1]:
            if _inactive_l2_hit(drv, first, n, start, end):
                return INACTIVE_L2
    if chk & BITMAP_DIRECTORY and h.autoclear_features & S.AUTOCLEAR_BITMAPS:
        ext = h.bitmaps_ext
        if ext is not None and len(ext) >= 24:
            n = int.from_bytes(ext[8:16], "big")
            first = int.from_bytes(ext[16:24], "big")
            if n and first < end and start < first + n:
                return BITMAP_DIRECTORY
    return 0


def _inactive_l2_hit(drv: "Qcow2Format", l1_off: int, l1_size: int, start: int, end: int) -> bool:
    """A snapshot's L2 tables, from its L1 table as stored (QEMU reads it at each check; an
    invalid table fails the write with its errno)."""
    cs = drv.cluster_size
    if l1_size * 8 > S.MAX_L1_SIZE:
        raise QimgError(os.strerror(errno.EFBIG))
    if l1_off & (cs - 1) or l1_off + l1_size * 8 > (1 << 63) - 1:
        raise QimgError(os.strerror(errno.EINVAL))
    for e in drv.read_table(l1_off, l1_size):
        off = e & S.L1E_OFFSET_MASK
        if off and off < end and start < off + cs:
            return True
    return False


def pre_write(drv: "Qcow2Format", ign: int, offset: int, size: int) -> None:
    """Refuse a write that would touch protected metadata: mark the image corrupt, stop the
    driver and fail with EIO (QEMU's ``qcow2_pre_write_overlap_check``)."""
    bit = find_overlap(drv, drv.overlap.mask & ~ign, offset, size)
    if bit:
        name = STRUCTURE_NAMES[bit.bit_length() - 1]
        signal_corruption(drv, f"Preventing invalid write on metadata (overlaps with {name})")
        raise FatalCorruption()


def signal_corruption(drv: "Qcow2Format", message: str, fatal: bool = True,
                      say: Callable[[str], None] | None = None) -> None:
    """QEMU's ``qcow2_signal_corruption``: one message on stderr; when fatal and the image is
    writable, the header is rewritten with the corrupt bit and the driver stops (its cached
    metadata is dropped unwritten). Later events are silent, as QEMU suppresses them."""
    from qimg import api

    fatal = fatal and drv.writable
    h = drv.header
    if drv.corruption_signaled and (not fatal or h.incompatible_features & S.INCOMPAT_CORRUPT):
        return
    say = say or api.warn
    if fatal:
        say(f"qcow2: Marking image as corrupt: {message}; further corruption events will be suppressed")
    else:
        say(f"qcow2: Image is corrupt: {message}; further non-fatal corruption events will be suppressed")
    drv.corruption_signaled = True
    if fatal:
        h.incompatible_features |= S.INCOMPAT_CORRUPT
        try:
            # as QEMU's qcow2_mark_corrupt: the whole header as the driver would write it
            drv.update_header()
            drv.file.flush()
        except (OSError, QimgError):
            pass
        drv.stop()
