"""The bochs format: Bochs "growing" redolog images, read-only, as QEMU's bochs driver.

The guest disk is cut into extents of ``extent`` bytes; the catalog maps each extent to its
slot in the data area (0xffffffff: never written, reads as zeroes). A slot holds the extent's
sector bitmap (bit ``i % 8`` of byte ``i // 8`` set: sector ``i`` is stored) padded to 512-byte
blocks, then the extent's sectors; a clear bit reads as zeroes. Header fields are checked as
QEMU checks them (and with its unsigned arithmetic, so odd headers read the same); QEMU
reports no block status for this format, so neither do we (``map``: all data).
"""
from __future__ import annotations

from array import array

from qimg.driver import ReadOnlyFormat
from qimg.errors import QimgError
from qimg.image import zero_fill

from .structs import GROWING, HEADER_SIZE, MAGIC, REDOLOG, UNALLOCATED, VERSION_1, VERSION_2, Header, HeaderV1

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

SECTOR = 512
#: QEMU's limit: 1M catalog entries (bximage's largest image, ~8 TB)
MAX_CATALOG = 0x100000
MAX_EXTENT = 0x800000
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
#: sector flags of each bitmap byte value, least significant bit first
_BITS = [bytes((b >> i) & 1 for i in range(8)) for b in range(256)]


def _cstr(raw: bytes) -> bytes:
    """A fixed-size C string field up to its NUL (strcmp reads no further)."""
    return raw.split(b"\0", 1)[0]


class BochsFormat(ReadOnlyFormat):
    format_name = "bochs"
    runtime_options = frozenset()

    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        raw = bytearray(HEADER_SIZE)
        self.read_file(0, memoryview(raw))
        h = Header.parse(raw)
        # QEMU's strcmp on the raw fields: each string must end with its NUL inside the field
        # (a magic without one runs on into the type field and differs)
        if (not raw.startswith(MAGIC + b"\0") or _cstr(h.type) != REDOLOG or _cstr(h.subtype) != GROWING
                or h.version not in (VERSION_1, VERSION_2)):
            raise QimgError("Image not in Bochs format")
        disk = HeaderV1.parse(raw).disk if h.version == VERSION_1 else h.disk
        sectors = disk // SECTOR
        if h.catalog > MAX_CATALOG:
            raise QimgError("Catalog size is too large")
        self.catalog = array("I")
        if h.catalog:
            table = bytearray(h.catalog * 4)
            self.read_file(h.header, memoryview(table))  # past the end of the file: zeroes
            self.catalog.frombytes(table)
            if self.catalog.itemsize != 4:  # pragma: no cover - every platform qimg runs on
                raise QimgError("unsupported platform: array('I') is not 32-bit")
            import sys

            if sys.byteorder == "big":  # pragma: no cover
                self.catalog.byteswap()
        # QEMU keeps these in 32-bit unsigned variables
        self.data_offset = (h.header + h.catalog * 4) & _U32
        self.bitmap_blocks = (1 + ((h.bitmap - 1) & _U32) // SECTOR) & _U32
        self.extent_blocks = (1 + ((h.extent - 1) & _U32) // SECTOR) & _U32
        self.extent_size = h.extent
        if h.extent < SECTOR:
            raise QimgError("Extent size must be at least 512")
        if h.extent & (h.extent - 1):
            raise QimgError(f"Extent size {h.extent} is not a power of two")
        if h.extent > MAX_EXTENT:
            raise QimgError(f"Extent size {h.extent} is too large")
        if h.catalog < -(-sectors // (h.extent // SECTOR)):
            raise QimgError("Catalog size is too small for this disk size")
        self.header = h
        self._size = sectors * SECTOR
        self._slot = SECTOR * ((self.extent_blocks + self.bitmap_blocks) & _U32)

    @property
    def size(self) -> int:
        return self._size

    # -- I/O ----------------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        es = self.extent_size
        pos, n = 0, len(buf)
        while pos < n:
            idx, within = divmod(offset + pos, es)
            k = min(n - pos, es - within)
            view = buf[pos:pos + k]
            entry = self.catalog[idx]
            if entry == UNALLOCATED:
                zero_fill(view)
            else:
                self._read_extent((self.data_offset + entry * self._slot) & _U64, within, view)
            pos += k

    def _read_extent(self, slot: int, within: int, view: memoryview) -> None:
        """Read ``view`` from ``within`` bytes into the extent whose bitmap starts at ``slot``."""
        first = within // SECTOR
        last = (within + len(view) - 1) // SECTOR
        bitmap = bytearray(last // 8 - first // 8 + 1)
        self.read_file(slot + first // 8, memoryview(bitmap))
        flags = b"".join(_BITS[b] for b in bitmap)[first % 8:first % 8 + last - first + 1]
        data = slot + SECTOR * self.bitmap_blocks  # sector 0 of the extent
        s = 0
        count = len(flags)
        while s < count:
            stored = flags[s]
            e = flags.find(b"\0" if stored else b"\1", s)
            if e < 0:
                e = count
            # byte range of sectors first+s .. first+e-1 within view
            lo = max(0, (first + s) * SECTOR - within)
            hi = min(len(view), (first + e) * SECTOR - within)
            if stored:
                self.read_file(data + within + lo, view[lo:hi])
            else:
                zero_fill(view[lo:hi])
            s = e
