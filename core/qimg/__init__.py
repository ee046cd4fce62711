"""qimg: a pure-Python, plugin-based qemu-img.

Library use (docs/library.md)::

    import qimg
    qimg.create("disk.qcow2", "qcow2", 1 << 30)
    with qimg.open("disk.qcow2", writable=True) as img:
        img.pwrite(0, b"hello")
        print(img.pread(0, 5))
    qimg.convert("disk.qcow2", "disk.raw", out_fmt="raw", progress=print)
    print(qimg.info("disk.qcow2").virtual_size, qimg.check("disk.qcow2").ok)

Heavy modules load on first use so that ``import qimg`` stays cheap.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0"
#: the qemu-img version whose behaviour qimg follows (``-V`` prints it)
QEMU_COMPAT_VERSION = "7.2.0"

#: where each public name lives (imported on first use: ``import qimg`` stays cheap, and the
#: command line never loads the library functions' module or their dataclasses)
_EXPORTS = {
    "open": "api", "create": "api",
    "open_file": "library", "info": "library", "check": "library", "convert": "library", "compare": "library",
    "commit": "library", "rebase": "library", "resize": "library", "measure": "library", "map": "library",
    "QimgWarning": "library", "define_object": "library", "forget_objects": "library",
    "Image": "image", "ImageFile": "image",
    "Allocation": "results", "Progress": "results", "ImageInfo": "results", "Snapshot": "results",
    "CheckReport": "results", "MapEntry": "results", "Measurement": "results", "Comparison": "results",
    "QimgError": "errors", "QimgValueError": "errors", "QimgOSError": "errors", "NotSupported": "errors",
    "CorruptImage": "errors",
    "hookimpl": "plugins",
}

#: ``from qimg import *`` leaves the built-ins ``open`` and ``map`` alone (use ``qimg.open``, ``qimg.map``)
__all__ = [n for n in _EXPORTS if n not in ("open", "map")] + ["__version__", "QEMU_COMPAT_VERSION"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'qimg' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"qimg.{mod}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
