"""Block status flags, as QEMU's BDRV_BLOCK_* (answers for one layer of a chain)."""
from __future__ import annotations

DATA = 0x01           # reads come from this layer's storage
ZERO = 0x02           # reads return zeroes
OFFSET_VALID = 0x04   # host_offset is meaningful
ALLOCATED = 0x08      # this layer answers; without it reads fall through to the backing image
RECURSE = 0x20        # (unused) kept for parity with QEMU's numbering
COMPRESSED = 0x40     # the data is stored compressed (no host offset): map's "compressed"
#: QEMU's BDRV_SECTOR_SIZE: block status, sizes and request alignment count in these
SECTOR = 512

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .results import Allocation


class Status:
    """One run of uniform status starting at the queried offset.

    ``length`` > 0; ``host_offset`` is where the data lives in ``file`` (a filename), when
    ``flags & OFFSET_VALID``. ``depth`` is filled by chain queries (0 = top image).
    Immutable by convention; a slotted class rather than a dataclass because block status is
    built once per run on every hot path (map, convert, compare) and at start-up.
    """

    __slots__ = ("flags", "length", "host_offset", "file", "depth")

    def __init__(self, flags: int, length: int, host_offset: int | None = None,
                 file: str | None = None, depth: int = 0) -> None:
        self.flags = flags
        self.length = length
        self.host_offset = host_offset
        self.file = file
        self.depth = depth

    def _key(self) -> tuple:
        return (self.flags, self.length, self.host_offset, self.file, self.depth)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Status) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return ("Status(flags={}, length={}, host_offset={}, file={!r}, depth={})"
                .format(*self._key()))

    @property
    def allocation(self) -> "Allocation":
        """``flags`` as the :class:`qimg.Allocation` ``enum.IntFlag`` (``flags`` itself stays a
        plain int: it is built on every hot path)."""
        from .results import Allocation

        return Allocation(self.flags)

    @property
    def allocated(self) -> bool:
        return bool(self.flags & ALLOCATED)

    @property
    def zero(self) -> bool:
        return bool(self.flags & ZERO)

    @property
    def data(self) -> bool:
        return bool(self.flags & DATA)
