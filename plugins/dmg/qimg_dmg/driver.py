"""The dmg format: Apple UDIF disk images, read-only, as QEMU's dmg driver.

Open finds the ``koly`` trailer where QEMU looks for it (in the last 1023 bytes of the file,
whose length is rounded up to a sector as QEMU's), checks its fork offsets, then reads the
block tables from the resource fork or else from the XML plist's ``<data>`` elements (QEMU's
order and checks, messages included). Chunks of the types QEMU reads are kept in five flat
arrays in table order; lookups use QEMU's "current chunk, else binary search", so even odd
tables resolve the same sectors to the same chunks.

Chunk types: zero and ignore read as zeroes, raw is read in place, zlib and bzip2 are inflated
whole (at most 64 MiB in and out, QEMU's limits) and the last one kept. lzfse chunks are
treated as by a QEMU built without lzfse, like Debian's qemu-img 7.2 and 10.0: a warning at
open and ``Input/output error`` when read (the Python bindings offer no bound on their output,
see docs/formats/dmg.md). Other types (ADC, lzma) warn as unknown, comments and the terminator
are skipped silently. Sectors no chunk covers fail to read, as in QEMU.
"""
from __future__ import annotations

import struct
from _thread import allocate_lock  # threading.Lock without importing threading (start-up)
from array import array

from qimg import api
from qimg.driver import ReadOnlyFormat
from qimg.errors import QimgError
from qimg.image import zero_fill
from qimg.limits import MAX_IMAGE_SIZE

from .structs import CHUNK_SIZE, KOLY_SIZE, MISH_SIZE, Koly, ResourceHeader

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

SECTOR = 512
UDZE, UDRW, UDIG = 0, 1, 2
UDZO, UDBZ, ULFO = 0x80000005, 0x80000006, 0x80000007
UDCM, UDLE = 0x7FFFFFFE, 0xFFFFFFFF
READ_TYPES = frozenset((UDZE, UDRW, UDIG, UDZO, UDBZ))
#: QEMU's limits on a chunk: stored bytes, and sectors of a chunk that is not all zeroes
LENGTHS_MAX = 64 << 20
SECTORCOUNTS_MAX = LENGTHS_MAX // SECTOR
#: QEMU's cap on the XML plist
MAX_XML = 16 << 20
#: beyond QEMU (which keeps any number): chunks held in memory (36 bytes each, 36 MiB)
MAX_CHUNKS = 1 << 20
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_EIO = "Input/output error"
#: QEMU's warn_report_once: each warning once per process
_warned: set[str] = set()
_CHUNK = struct.Struct(">IIQQQQ")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = bytes(sorted(set(range(256)) - set(_B64)))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        api.warn(f"qimg: warning: {message}")


