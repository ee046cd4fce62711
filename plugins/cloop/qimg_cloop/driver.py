"""The cloop format: compressed loopback volumes (V2.0 layout), read-only, as QEMU's driver.

The guest disk is ``n_blocks`` blocks of ``block_size`` bytes, each a zlib stream between two
consecutive entries of the offset table. The header and the table are checked as QEMU checks
them (block size, count, table size, offsets increasing, compressed sizes below 128 MiB); the
table is not held in memory (QEMU's allows 512 MiB): it is validated in pieces at open and read
in pieces of :data:`PIECE` entries when needed, a few of them cached. Blocks inflate to exactly
``block_size`` bytes or the read fails (``Input/output error``) as in QEMU; the last block read
is kept, and inflating runs outside the lock so threads decompress in parallel.
"""
from __future__ import annotations

import operator
import zlib
from _thread import allocate_lock  # threading.Lock without importing threading (start-up)
from array import array
from collections import OrderedDict

from qimg.driver import ReadOnlyFormat
from qimg.errors import QimgError

from .structs import HEADER_SIZE, Header

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

SECTOR = 512
#: QEMU's maximum block size (the inflated buffer)
MAX_BLOCK_SIZE = 64 << 20
#: QEMU's limits on the block count (32-bit table size) and on the table's bytes
MAX_BLOCKS = (0xFFFFFFFF - 1) // 8
MAX_TABLE_BYTES = 512 << 20
#: offset table entries read, checked and cached together
PIECE = 8192
#: table pieces kept in memory (512 KiB)
CACHED_PIECES = 64


class _Corrupt(Exception):
    pass


class CloopFormat(ReadOnlyFormat):
    format_name = "cloop"
    runtime_options = frozenset()

    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        raw = bytearray(HEADER_SIZE)
        self.read_file(0, memoryview(raw))
        h = Header.parse(raw)
        bs = h.block_size
        if bs % SECTOR:
            raise QimgError(f"block_size {bs} must be a multiple of 512")
        if bs == 0:
            raise QimgError("block_size cannot be zero")
        if bs > MAX_BLOCK_SIZE:
            raise QimgError(f"block_size {bs} must be {MAX_BLOCK_SIZE >> 20} MB or less")
        n = h.n_blocks
        if n > MAX_BLOCKS:
            raise QimgError(f"n_blocks {n} must be {MAX_BLOCKS} or less")
        # QEMU computes the table's size in 32 bits: n = MAX_BLOCKS wraps it to 0 and then reads
        # past its buffer; the table is that large, so it is refused here as too large
        if (n + 1) * 8 > MAX_TABLE_BYTES:
            raise QimgError("image requires too many offsets, try increasing block size")
        self.block_size = bs
        self.n_blocks = n
        self._table_end = HEADER_SIZE + (n + 1) * 8
        self._pieces: OrderedDict[int, array] = OrderedDict()
        self._lock = allocate_lock()
        self._validate()
        # QEMU multiplies two 32-bit values: the sector count wraps as there
        self._size = (n * (bs // SECTOR) & 0xFFFFFFFF) * SECTOR
        self._current = -1
        self._current_data = b""

    def _validate(self) -> None:
        """QEMU's checks of the offset table, piece by piece, reporting the first bad index:
        offsets never decrease, and no block is more than 128 MiB compressed."""
        file_size = self.file.size()
        prev = None
        for first in range(0, self.n_blocks + 1, PIECE):
            if HEADER_SIZE + first * 8 >= file_size:
                # the rest of the table is past the end of the file: zeroes, as QEMU reads it
                if prev:
                    raise QimgError(f"offsets not monotonically increasing at index {first}, "
                                    "image file is corrupt")
                return
            vals = self._load_piece(first // PIECE).tolist()
            seq, base = (vals, first) if prev is None else ([prev, *vals], first - 1)
            steps = list(map(operator.sub, seq[1:], seq[:-1]))
            if steps and (min(steps) < 0 or max(steps) > 2 * MAX_BLOCK_SIZE):
                for k, step in enumerate(steps, 1):
                    if step < 0:
                        raise QimgError(f"offsets not monotonically increasing at index {base + k}, "
                                        "image file is corrupt")
                    if step > 2 * MAX_BLOCK_SIZE:
                        raise QimgError(f"invalid compressed block size at index {base + k}, "
                                        "image file is corrupt")
            prev = vals[-1]

    def _load_piece(self, p: int) -> array:
        """Entries ``p * PIECE ...`` of the offset table (zeroes past the end of the file)."""
        got = self._pieces.get(p)
        if got is not None:
            self._pieces.move_to_end(p)
            return got
        first = p * PIECE
        count = min(PIECE, self.n_blocks + 1 - first)
        raw = bytearray(count * 8)
        self.read_file(HEADER_SIZE + first * 8, memoryview(raw))
        table = array("Q")
        table.frombytes(raw)
        if table.itemsize != 8:  # pragma: no cover - every platform qimg runs on
            raise QimgError("unsupported platform: array('Q') is not 64-bit")
        import sys

        if sys.byteorder == "little":
            table.byteswap()
        self._pieces[p] = table
        if len(self._pieces) > CACHED_PIECES:
            self._pieces.popitem(last=False)
        return table

    def _offset(self, i: int) -> int:
        with self._lock:
            return self._load_piece(i // PIECE)[i % PIECE]

    @property
    def size(self) -> int:
        return self._size

    # -- I/O ----------------------------------------------------------------------------
    def _block(self, b: int) -> bytes:
        """Block ``b`` inflated (exactly ``block_size`` bytes), or Input/output error."""
        with self._lock:
            if b == self._current:
                return self._current_data
        start, end = self._offset(b), self._offset(b + 1)
        comp = bytearray(end - start)  # at most 128 MiB (checked at open)
        self.read_file(start, memoryview(comp))
        d = zlib.decompressobj()
        try:
            data = d.decompress(comp, self.block_size)
        except zlib.error:
            raise QimgError("Input/output error") from None
        if not d.eof or len(data) != self.block_size:
            raise QimgError("Input/output error")
        with self._lock:
            self._current, self._current_data = b, data
        return data

    def read(self, offset: int, buf: memoryview) -> None:
        bs = self.block_size
        pos, n = 0, len(buf)
        while pos < n:
            b, within = divmod(offset + pos, bs)
            k = min(n - pos, bs - within)
            buf[pos:pos + k] = memoryview(self._block(b))[within:within + k]
            pos += k
