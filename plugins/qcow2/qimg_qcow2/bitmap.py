"""qcow2 persistent dirty bitmaps: the bitmaps extension, bitmap directory and bitmap tables.

Layout (docs/interop/qcow2.rst, "Bitmaps"): the header extension holds the number of bitmaps
and the directory's size and offset; each directory entry names a bitmap table (one u64 per
cluster of bitmap data: a cluster offset, or 0 with bit 0 meaning "all zeroes"/"all ones") plus
flags (in-use, auto) and granularity. Bit ``i`` of the data (LSB first within each byte) covers
guest bytes ``[i*granularity, (i+1)*granularity)``.

Every change writes new structures into fresh clusters, switches the header to them and only
then frees the old ones, so an interruption never leaves a broken directory behind. This module
reads, checks and writes those structures; the operations on bitmaps are bitmapops.py's.
"""
from __future__ import annotations

import os
import struct

from qimg import compat
from qimg.compat import program
from qimg.errors import QimgError
from qimg.records import Record
from qimg.values import Value

from . import structs as S

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from array import array

    from qimg.driver import CheckResult

    from .checkwalk import Checker
    from .driver import Qcow2Format

BitmapsExt = Record(
    ">",
    ("nb_bitmaps", "I"),
    ("reserved", "I"),
    ("bitmap_directory_size", "Q"),
    ("bitmap_directory_offset", "Q"),
    name="qcow2 bitmaps extension",
)
DirEntry = Record(
    ">",
    ("bitmap_table_offset", "Q"),
    ("bitmap_table_size", "I"),
    ("flags", "I"),
    ("type", "B"),
    ("granularity_bits", "B"),
    ("name_size", "H"),
    ("extra_data_size", "I"),
    name="qcow2 bitmap directory entry",
)
DIR_ENTRY_SIZE = 24

FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
FLAGS_KNOWN = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE
TYPE_DIRTY_TRACKING = 1
MAX_BITMAPS = 65535
MAX_NAME_SIZE = 1023
MAX_DIRECTORY_SIZE = 64 << 20  # QEMU's BME_MAX_DIRECTORY_SIZE-like cap
MAX_TABLE_SIZE = 0x8000000  # entries
MIN_GRANULARITY_BITS = 9
MAX_GRANULARITY_BITS = 31
TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
TABLE_ENTRY_ALL_ONES = 1
#: stands for QEMU's generated block node number in messages that name the node
NODE_NUMBER = 100
#: bitmap data held in memory at once (a merge/copy of bigger bitmaps is refused)
MAX_DATA_BYTES = 1 << 30


class Bitmap(Value):
    """One bitmap directory entry (a plain class: dataclasses cost start-up time)."""

    __slots__ = ("name", "table_offset", "table_size", "flags", "granularity_bits", "type", "extra_data")
    _fields = __slots__

    def __init__(self, name: str, table_offset: int, table_size: int, flags: int, granularity_bits: int,
                 type: int = TYPE_DIRTY_TRACKING, extra_data: bytes = b"") -> None:  # noqa: A002
        self.name, self.table_offset, self.table_size, self.flags = name, table_offset, table_size, flags
        self.granularity_bits, self.type, self.extra_data = granularity_bits, type, extra_data

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def in_use(self) -> bool:
        return bool(self.flags & FLAG_IN_USE)

    @property
    def enabled(self) -> bool:
        return bool(self.flags & FLAG_AUTO)

    def encode(self) -> bytes:
        name = self.name.encode()
        out = DirEntry.build(dict(bitmap_table_offset=self.table_offset, bitmap_table_size=self.table_size,
                                  flags=self.flags, type=self.type, granularity_bits=self.granularity_bits,
                                  name_size=len(name), extra_data_size=len(self.extra_data)))
        out += self.extra_data + name
        return out + bytes((-len(out)) % 8)


class BitmapsState:
    """The bitmaps extension as read: directory place and size, and its entries."""

    __slots__ = ("nb_bitmaps", "directory_size", "directory_offset", "bitmaps")

    def __init__(self, nb_bitmaps: int = 0, directory_size: int = 0, directory_offset: int = 0,
                 bitmaps: list[Bitmap] | None = None) -> None:
        self.nb_bitmaps, self.directory_size, self.directory_offset = nb_bitmaps, directory_size, directory_offset
        self.bitmaps = [] if bitmaps is None else bitmaps


# -- reading -------------------------------------------------------------------------------
def has_bitmaps(drv: "Qcow2Format") -> bool:
    h = drv.header
    return h.bitmaps_ext is not None and bool(h.autoclear_features & S.AUTOCLEAR_BITMAPS)


