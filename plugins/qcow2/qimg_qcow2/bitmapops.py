"""Operations on qcow2 persistent dirty bitmaps (``qemu-img bitmap``, ``convert --bitmaps``):
add, remove, enable, disable, clear, merge, copy, export and import; tracking guest writes in
the enabled bitmaps while an image is open read-write and storing them at close (QEMU's
qcow2_store_persistent_dirty_bitmaps); resizing them with the image.

The on-disk structures (directory, tables, data) are bitmap.py's.
"""
from __future__ import annotations

from qimg.compat import program
from qimg.errors import QimgError

from .bitmap import (
    FLAG_AUTO,
    FLAG_IN_USE,
    MAX_BITMAPS,
    MAX_GRANULARITY_BITS,
    MAX_NAME_SIZE,
    MAX_PHYS_SIZE,
    MAX_TABLE_SIZE,
    NODE_NUMBER,
    Bitmap,
    BitmapsState,
    free_table,
    has_bitmaps,
    read_bitmaps,
    read_data,
    read_state,
    write_data,
    write_directory,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from .driver import Qcow2Format


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
    write_directory(drv, disk, ses.state)
    ses.state = read_state(drv)
    free_table(drv, old if old is not None else ent[0])
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
        written: list[Bitmap] = []
        try:
            for bm, data, _old in self.entries:
                if data is not None:
                    write_data(drv, bm, data)
                    written.append(bm)
                    bm.flags &= ~FLAG_IN_USE
        except (QimgError, OSError):
            # QEMU frees the tables this attempt wrote: a later attempt (the close's) has the room
            if not drv.stopped:
                for bm in written:
                    free_table(drv, bm)
            raise
        write_directory(drv, [e[0] for e in self.entries], self.state)
        for _bm, _data, old in self.entries:
            if old is not None:
                free_table(drv, old)
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
