"""qemu-img amend for qcow2: compat up/down, lazy_refcounts, refcount_bits, backing, data file, size."""
from __future__ import annotations

import sys
from array import array

from qimg.errors import QimgError

from . import structs as S
from .bitmap import has_bitmaps

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from typing import Any

    from qimg.driver import ProgressFn

    from .driver import Qcow2Format

V3 = "compatibility level 1.1 and above (use version=v3 or greater)"


def amend(drv: "Qcow2Format", opts: dict[str, Any], progress: "ProgressFn | None" = None,
          force: bool = False) -> None:
    """Apply amend options in QEMU's order: checks, upgrade, backing, lazy refcounts, refcount
    width, data file, size, and a downgrade last."""
    h = drv.header
    if any(k.startswith("encrypt.") for k in opts):
        if not h.crypt_method:
            raise QimgError("Can't amend encryption options - encryption not present")
        raise QimgError("Amending the keyslots of encrypted qcow2 images is not supported by qimg")
    old_version = h.version
    version = old_version
    compat = opts.get("compat")
    if compat is not None:
        if compat in ("0.10", "v2"):
            version = 2
        elif compat in ("1.1", "v3"):
            version = 3
        else:
            raise QimgError(f"Unknown compatibility level {compat}")
    lazy = opts.get("lazy_refcounts")
    rb = opts.get("refcount_bits")
    if rb is not None and (rb < 1 or rb > 64 or rb & (rb - 1)):
        raise QimgError("Refcount width must be a power of two and may not exceed 64 bits")
    # (QEMU: an empty data_file= is given too, it clears the name: "amend -o data_file=")
    if opts.get("data_file") is not None and drv.data_file is None:
        raise QimgError("data-file can only be set for images that use an external data file")
    raw = opts.get("data_file_raw")
    if raw and not drv.data_raw:
        raise QimgError("data-file-raw cannot be set on existing images")
    status = AmendStatus(progress, (version != old_version) + (rb is not None and rb != drv.refcounts.bits))
    if version > old_version:
        status.operation("upgrade")
        status(0, 2)
        if h.nb_snapshots:
            from .snapshot import read_snapshots, write_snapshot_table

            # v3 wants the VM state size and the disk size in every entry's extra data: a
            # table with a short entry is written again (all entries then carry 24 bytes)
            if any(sn.extra_data_size < 16 for sn in read_snapshots(drv)):
                drv.flush_caches()
                write_snapshot_table(drv, read_snapshots(drv))
                drv.flush_caches()
        h.version = version
        h.refcount_order = drv.refcounts.order
        status(1, 2)
        drv.update_header()
        status(2, 2)
    if "backing_file" in opts or "backing_fmt" in opts:
        if opts.get("backing_file") != h.backing_file or opts.get("backing_fmt") != h.backing_format:
            raise QimgError("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.")
    if lazy is not None and lazy != bool(h.compatible_features & S.COMPAT_LAZY_REFCOUNTS):
        if lazy:
            if version < 3:
                raise QimgError("Lazy refcounts only supported with compatibility level 1.1 and above "
                                "(use compat=1.1 or greater)")
            h.compatible_features |= S.COMPAT_LAZY_REFCOUNTS
        else:
            drv.flush_caches()
            h.compatible_features &= ~S.COMPAT_LAZY_REFCOUNTS
            h.incompatible_features &= ~S.INCOMPAT_DIRTY
            drv.dirty_set = False
        drv.update_header()
    if rb is not None and rb != drv.refcounts.bits:
        if version < 3 and rb != 16:
            raise QimgError("Refcount widths other than 16 bits require compatibility level 1.1 or above "
                            "(use compat=1.1 or greater)")
        status.operation("refcount order")
        change_refcount_order(drv, rb.bit_length() - 1, status)
    if opts.get("data_file") is not None:
        h.data_file = opts["data_file"] or None
        drv.update_header()
    if raw is False and drv.data_raw:
        h.autoclear_features &= ~S.AUTOCLEAR_DATA_FILE_RAW
        drv.update_header()
    size = opts.get("size")
    if size and size != h.size:  # QEMU reads size=0 as "not given"
        from qimg.limits import MAX_IMAGE_SIZE

        from .resize import truncate

        # the block layer's checks of the uint64 option, before the driver's own
        if size >= 1 << 63:
            raise QimgError("Image size cannot be negative")
        if size > MAX_IMAGE_SIZE:
            raise QimgError(f"offset({size}) exceeds maximum({MAX_IMAGE_SIZE})")
        truncate(drv, size, shrink=True)
    if version < old_version:
        if drv.writable and has_bitmaps(drv):
            from .bitmapops import session

            session(drv)  # QEMU loaded them at open (marked in use) and stores them at close
        status.operation("downgrade")
        downgrade(drv, status)
    drv.flush_caches()