def glib_base64(text: bytes) -> bytes:
    """``g_base64_decode``: characters outside the alphabet are skipped, ``=`` counts as a zero
    digit that drops the byte it ends, a trailing incomplete group is ignored."""
    digits = text.translate(None, _NOT_B64)
    digits = digits[:len(digits) // 4 * 4]
    if not digits:
        return b""
    import binascii

    out = bytearray(binascii.a2b_base64(digits.replace(b"=", b"A")))
    # '=' as the last digit of a group drops its third byte, as the third digit its second
    drop = set()
    pos = digits.find(b"=")
    while pos >= 0:
        group, at = divmod(pos, 4)
        if at == 3:
            drop.add(group * 3 + 2)
        elif at == 2:
            drop.add(group * 3 + 1)
        pos = digits.find(b"=", pos + 1)
    for i in sorted(drop, reverse=True):
        del out[i]
    return bytes(out)


class DmgFormat(ReadOnlyFormat):
    format_name = "dmg"
    runtime_options = frozenset()

    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self.types = array("I")
        self.sectors = array("Q")
        self.counts = array("Q")
        self.offsets = array("Q")
        self.lengths = array("Q")
        koly_at = self._find_koly()
        k = Koly.parse(self._read(koly_at, KOLY_SIZE))
        self.data_fork_offset = k.data_fork_offset
        if k.data_fork_offset > koly_at:
            raise self._invalid()
        if k.rsrc_fork_offset >= koly_at or k.rsrc_fork_length > koly_at - k.rsrc_fork_offset:
            raise self._invalid()
        if k.xml_offset >= koly_at or k.xml_length > koly_at - k.xml_offset:
            raise self._invalid()
        if k.sector_count >= 1 << 63:  # QEMU's total_sectors is signed
            raise self._invalid()
        if k.rsrc_fork_length:
            self._read_resource_fork(k.rsrc_fork_offset, k.rsrc_fork_length)
        elif k.xml_length:
            self._read_xml(k.xml_offset, k.xml_length)
        else:
            raise self._invalid()
        # QEMU's block layer then checks the size in bytes, in (wrapping) 64-bit arithmetic
        size = (k.sector_count * SECTOR) & _U64
        if size >= 1 << 63:
            size -= 1 << 64
        if size > MAX_IMAGE_SIZE or k.sector_count * SECTOR > MAX_IMAGE_SIZE:
            raise QimgError("Could not refresh total sector count: File too large")
        self._size = k.sector_count * SECTOR
        self.trailer = k
        self._lock = allocate_lock()
        self._current = len(self.types)  # QEMU's current_chunk: none yet
        self._inflated: tuple[int, bytes] | None = None

    def _invalid(self) -> QimgError:
        """QEMU's dmg_open fails with -EINVAL and no message: the block layer's wording."""
        return QimgError(f"Could not open '{self.filename}': Could not open '{self.filename}': Invalid argument")

    def _read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.read_file(offset, memoryview(buf))
        return buf

    def _u32(self, offset: int) -> int:
        return int.from_bytes(self._read(offset, 4), "big")

    # -- the trailer ------------------------------------------------------------------------
    def _find_koly(self) -> int:
        """Offset of "koly" in the 515 bytes where QEMU searches: the last 511 bytes of the
        second-to-last sector and the first 4 of the last one (the length rounded up to a sector)."""
        length = -(-self.file.size() // SECTOR) * SECTOR
        if length < SECTOR:
            raise QimgError("dmg file must be at least 512 bytes long")
        start = length - 511 - 512 if length > 511 + 512 else 0
        found = self._read(start, min(length, 515)).find(b"koly")
        if found < 0:
            raise QimgError("Could not locate UDIF trailer in dmg file")
        return start + found

    # -- the block tables --------------------------------------------------------------------
    def _read_resource_fork(self, begin: int, length: int) -> None:
        head = ResourceHeader.parse(self._read(begin, ResourceHeader.sizeof()))
        if head.data_offset > length:
            raise self._invalid()
        count = head.data_length
        if count == 0 or (head.data_offset + count) & _U32 > length:  # QEMU adds in 32 bits
            raise self._invalid()
        offset = begin + head.data_offset
        end = offset + count
        while offset < end:
            count = self._u32(offset)
            if count == 0 or count > end - offset:
                raise self._invalid()
            offset += 4
            # a resource that is not a block table is skipped unread
            if count >= MISH_SIZE + CHUNK_SIZE and self._read(offset, 4) == b"mish":
                if count > MISH_SIZE + CHUNK_SIZE * (MAX_CHUNKS + 2):
                    raise self._too_many()
                self._mish(self._read(offset, count))
            offset += count

    def _read_xml(self, begin: int, length: int) -> None:
        if length == 0 or length > MAX_XML:
            raise self._invalid()
        text = bytes(self._read(begin, length)).split(b"\0", 1)[0]  # QEMU's strstr stops at a NUL
        pos = 0
        while True:
            start = text.find(b"<data>", pos)
            if start < 0:
                return
            start += 6
            end = text.find(b"</data>", start)
            if end < 0:
                raise self._invalid()
            self._mish(glib_base64(text[start:end]))
            pos = end + 1

    def _too_many(self) -> QimgError:
        return QimgError(f"Could not open '{self.filename}': the block tables have more than "
                         f"{MAX_CHUNKS} chunks (qimg's limit)")

    def _mish(self, buf: bytes | bytearray) -> None:
        """Append the chunks of one block table (QEMU's dmg_read_mish_block)."""
        count = len(buf) & _U32
        if count < MISH_SIZE + CHUNK_SIZE or buf[:4] != b"mish":
            return  # not a block table: skipped, as QEMU does
        out_offset = int.from_bytes(buf[8:16], "big")
        in_offset = (self.data_fork_offset + int.from_bytes(buf[0x18:0x20], "big")) & _U64
        n = (count - MISH_SIZE) // CHUNK_SIZE
        for ctype, _comment, sector, sectors, offset, length in _CHUNK.iter_unpack(
                memoryview(buf)[MISH_SIZE:MISH_SIZE + n * CHUNK_SIZE]):
            if ctype not in READ_TYPES:
                if ctype == UDBZ:
                    pass  # read with Python's bz2
                elif ctype == ULFO:
                    _warn_once("lzfse", "dmg-lzfse module is missing, accessing lzfse compressed blocks "
                                        "will result in I/O errors")
                elif ctype not in (UDCM, UDLE):
                    _warn_once("unknown", f"Image contains chunks of unknown type {ctype:x}, accessing them "
                                          "will result in I/O errors")
                continue
            i = len(self.types)
            if ctype not in (UDZE, UDIG) and sectors > SECTORCOUNTS_MAX:
                api.warn(f"qimg: sector count {sectors} for chunk {i} is larger than max ({SECTORCOUNTS_MAX})")
                raise self._invalid()
            if length > LENGTHS_MAX:
                api.warn(f"qimg: length {length} for chunk {i} is larger than max ({LENGTHS_MAX})")
                raise self._invalid()
            if i >= MAX_CHUNKS:
                raise self._too_many()
            self.types.append(ctype)
            self.sectors.append((sector + out_offset) & _U64)
            self.counts.append(sectors)
            self.offsets.append((offset + in_offset) & _U64)
            self.lengths.append(length)

    @property
    def size(self) -> int:
        return self._size

    # -- finding a sector's chunk ---------------------------------------------------------------
    def _in_chunk(self, c: int, sector: int) -> bool:
        return c < len(self.types) and self.sectors[c] <= sector < (self.sectors[c] + self.counts[c]) & _U64

    def _search(self, sector: int) -> int:
        """QEMU's binary search over the chunks in table order (they are not sorted for it)."""
        n = len(self.types)
        lo, hi = 0, n
        while lo <= hi:
            mid = (lo + hi) // 2
            if mid >= n:
                return n  # QEMU reads one entry past its arrays here; every outcome is "none"
            if self.sectors[mid] > sector:
                if mid == 0:
                    return n
                hi = mid - 1
            elif (self.sectors[mid] + self.counts[mid]) & _U64 > sector:
                return mid
            else:
                lo = mid + 1
        return n

    def _chunk_for(self, sector: int) -> int:
        with self._lock:
            c = self._current
        if not self._in_chunk(c, sector):
            c = self._search(sector)
            if c >= len(self.types):
                raise QimgError(_EIO)
        return c

    # -- I/O ----------------------------------------------------------------------------------
    def _inflated_chunk(self, c: int) -> bytes:
        """Chunk ``c`` (zlib or bzip2) inflated to exactly its sector count, or EIO."""
        with self._lock:
            if self._inflated is not None and self._inflated[0] == c:
                return self._inflated[1]
        want = self.counts[c] * SECTOR  # at most 64 MiB (checked at open)
        if not want:
            raise QimgError(_EIO)  # (no sector reaches an empty chunk; a 0 bound would be none)
        comp = bytearray(self.lengths[c])  # at most 64 MiB
        self.read_file(self.offsets[c], memoryview(comp))
        import bz2
        import zlib

        try:
            if self.types[c] == UDZO:
                d = zlib.decompressobj()
                data = d.decompress(comp, want)
                tail = d.unconsumed_tail
            else:
                d = bz2.BZ2Decompressor()
                data = d.decompress(bytes(comp), want)
                tail = b""
            # output exactly full: let the stream end (or show it goes on: too long)
            if not d.eof and len(data) == want and d.decompress(tail, 1):
                raise QimgError(_EIO)
        except (zlib.error, OSError, ValueError, EOFError):
            raise QimgError(_EIO) from None
        if not d.eof or len(data) != want:
            raise QimgError(_EIO)
        with self._lock:
            self._inflated = (c, data)
        return data

    def read(self, offset: int, buf: memoryview) -> None:
        pos, n = 0, len(buf)
        while pos < n:
            at = offset + pos
            c = self._chunk_for(at // SECTOR)
            first = self.sectors[c]
            end = min(n, ((first + self.counts[c]) & _U64) * SECTOR - offset)
            view = buf[pos:end]
            rel = at - first * SECTOR  # byte offset within the chunk
            ctype = self.types[c]
            if ctype in (UDZE, UDIG):
                zero_fill(view)
            elif ctype == UDRW:
                # the stored bytes, in place; past them QEMU shows a stale buffer: zeroes here
                stored = max(0, min(len(view), self.lengths[c] - rel))
                if stored:
                    self.read_file(self.offsets[c] + rel, view[:stored])
                zero_fill(view[stored:])
            else:
                view[:] = memoryview(self._inflated_chunk(c))[rel:rel + len(view)]
            with self._lock:
                self._current = c
            pos = end
