"""VMDK extents: what every extent answers (:class:`Extent`), flat extents, and extents whose
file is not opened. Hosted sparse extents are :mod:`.sparse`'s.

Each extent answers for guest offsets relative to its own start.
"""
from __future__ import annotations

import errno

from qimg import limits
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO
from qimg.errors import NotSupported, QimgError
from qimg.image import zero_fill

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable  # noqa: F401 - for the string type alias below
    from typing import Any

CowRead = "Callable[[int, memoryview], None]"  # (extent-relative offset, buffer)

UNALLOC, ZEROES, PLAIN, COMPRESSED, PENDING, ERROR = 0, 1, 2, 3, 4, 5
U64 = (1 << 64) - 1


class Extent:
    """Base: ``length`` bytes of the guest disk; ``type_name`` as ``info`` shows it."""

    type_name = ""
    cluster_size: int | None = None
    compressed = False
    #: the metadata of this extent's file (set by the driver before the first write)
    meta: Any = None

    def __init__(self, file: Any, name: str, length: int) -> None:
        self.file = file
        self.name = name
        self.length = length

    def status(self, off: int, n: int) -> tuple[int, int, int | None]:
        """(flags, length, host offset) of the run at ``off``."""
        raise NotImplementedError

    def read(self, off: int, view: memoryview, cow: CowRead) -> None:
        raise NotImplementedError

    def write(self, off: int, data: memoryview | None, length: int, cow: CowRead) -> None:
        """Write ``data`` (None: ``length`` zero bytes) at extent offset ``off``."""
        raise QimgError("Operation not supported")

    def write_compressed(self, off: int, data: memoryview) -> None:
        raise NotSupported("Compression is not supported for this image format")

    def check(self, first_sector: int) -> tuple[str, int] | None:
        """QEMU's check of this extent: (message, errno) of the first problem, or None."""
        return None

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.compressed:
            d["compressed"] = True
        d["virtual-size"] = self.length
        d["filename"] = self.name
        if self.cluster_size:
            d["cluster-size"] = self.cluster_size
        d["format"] = self.type_name
        return d

    def allocated_size(self) -> int:
        if self.file is None:
            return 0
        return self.file.allocated_size() or 0

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()


class UnopenedExtent(Extent):
    """An extent file untrusted mode does not open: reported by ``info``, refused on I/O."""

    def __init__(self, owner: str, name: str, length: int, type_name: str) -> None:
        super().__init__(None, name, length)
        self.owner = owner
        self.type_name = type_name

    def _refuse(self):
        from qimg.untrusted import refuse_named_file

        return refuse_named_file(self.owner, "extent", self.name)

    def status(self, off, n):
        raise self._refuse()

    def read(self, off, view, cow):
        raise self._refuse()

    def write(self, off, data, length, cow):
        raise self._refuse()

    def check(self, first_sector):
        raise self._refuse()


class FlatExtent(Extent):
    """Guest bytes stored as-is at ``base`` in the extent file (holes read as zeroes)."""

    type_name = "FLAT"

    def __init__(self, file, name, length, base: int) -> None:
        super().__init__(file, name, length)
        self.base = base

    def status(self, off, n):
        if self.base < 0 or not limits.request_ok(self.base + off, n):
            # QEMU asks the file about the extent's start, an offset it cannot have: the answer
            # is "zeroes" for the whole extent (reads there fail, convert writes zeroes)
            return DATA | ALLOCATED | OFFSET_VALID | ZERO, n, self.base + off
        for start, k, is_data in self.file.data_extents(self.base + off, n):
            flags = DATA | ALLOCATED | OFFSET_VALID
            if not is_data:
                flags |= ZERO
            return flags, k, start
        return ZERO | ALLOCATED, n, None

    def read(self, off, view, cow):
        if not limits.request_ok(self.base + off, len(view)):
            raise limits.eio()
        got = self.file.preadinto(self.base + off, view)
        if got < len(view):
            zero_fill(view[got:])

    def write(self, off, data, length, cow):
        if not limits.request_ok(self.base + off, length):
            raise limits.eio()
        if self.meta is not None:
            self.meta.guard(self.base + off, length)
        if data is None:
            self.file.write_zeroes(self.base + off, length)
        else:
            self.file.debug_event("write_aio")  # (QEMU's blkdebug events)
            self.file.pwrite(self.base + off, data)

    def check(self, first_sector):
        # QEMU looks the extent's one "cluster" up: its start must lie in the file
        if self.base >= self.file.size() or self.base < 0:
            return f"ERROR: cluster offset for sector {first_sector} points after EOF", errno.EINVAL
        return None
