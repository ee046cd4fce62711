"""qimg: a pure-Python, plugin-based qemu-img.

Library use::

    import qimg
    qimg.create("disk.qcow2", "qcow2", 1 << 30)
    with qimg.open("disk.qcow2", writable=True) as img:
        img.pwrite(0, b"hello")
        print(img.pread(0, 5))

Heavy modules load on first use so that ``import qimg`` stays cheap.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0"
#: the qemu-img version whose behaviour qimg follows (``-V`` prints it)
QEMU_COMPAT_VERSION = "7.2.0"

__all__ = ["open", "create", "QimgError", "Image", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("open", "create"):
        from . import api

        return getattr(api, name)
    if name == "QimgError":
        from .errors import QimgError

        return QimgError
    if name == "Image":
        from .image import Image

        return Image
    if name == "hookimpl":
        from .plugins import hookimpl

        return hookimpl
    raise AttributeError(name)