class AmendStatus:
    """QEMU's amend progress: each operation (upgrade, refcount order, downgrade) reports
    ``(offset, work)`` of its own; the total is projected from the operations done so far
    (qcow2_amend_helper_cb), and the caller gets ``progress(offset, total)``."""

    def __init__(self, progress: "ProgressFn | None", operations: int) -> None:
        self.progress = progress
        self.operations = operations
        self.current: str | None = None
        self.last: str | None = None
        self.completed = 0
        self.offset_completed = 0
        self.last_work = 0

    def operation(self, name: str) -> None:
        self.current = name

    def __call__(self, offset: int, work: int) -> None:
        if self.progress is None or self.operations <= 0:
            return
        if self.current != self.last:
            if self.last is not None:
                self.offset_completed += self.last_work
                self.completed += 1
            self.last = self.current
        self.last_work = work
        current = self.offset_completed + work
        projected = current * (self.operations - self.completed - 1) // (self.completed + 1)
        self.progress(self.offset_completed + offset, current + projected)


def downgrade(drv: "Qcow2Format", status: AmendStatus) -> None:
    h = drv.header
    if drv.refcounts.order != 4:
        raise QimgError("compat=0.10 requires refcount_bits=16")
    if drv.data_file is not None:
        raise QimgError("Cannot downgrade an image with a data file")
    snapshots = []
    if h.nb_snapshots:
        from .snapshot import read_snapshots

        snapshots = read_snapshots(drv)
    # v2 readers would not know that a snapshot's size or a VM state past 4 GiB matters
    if any(sn.vm_state_size > 0xFFFFFFFF or sn.disk_size != h.size // 512 * 512 for sn in snapshots):
        raise QimgError("Internal snapshots prevent downgrade of image")
    if h.incompatible_features & S.INCOMPAT_DIRTY:
        drv.flush_caches()
        h.incompatible_features &= ~S.INCOMPAT_DIRTY
        drv.dirty_set = False
    if h.incompatible_features & ~S.INCOMPAT_COMPRESSION:
        raise QimgError(f"Cannot downgrade an image with incompatible features {h.incompatible_features:#x} set")
    h.compatible_features = 0
    h.autoclear_features = 0
    # v2 has no zero clusters: turn them into data (or drop them when nothing shows through)
    l1s: list[tuple[int, int, bool]] = [(h.l1_table_offset, h.l1_size, True)]
    l1s += [(sn.l1_table_offset, sn.l1_size, False) for sn in snapshots]
    # QEMU reports one step per L1 entry visited, over the active and the snapshot tables
    entries = sum(size for _, size, _ in l1s)
    visited = 0
    for l1_off, l1_size, active in l1s:
        if active:
            l1 = drv.l1
        else:
            from qimg.compat import program

            from .snapshot import BadSnapshotL1, read_snapshot_l1

            try:
                l1 = read_snapshot_l1(drv, l1_off, l1_size)  # checked when reached, as QEMU does
            except BadSnapshotL1 as e:
                raise QimgError(f"{e.message}\n{program()}: Failed to turn zero into data clusters: "
                                f"{e.errno_text}") from None
        try:
            _expand_zero_clusters(drv, l1, active)
        except (QimgError, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise QimgError(f"Failed to turn zero into data clusters: {reason}") from None
        for _ in range(l1_size):
            visited += 1
            status(visited, entries)
    drv.flush_caches()
    h.version = 2
    h.incompatible_features = 0
    # the bitmaps stay: QEMU keeps their extension in the v2 header and stores them at close
    # (where a later open, seeing no autoclear bit to vouch for them, drops them)
    drv.update_header()


def _expand_zero_clusters(drv: "Qcow2Format", l1: array, active: bool) -> None:
    cb, cs = drv.cluster_bits, drv.cluster_size
    for l1i in range(len(l1)):
        l2off = l1[l1i] & S.L1E_OFFSET_MASK
        if not l2off:
            continue
        tbl = drv.clusters.get_l2(l2off, l1i)
        l2_refs = drv.refcounts.get(l2off >> cb)
        changed = False
        for i in range(drv.l2_entries):
            e = tbl[i]
            if e & S.OFLAG_COMPRESSED or not e & S.OFLAG_ZERO:
                continue
            host = e & S.L2E_OFFSET_MASK
            if host & (cs - 1):
                drv.corrupt(f"Cluster allocation offset {S.chex(host)} unaligned (L2 offset: {S.chex(l2off)}, "
                             f"L2 index: {S.chex(i)})")
            if not host and drv.backing is None:  # any table's, as QEMU (the guest size aside)
                tbl[i] = 0
            else:
                if not host:
                    host = drv.refcounts.alloc(1)
                    if l2_refs > 1:
                        drv.refcounts.set(host >> cb, l2_refs)
                drv.pre_write(0, host, cs, data_file=True)
                drv.file.pwrite(host, bytes(cs))
                # COPIED as the L2 table's refcount says (QEMU's rule, the cluster's own aside)
                tbl[i] = host | (S.OFLAG_COPIED if l2_refs == 1 else 0)
            changed = True
        if changed:
            drv.clusters.cache.mark_dirty(l2off)


#: QEMU's QCOW_MAX_REFTABLE_SIZE (bytes)
_MAX_REFTABLE_SIZE = 8 << 20


def _be64(values: list[int]) -> bytes:
    a = array("Q", values)
    if sys.byteorder == "little":
        a.byteswap()
    return a.tobytes()


def _set_in(blk: bytearray, i: int, v: int, order: int) -> None:
    """Refcount ``i`` of a block of width 2^order (QEMU's set_refcount_ro<order>)."""
    if order >= 3:
        w = 1 << (order - 3)
        blk[i * w : i * w + w] = v.to_bytes(w, "big")
        return
    bits, per = 1 << order, 8 >> order
    sh = (i % per) * bits
    blk[i // per] = (blk[i // per] & ~(((1 << bits) - 1) << sh)) | (v << sh)


def change_refcount_order(drv: "Qcow2Format", order: int, status: "AmendStatus | None" = None) -> None:
    """Rewrite every refcount with a new width as QEMU's qcow2_change_refcount_order does:
    walks over the old refcount table allocate the new refcount blocks (in the old structures,
    where the allocator finds room) until a walk allocates nothing, each time with a new table
    allocated after them; a last walk writes the new blocks; then the new table, the header, and
    the old blocks and table freed. Progress is reported per table entry of each walk, the
    number of walks growing when one more is needed (QEMU's regressing progress)."""
    cb, cs = drv.cluster_bits, drv.cluster_size
    new_bits = 1 << order
    new_entries = (cs * 8) >> order
    drv.flush_caches()
    new_table: list[int] = []

    def walk(index: int, total: int, write: bool) -> bool:
        """One walk over the old table (its size may grow meanwhile, as QEMU's loop reads it
        live); True when a new block was allocated. ``write``: fill and write the new blocks."""
        allocated = False
        new_index = fill = 0
        empty = True
        block = bytearray(cs)

        def finish() -> None:
            nonlocal allocated
            if write:
                if new_index < len(new_table) and new_table[new_index]:
                    _overlap_check(drv, new_table[new_index], cs)
                    drv.file.pwrite(new_table[new_index], block)
                return
            if empty:
                return
            if new_index >= len(new_table):
                size = -(-(new_index + 1) // (cs // 8)) * (cs // 8)
                if size > _MAX_REFTABLE_SIZE // 8:
                    raise QimgError("This operation would make the refcount table grow beyond the maximum size "
                                    "supported by QEMU, aborting")
                new_table.extend([0] * (size - len(new_table)))
            if not new_table[new_index]:
                new_table[new_index] = drv.refcounts.alloc(1)
                allocated = True

        old_entries = drv.refcounts.block_entries
        ti = 0
        while ti < len(drv.refcounts.table):
            size = len(drv.refcounts.table)
            if status is not None:
                status(index * size + ti, total * size)
            off = drv.refcounts.table[ti] & S.REFT_OFFSET_MASK
            if off and off & (cs - 1):
                try:
                    drv.corrupt(f"Refblock offset {off:#x} unaligned (reftable index: {ti:#x})")
                except QimgError:
                    pass
                raise QimgError("Image is corrupt (unaligned refblock offset)")
            old = drv.refcounts.cache.get(off) if off else None
            if old is None:
                # no refblock: its refcounts are all zero, taken in runs (a table's most entries)
                left = old_entries
                while left:
                    if fill >= new_entries:
                        finish()
                        new_index += 1
                        fill = 0
                        empty = True
                    n = min(left, new_entries - fill)
                    if write:  # entry counts are multiples of 8: whole bytes
                        block[fill * new_bits // 8 : (fill + n) * new_bits // 8] = bytes(n * new_bits // 8)
                    fill += n
                    left -= n
                ti += 1
                continue
            for bi in range(old_entries):
                if fill >= new_entries:
                    finish()
                    new_index += 1
                    fill = 0
                    empty = True
                v = drv.refcounts.entry(old, bi) if old is not None else 0
                if old is not None and new_bits < 64 and v >> new_bits:
                    raise QimgError(f"Cannot decrease refcount entry width to {new_bits} bits: Cluster at offset "
                                    f"{_c_hex((ti * old_entries + bi) << cb)} has a refcount of {v}")
                if write:
                    _set_in(block, fill, v, order)
                fill += 1
                empty = empty and v == 0
            ti += 1
        if fill:
            if write:
                for i in range(fill, new_entries):
                    _set_in(block, i, 0, order)
            finish()
            new_index += 1
        if status is not None:
            size = len(drv.refcounts.table)
            status((index + 1) * size, total * size)
        return allocated

    walk_index = 0
    table_offset = table_allocated = 0
    while True:
        total = max(walk_index + 2, 3)
        allocated = walk(walk_index, total, False)
        walk_index += 1
        if not allocated:
            break
        if table_offset:
            drv.refcounts.free(table_offset, table_allocated * 8)
        table_offset = drv.refcounts.alloc(-(-len(new_table) * 8 // cs))
        table_allocated = len(new_table)
    walk(walk_index, walk_index + 1, True)
    _overlap_check(drv, table_offset, len(new_table) * 8)
    drv.file.pwrite(table_offset, _be64(new_table))
    drv.flush_caches()
    h = drv.header
    old_table, old_offset = drv.refcounts.table, h.refcount_table_offset
    h.refcount_order = order
    h.refcount_table_offset = table_offset
    h.refcount_table_clusters = -(-len(new_table) * 8 // cs)
    drv.refcounts.cache.tables.clear()
    drv.refcounts.cache.dirty.clear()
    drv.refcounts.set_order(order)
    drv.refcounts.table = array("Q", new_table)
    drv.refcounts.free_cluster_index = 0
    drv.update_header()
    # the old blocks and table are freed in the new structures (not discarded)
    for e in old_table:
        off = e & S.REFT_OFFSET_MASK
        if off:
            drv.refcounts.free(off, cs)
    if old_offset:
        drv.refcounts.free(old_offset, len(old_table) * 8)
    drv.flush_caches()


def _c_hex(v: int) -> str:
    """printf's ``%#x``: no prefix for zero."""
    return f"{v:#x}" if v else "0"


def _overlap_check(drv: "Qcow2Format", offset: int, size: int) -> None:
    """The overlap check before writing a new refcount structure, worded as QEMU's."""
    from .overlap import RequestFailed

    try:
        drv.pre_write(0, offset, size)
    except RequestFailed as e:
        raise QimgError(f"Overlap check failed: {e.strerror}") from None
