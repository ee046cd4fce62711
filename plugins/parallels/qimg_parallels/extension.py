"""The Format Extension cluster of parallels images, validated as QEMU's read-only open does
(block/parallels-ext.c, the same in 7.2 and 10.0): magic, MD5 of the rest of the cluster, then
features until the all-zero end marker; dirty bitmap features are checked against the disk
size and the cluster size. QEMU keeps the bitmaps in memory only (not persistent: ``info``,
``convert --bitmaps`` and ``measure`` never show them), so qimg only validates them.
"""
from __future__ import annotations

import hashlib

from qimg.errors import QimgError
from qimg.limits import request_ok

from .structs import (
    EXT_MAGIC,
    FEATURE_DIRTY_BITMAP,
    FEATURE_END,
    SECTOR,
    BitmapFeature,
    ExtHeader,
    FeatureHeader,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .driver import ParallelsFormat


def read_format_extension(drv: ParallelsFormat, offset: int) -> None:
    cs = drv.cs
    raw = drv.file.pread(offset, cs)
    # past the end of the file QEMU reads zeroes; its feature walk may step past the cluster
    # (it subtracts headers, not data, from what remains): zeroes there end the walk
    cluster = raw.ljust(cs, b"\0")
    eh = ExtHeader.parse(cluster)
    if eh.magic != EXT_MAGIC:
        raise QimgError(f"Wrong parallels Format Extension magic: 0x{eh.magic:x}, expected: 0x{EXT_MAGIC:x}")
    pos = ExtHeader.size
    remaining = cs - pos
    if hashlib.md5(cluster[pos:], usedforsecurity=False).digest() != eh.check_sum:
        raise QimgError("Wrong checksum in Format Extension header. Format extension is corrupted.")
    names: set[str] = set()
    while True:
        if remaining < FeatureHeader.size:
            raise QimgError(f"Can not read feature header, as remaining bytes ({remaining}) in Format Extension "
                            f"is less than Feature header size ({FeatureHeader.size})")
        fh = FeatureHeader.parse(cluster[pos : pos + FeatureHeader.size].ljust(FeatureHeader.size, b"\0"))
        pos += FeatureHeader.size
        remaining -= FeatureHeader.size
        if fh.flags:
            raise QimgError("Flags for extension feature are unsupported")
        if fh.data_size > remaining:
            raise QimgError("Feature data_size exceedes Format Extension cluster")
        if fh.magic == FEATURE_END:
            return
        if fh.magic == FEATURE_DIRTY_BITMAP:
            data = cluster[pos : pos + fh.data_size].ljust(fh.data_size, b"\0")
            names.add(_check_bitmap(drv, data, names))
        else:
            raise QimgError(f"Unknown feature: 0x{fh.magic:x}")
        pos = -(-(pos + fh.data_size) // 8) * 8


def _check_bitmap(drv: ParallelsFormat, data: bytes, names: set[str]) -> str:
    """One dirty bitmap feature (QEMU's parallels_load_bitmap); returns its name (the UUID)."""
    if len(data) < BitmapFeature.size:
        raise QimgError(f"Too small Bitmap Feature area in Parallels Format Extension: {len(data)} bytes, "
                        f"expected at least {BitmapFeature.size} bytes")
    bf = BitmapFeature.parse(data)
    granularity = (bf.granularity << 9) & 0xFFFFFFFF
    rest = len(data) - BitmapFeature.size
    sectors = drv.size // SECTOR
    if bf.size != sectors:
        size = bf.size - (1 << 64) if bf.size >= 1 << 63 else bf.size
        raise QimgError(f"Bitmap size (in sectors) {size} differs from disk size in sectors {sectors}")
    if bf.l1_size * 8 > rest:
        raise QimgError("Bitmaps feature corrupted: l1 table exceeds extension data_size")
    h = bf.id.hex()
    name = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if granularity < SECTOR or granularity & (granularity - 1):
        # QEMU asserts a power of two of at least a sector (qemu-img aborts)
        raise QimgError(f"Bitmap '{name}' has an invalid granularity of {granularity} bytes")
    if name in names:
        raise QimgError(f"Bitmap already exists: {name}")
    # the bitmap serialises as 64-bit words: its table has one entry per cluster of them
    size = drv.size
    words = ((size - 1) // granularity // 64 + 1) if size else 0
    tab_size = -(-(words * 8) // drv.cs)
    if tab_size != bf.l1_size:
        raise QimgError(f"Bitmap table size {bf.l1_size} does not correspond to bitmap size and cluster size. "
                        f"Expected {tab_size}")
    start = BitmapFeature.size
    for i in range(bf.l1_size):
        entry = int.from_bytes(data[start + 8 * i : start + 8 * i + 8], "little")
        if entry in (0, 1):
            continue
        off = (entry << 9) & 0xFFFFFFFFFFFFFFFF
        if off >= 1 << 63 or not request_ok(off, drv.cs):
            raise QimgError("Failed to read bitmap data cluster: Input/output error")
    return name
