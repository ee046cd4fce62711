"""A format node as the child of a protocol: ``driver=blkdebug,image.driver=qcow2,...`` puts QEMU's
error injection filter above a qcow2 image, and QEMU's tests do so (iotests 204, 251). The child
is opened as an image of its own (its format, its file, its backing chain), and the protocol
above it sees its guest data through :class:`FormatNode`, a Protocol over that image.

``map`` looks through such filters to the format node, as qemu-img's map does (it skips filter
nodes first); ``convert`` and reads go through the filter (its rules apply).
"""
from __future__ import annotations

import errno
import os

from .blockstatus import ALLOCATED, DATA, ZERO
from .protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .image import Image


class FormatNode(Protocol):
    """The guest data of an open image, as a protocol node (the child of a filter)."""

    protocol_name = "format"  # (each node reports its format's name: driver_name)
    maps_offsets = False

    def __init__(self, image: Image, options: Mapping[str, Any]) -> None:
        self.image = image
        self.options = dict(options)
        self.writable = image.writable
        self.filename = image.filename

    @classmethod
    def open_options(cls, options: Mapping[str, Any], *, writable: bool) -> "FormatNode":
        from .api import open as open_image
        from .errors import QimgError, reworded
        from .targets import shown_name

        try:
            image = open_image(dict(options), writable=writable)
        except QimgError as e:
            # a child node's error reaches the top image's message as it is: open() names the
            # image it opens (by its options here), which QEMU does only for the top one
            prefix = f"Could not open '{shown_name(dict(options))}': "
            if e.message.startswith(prefix):
                raise reworded(e, e.message[len(prefix):]) from None
            raise
        return cls(image, options)

    # -- names ---------------------------------------------------------------------------------
    @property
    def cluster_size(self) -> int | None:  # type: ignore[override]
        return self.image.driver.cluster_size

    @property
    def reports_dirty_flag(self) -> bool:  # type: ignore[override]
        return (self.image.driver.info_extra() or {}).get("dirty-flag", False) is not None

    @property
    def driver_name(self) -> str:
        return self.image.format

    def exact_filename(self) -> str | None:
        name = getattr(self.image, "display_name", None) or self.image.filename
        return None if not name or name.startswith("json:") else name

    def json_options(self) -> dict[str, Any]:
        from .protocol import nested_options

        opts = dict(self.options)
        return nested_options(str(opts.pop("driver", self.image.format)), opts)

    def dirname(self) -> str:
        return self.image.driver.file.dirname()

    def specific_info(self) -> dict | None:
        spec = self.image.driver.format_specific_info()
        if spec is None or set(spec) == {"type", "data"}:
            return spec
        return {"type": self.image.format, "data": spec}

    def child_nodes(self) -> list[tuple[str, Protocol]]:
        return [("file", self.image.driver.file)]

    # -- I/O -------------------------------------------------------------------------------------
    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = max(0, min(len(buf), self.image.size - offset))
        if n:
            self.image.preadinto(offset, buf[:n])
        return n

    def _room(self, offset: int, length: int) -> None:
        # a format node does not grow under its parent: a write past its end is out of space,
        # as QEMU's raw driver with a size says (ENOSPC)
        if offset + length > self.image.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._room(offset, len(data))
        self.image.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._room(offset, length)
        self.image.write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        length = min(length, self.image.size - offset)  # (a hint: nothing past the end)
        if length > 0:
            self.image.discard(offset, length)

    def flush(self) -> None:
        self.image.flush()

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        st = self.image.chain_status(offset, length)
        if st.flags & ZERO or not st.flags & (ALLOCATED | DATA):
            return st.length, ZERO  # (allocated nowhere in the chain: reads as zeroes)
        return st.length, DATA

    def size(self) -> int:
        return self.image.size

    def truncate(self, size: int) -> None:
        self.image.truncate(size, shrink=True)

    def allocated_size(self) -> int | None:
        return self.image.driver.allocated_file_size()

    def set_perms(self, perm: int, shared: int) -> None:
        pass  # the image took its own locks when it opened

    def close(self) -> None:
        self.image.close()


def skip_filters(image: Image) -> Image:
    """The image below filter nodes (a protocol named as the image's driver whose only child is
    a format node: blkdebug over qcow2), as qemu-img's map sees it."""
    from .protofmt import ProtocolFormat

    while isinstance(image.driver, ProtocolFormat):
        children = image.driver.file.child_nodes()
        if len(children) != 1 or not isinstance(children[0][1], FormatNode):
            break
        image = children[0][1].image
    return image
