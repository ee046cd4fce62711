"""qcow2 internal snapshots: the snapshot table, per-snapshot L1 tables and refcount sharing.

Layout of one snapshot table entry (docs/interop/qcow2.rst, "Snapshots"): a 40-byte fixed part,
``extra_data_size`` bytes of extra data (vm_state_size_large, disk_size, icount, then anything a
newer writer added, which we keep byte for byte), the id string, the name, padding to 8 bytes.

Taking a snapshot copies the active L1 table and counts one more reference to every L2 table and
data cluster it reaches (clearing OFLAG_COPIED, so the driver's write path copies them before
writing). Deleting drops those references again; applying a snapshot swaps the L1 contents.
"""
from __future__ import annotations

import errno
import os
import struct
import time
from array import array

from qimg.compat import program
from qimg.driver import SnapshotInfo
from qimg.errors import CorruptImage, QimgError
from qimg.records import Record
from qimg.tables import same_run, zero_run
from qimg.values import Value

from . import structs as S

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from .driver import Qcow2Format

SnapshotHeader = Record(
    ">",
    ("l1_table_offset", "Q"),
    ("l1_size", "I"),
    ("id_str_size", "H"),
    ("name_size", "H"),
    ("date_sec", "I"),
    ("date_nsec", "I"),
    ("vm_clock_nsec", "Q"),
    ("vm_state_size", "I"),
    ("extra_data_size", "I"),
    name="qcow2 snapshot table entry",
)
SNAPSHOT_HEADER_SIZE = 40
#: the extra data QEMU 7.2 writes: vm_state_size_large, disk_size, icount
KNOWN_EXTRA_SIZE = 24
MAX_EXTRA_SIZE = 1024
#: QEMU's cap on the whole table (QCOW_MAX_SNAPSHOTS_SIZE)
MAX_TABLE_SIZE = 64 << 20
NO_ICOUNT = (1 << 64) - 1


