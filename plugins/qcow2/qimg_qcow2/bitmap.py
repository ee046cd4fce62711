"""qcow2 persistent dirty bitmaps: the bitmaps extension, bitmap directory and bitmap tables.

Layout (docs/interop/qcow2.rst, "Bitmaps"): the header extension holds the number of bitmaps
and the directory's size and offset; each directory entry names a bitmap table (one u64 per
cluster of bitmap data: a cluster offset, or 0 with bit 0 meaning "all zeroes"/"all ones") plus
flags (in-use, auto) and granularity. Bit ``i`` of the data (LSB first within each byte) covers
guest bytes ``[i*granularity, (i+1)*granularity)``.

Every change writes new structures into fresh clusters, switches the header to them and only
then frees the old ones, so an interruption never leaves a broken directory behind.
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
    from collections.abc import Callable

    from qimg.driver import CheckResult

    from .check import _Checker
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
def _free_table(drv: "Qcow2Format", bm: Bitmap) -> None:
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


def _write_data(drv: "Qcow2Format", bm: Bitmap, data: bytes | bytearray | None) -> None:
    """Write ``data`` (None: all zeroes) as a fresh table + clusters; sets bm.table_offset/size."""
    cs = drv.cluster_size
    bm.table_size = table_size_for(drv.size, bm.granularity_bits, cs)
    entries = [0] * bm.table_size
    if data is not None:
        view = memoryview(bytes(data))
        zero = bytes(cs)
        for i in range(bm.table_size):
            chunk = view[i * cs : (i + 1) * cs]
            if chunk == zero[: len(chunk)]:
                continue
            off = _alloc(drv, 1, f"Failed to allocate clusters for bitmap '{bm.name}'")
            _pre_write(drv, off, cs)
            drv.flush_caches()
            drv.file.pwrite(off, bytes(chunk) + bytes(cs - len(chunk)))
            entries[i] = off
    if bm.table_size:
        nbytes = bm.table_size * 8
        off = _alloc(drv, -(-nbytes // cs), "Failed to allocate clusters")
        _pre_write(drv, off, nbytes)
        drv.flush_caches()
        raw = struct.pack(f">{bm.table_size}Q", *entries)
        drv.file.pwrite(off, raw)  # just the table, as QEMU (the file may end unaligned)
        bm.table_offset = off
    else:
        bm.table_offset = 0


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


def _write_directory(drv: "Qcow2Format", bitmaps: list[Bitmap], old: BitmapsState) -> None:
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


def _find(bitmaps: list[Bitmap], name: str) -> int:
    for i, bm in enumerate(bitmaps):
        if bm.name == name:
            return i
    return -1


def _inconsistent(name: str) -> QimgError:
    return QimgError(f"Bitmap '{name}' is inconsistent and cannot be used\n"
                     "Try block-dirty-bitmap-remove to delete this bitmap from disk")


def _get(bitmaps: list[Bitmap], name: str) -> Bitmap:
    i = _find(bitmaps, name)
    if i < 0:
        raise QimgError(f"Dirty bitmap '{name}' not found")
    return bitmaps[i]


def _writable_state(drv: "Qcow2Format") -> "Session":
    """The open image's bitmap session (created on first use), as QEMU holds bitmaps in memory
    from open to close."""
    if not drv.writable:
        raise QimgError("Device is not writable")
    if drv.header.version < 3:
        raise QimgError("Cannot store dirty bitmaps in qcow2 v2 files")
    return session(drv)


def default_granularity(drv: "Qcow2Format") -> int:
    """QEMU's default: the cluster size, clamped to [4 KiB, 64 KiB]."""
    return min(max(drv.cluster_size, 4096), 65536)


def bitmap_add(drv: "Qcow2Format", name: str, granularity: int | None = None, disabled: bool = False) -> None:
    gran = default_granularity(drv) if granularity is None else granularity
    # qemu-img takes the granularity as 32 bits: 4 GiB and more wrap to invalid values
    if gran < 512 or gran & (gran - 1) or gran > 1 << MAX_GRANULARITY_BITS:
        raise QimgError("Granularity must be power of 2 and at least 512")
    if not drv.writable:
        raise QimgError("Device is not writable")
    # QEMU names the block node in these messages; its node names are generated ('#block<N>')
    where = f"Can't make bitmap '{name}' persistent in '#block{NODE_NUMBER}'"
    if drv.header.version < 3:
        raise QimgError(f"{where}: Cannot store dirty bitmaps in qcow2 v2 files")
    ses = _writable_state(drv)
    if ses.find(name) is not None:
        raise QimgError(f"Bitmap already exists: {name}")
    nbytes = _data_bytes(drv.size, gran.bit_length() - 1)
    if nbytes > MAX_PHYS_SIZE or nbytes > MAX_TABLE_SIZE * drv.cluster_size:
        raise QimgError(f"{where}: Too much space will be occupied by the bitmap. Use larger granularity")
    if len(name.encode()) > MAX_NAME_SIZE:
        raise QimgError(f"{where}: Name length exceeds maximum ({MAX_NAME_SIZE} characters)")
    if len(ses.entries) >= MAX_BITMAPS:
        raise QimgError(f"{where}: Maximum number of persistent bitmaps is already reached")
    bm = Bitmap(name=name, table_offset=0, table_size=0, flags=0 if disabled else FLAG_AUTO,
                granularity_bits=gran.bit_length() - 1)
    ses.entries.append([bm, bytearray(_data_bytes(drv.size, bm.granularity_bits)), None])


