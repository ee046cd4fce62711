"""Resizing (grow with preallocation modes, shrink), L1 growth, make_empty."""
from __future__ import annotations

import struct
from array import array

from qimg.errors import QimgError

from . import structs as S

ALL_ALLOC = 0xFFFFFFFF  # an extended L2 entry's bitmap: every subcluster allocated

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from .driver import Qcow2Format


class _Step:
    """A step of QEMU's qcow2_co_truncate: a request failing with an errno (a refused overlap
    included) is worded as that step's message there ("Failed to grow the L1 table: ...")."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, et, e, tb) -> None:
        if isinstance(e, OSError):
            raise QimgError(f"{self.what}: {e.strerror or e}") from None


def grow_l1(drv: "Qcow2Format", min_size: int, exact: bool = True) -> None:
    """Give the L1 table at least ``min_size`` entries (a new table; the old one is freed)."""
    h = drv.header
    if min_size <= h.l1_size:
        return
    if exact:
        new_size = min_size
    else:
        new_size = max(h.l1_size, 1)
        while new_size < min_size:
            new_size = -(-new_size * 3 // 2)
    if new_size > S.MAX_L1_SIZE // 8:
        raise QimgError("Failed to grow the L1 table: File too large")
    nbytes = new_size * 8
    new_l1 = array("Q", drv.l1)
    new_l1.extend(array("Q", bytes(8 * (new_size - len(new_l1)))))
    off = drv.refcounts.alloc(-(-nbytes // drv.cluster_size))
    drv.refcounts.cache.flush()
    drv.write_table(off, new_l1)
    old_off, old_size = h.l1_table_offset, h.l1_size
    drv.file.pwrite(36, struct.pack(">IQ", new_size, off))
    h.l1_size, h.l1_table_offset = new_size, off
    drv.l1 = new_l1
    if old_size:
        drv.refcounts.free(old_off, old_size * 8)


def truncate(drv: "Qcow2Format", size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
    h = drv.header
    old = h.size
    if preallocation not in ("off", "metadata", "falloc", "full"):
        raise QimgError(f"Unsupported preallocation mode '{preallocation}'")
    if size % 512:
        raise QimgError("The new size must be a multiple of 512")
    if h.nb_snapshots and h.version < 3:
        # v2 snapshots need not record their size: another size would be unsafe for them
        raise QimgError("Can't resize a v2 image which has snapshots")
    if size < old:
        if preallocation != "off":
            raise QimgError("Preallocation can't be used for shrinking an image")
        _shrink(drv, size)
        _resize_bitmaps(drv, old, size)
        return
    drv.flush_caches()
    with _Step("Failed to grow the L1 table"):
        grow_l1(drv, drv.size_to_l1(size), exact=True)
    if preallocation == "off" and drv.data_raw:
        # the data file reads as the image: the new area gets its metadata, as at creation
        preallocation = "metadata"
    backing = drv.backing
    # as QEMU's block layer asks (BDRV_REQ_ZERO_WRITE): the new area must not show the
    # backing file's data that lies beyond the old end
    zero_write = size > old and backing is not None and backing.size > old
    if preallocation == "metadata" or (preallocation != "off" and drv.data_file is not None):
        _preallocate_metadata(drv, old, size, preallocation)
    elif preallocation in ("falloc", "full"):
        # the new clusters read the file's (zero) data: that takes care of the zeroing
        _preallocate_data(drv, old, size, preallocation, zero_write)
        zero_write = False
    if drv.data_file is not None and size > old and preallocation == "off":
        drv.data_file.truncate(size)
    if zero_write:
        h.size = size
        try:
            _zero_new_area(drv, old, size)
        except BaseException:
            h.size = old
            raise
    if preallocation != "off":
        with _Step("Failed to flush the preallocated area to disk"):
            drv.flush_caches()
    else:
        drv.flush_caches()
    h.size = size
    with _Step("Failed to update the image size"):
        drv.file.pwrite(24, struct.pack(">Q", size))
    _resize_bitmaps(drv, old, size)


def _zero_new_area(drv: "Qcow2Format", old: int, size: int) -> None:
    """QEMU's qcow2_co_truncate with BDRV_REQ_ZERO_WRITE: whole (sub)clusters of the new area
    become zero clusters, the unaligned head after the old end is written with zeroes."""
    unit = drv.subcluster_size if drv.extended_l2 else drv.cluster_size
    start = -(-old // unit) * unit
    if size > start:
        if drv.header.version < 3:
            raise QimgError("Failed to zero out new clusters: Operation not supported")
        try:
            drv.allocator.zero_units(start, size, unmap=False)
        except QimgError as e:
            raise QimgError(f"Failed to zero out new clusters: {e.message}") from None
    if start > old:
        try:
            drv.allocator.write(old, memoryview(bytes(min(start, size) - old)))
        except (QimgError, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise QimgError(f"Failed to zero out the new area: {reason}") from None


def _resize_bitmaps(drv: "Qcow2Format", old: int, new: int) -> None:
    if drv.header.bitmaps_ext is not None and old != new:
        from .bitmapops import bitmaps_resize

        bitmaps_resize(drv, old, new)


def _preallocate_metadata(drv: "Qcow2Format", start: int, end: int, mode: str) -> None:
    """Allocate L2 tables and data clusters (not written) for [start, end), table by table."""
    cb, cs = drv.cluster_bits, drv.cluster_size
    st = drv.l2_entry_size // 8
    pos = start & ~(cs - 1)
    last_host = 0
    head = _cow_head(drv, start) if drv.data_file is None and not drv.extended_l2 else None
    tail = _cow_tail(drv, end) if drv.data_file is None else None
    while pos < end:
        gci = pos >> cb
        l1i = gci >> drv.l2_bits
        tend = min(-(-end // cs) * cs, (l1i + 1) << (drv.l2_bits + cb))
        l2off, tbl = drv.allocator.l2_for_write(l1i)
        i0 = gci & (drv.l2_entries - 1)
        n = (tend - pos) >> cb
        # only clusters not yet allocated
        todo = [k for k in range(n) if not tbl[(i0 + k) * st] & S.L2E_OFFSET_MASK]
        if todo:
            if drv.data_file is not None:
                host = pos
            else:
                host = drv.refcounts.alloc(len(todo))
            for j, k in enumerate(todo):
                hoff = (pos + (k << cb)) if drv.data_file is not None else host + j * cs
                tbl[(i0 + k) * st] = hoff | S.OFLAG_COPIED
                if drv.extended_l2:
                    tbl[(i0 + k) * st + 1] = 0
                last_host = max(last_host, hoff + cs)
                if head is not None and pos + (k << cb) == head[0]:
                    head[2] = hoff
                if tail is not None and pos + (k << cb) == tail[0]:
                    tail[2] = hoff
            drv.clusters.cache.mark_dirty(l2off)
        pos = tend
    target = drv.data_file if drv.data_file is not None else drv.file
    if drv.data_file is not None:
        last_host = end
    if tail is not None and tail[2] is not None and last_host == tail[2] + cs:
        # the file ends with the last cluster's copied tail (QEMU: host offset + bytes)
        last_host = tail[2] + (end - tail[0]) + len(tail[1])
    if last_host:
        cur = target.size()
        if last_host > cur:
            _extend(target, cur, last_host, mode if drv.data_file is not None else "off")
    if tail is not None and tail[2] is not None:
        # the rest of the (sub)cluster after the new end is copied from the backing file (or
        # written with zeroes), as QEMU's allocation does (COW)
        drv.write_stored(drv.file, tail[2] + (end - tail[0]), end, tail[1])
    if head is not None and head[2] is not None:
        # the partial cluster before the old end was not allocated: it is now, and what it
        # read (the backing file's data) is copied into it, as QEMU's allocation does (COW)
        drv.write_stored(drv.file, head[2], head[0], head[1])


def _cow_tail(drv: "Qcow2Format", end: int) -> list | None:
    """[guest offset of the cluster holding an unaligned new end, the data after the end up to
    its (sub)cluster's end: the backing file's or zeroes, host offset (filled in when the
    cluster is allocated)], or None."""
    unit = drv.subcluster_size if drv.extended_l2 else drv.cluster_size
    n = -end % unit
    if not n:
        return None
    buf = bytearray(n)
    b = drv.backing
    if b is not None and b.size > end:
        drv.read_backing(end, memoryview(buf)[: min(n, b.size - end)])
    return [end & ~(drv.cluster_size - 1), buf, None]


def _cow_head(drv: "Qcow2Format", old: int) -> list | None:
    """[guest offset of the cluster holding the old end, its data up to the old end, host
    offset (filled in when the cluster is allocated anew)], or None when the old end is
    aligned."""
    n = old & (drv.cluster_size - 1)
    if not n:
        return None
    buf = bytearray(n)
    drv.read(old - n, memoryview(buf))
    return [old - n, buf, None]


def _extend(f, cur: int, new: int, mode: str) -> None:
    """Grow the file as QEMU's bdrv_co_truncate with a preallocation mode (the protocol may
    refuse the mode: rbd takes only ``off``)."""
    from qimg.protocol import preallocate

    if new > cur:
        # (metadata: the format's own business; the file only grows)
        preallocate(f, cur, new, mode if mode in ("falloc", "full") else "off")


def _preallocate_data(drv: "Qcow2Format", old: int, new: int, mode: str, zero_write: bool) -> None:
    """falloc/full: refcount structures first (a new reftable at the end), then one data area.

    As QEMU's qcow2_co_truncate, the cluster holding an unaligned old end is allocated anew
    too: its data up to the old end is copied into the new cluster, the old one is freed.
    ``zero_write``: the new area must read zeroes, not the backing file (extended L2: every
    subcluster of the new clusters is allocated; otherwise the head keeps its bitmap)."""
    cb, cs = drv.cluster_bits, drv.cluster_size
    st = drv.l2_entry_size // 8
    head = _cow_head(drv, old)
    old_head = 0  # the L2 entry the head cluster had
    last = drv.refcounts.last_used()
    fsize = drv.file.size()
    start = (last + 1) * cs if last >= 0 else -(-fsize // cs) * cs
    n_data = (-(-new // cs) * cs - (old & ~(cs - 1))) >> cb
    n_l2 = -(-n_data // drv.l2_entries) + 1
    with _Step("Failed to resize refcount structures"):
        alloc_start = drv.refcounts.area(start, n_data + n_l2)
    try:
        _extend(drv.file, drv.file.size(), alloc_start + n_data * cs, mode)
    except QimgError as e:
        from qimg.errors import reworded

        raise reworded(e, f"Failed to resize underlying file: {e.message}") from None
    # (as QEMU: the data clusters are counted once the file holds them)
    for ci in range(alloc_start >> cb, (alloc_start >> cb) + n_data):
        drv.refcounts.set(ci, 1)
    drv.refcounts.cache.flush()
    host = alloc_start
    pos = old & ~(cs - 1)
    left = n_data
    while left:
        gci = pos >> cb
        l1i = gci >> drv.l2_bits
        i0 = gci & (drv.l2_entries - 1)
        k = min(left, drv.l2_entries - i0)
        with _Step("Failed to update L2 tables"):
            l2off, tbl = drv.allocator.l2_for_write(l1i)
        for j in range(k):
            x = (i0 + j) * st
            if head is not None and pos + j * cs == head[0]:
                old_head = tbl[x]
                head[2] = host + j * cs
            tbl[x] = (host + j * cs) | S.OFLAG_COPIED
            if drv.extended_l2 and zero_write:
                tbl[x + 1] = ALL_ALLOC
            elif drv.extended_l2 and (head is None or pos + j * cs != head[0]):
                tbl[x + 1] = 0  # allocated, subclusters read through
        drv.clusters.cache.mark_dirty(l2off)
        pos += k * cs
        host += k * cs
        left -= k
    if head is not None:
        drv.write_stored(drv.file, head[2], head[0], head[1])
        if old_head & S.OFLAG_COMPRESSED or old_head & S.L2E_OFFSET_MASK:
            drv.allocator.free_entry(old_head)


def _shrink(drv: "Qcow2Format", size: int) -> None:
    cs = drv.cluster_size
    h = drv.header
    a = -(-size // cs) * cs
    if a < h.size:
        with _Step("Failed to discard cropped clusters"):
            drv.allocator.discard_range(a, h.size, full=True)
    new_l1 = drv.size_to_l1(size)
    if new_l1 < len(drv.l1):
        # QEMU's qcow2_shrink_l1_table: the table's tail is zeroed in the file (no overlap
        # check there), then the L2 tables it pointed at are freed, last first
        tail = array("Q", drv.l1[new_l1:])
        drv.l1[new_l1:] = array("Q", bytes(8 * len(tail)))
        drv.meta_gen += 1
        with _Step("Failed to reduce the number of L2 tables"):
            drv.file.pwrite(h.l1_table_offset + new_l1 * 8, bytes(8 * len(tail)))
            drv.file.flush()
        for e in reversed(tail):
            off = e & S.L1E_OFFSET_MASK
            if off:
                drv.clusters.cache.drop(off)
                drv.refcounts.free(off, cs, discard=True)
    try:
        _shrink_reftable(drv)
    except QimgError as e:
        raise QimgError(f"Failed to discard unused refblocks: {e.message}") from None
    drv.flush_caches()
    h.size = size
    drv.file.pwrite(24, struct.pack(">Q", size))
    last = drv.refcounts.last_used()
    # as QEMU: only a cut, never a growth (the last cluster in use may be a partial one, such
    # as a bitmap directory at the end of the file, which close then moves)
    if last >= 0 and (last + 1) * cs < drv.file.size():
        drv.file.truncate((last + 1) * cs)
    if drv.data_file is not None:
        drv.data_file.truncate(size)  # the data file follows the guest size, as QEMU's truncate


def _cached_refblock(drv: "Qcow2Format", off: int) -> bytearray:
    """A refcount block straight from the cache (QEMU's cache refuses an unaligned one)."""
    if off & (drv.cluster_size - 1):
        drv.corrupt(f"Cannot get entry from refcount block cache: Offset {S.chex(off)} is unaligned")
    return drv.refcounts.cache.get(off)


def _shrink_reftable(drv: "Qcow2Format") -> None:
    """QEMU's qcow2_shrink_reftable after a shrink: refcount blocks left with no refcount (but
    their own) leave the refcount table, which is rewritten whole, and are freed."""
    cb = drv.cluster_bits
    table = drv.refcounts.table
    kept = array("Q", table)
    for i, e in enumerate(table):
        off = e & S.REFT_OFFSET_MASK
        if not off:
            kept[i] = 0
            continue
        blk = _cached_refblock(drv, off)
        if (off >> cb) >> drv.refcounts.block_bits == i:
            # a block describing itself: its own refcount does not count
            own = (off >> cb) & (drv.refcounts.block_entries - 1)
            saved = drv.refcounts.entry(blk, own)
            drv.refcounts.set_entry(blk, own, 0)
            unused = blk.count(0) == len(blk)
            drv.refcounts.set_entry(blk, own, saved)
        else:
            unused = blk.count(0) == len(blk)
        if unused:
            kept[i] = 0
    drv.refcounts.cache.flush()
    drv.write_table(drv.header.refcount_table_offset, kept, None)  # QEMU checks no overlap here
    drv.file.flush()
    failure: QimgError | None = None
    for i in range(len(table)):
        if table[i] and not kept[i]:
            if failure is None:
                try:
                    _discard_refblock(drv, table[i] & S.REFT_OFFSET_MASK)
                except QimgError as e:
                    failure = e
            table[i] = 0
    drv.meta_gen += 1
    if failure is not None:
        raise failure


def _discard_refblock(drv: "Qcow2Format", offset: int) -> None:
    """Free a refcount block dropped from the table: its refcount (in the block covering it)
    goes to zero and its cluster is discarded in the file (QEMU's qcow2_discard_refcount_block)."""
    cb = drv.cluster_bits
    ci = offset >> cb
    index = ci & (drv.refcounts.block_entries - 1)
    ti = ci >> drv.refcounts.block_bits
    cover = drv.refcounts.table[ti] & S.REFT_OFFSET_MASK if ti < len(drv.refcounts.table) else 0
    if not cover:
        drv.corrupt(f"Refblock at {S.chex(offset)} is not covered by the refcount structures")
    blk = _cached_refblock(drv, cover)
    value = drv.refcounts.entry(blk, index)
    if value != 1:
        from .overlap import signal_corruption

        signal_corruption(drv, f"Invalid refcount: index {index}, refcount {value}")
        raise QimgError("Invalid argument")
    drv.refcounts.set_entry(blk, index, 0)
    drv.refcounts.cache.mark_dirty(cover)
    if ci < drv.refcounts.free_cluster_index:
        drv.refcounts.free_cluster_index = ci
    drv.refcounts.cache.drop(offset)
    drv.file.discard(offset, drv.cluster_size)


def _make_completely_empty(drv: "Qcow2Format") -> None:
    """Rebuild a minimal image in place (header, one reftable and refblock, a zeroed L1), in
    QEMU's make_completely_empty order: the image is marked dirty first (its refcounts are
    broken meanwhile), the old L1 zeroed, the first clusters zeroed, the header pointed at the
    new tables, the refblock hooked up, the clusters allocated, the image marked clean and the
    file cut; each step's blkdebug event before it (a failure leaves what QEMU's leaves)."""
    cs = drv.cluster_size
    h = drv.header
    f = drv.file
    l1_bytes = h.l1_size * 8
    l1_clusters = -(-l1_bytes // cs)
    drv.flush_caches()
    drv.clusters.cache.tables.clear()
    drv.refcounts.cache.tables.clear()
    if not h.incompatible_features & S.INCOMPAT_DIRTY:
        f.flush()
        f.pwrite(72, struct.pack(">Q", h.incompatible_features | S.INCOMPAT_DIRTY))
        f.flush()
        h.incompatible_features |= S.INCOMPAT_DIRTY
    try:
        _empty_broken_refcounts(drv, l1_bytes, l1_clusters)
    except BaseException:
        # as QEMU (bs->drv = NULL): nothing more is written to this image, not even on close
        drv.stop()
        raise
    # clean again: the refcounts are right
    h.incompatible_features &= ~S.INCOMPAT_DIRTY
    drv.flush_caches()
    drv.update_header()
    f.truncate((3 + l1_clusters) * cs)


def _empty_broken_refcounts(drv: "Qcow2Format", l1_bytes: int, l1_clusters: int) -> None:
    """The part of make_completely_empty during which the refcounts on disk are broken."""
    cs, h, f = drv.cluster_size, drv.header, drv.file
    f.debug_event("l1_update")
    if l1_clusters:
        f.write_zeroes(h.l1_table_offset, l1_clusters * cs)
    drv.l1 = array("Q", bytes(l1_bytes))
    f.debug_event("empty_image_prepare")
    f.write_zeroes(cs, (2 + l1_clusters) * cs)
    f.debug_event("l1_update")
    f.debug_event("reftable_update")
    f.pwrite(40, struct.pack(">QQI", 3 * cs, cs, 1))
    f.flush()
    h.l1_table_offset = 3 * cs
    h.refcount_table_offset = cs
    h.refcount_table_clusters = 1
    drv.refcounts.table = array("Q", bytes(cs))
    f.debug_event("refblock_alloc")
    f.pwrite(cs, struct.pack(">Q", 2 * cs))
    f.flush()
    drv.refcounts.table[0] = 2 * cs
    drv.refcounts.free_cluster_index = 0
    drv.refcounts.free_byte_offset = 0
    if drv.refcounts.alloc(-(-(3 * cs + l1_bytes) // cs)) != 0:
        raise QimgError("First cluster in emptied image is in use")


def make_empty(drv: "Qcow2Format") -> None:
    """Drop every cluster of the active layer (commit without -d), keeping the L1 size."""
    h = drv.header
    l1_clusters = -(-h.l1_size * 8 // drv.cluster_size)
    if (h.version >= 3 and not h.nb_snapshots and h.bitmaps_ext is None and drv.data_file is None
            and h.crypt_method != 2 and 3 + l1_clusters <= drv.refcounts.block_entries):
        _make_completely_empty(drv)
        return
    # QEMU's fallback discards every cluster; the L2 tables stay (v2, snapshots, bitmaps, data file)
    drv.allocator.discard_range(0, drv.header.size, full=True)
    drv.flush_caches()
