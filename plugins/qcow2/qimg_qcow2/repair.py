"""qcow2 check's comparison and repairs (QEMU's compare_refcounts, check_oflag_copied and
rebuild_refcount_structure): stored refcounts against the expected ones (leaks and errors fixed
through the driver's refcounts, so that its in-memory model stays consistent), the COPIED flags,
and the full rebuild, which writes new structures and then hands them to the driver.
"""
from __future__ import annotations

import errno
import os
import struct
from array import array

from qimg.compat import program
from qimg.driver import CheckResult
from qimg.errors import QimgError
from qimg.tables import same_run, zero_run

from . import structs as S
from .checkwalk import (
    FIX_ERRORS,
    FIX_LEAKS,
    LITTLE,
    Checker,
    CheckFailed,
    StoredRefcounts,
    be_u64_array,
    encode_refcounts,
    grow_table,
    strerror_of,
)
from .overlap import STRUCTURE_NAMES, find_overlap, signal_corruption

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format


def compare(c: Checker, res: CheckResult, stored: StoredRefcounts, table: array, fix: set[str],
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
            if offset & (c.cluster_size - 1):
                # QEMU's refcount lookup reports the unaligned block as a corruption
                signal_corruption(c.drv, f"Refblock offset {S.chex(offset)} unaligned (reftable index: "
                                            f"{S.chex(base >> bb)})", say=c.say)
            for i in range(base, end):
                c.say(f"Can't get refcount for cluster {i}: Input/output error")
                res.check_errors += 1
            continue
        if stored.bits >= 8 and _same_block(blk, stored.bits >> 3, base, end, table, highest):
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
            c.say(f"{word} cluster {i} refcount={r1} reference={r2}")
            if fixed:
                try:
                    c.drv.refcounts.set(i, r2)
                    stored.set_cached(i, r2)
                    if r2 == 0:
                        c.file.discard(i << c.cluster_bits, c.cluster_size)
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


def _same_block(raw: bytes | None, w: int, base: int, end: int, table: array, highest: list[int]) -> bool:
    """True when the stored refcounts of clusters base..end-1 (``raw``, ``w`` bytes each,
    big-endian) equal the computed ones; then ``highest`` is updated as compare() does.
    Compared in C; False (nothing done) when they differ."""
    want = table[base:end]
    if w > 1 and LITTLE:
        want.byteswap()
    want = want.tobytes()
    have = raw[: len(want)] if raw is not None else bytes(len(want))
    if have != want:
        return False
    used = len(have.rstrip(b"\0"))
    if used:
        highest[0] = max(highest[0], base + (used - 1) // w)
    return True


def check_oflag_copied(c: Checker, res: CheckResult) -> None:
    drv = c.drv
    if FIX_ERRORS in c.fix:
        repair = True
    elif FIX_LEAKS in c.fix:
        repair = not res.check_errors and not res.corruptions and not res.leaks
    else:
        repair = False
    word = "Repairing" if repair else "ERROR"
    stored = StoredRefcounts(drv)
    l1 = be_u64_array(c.read(c.h.l1_table_offset, c.h.l1_size * 8))
    for i, e in enumerate(l1):
        l2_offset = e & S.L1E_OFFSET_MASK
        if not l2_offset:
            continue
        try:
            rc = stored.get(l2_offset >> c.cluster_bits)
        except OSError:
            continue
        if (rc == 1) != bool(e & S.OFLAG_COPIED):
            res.corruptions += 1
            c.say(f"{word} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}")
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
        entries, _ = c.load_l2(l2_offset)
        dirty: list[tuple[int, int]] = []
        for j, le in _copied_suspects(c, entries, stored):
            if not le or le & S.OFLAG_COMPRESSED:
                continue
            off = le & S.L2E_OFFSET_MASK
            if not off and not (c.data_file and le & S.OFLAG_COPIED):
                continue
            if c.data_file:
                rc = 1
            else:
                try:
                    rc = stored.get(off >> c.cluster_bits)
                except OSError:
                    continue
            if (rc == 1) != bool(le & S.OFLAG_COPIED):
                res.corruptions += 1
                c.say(f"{word} OFLAG_COPIED data cluster: l2_entry={le:x} refcount={rc}")
                if repair:
                    dirty.append((j, le | S.OFLAG_COPIED if rc == 1 else le & ~S.OFLAG_COPIED))
        if dirty:
            name = c.overlap(l2_offset, c.cluster_size)
            if name is not None:
                c.signal_overlap(name)
                c.say("ERROR: Could not write L2 table; metadata overlap check failed: Input/output error")
                res.check_errors += 1
                raise CheckFailed("Input/output error", c.msgs)
            try:
                l2 = drv.clusters.get_l2(l2_offset)
                step = 2 if c.extended_l2 else 1
                for j, v in dirty:
                    l2[j * step] = v
                drv.clusters.cache.mark_dirty(l2_offset)
                drv.flush_caches()
            except (OSError, QimgError) as exc:
                c.say(f"ERROR: Could not write L2 table: {strerror_of(exc)}")
                res.check_errors += 1
                return
            res.corruptions -= len(dirty)
            res.corruptions_fixed += len(dirty)


def _copied_suspects(c: Checker, entries: array, stored: StoredRefcounts) -> "list[tuple[int, int]] | enumerate":
    """(index, entry) of the L2 entries whose OFLAG_COPIED may disagree with the stored
    refcount (a superset, in entry order: the caller checks each): all of them with a data
    file; otherwise the runs of contiguous normal clusters whose stored refcounts are not
    all 1 (with the flag) or all the same other value (without), compared in C."""
    if c.data_file:
        return enumerate(entries)
    om, comp, copied = S.L2E_OFFSET_MASK, S.OFLAG_COMPRESSED, S.OFLAG_COPIED
    cs, cb = c.cluster_size, c.cluster_bits
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


def _pre_write(c: Checker, offset: int, size: int, line: str) -> None:
    """The overlap check of a rebuilt structure; a hit ends the check (QEMU's words)."""
    ol = c.drv.overlap
    bit = find_overlap(c.drv, ol.mask, offset, size) if ol is not None else 0
    if bit:
        c.signal_overlap(STRUCTURE_NAMES[bit.bit_length() - 1])
        c.say(line.format(os.strerror(errno.EIO)))
        raise CheckFailed(os.strerror(errno.EIO), c.msgs)


def rebuild_refcounts(c: Checker, table: array) -> None:
    """Write fresh refcount blocks and table for the computed refcounts ``table`` and switch
    to them, laid out as QEMU 7.2's rebuild_refcount_structure: blocks in cluster order, each
    in the first free cluster from the start of the range it covers; then the table in the
    first free clusters of the image, the blocks covering it written again (and all of it
    once more while the table has to grow). The old structures become leaks."""
    cs = c.cluster_size
    rc_bits = 1 << c.h.refcount_order
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
            grow_table(table, cluster + count - run)
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
            _pre_write(c, offset, cs, program() + ": ERROR writing refblock: {}")
            vals = table[start:start + per_block].tolist()
            vals += [0] * (per_block - len(vals))
            c.file.pwrite(offset, encode_refcounts(vals, rc_bits))
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
    _pre_write(c, rt_offset, len(raw), program() + ": ERROR writing reftable: {}")
    c.file.pwrite(rt_offset, raw)
    c.file.flush()
    _install_reftable(c.drv, rt_offset, rt_clusters, rt)
    c.file_len = c.file.size()


def _swapped(arr: array) -> bytes:
    a = array("Q", arr)
    a.byteswap()
    return a.tobytes()


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
