"""An image's external data file (``data_file`` extension): opening it as QEMU does, and the
stand-ins for a data file that is not opened (untrusted images, metadata-only opens)."""
from __future__ import annotations

from qimg.errors import QimgError

from . import structs as S

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

    from qimg.protocol import Protocol

    from .driver import Qcow2Format


class _RefusedFile:
    """Stands for an external data file that untrusted mode does not open: any I/O fails."""

    def __init__(self, image: str, name: str) -> None:
        self.filename = name
        self._image = image

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        from qimg.untrusted import refuse_named_file

        raise refuse_named_file(self._image, "data file", self.filename)

    pread = preadinto = pwrite = pwritev = size = truncate = flush = allocate = data_extents = _refuse
    allocated_size = _refuse

    def close(self) -> None:
        pass


class _NoIOFile(_RefusedFile):
    """Stands for an external data file a metadata-only open (info) does not open."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise QimgError(f"'{self._image}': the data file is not opened for metadata only")

    pread = preadinto = pwrite = pwritev = size = truncate = flush = allocate = data_extents = _refuse
    allocated_size = _refuse


def open_data_file(drv: "Qcow2Format", options: dict[str, Any]) -> "Protocol | None":
    """The image's external data file as QEMU opens it (None: the image has none): from the
    open options (a name, or a node's options), else the name in the header; a stand-in when
    the open is for metadata only (info) or an untrusted image names it."""
    h = drv.header
    # the data file as a node's options (data-file.filename=..., data-file.driver=...)
    node = {k[10:]: v for k, v in options.items() if k.startswith("data-file.")}
    if not h.incompatible_features & S.INCOMPAT_DATA_FILE:
        if options.get("data-file") or node:
            raise QimgError("'data-file' can only be set for images that use an external data file")
        return None
    from qimg.api import open_child, open_protocol

    if options.get("_no_io"):
        # metadata only (info): QEMU does not open the data file then (BDRV_O_NO_IO)
        return _NoIOFile(drv.filename, str(node.get("filename") or options.get("data-file") or h.data_file or ""))
    if node and not options.get("data-file"):
        return open_child(None, node, writable=drv.writable)
    name = options.get("data-file") or h.data_file
    if not name:
        raise QimgError("'data-file' is required for this image")

    # as QEMU opens it: the name as it is (a relative one from the working folder, not from
    # the image's as a backing file name)
    path = name
    if options.get("untrusted") and not options.get("data-file"):
        # CVE-2024-32498: never follow a data file name found in an untrusted image
        return _RefusedFile(drv.filename, path)
    return open_protocol(path, writable=drv.writable)
