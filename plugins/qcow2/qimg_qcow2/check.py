"""qcow2 consistency check and repair (``qemu-img check [-r leaks|all]``): the snapshot table
first, then the expected refcounts (checkwalk.py) compared with the stored ones and repaired
(repair.py), then the COPIED flags; the result as qemu-img reports it.
"""
from __future__ import annotations

import struct
import sys

from qimg.compat import program
from qimg.driver import CheckResult
from qimg.errors import QimgError

from . import structs as S
from .checkwalk import FIX_ERRORS, FIX_LEAKS, Checker, CheckFailed, StoredRefcounts
from .repair import check_oflag_copied, compare, rebuild_refcounts

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format

__all__ = ["CheckFailed", "FIX_ERRORS", "FIX_LEAKS", "check_image"]


def check_image(drv: "Qcow2Format", fix: set[str]) -> CheckResult:
    """``qemu-img check`` for an open qcow2 image; ``fix`` is a subset of {"leaks", "errors"}."""
    fix = set(fix)
    if fix and not drv.writable:
        raise QimgError("Cannot repair a read-only image")
    if drv.writable:
        drv.flush_caches()
    c = Checker(drv, fix)
    res = CheckResult(filename=drv.filename, format="qcow2", image_end_offset=0, total_clusters=0,
                      allocated_clusters=0, fragmented_clusters=0, compressed_clusters=0)
    res.total_clusters = -(-drv.size // c.cluster_size)  # whole sectors, as QEMU
    # the snapshot table's results are kept apart from the refcounts' (which decide about
    # repairs) and added at the end, as qemu-img does
    snap = CheckResult()
    snapshots, table_size = _check_read_snapshot_table(drv, c, fix, snap)
    stored = StoredRefcounts(drv)
    c.snapshots = snapshots
    c.reftable = stored.table
    table, rebuild = c.calculate(res, stored, snapshots)
    pre = _copy(res)
    highest = [0]
    if compare(c, res, stored, table, set(), highest):
        rebuild = True
    if rebuild and FIX_ERRORS in fix:
        old = _copy(res)
        c.say("Rebuilding refcount structure")
        rebuild_refcounts(c, table)
        res.corruptions = 0
        res.leaks = 0
        stored = StoredRefcounts(drv)
        # references are counted again for the new structures, without repairing anything
        c.fix = set()
        table, rebuild = c.calculate(res, stored, snapshots)
        c.fix = fix
        fresh_leaks = 0
        if FIX_LEAKS in fix:
            saved = _copy(res)
            tmp = CheckResult()
            highest = [0]
            if compare(c, tmp, stored, table, {FIX_LEAKS}, highest):
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
            compare(c, res, stored, table, fix, highest)
            drv.flush_caches()
    check_oflag_copied(c, res)
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


def _check_read_snapshot_table(drv: "Qcow2Format", c: Checker, fix: set[str], snap: CheckResult
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


def repair_dirty(drv: "Qcow2Format") -> None:
    """Repair refcounts after an unclean shutdown with lazy refcounts (QEMU repairs on open):
    the check's lines go to stderr; a repair with internal errors fails the open (the dirty
    bit stays)."""
    try:
        res = check_image(drv, {FIX_LEAKS, FIX_ERRORS})
    except CheckFailed as e:
        sys.stderr.write("".join(line + "\n" for line in e.messages))
        raise QimgError(f"Could not repair dirty image: {e.message}") from None
    sys.stderr.write("".join(line + "\n" for line in res.messages))
    if res.check_errors:
        raise QimgError("Could not repair dirty image: Input/output error")