class SnapshotTableError(QimgError):
    """An unreadable snapshot table; ``reason`` is the errno text a failed check ends with."""

    def __init__(self, message: str, reason: str = "Invalid argument", hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.hint = hint


class Snapshot(Value):
    """One snapshot table entry. ``unknown_extra``: extra data beyond the three known fields,
    preserved as read; ``extra_data_size`` as read (new snapshots write the known 24 bytes);
    ``disk_entry_size``: bytes the entry takes in the table it was read from (0: new).
    (A plain class: dataclasses would cost ``qimg check`` its start-up time.)"""

    __slots__ = ("l1_table_offset", "l1_size", "id", "name", "date_sec", "date_nsec", "vm_clock_nsec",
                 "vm_state_size", "disk_size", "icount", "unknown_extra", "extra_data_size", "disk_entry_size")
    _fields = __slots__

    def __init__(self, l1_table_offset: int, l1_size: int, id: str, name: str, date_sec: int = 0,  # noqa: A002
                 date_nsec: int = 0, vm_clock_nsec: int = 0, vm_state_size: int = 0, disk_size: int = 0,
                 icount: int = NO_ICOUNT, unknown_extra: bytes = b"", extra_data_size: int = KNOWN_EXTRA_SIZE,
                 disk_entry_size: int = 0) -> None:
        self.l1_table_offset, self.l1_size, self.id, self.name = l1_table_offset, l1_size, id, name
        self.date_sec, self.date_nsec, self.vm_clock_nsec = date_sec, date_nsec, vm_clock_nsec
        self.vm_state_size, self.disk_size, self.icount = vm_state_size, disk_size, icount
        self.unknown_extra, self.extra_data_size, self.disk_entry_size = unknown_extra, extra_data_size, disk_entry_size

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(id=self.id, name=self.name, vm_state_size=self.vm_state_size,
                            date_sec=self.date_sec, date_nsec=self.date_nsec,
                            vm_clock_nsec=self.vm_clock_nsec,
                            icount=None if self.icount == NO_ICOUNT else self.icount)

    def encode(self) -> bytes:
        id_b = self.id.encode()
        name_b = self.name.encode()
        extra = struct.pack(">QQQ", self.vm_state_size, self.disk_size, self.icount) + self.unknown_extra
        head = SnapshotHeader.build(dict(
            l1_table_offset=self.l1_table_offset, l1_size=self.l1_size, id_str_size=len(id_b),
            name_size=len(name_b), date_sec=self.date_sec & 0xFFFFFFFF, date_nsec=self.date_nsec,
            vm_clock_nsec=self.vm_clock_nsec, vm_state_size=self.vm_state_size & 0xFFFFFFFF,
            extra_data_size=len(extra)))
        return head + extra + id_b + name_b


def snapshot_table_size(snapshots: list[Snapshot]) -> int:
    """Bytes of the table as QEMU counts them: entries aligned to 8, the last one unpadded
    (entries read from disk count with their size there)."""
    size = 0
    for sn in snapshots:
        size = (size + 7) & ~7
        size += sn.disk_entry_size or len(sn.encode())
    return size


def encode_table(snapshots: list[Snapshot]) -> bytes:
    out = bytearray()
    for sn in snapshots:
        out += bytes((-len(out)) % 8)
        out += sn.encode()
    return bytes(out)


def _pread_padded(drv: "Qcow2Format", offset: int, n: int) -> bytes:
    if n <= 0:
        return b""
    try:
        data = drv.file.pread(offset, n)
    except (OSError, OverflowError):
        data = b""
    return data + bytes(n - len(data))


class _TableReader:
    """Reads the table's fields through a window of the file (one pread per MiB, not per
    field); bytes past the end of the file read as zeroes, as QEMU's block layer reads them."""

    WINDOW = 1 << 20

    def __init__(self, drv: "Qcow2Format") -> None:
        self.drv, self.start, self.buf = drv, 0, b""

    def read(self, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        if offset < self.start or offset + n > self.start + len(self.buf):
            if n > self.WINDOW:
                return _pread_padded(self.drv, offset, n)
            self.start, self.buf = offset, _pread_padded(self.drv, offset, self.WINDOW)
        i = offset - self.start
        return self.buf[i : i + n]


class SnapshotRepair:
    """What ``check -r`` changes while reading a broken table (QEMU's repair mode of
    qcow2_do_read_snapshots): ``reduced`` snapshots dropped off the end of a table that is too
    big, ``dropped`` entries whose extra data was cut to the maximum; ``table_size`` the bytes
    the kept entries take on disk."""

    def __init__(self, say: "Callable[[str], None]") -> None:
        self.say, self.reduced, self.dropped, self.table_size = say, 0, 0, 0


#: QEMU's INT_MAX bound on the snapshot table's extent on disk
_INT_MAX = (1 << 31) - 1


def read_snapshots(drv: "Qcow2Format", repair: SnapshotRepair | None = None) -> list[Snapshot]:
    """Parse the snapshot table; QimgError on a table that cannot be read. With ``repair``
    (``check -r all``), too much extra data is cut and a table that is too big is cut short
    instead, each with QEMU's message, as ``repair`` records."""
    h = drv.header
    n = h.nb_snapshots
    if not n:
        return []
    if n > S.MAX_SNAPSHOTS:
        raise QimgError("Too many snapshots")
    offset = h.snapshots_offset
    if offset & ((1 << h.cluster_bits) - 1) or offset + n * SNAPSHOT_HEADER_SIZE > (1 << 63) - 1:
        raise QimgError("Snapshot table offset invalid")
    reader = _TableReader(drv)
    default_disk_size = h.size // 512 * 512  # QEMU's total_sectors, in bytes
    out: list[Snapshot] = []
    pos = offset
    table_length = 0
    for i in range(n):
        entry_start = pos
        table_length = (table_length + 7) & ~7
        pos = (pos + 7) & ~7
        sh = SnapshotHeader.parse(reader.read(pos, SNAPSHOT_HEADER_SIZE))
        pos += SNAPSHOT_HEADER_SIZE
        extra_size = kept = sh.extra_data_size
        if extra_size > MAX_EXTRA_SIZE:
            if repair is None:
                raise SnapshotTableError(f"Too much extra metadata in snapshot table entry {i}", "File too large",
                                         "You can force-remove this extra metadata with qemu-img check -r all")
            repair.say(f"Discarding too much extra metadata in snapshot table entry {i} "
                       f"({extra_size} > {MAX_EXTRA_SIZE})")
            repair.dropped += 1
            kept = MAX_EXTRA_SIZE
        known = reader.read(pos, min(KNOWN_EXTRA_SIZE, extra_size))
        pos += len(known)
        unknown = b""
        if extra_size > KNOWN_EXTRA_SIZE:
            unknown = reader.read(pos, kept - KNOWN_EXTRA_SIZE)
            pos += extra_size - KNOWN_EXTRA_SIZE
        id_b = reader.read(pos, sh.id_str_size)
        pos += sh.id_str_size
        name_b = reader.read(pos, sh.name_size)
        pos += sh.name_size
        table_length += SNAPSHOT_HEADER_SIZE + kept + sh.id_str_size + sh.name_size
        if table_length > MAX_TABLE_SIZE or pos - offset > _INT_MAX:
            if repair is None:
                raise SnapshotTableError("Snapshot table is too big", "File too large",
                                         f"You can force-remove all {n - i} overhanging snapshots with "
                                         "qemu-img check -r all")
            repair.say(f"Discarding {n - i} overhanging snapshots (snapshot table is too big)")
            repair.reduced += n - i
            pos = entry_start
            break
        sn = Snapshot(l1_table_offset=sh.l1_table_offset, l1_size=sh.l1_size,
                      disk_entry_size=SNAPSHOT_HEADER_SIZE + extra_size + sh.id_str_size + sh.name_size,
                      # QEMU keeps them as C strings: they end at the first NUL
                      id=id_b.split(b"\0", 1)[0].decode("utf-8", "replace"),
                      name=name_b.split(b"\0", 1)[0].decode("utf-8", "replace"),
                      date_sec=sh.date_sec, date_nsec=sh.date_nsec, vm_clock_nsec=sh.vm_clock_nsec,
                      vm_state_size=sh.vm_state_size, disk_size=default_disk_size,
                      extra_data_size=kept)
        if len(known) >= 8:
            sn.vm_state_size = struct.unpack_from(">Q", known, 0)[0]
        if len(known) >= 16:
            sn.disk_size = struct.unpack_from(">Q", known, 8)[0]
        if len(known) >= 24:
            sn.icount = struct.unpack_from(">Q", known, 16)[0]
        sn.unknown_extra = bytes(unknown)
        out.append(sn)
    if repair is not None:
        repair.table_size = pos - offset
    return out


def _find(snapshots: list[Snapshot], snapshot_id: str | None, name: str | None) -> int:
    """Index of the snapshot matching id and/or name (QEMU's find_snapshot_by_id_and_name)."""
    for i, sn in enumerate(snapshots):
        if snapshot_id is not None and sn.id != snapshot_id:
            continue
        if name is not None and sn.name != name:
            continue
        if snapshot_id is None and name is None:
            continue
        return i
    return -1


def _find_id_or_name(snapshots: list[Snapshot], id_or_name: str) -> int:
    i = _find(snapshots, id_or_name, None)
    return i if i >= 0 else _find(snapshots, None, id_or_name)


# -- table writing --------------------------------------------------------------------
def write_snapshot_table(drv: "Qcow2Format", snapshots: list[Snapshot], old_size: int | None = None) -> None:
    """Write a new table into fresh clusters, switch the header to it, free the old one
    (``old_size`` bytes; by default the size of the table the header names)."""
    h = drv.header
    old_offset = h.snapshots_offset
    if old_size is None:
        old_size = snapshot_table_size(read_snapshots(drv)) if h.nb_snapshots else 0
    data = encode_table(snapshots)
    offset = 0
    if snapshots:
        cs = drv.cluster_size
        offset = drv.refcounts.alloc(-(-len(data) // cs))
        drv.pre_write(0, offset, len(data))  # before anything is flushed, as QEMU
        drv.flush_caches()
        drv.file.pwrite(offset, data)
    drv.flush_caches()
    drv.file.flush()
    h.nb_snapshots = len(snapshots)
    h.snapshots_offset = offset
    # nb_snapshots and snapshots_offset are adjacent: one write switches both
    drv.file.pwrite(60, struct.pack(">IQ", h.nb_snapshots, h.snapshots_offset))
    drv.file.flush()
    if old_offset and old_size:
        drv.refcounts.free(old_offset, old_size, discard=True)


# -- refcount sharing -------------------------------------------------------------------
def _update_refcounts(drv: "Qcow2Format", offset: int, length: int, addend: int) -> None:
    """QEMU's qcow2_update_cluster_refcount, cluster by cluster: a cluster whose refcount
    block is missing gets one, as QEMU allocates it, and then the update stops with EAGAIN
    (QEMU's snapshot code does not retry, unlike its allocators)."""
    cb = drv.cluster_bits
    for ci in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
        ti = ci >> drv.refcounts.block_bits
        if ti >= len(drv.refcounts.table) or not drv.refcounts.table[ti] & S.REFT_OFFSET_MASK:
            drv.refcounts.block_for(ci)
            drv.flush_caches()
            raise QimgError(os.strerror(errno.EAGAIN))
        drv.refcounts.update(ci << cb, 1 << cb, addend)
        if addend < 0:
            drv.refcounts.discard_unused(ci << cb, 1 << cb)  # QEMU passes snapshot frees down


def _run_refcounts(drv: "Qcow2Format", first: int, k: int, addend: int) -> int | None:
    """Add ``addend`` to the refcounts of clusters first..first+k-1 at once (C slices of the
    refcount block) and return their new common value, when they all have the same one in one
    existing block of byte-wide or wider refcounts and the result stays within 1..max (so no
    cluster is freed, no block allocated, no error raised). None (nothing done) otherwise."""
    order = drv.refcounts.order
    ti = first >> drv.refcounts.block_bits
    if order < 3 or ti != (first + k - 1) >> drv.refcounts.block_bits or ti >= len(drv.refcounts.table):
        return None
    off = drv.refcounts.table[ti] & S.REFT_OFFSET_MASK
    if not off or off & (drv.cluster_size - 1):
        return None
    blk = drv.refcounts.cache.get(off)
    w = 1 << (order - 3)
    a = (first & (drv.refcounts.block_entries - 1)) * w
    cur = bytes(blk[a : a + w])
    if k > 1 and blk[a : a + k * w] != cur * k:
        return None
    v = int.from_bytes(cur, "big") + addend
    if addend:
        if v < 1 or v > drv.refcounts.max:
            return None
        blk[a : a + k * w] = v.to_bytes(w, "big") * k
        drv.refcounts.cache.mark_dirty(off)
    return v


def _update_snapshot_refcount(drv: "Qcow2Format", l1: array, addend: int, *, is_active: bool) -> bool:
    """Add ``addend`` (-1, 0, +1) references to all clusters reached from ``l1`` and fix the
    OFLAG_COPIED flags of the entries to match the new refcounts. Returns True if ``l1`` changed."""
    cb = drv.cluster_bits
    cs = 1 << cb
    step = 2 if drv.extended_l2 else 1
    odd = S.OFLAG_COMPRESSED | (S.L2E_OFFSET_MASK & (cs - 1))
    l1_changed = False
    for i, e in enumerate(l1):
        l2_off = e & S.L1E_OFFSET_MASK
        if not l2_off:
            continue
        if l2_off & (cs - 1):
            drv.corrupt(f"L2 table offset {S.chex(l2_off)} unaligned (L1 index: {S.chex(i)})")
        l2_rc = drv.refcounts.get(l2_off >> cb)
        # a table that this change frees is left untouched (it must not be written back later)
        touch = not (addend < 0 and l2_rc <= 1)
        l2 = drv.clusters.get_l2(l2_off)
        dirty = False
        j, n, slow = 0, len(l2), 0
        while j < n:
            le = l2[j]
            if not le:
                j += step if step == 2 else zero_run(l2, j, n - j)
                continue
            if j >= slow and step == 1 and not le & odd and le & S.L2E_OFFSET_MASK:
                # a run of contiguous clusters with the same flags: counted at once when
                # nothing can go wrong for any of them (else cluster by cluster below)
                first = (le & S.L2E_OFFSET_MASK) >> cb
                # up to the end of the refcount block holding the first cluster's count
                k = same_run(l2, le, cs, j, drv.refcounts.block_entries - (first & (drv.refcounts.block_entries - 1)))
                rc = _run_refcounts(drv, first, k, addend)
                if rc is not None:
                    if touch:
                        new = le | S.OFLAG_COPIED if rc == 1 else le & ~S.OFLAG_COPIED
                        if new != le:
                            l2[j : j + k] = array("Q", range(new, new + k * cs, cs))
                            dirty = True
                    j += k
                    continue
                slow = j + k
            idx = j
            j += step
            if le & S.OFLAG_COMPRESSED:
                if addend:
                    first, count = drv.clusters.compressed_clusters(le)
                    _update_refcounts(drv, first, count * cs, addend)
                continue
            off = le & S.L2E_OFFSET_MASK
            if not off:
                continue
            if off & (cs - 1):
                drv.corrupt(f"Cluster allocation offset {S.chex(off)} unaligned (L2 offset: {S.chex(l2_off)}, "
                             f"L2 index: {S.chex(idx // step)})")
            if addend:
                _update_refcounts(drv, off, cs, addend)
            if touch:
                rc = drv.refcounts.get(off >> cb)
                new = le | S.OFLAG_COPIED if rc == 1 else le & ~S.OFLAG_COPIED
                if new != le:
                    l2[idx] = new
                    dirty = True
        if dirty:
            drv.clusters.cache.mark_dirty(l2_off)
        if addend:
            if not touch:
                drv.clusters.cache.drop(l2_off)
            _update_refcounts(drv, l2_off, cs, addend)
        rc = drv.refcounts.get(l2_off >> cb)
        new = e | S.OFLAG_COPIED if rc == 1 else e & ~S.OFLAG_COPIED
        if new != e:
            l1[i] = new
            l1_changed = True
    drv.flush_caches()  # as QEMU, which flushes the image when it is done
    return l1_changed


class BadSnapshotL1(QimgError):
    """A snapshot's L1 table fails validation; ``errno_text`` is what a failed goto reports."""

    def __init__(self, message: str, errno_text: str) -> None:
        super().__init__(message)
        self.errno_text = errno_text


def check_snapshot_l1(drv: "Qcow2Format", offset: int, size: int) -> None:
    """QEMU's validation of a snapshot's L1 table (its size and offset), before any read."""
    if size > S.MAX_L1_SIZE // 8:
        raise BadSnapshotL1("Snapshot L1 table too large", "File too large")
    if offset & (drv.cluster_size - 1) or offset + size * 8 > (1 << 63) - 1:
        raise BadSnapshotL1("Snapshot L1 table offset invalid", "Invalid argument")


def read_snapshot_l1(drv: "Qcow2Format", offset: int, size: int) -> array:
    check_snapshot_l1(drv, offset, size)
    return drv.read_table(offset, size)


def _next_id(snapshots: list[Snapshot]) -> str:
    """One more than the largest id, ids read as C's strtoul does (leading digits, else 0)."""
    import re

    best = 0
    for sn in snapshots:
        m = re.match(r"\s*\+?(\d+)", sn.id)
        if m:
            best = max(best, int(m.group(1)))
    return str(best + 1)


# -- the driver-facing operations ----------------------------------------------------------
def snapshot_list(drv: "Qcow2Format") -> list[SnapshotInfo]:
    return [sn.info() for sn in read_snapshots(drv)]


def _require_writable(drv: "Qcow2Format") -> None:
    if not drv.writable:
        raise QimgError("Device is not writable")


def snapshot_create(drv: "Qcow2Format", name: str, *, snapshot_id: str | None = None,
                    date_sec: int | None = None, date_nsec: int | None = None) -> SnapshotInfo:
    """Take an internal snapshot of the current disk state (``qemu-img snapshot -c``)."""
    _require_writable(drv)
    snapshots = read_snapshots(drv)
    if len(snapshots) >= S.MAX_SNAPSHOTS:
        raise QimgError("File too large")
    sid = snapshot_id or _next_id(snapshots)
    if _find(snapshots, sid, None) >= 0:
        raise QimgError("File exists")
    if date_sec is None:
        # qemu-img records wall time with microsecond precision
        us = time.time_ns() // 1000
        date_sec, date_nsec = us // 1_000_000, (us % 1_000_000) * 1000
    drv.flush_caches()
    h = drv.header
    l1 = array("Q", drv.l1)
    l1_offset = 0
    if h.l1_size:
        l1_offset = drv.refcounts.alloc(-(-h.l1_size * 8 // drv.cluster_size))
        drv.pre_write(0, l1_offset, h.l1_size * 8)  # before anything is flushed, as QEMU
        drv.flush_caches()
        drv.write_table(l1_offset, l1, None)
    # one more reference to everything the active L1 reaches; COPIED cleared where shared
    try:
        changed = _update_snapshot_refcount(drv, drv.l1, 1, is_active=True)
    except CorruptImage:
        # refcount overflow (e.g. refcount_bits=1): qemu-img reports EINVAL, the L1 copy leaks
        drv.flush_caches()
        raise QimgError("Invalid argument") from None
    if changed:
        drv.write_l1(checked=False)  # (QEMU checks no overlap here)
    drv.flush_caches()
    sn = Snapshot(l1_table_offset=l1_offset, l1_size=h.l1_size, id=sid, name=name,
                  date_sec=date_sec, date_nsec=date_nsec or 0, vm_clock_nsec=0, vm_state_size=0,
                  disk_size=drv.size, icount=0)
    write_snapshot_table(drv, [*snapshots, sn])
    drv.flush_caches()
    return sn.info()


def snapshot_goto(drv: "Qcow2Format", id_or_name: str) -> None:
    """Revert the disk to a snapshot (``qemu-img snapshot -a``)."""
    _require_writable(drv)
    snapshots = read_snapshots(drv)
    i = _find_id_or_name(snapshots, id_or_name)
    if i < 0:
        raise QimgError("Failed to load snapshot: No such file or directory")
    sn = snapshots[i]
    drv.flush_caches()
    h = drv.header
    try:
        sn_l1 = read_snapshot_l1(drv, sn.l1_table_offset, sn.l1_size)
    except BadSnapshotL1 as e:
        # qemu-img reports the reason on its own line, then the errno of the failed load
        import sys

        sys.stderr.write(f"{program()}: {e.message}\n")
        raise QimgError(f"Failed to load snapshot: {e.errno_text}") from None
    with _failing_as("Failed to load snapshot"):
        # the snapshot may have been taken at another disk size: its L1 must fit, the size follows
        need = max(sn.l1_size, drv.size_to_l1(sn.disk_size))
        if need > h.l1_size:
            _grow_l1(drv, need)
        # references of the snapshot's clusters first (its L1 table gets the COPIED flags that
        # follow), then drop those of the old active state
        flagged = array("Q", sn_l1)
        if _update_snapshot_refcount(drv, flagged, 1, is_active=False):
            drv.write_table(sn.l1_table_offset, flagged, None)  # (QEMU checks no overlap here)
        old = array("Q", drv.l1)
        new = array("Q", sn_l1)
        new.extend([0] * (h.l1_size - len(new)))
        drv.l1 = new
        drv.write_l1()
        drv.flush_caches()
        _update_snapshot_refcount(drv, old, -1, is_active=False)
        if _update_snapshot_refcount(drv, drv.l1, 0, is_active=True):
            drv.write_l1(checked=False)
        drv.flush_caches()
    if sn.disk_size != h.size:
        h.size = sn.disk_size
        drv.file.pwrite(24, struct.pack(">Q", h.size))
        drv.file.flush()


def _grow_l1(drv: "Qcow2Format", new_size: int) -> None:
    h = drv.header
    cs = drv.cluster_size
    l1 = array("Q", drv.l1)
    l1.extend([0] * (new_size - len(l1)))
    offset = drv.refcounts.alloc(-(-new_size * 8 // cs))
    drv.flush_caches()
    drv.write_table(offset, l1)
    old_off, old_size = h.l1_table_offset, h.l1_size
    drv.l1 = l1
    h.l1_size = new_size
    h.l1_table_offset = offset
    drv.file.pwrite(36, struct.pack(">IQ", new_size, offset))
    drv.file.flush()
    if old_off and old_size:
        drv.refcounts.free(old_off, old_size * 8)


def snapshot_delete(drv: "Qcow2Format", snapshot_id: str | None, name: str | None = None) -> None:
    """Delete a snapshot by id and/or name; with only ``snapshot_id`` given it is tried as an id,
    then as a name (``qemu-img snapshot -d`` resolves names before calling this)."""
    _require_writable(drv)
    snapshots = read_snapshots(drv)
    if name is None and snapshot_id is not None:
        i = _find_id_or_name(snapshots, snapshot_id)
    else:
        i = _find(snapshots, snapshot_id, name)
    if i < 0:
        raise QimgError("snapshot not found")
    sn = snapshots.pop(i)
    drv.flush_caches()
    # a snapshot whose L1 table is the active one (a corrupt image): QEMU works on the active
    # table in memory and writes it back
    shared = sn.l1_size and sn.l1_table_offset == drv.header.l1_table_offset and sn.l1_size <= len(drv.l1)
    if not shared:
        check_snapshot_l1(drv, sn.l1_table_offset, sn.l1_size)
    with _failing_as("Failed to remove snapshot from snapshot list"):
        write_snapshot_table(drv, snapshots)
    # the snapshot is gone from the list: from here on a failure only leaks clusters
    with _failing_as("Failed to free the cluster and L1 table"):
        # read now, as QEMU's qcow2_update_snapshot_refcount reads it (after the table's free)
        sn_l1 = drv.l1 if shared else drv.read_table(sn.l1_table_offset, sn.l1_size)
        if _update_snapshot_refcount(drv, sn_l1, -1, is_active=False) and shared:
            drv.write_l1(checked=False)
    if sn.l1_size:
        drv.refcounts.free(sn.l1_table_offset, sn.l1_size * 8, discard=True)  # (failures reported, ignored)
    with _failing_as("Failed to update snapshot status in disk"):
        if _update_snapshot_refcount(drv, drv.l1, 0, is_active=True):
            drv.write_l1(checked=False)
    drv.flush_caches()


class _failing_as:
    """Re-raise an I/O failure of a step as ``<what>: <reason>``, QEMU's wording of it."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, (QimgError, OSError)):
            return False
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise QimgError(f"{self.what}: {reason}") from None


def snapshot_load_readonly(drv: "Qcow2Format", snapshot_id: str | None, name: str | None) -> None:
    """Show a snapshot's data in this read-only instance (``convert -l``, ``measure -l``)."""
    if drv.writable:
        raise QimgError("Device is not readonly")
    snapshots = read_snapshots(drv)
    i = _find(snapshots, snapshot_id, name)
    if i < 0:
        raise QimgError("Can't find snapshot")
    sn = snapshots[i]
    drv.l1 = read_snapshot_l1(drv, sn.l1_table_offset, sn.l1_size)
    drv.header.l1_size = sn.l1_size
    drv.header.l1_table_offset = sn.l1_table_offset