def _ext(drv: "Qcow2Format") -> tuple[int, int, int]:
    raw = drv.header.bitmaps_ext or b""
    if len(raw) < 24:
        raise QimgError("Invalid bitmaps extension length")
    e = BitmapsExt.parse(raw[:24])
    return e.nb_bitmaps, e.bitmap_directory_size, e.bitmap_directory_offset


def table_size_for(disk_size: int, granularity_bits: int, cluster_size: int) -> int:
    nbits = -(-disk_size // (1 << granularity_bits))
    return -(-nbits // (cluster_size * 8))


def parse_directory(data: bytes, nb: int, drv: "Qcow2Format") -> list[Bitmap]:
    """Directory entries, validated as QEMU does when it loads the list."""
    out: list[Bitmap] = []
    pos = 0
    cs = drv.cluster_size
    for _ in range(nb):
        if pos + DIR_ENTRY_SIZE > len(data):
            raise QimgError("Bitmap directory is corrupted")
        e = DirEntry.parse(data[pos : pos + DIR_ENTRY_SIZE])
        end = pos + DIR_ENTRY_SIZE + e.extra_data_size + e.name_size
        if end > len(data):
            raise QimgError("Bitmap directory is corrupted")
        extra = bytes(data[pos + DIR_ENTRY_SIZE : pos + DIR_ENTRY_SIZE + e.extra_data_size])
        name = bytes(data[end - e.name_size : end]).decode("utf-8", "replace")
        bm = Bitmap(name=name, table_offset=e.bitmap_table_offset, table_size=e.bitmap_table_size,
                    flags=e.flags, granularity_bits=e.granularity_bits, type=e.type, extra_data=extra)
        if (e.granularity_bits < MIN_GRANULARITY_BITS or e.granularity_bits > MAX_GRANULARITY_BITS
                or e.type != TYPE_DIRTY_TRACKING or e.name_size == 0 or e.name_size > MAX_NAME_SIZE
                or e.bitmap_table_offset & (cs - 1) or e.bitmap_table_size > MAX_TABLE_SIZE
                or e.flags & ~FLAGS_KNOWN
                or (e.extra_data_size and not e.flags & FLAG_EXTRA_DATA_COMPATIBLE)
                or (not e.flags & FLAG_IN_USE
                    and e.bitmap_table_size != table_size_for(drv.size, e.granularity_bits, cs))):
            raise QimgError("Bitmap directory is corrupted")
        out.append(bm)
        pos = (end + 7) & ~7
    return out


def read_state(drv: "Qcow2Format") -> BitmapsState:
    if not has_bitmaps(drv):
        return BitmapsState()
    nb, size, offset = _ext(drv)
    if nb > MAX_BITMAPS or size > MAX_DIRECTORY_SIZE or offset & (drv.cluster_size - 1):
        raise QimgError("Bitmap directory is corrupted")
    data = drv.file.pread(offset, size) if size else b""
    if len(data) < size:
        raise QimgError("Bitmap directory is corrupted")
    return BitmapsState(nb, size, offset, parse_directory(data, nb, drv))


def read_bitmaps(drv: "Qcow2Format") -> list[Bitmap]:
    return read_state(drv).bitmaps


def bitmap_info(drv: "Qcow2Format") -> list[dict]:
    """The ``bitmaps`` list of ``qemu-img info``'s format-specific data (JSON keys)."""
    out = []
    for bm in read_bitmaps(drv):
        flags = []
        if bm.flags & FLAG_IN_USE:
            flags.append("in-use")
        if bm.flags & FLAG_AUTO:
            flags.append("auto")
        out.append({"flags": flags, "name": bm.name, "granularity": bm.granularity})
    return out


def _read_table(drv: "Qcow2Format", bm: Bitmap) -> list[int]:
    if not bm.table_size:
        return []
    raw = drv.file.pread(bm.table_offset, bm.table_size * 8)
    if len(raw) < bm.table_size * 8:
        raise QimgError(f"Could not read bitmap table of '{bm.name}'")
    return list(struct.unpack(f">{bm.table_size}Q", raw))


def _check_entry(entry: int, cluster_size: int) -> bool:
    offset = entry & TABLE_ENTRY_OFFSET_MASK
    if entry & TABLE_ENTRY_RESERVED_MASK or offset & (cluster_size - 1):
        return False
    return not (offset and entry & TABLE_ENTRY_ALL_ONES)


def read_data(drv: "Qcow2Format", bm: Bitmap) -> bytearray:
    """The whole bitmap as bytes (bit i of the bitmap is bit i%8 of byte i//8)."""
    cs = drv.cluster_size
    nbits = -(-drv.size // bm.granularity)
    nbytes = -(-nbits // 8)
    if nbytes > MAX_DATA_BYTES:
        raise QimgError(f"Bitmap '{bm.name}' is too large to load")
    out = bytearray(bm.table_size * cs)
    for i, e in enumerate(_read_table(drv, bm)):
        if not _check_entry(e, cs):
            raise QimgError(f"Bitmap '{bm.name}' has a corrupted bitmap table entry")
        off = e & TABLE_ENTRY_OFFSET_MASK
        if off:
            chunk = drv.file.pread(off, cs)
            out[i * cs : i * cs + len(chunk)] = chunk
        elif e & TABLE_ENTRY_ALL_ONES:
            out[i * cs : (i + 1) * cs] = b"\xff" * cs
    del out[nbytes:]
    if nbits % 8 and out:
        out[-1] &= (1 << (nbits % 8)) - 1
    return out


# -- writing -------------------------------------------------------------------------------
def free_table(drv: "Qcow2Format", bm: Bitmap) -> None:
    if not bm.table_offset:
        return
    cs = drv.cluster_size
    try:
        entries = _read_table(drv, bm)
    except QimgError:
        entries = []
    for e in entries:
        off = e & TABLE_ENTRY_OFFSET_MASK
        if off and _check_entry(e, cs):
            drv.refcounts.free(off, cs, discard=True)
    drv.refcounts.free(bm.table_offset, bm.table_size * 8)


def write_data(drv: "Qcow2Format", bm: Bitmap, data: bytes | bytearray | None) -> None:
    """Write ``data`` (None: all zeroes) as a fresh table + clusters; sets bm.table_offset/size.
    A failure frees what this call allocated (QEMU's store_bitmap), and raises."""
    cs = drv.cluster_size
    bm.table_size = table_size_for(drv.size, bm.granularity_bits, cs)
    entries = [0] * bm.table_size
    table = 0
    try:
        if data is not None:
            view = memoryview(bytes(data))
            zero = bytes(cs)
            for i in range(bm.table_size):
                chunk = view[i * cs : (i + 1) * cs]
                if chunk == zero[: len(chunk)]:
                    continue
                off = _alloc(drv, 1, f"Failed to allocate clusters for bitmap '{bm.name}'")
                entries[i] = off
                _pre_write(drv, off, cs)
                drv.flush_caches()
                _write(drv, bm, off, bytes(chunk) + bytes(cs - len(chunk)))
        if bm.table_size:
            nbytes = bm.table_size * 8
            table = _alloc(drv, -(-nbytes // cs), "Failed to allocate clusters")
            _pre_write(drv, table, nbytes)
            drv.flush_caches()
            raw = struct.pack(f">{bm.table_size}Q", *entries)
            _write(drv, bm, table, raw)  # just the table, as QEMU (the file may end unaligned)
    except (QimgError, OSError):
        if not drv.stopped:
            for off in entries:
                if off:
                    drv.refcounts.free(off, cs, discard=True)
            if table:
                drv.refcounts.free(table, bm.table_size * 8)
        raise
    bm.table_offset = table


def _write(drv: "Qcow2Format", bm: Bitmap, offset: int, data: bytes) -> None:
    """A bitmap's data cluster or table written, a failure worded as QEMU's store_bitmap."""
    try:
        drv.file.pwrite(offset, data)
    except OSError as e:
        raise QimgError(f"Failed to write bitmap '{bm.name}' to file: {e.strerror or os.strerror(e.errno or 5)}") \
            from None


def _alloc(drv: "Qcow2Format", count: int, what: str) -> int:
    """Clusters for bitmap data or a table; an I/O failure worded as QEMU's store_bitmap."""
    try:
        return drv.refcounts.alloc(count)
    except OSError as e:
        raise QimgError(f"{what}: {e.strerror or os.strerror(e.errno or 5)}") from None
    except QimgError as e:  # a refcount structure that cannot be read or used: EIO
        raise QimgError(f"{what}: {e.message}") from None


def _pre_write(drv: "Qcow2Format", offset: int, size: int) -> None:
    """The overlap check of a bitmap table or data cluster (before anything is flushed, as
    QEMU), failing with QEMU's words."""
    try:
        drv.pre_write(0, offset, size)
    except OSError as e:
        raise QimgError(f"Qcow2 overlap check failed: {e.strerror}") from None


def write_directory(drv: "Qcow2Format", bitmaps: list[Bitmap], old: BitmapsState) -> None:
    """Write the directory to new clusters, switch the header extension, free the old one."""
    h = drv.header
    cs = drv.cluster_size
    if bitmaps:
        data = b"".join(bm.encode() for bm in bitmaps)
        if len(data) > MAX_DIRECTORY_SIZE:
            raise QimgError("Bitmap directory is too large")
        off = drv.refcounts.alloc(-(-len(data) // cs))
        try:
            drv.pre_write(0, off, len(data))  # before anything is flushed, as QEMU
        except OSError:
            raise QimgError("Failed to update bitmap extension") from None
        drv.flush_caches()
        drv.file.pwrite(off, data)
        drv.file.flush()
        h.bitmaps_ext = BitmapsExt.build(dict(nb_bitmaps=len(bitmaps), reserved=0,
                                              bitmap_directory_size=len(data), bitmap_directory_offset=off))
        h.autoclear_features |= S.AUTOCLEAR_BITMAPS
    else:
        h.bitmaps_ext = None
        h.autoclear_features &= ~S.AUTOCLEAR_BITMAPS
    drv.flush_caches()
    drv.update_header()
    drv.file.flush()
    if old.directory_offset and old.directory_size:
        drv.refcounts.free(old.directory_offset, old.directory_size)
    drv.flush_caches()


# -- check ---------------------------------------------------------------------------------
def check_bitmap_refcounts(c: "Checker", res: "CheckResult", table: "array") -> None:
    """Count references of the directory, bitmap tables and data clusters (qemu-img check)."""
    drv = c.drv
    if not has_bitmaps(drv):
        return
    try:
        nb, size, offset = _ext(drv)
    except QimgError:
        res.corruptions += 1
        return
    if nb == 0:
        return
    c.inc(res, table, offset, size)
    try:
        if nb > MAX_BITMAPS or size > MAX_DIRECTORY_SIZE or offset & (c.cluster_size - 1):
            raise QimgError("Bitmap directory is corrupted")
        data = c.read(offset, size)
        bitmaps = parse_directory(data, nb, drv)
    except QimgError:
        res.corruptions += 1
        return
    for bm in bitmaps:
        c.inc(res, table, bm.table_offset, bm.table_size * 8)
        # bytes past the end of the file read as zeroes (entries meaning "all zeroes")
        present = max(0, min(bm.table_size * 8, (c.file_len - bm.table_offset + 7) & ~7))
        raw = c.read(bm.table_offset, present)
        for e in struct.unpack(f">{present // 8}Q", raw):
            if not _check_entry(e, c.cluster_size):
                res.corruptions += 1
                continue
            off = e & TABLE_ENTRY_OFFSET_MASK
            if off:
                c.inc(res, table, off, c.cluster_size)


def measure_bitmaps(source, cluster_size: int) -> int | None:
    """``measure``'s "bitmaps": bytes the source's bitmaps take in a new qcow2 image with
    ``cluster_size`` clusters (all data assumed allocated, plus tables and directory), or None
    when the source cannot carry persistent bitmaps (qemu-img then prints no line)."""
    drv = getattr(source, "driver", source)
    if getattr(drv, "format_name", "") == "parallels" and compat.has("parallels-bitmaps"):
        return 0  # QEMU loads a parallels image's bitmaps as non-persistent ones: none to count
    if getattr(drv, "format_name", "") != "qcow2" or not hasattr(drv, "header"):
        return None
    if drv.header.version < 3:
        return None  # a version 2 image cannot hold persistent bitmaps: QEMU prints no line
    total = 0
    dir_size = 0
    size = drv.size
    for bm in read_bitmaps(drv):
        nbytes = (-(-size // bm.granularity) + 7) // 8
        clusters = -(-nbytes // cluster_size)
        total += clusters * cluster_size
        total += -(-(clusters * 8) // cluster_size) * cluster_size
        dir_size += (DIR_ENTRY_SIZE + len(bm.name.encode()) + 7) & ~7
    return total + -(-dir_size // cluster_size) * cluster_size


# -- validation when an image is opened -----------------------------------------------------
MAX_DIRECTORY_SIZE_QEMU = 1024 * MAX_BITMAPS
#: QEMU's BME_MAX_PHYS_SIZE: the most bytes a bitmap's table may cover (the bitmap in memory)
MAX_PHYS_SIZE = 0x20000000


def validate_on_open(drv: "Qcow2Format") -> None:
    """QEMU's checks on the bitmaps extension, directory and tables when it opens an image;
    raises QimgError with qemu-img's message (the caller prefixes "Could not open ...")."""
    h = drv.header
    raw = h.bitmaps_ext
    if raw is None:
        return
    if len(raw) != 24:
        raise QimgError("bitmaps_ext: Invalid extension length")
    if not h.autoclear_features & S.AUTOCLEAR_BITMAPS:
        import sys

        if h.version < 3:
            first = ("This qcow2 v2 image contains bitmaps, but they may have been modified by a program "
                     "without persistent bitmap support; so now they must all be considered inconsistent")
        else:
            first = "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
        # qemu-img ends the hint without a newline
        sys.stderr.write(f"{program()}: warning: {first}\n"
                         "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
        sys.stderr.flush()
        return
    e = BitmapsExt.parse(raw)
    if e.reserved:
        raise QimgError("bitmaps_ext: Reserved field is not zero")
    if e.nb_bitmaps > MAX_BITMAPS:
        raise QimgError(f"bitmaps_ext: Image has {e.nb_bitmaps} bitmaps, exceeding the QEMU supported "
                        f"maximum of {MAX_BITMAPS}")
    if e.nb_bitmaps == 0:
        raise QimgError("found bitmaps extension with zero bitmaps")
    cs = drv.cluster_size
    if e.bitmap_directory_offset & (cs - 1):
        raise QimgError("bitmaps_ext: invalid bitmap directory offset")
    if e.bitmap_directory_size > MAX_DIRECTORY_SIZE_QEMU:
        raise QimgError(f"bitmaps_ext: bitmap directory size ({e.bitmap_directory_size}) exceeds the maximum "
                        f"supported size ({MAX_DIRECTORY_SIZE_QEMU})")
    size = e.bitmap_directory_size
    data = drv.file.pread(e.bitmap_directory_offset, size) if size else b""
    data += bytes(size - len(data))  # past the end of the file reads as zeroes
    # the directory, entry by entry, in QEMU's order of checks
    entries: list[Bitmap] = []
    pos = 0
    while pos < size:
        if pos + DIR_ENTRY_SIZE > size:
            raise QimgError("Broken bitmap directory")
        if len(entries) + 1 > e.nb_bitmaps:
            raise QimgError("More bitmaps found than specified in header extension")
        de = DirEntry.parse(data[pos : pos + DIR_ENTRY_SIZE])
        name_end = pos + DIR_ENTRY_SIZE + de.extra_data_size + de.name_size
        nxt = (name_end + 7) & ~7
        if nxt > size:
            raise QimgError("Broken bitmap directory")
        if de.extra_data_size:
            raise QimgError("Bitmap extra data is not supported")
        name = bytes(data[name_end - de.name_size : name_end]).decode("utf-8", "replace")
        if (de.type != TYPE_DIRTY_TRACKING or de.flags & ~(FLAG_IN_USE | FLAG_AUTO)
                or not MIN_GRANULARITY_BITS <= de.granularity_bits <= MAX_GRANULARITY_BITS
                or de.name_size > MAX_NAME_SIZE
                or de.bitmap_table_offset == 0 or de.bitmap_table_offset & (cs - 1)
                or de.bitmap_table_size == 0 or de.bitmap_table_size > MAX_TABLE_SIZE
                or de.bitmap_table_size * cs > MAX_PHYS_SIZE):
            raise QimgError(f"Bitmap '{name}' doesn't satisfy the constraints")
        entries.append(Bitmap(name=name, table_offset=de.bitmap_table_offset, table_size=de.bitmap_table_size,
                              flags=de.flags, granularity_bits=de.granularity_bits, type=de.type))
        pos = nxt
    if len(entries) != e.nb_bitmaps:
        raise QimgError("Less bitmaps found than specified in header extension")
    if pos != size:
        raise QimgError("Broken bitmap directory")
    # consistent bitmaps are loaded: their tables and sizes must be right
    for bm in entries:
        if bm.in_use:
            continue
        raw_t = drv.file.pread(bm.table_offset, bm.table_size * 8)
        raw_t += bytes(bm.table_size * 8 - len(raw_t))
        for ent in struct.unpack(f">{bm.table_size}Q", raw_t):
            if not _check_entry(ent, cs):
                raise QimgError(f"Could not read bitmap_table table from image for bitmap '{bm.name}': "
                                "Invalid argument")
        if bm.table_size != table_size_for(drv.size, bm.granularity_bits, cs):
            raise QimgError(f"Could not read bitmap '{bm.name}' from image: Invalid argument")