def _data_bytes(size: int, granularity_bits: int) -> int:
    nbits = -(-size // (1 << granularity_bits))
    return (nbits + 7) // 8


def bitmap_remove(drv: "Qcow2Format", name: str) -> None:
    """As QEMU: the directory without the bitmap goes to disk at once and its clusters are freed."""
    ses = _writable_state(drv)
    ent = ses.find(name)
    if ent is None:
        raise QimgError(f"Dirty bitmap '{name}' not found")
    ses.entries.remove(ent)
    old = ent[2]
    if old is None and ent[1] is not None:
        return  # added in this session: never on disk
    disk = [e[2] if e[2] is not None else e[0] for e in ses.entries if e[2] is not None or e[1] is None]
    _write_directory(drv, disk, ses.state)
    ses.state = read_state(drv)
    _free_table(drv, old if old is not None else ent[0])
    drv.flush_caches()


def _loaded(drv: "Qcow2Format", name: str) -> list:
    ent = _writable_state(drv).find(name)
    if ent is None:
        raise QimgError(f"Dirty bitmap '{name}' not found")
    if ent[1] is None:
        raise _inconsistent(name)
    return ent


def bitmap_enable(drv: "Qcow2Format", name: str) -> None:
    _loaded(drv, name)[0].flags |= FLAG_AUTO


def bitmap_disable(drv: "Qcow2Format", name: str) -> None:
    _loaded(drv, name)[0].flags &= ~FLAG_AUTO


def bitmap_clear(drv: "Qcow2Format", name: str) -> None:
    ent = _loaded(drv, name)
    ent[1] = bytearray(len(ent[1]))


def _regranulate(data: bytes | bytearray, src_bits: int, dst_bits: int, size: int) -> bytearray:
    """Re-express a bitmap at another granularity (a destination bit is set if any covered byte is)."""
    dst_n = -(-size // (1 << dst_bits))
    out = bytearray(-(-dst_n // 8))
    if src_bits == dst_bits:
        out[:] = data[: len(out)]
        return out
    src = bytes(data)
    for byte_i, b in enumerate(src):
        if not b:
            continue
        for bit in range(8):
            if not b >> bit & 1:
                continue
            i = byte_i * 8 + bit
            start = i << src_bits
            if start >= size:
                break
            end = min(size, (i + 1) << src_bits)
            for d in range(start >> dst_bits, ((end - 1) >> dst_bits) + 1):
                out[d >> 3] |= 1 << (d & 7)
    return out


def bitmap_merge(drv: "Qcow2Format", dst_name: str, src_drv: "Qcow2Format | None", src_name: str) -> None:
    """OR bitmap ``src_name`` (of ``src_drv``, default this image) into ``dst_name``."""
    dst = _loaded(drv, dst_name)
    if src_drv is None or src_drv is drv:
        src = _loaded(drv, src_name)
        sbits, sdata, ssize = src[0].granularity_bits, src[1], drv.size
    else:
        sbm = _get(read_bitmaps(src_drv), src_name)
        if sbm.in_use:
            raise _inconsistent(src_name)
        sbits, sdata, ssize = sbm.granularity_bits, read_data(src_drv, sbm), src_drv.size
    dbits = dst[0].granularity_bits
    merged = _regranulate(sdata, sbits, dbits, min(ssize, drv.size))
    ddata = dst[1]
    n = min(len(ddata), len(merged))
    v = int.from_bytes(bytes(ddata[:n]), "little") | int.from_bytes(bytes(merged[:n]), "little")
    ddata[:n] = v.to_bytes(n, "little")


def copy_bitmaps(src_drv: "Qcow2Format", dst_drv: "Qcow2Format", skip_broken: bool = False,
                 warn: Callable[[str], None] | None = None) -> None:
    """``convert --bitmaps``: copy every bitmap (name, granularity, enabled state, bits).

    Inconsistent (in-use) bitmaps raise QimgError unless ``skip_broken``, then ``warn`` is told.
    """
    bitmaps = read_bitmaps(src_drv)
    for bm in bitmaps:
        if bm.in_use and not skip_broken:
            raise QimgError(f"Cannot copy inconsistent bitmap '{bm.name}'\n"
                            "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it")
    for bm in bitmaps:
        if bm.in_use:
            if warn is not None:
                warn(f"Skipping inconsistent bitmap '{bm.name}'")
            continue
        bitmap_add(dst_drv, bm.name, bm.granularity, disabled=not bm.enabled)
        bitmap_merge(dst_drv, bm.name, src_drv, bm.name)


def check_inconsistent(src_drv: "Qcow2Format") -> list[str]:
    """Names of in-use bitmaps (``convert --bitmaps`` refuses them without --skip-broken-bitmaps)."""
    return [bm.name for bm in read_bitmaps(src_drv) if bm.in_use]


# -- check ---------------------------------------------------------------------------------
def check_bitmap_refcounts(c: "_Checker", res: "CheckResult", table: "array") -> None:
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


# -- tracking guest writes in enabled bitmaps ---------------------------------------------------
def _set_bits(data: bytearray, first: int, last: int) -> None:
    """Set bits first..last (inclusive) of an LSB-first bitmap, whole bytes by slice."""
    last = min(last, len(data) * 8 - 1)
    if first > last:
        return
    fb, lb = first >> 3, last >> 3
    if fb == lb:
        data[fb] |= ((0xFF << (first & 7)) & (0xFF >> (7 - (last & 7)))) & 0xFF
        return
    data[fb] |= (0xFF << (first & 7)) & 0xFF
    data[lb] |= 0xFF >> (7 - (last & 7))
    if lb - fb > 1:
        data[fb + 1 : lb] = b"\xff" * (lb - fb - 1)


class Session:
    """The bitmaps as QEMU holds them while an image is open read-write: loaded at first use
    (in-use bitmaps stay on disk untouched), marked in-use in place on disk, changed in memory
    (guest writes set bits of enabled ones) and stored by :meth:`store` at close the way QEMU
    stores them: each bitmap's data clusters then its table, in directory order, then a new
    directory, then the old directory and the old tables are freed."""

    def __init__(self, drv: "Qcow2Format", size: int | None = None) -> None:
        self.drv = drv
        view = drv if size is None else _SizeView(drv, size)  # tables made for another size
        self.state = read_state(view)  # type: ignore[arg-type]
        #: [entry, data (None: in use, not loaded), old entry (None: not on disk)]
        self.entries: list[list] = []
        for bm in self.state.bitmaps:
            if bm.in_use:
                self.entries.append([bm, None, None])
            else:
                old = Bitmap(bm.name, bm.table_offset, bm.table_size, bm.flags, bm.granularity_bits,
                             bm.type, bm.extra_data)
                self.entries.append([bm, read_data(view, bm), old])  # type: ignore[arg-type]
        if any(e[2] is not None for e in self.entries) and self.state.directory_size:
            # in place (no allocation): a crash now leaves the bitmaps marked inconsistent
            for e in self.entries:
                if e[2] is not None:
                    e[2].flags |= FLAG_IN_USE
            drv.flush_caches()
            disk = b"".join((e[2] if e[2] is not None else e[0]).encode() for e in self.entries)
            drv.pre_write(1 << 8, self.state.directory_offset, len(disk))  # all but the directory itself
            drv.file.pwrite(self.state.directory_offset, disk)
            drv.file.flush()

    def __bool__(self) -> bool:
        return True

    def find(self, name: str) -> list | None:
        return next((e for e in self.entries if e[0].name == name), None)

    def mark(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        for bm, data, _old in self.entries:
            if data is not None and bm.enabled:
                _set_bits(data, offset >> bm.granularity_bits, (offset + length - 1) >> bm.granularity_bits)

    def store(self) -> None:
        drv = self.drv
        if not any(e[1] is not None for e in self.entries):
            return
        drv.flush_caches()
        for bm, data, _old in self.entries:
            if data is not None:
                _write_data(drv, bm, data)
                bm.flags &= ~FLAG_IN_USE
        _write_directory(drv, [e[0] for e in self.entries], self.state)
        for _bm, _data, old in self.entries:
            if old is not None:
                _free_table(drv, old)
        drv.flush_caches()
        self.entries = []


def session(drv: "Qcow2Format") -> Session:
    ses = getattr(drv, "bitmap_tracker", None)
    if not ses:
        ses = drv.bitmap_tracker = Session(drv)
    return ses


def bitmaps_mark_dirty(drv: "Qcow2Format", offset: int, length: int) -> None:
    """Driver write-path hook: note a guest write of [offset, offset+length) in enabled bitmaps.

    The tracker is created on the first call and kept in ``drv.bitmap_tracker`` (False when the
    image has nothing to track, so later calls cost one attribute test)."""
    tracker = getattr(drv, "bitmap_tracker", None)
    if tracker is None:
        tracker = Session(drv) if has_bitmaps(drv) else False
        drv.bitmap_tracker = tracker or False
        if not tracker:
            return
    elif not tracker:
        return
    tracker.mark(offset, length)


def bitmaps_store(drv: "Qcow2Format") -> None:
    """Driver close hook: write back bitmaps changed by tracked writes."""
    tracker = getattr(drv, "bitmap_tracker", None)
    if not tracker and drv.writable and drv.header.version >= 3 and has_bitmaps(drv):
        tracker = Session(drv)  # nothing used the bitmaps: QEMU still rewrites them at close
    if tracker:
        tracker.store()
    drv.bitmap_tracker = None


def bitmaps_resize(drv: "Qcow2Format", old_size: int, new_size: int) -> None:
    """Resize hook: after the virtual size changed from ``old_size``, re-express every bitmap for
    the new size (bits past the old end start clear, as QEMU's resize leaves them); as QEMU,
    in memory: the bitmaps reach the disk when the image closes."""
    if not has_bitmaps(drv) and not getattr(drv, "bitmap_tracker", None):
        return
    ses = getattr(drv, "bitmap_tracker", None) or Session(drv, old_size)
    for bm, data, _old in ses.entries:
        if data is None:
            raise QimgError(f"Cannot resize: bitmap '{bm.name}' is inconsistent")
    for ent in ses.entries:
        bm, data = ent[0], ent[1]
        nbits = -(-new_size // bm.granularity)
        nbytes = (nbits + 7) // 8
        data = data[:nbytes] + bytes(max(0, nbytes - len(data)))
        if nbits % 8 and data:
            data[-1] &= (1 << (nbits % 8)) - 1
        ent[1] = data
    drv.bitmap_tracker = ses


class _SizeView:
    """A driver stand-in that reports another virtual size (to parse tables made for it)."""

    def __init__(self, drv: "Qcow2Format", size: int) -> None:
        self._drv = drv
        self.size = size

    def __getattr__(self, name: str):
        return getattr(self._drv, name)


def read_state_for_size(drv: "Qcow2Format", size: int) -> BitmapsState:
    return read_state(_SizeView(drv, size))  # type: ignore[arg-type]


def _read_data_for_size(drv: "Qcow2Format", bm: Bitmap, size: int) -> bytearray:
    return read_data(_SizeView(drv, size), bm)  # type: ignore[arg-type]


# -- entry points used by the driver's bitmap_* methods ---------------------------------------
def bitmap_merge_image(drv: "Qcow2Format", dst_name: str, source_image, src_name: str) -> None:
    """``qemu-img bitmap --merge``: ``source_image`` is a :class:`qimg.image.Image` (maybe ours)."""
    src_drv = getattr(source_image, "driver", source_image)
    if src_drv is drv:
        src_drv = None
    elif not hasattr(src_drv, "header") or getattr(src_drv, "format_name", "") != "qcow2":
        raise QimgError(f"Dirty bitmap '{src_name}' not found")
    bitmap_merge(drv, dst_name, src_drv, src_name)


class ExportedBitmap:
    """One bitmap as ``convert --bitmaps`` carries it from source to target."""

    __slots__ = ("source", "name", "granularity", "enabled")

    def __init__(self, source: "Qcow2Format", name: str, granularity: int, enabled: bool) -> None:
        self.source, self.name, self.granularity, self.enabled = source, name, granularity, enabled


def bitmap_export(drv: "Qcow2Format", skip_broken: bool = False) -> list[ExportedBitmap]:
    """The bitmaps to copy; in-use ones are an error (qemu-img's two lines) unless skipped."""
    out = []
    for bm in read_bitmaps(drv):
        if bm.in_use:
            if not skip_broken:
                raise QimgError(f"Cannot copy inconsistent bitmap '{bm.name}'\n"
                                "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it")
            from qimg import api

            api.warn(f"{program()}: warning: Skipping inconsistent bitmap '{bm.name}'")
            continue
        out.append(ExportedBitmap(drv, bm.name, bm.granularity, bm.enabled))
    return out


def bitmap_import(drv: "Qcow2Format", exported: ExportedBitmap) -> None:
    bitmap_add(drv, exported.name, exported.granularity, disabled=not exported.enabled)
    bitmap_merge(drv, exported.name, exported.source, exported.name)


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
