"""Block status flags, as QEMU's BDRV_BLOCK_* (answers for one layer of a chain)."""
from __future__ import annotations

from dataclasses import dataclass

DATA = 0x01           # reads come from this layer's storage
ZERO = 0x02           # reads return zeroes
OFFSET_VALID = 0x04   # host_offset is meaningful
ALLOCATED = 0x08      # this layer answers; without it reads fall through to the backing image
RECURSE = 0x20        # (unused) kept for parity with QEMU's numbering


@dataclass(frozen=True)
class Status:
    """One run of uniform status starting at the queried offset.

    ``length`` > 0; ``host_offset`` is where the data lives in ``file`` (a filename), when
    ``flags & OFFSET_VALID``. ``depth`` is filled by chain queries (0 = top image).
    """

    flags: int
    length: int
    host_offset: int | None = None
    file: str | None = None
    depth: int = 0

    @property
    def allocated(self) -> bool:
        return bool(self.flags & ALLOCATED)

    @property
    def zero(self) -> bool:
        return bool(self.flags & ZERO)

    @property
    def data(self) -> bool:
        return bool(self.flags & DATA)
