"""What ``qemu-img info`` shows of a qcow2 image beyond the generic lines."""
from __future__ import annotations

from . import structs as S

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

    from .driver import Qcow2Format


def format_specific_info(drv: "Qcow2Format") -> dict[str, Any] | None:
    """The "format-specific" block of ``info`` (the driver's ``format_specific_info``)."""
    h = drv.header
    d: dict[str, Any] = {}
    if h.version == 2:
        d["compat"] = "0.10"
        d["compression-type"] = "zlib" if h.compression_type == 0 else "zstd"
        d["refcount-bits"] = drv.refcounts.bits
        _encrypt_info(drv, d)
        return d
    d["compat"] = "1.1"
    if h.data_file is not None:
        d["data-file"] = h.data_file
    if h.incompatible_features & S.INCOMPAT_DATA_FILE:  # (with or without a name in the header)
        d["data-file-raw"] = bool(h.autoclear_features & S.AUTOCLEAR_DATA_FILE_RAW)
    d["compression-type"] = "zlib" if h.compression_type == 0 else "zstd"
    d["lazy-refcounts"] = bool(h.compatible_features & S.COMPAT_LAZY_REFCOUNTS)
    if h.bitmaps_ext is not None and h.autoclear_features & S.AUTOCLEAR_BITMAPS:
        try:
            from .bitmap import bitmap_info
        except ImportError:
            pass
        else:
            bm = bitmap_info(drv)
            if bm is not None:
                d["bitmaps"] = bm
    d["refcount-bits"] = drv.refcounts.bits
    _encrypt_info(drv, d)
    d["corrupt"] = bool(h.incompatible_features & S.INCOMPAT_CORRUPT)
    d["extended-l2"] = drv.extended_l2
    return d

def info_extra(drv: "Qcow2Format") -> dict[str, Any]:
    """``info``'s qcow2 lines: cluster size, encryption, dirty flag, backing format."""
    h = drv.header
    d: dict[str, Any] = {"cluster-size": drv.cluster_size}
    if h.crypt_method:
        d["encrypted"] = True
    if h.incompatible_features & S.INCOMPAT_DIRTY:
        d["dirty-flag"] = True
    else:
        d["dirty-flag"] = False
    if h.backing_format:
        d["backing-filename-format"] = h.backing_format
    return d


def _encrypt_info(drv: "Qcow2Format", d: dict[str, Any]) -> None:
    """The ``encrypt`` block (both versions, as QEMU)."""
    if drv.header.crypt_method == 2:
        from .luks import luks_info

        d["encrypt"] = luks_info(drv) or {"format": "luks"}
    elif drv.header.crypt_method:
        d["encrypt"] = {"format": "aes"}
