"""Caps and validation helpers for parsing hostile images; any driver may use them.

The rule (docs/security.md): every number read from an image is checked before it is used as
an offset, a length, a count or a loop bound, and memory never depends on a size the file
claims beyond the fixed caps below. The helpers raise :class:`qimg.errors.CorruptImage` (a
QimgError, exit code 1) with a message a driver can use as is or rephrase as qemu-img does.
"""
from __future__ import annotations

from .errors import CorruptImage

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .protocol import Protocol

#: largest in-memory metadata table (L1, BAT, reftable, ...) read from one image
MAX_TABLE_BYTES = 64 << 20
#: largest header / descriptor / extension area read in one piece
MAX_HEADER_BYTES = 2 << 20
#: QEMU's BDRV_MAX_LENGTH: INT64_MAX rounded down to a 2^30 multiple (virtual sizes beyond it
#: cannot be addressed by any request)
MAX_IMAGE_SIZE = (2**63 - 1) & ~((1 << 30) - 1)
#: largest host file offset we accept in metadata (off_t)
MAX_FILE_OFFSET = 2**63 - 1
#: longest file name recorded in an image that we read (backing, data file)
MAX_NAME_BYTES = 4096
#: most entries of any per-image list we keep in memory (snapshots, extents, bitmaps)
MAX_LIST_ENTRIES = 65536


def qemu_length(size: int) -> int:
    """A file's length as QEMU's block layer reports it (bdrv_getlength): whole sectors."""
    return -(-size // 512) * 512


def request_ok(offset: int, length: int) -> bool:
    """Whether QEMU's block layer accepts a request of ``length`` bytes at ``offset`` (its
    bdrv_check_qiov_request): anything reaching past :data:`MAX_IMAGE_SIZE` (BDRV_MAX_LENGTH)
    fails with EIO there, while requests past the end of a file read zeroes."""
    return 0 <= offset <= MAX_IMAGE_SIZE and 0 <= length <= MAX_IMAGE_SIZE - offset


def eio() -> CorruptImage:
    """The error of a driver request QEMU fails with EIO (commands add their context)."""
    return CorruptImage("Input/output error")


def einval() -> CorruptImage:
    """The error of a driver request QEMU fails with EINVAL (commands add their context)."""
    return CorruptImage("Invalid argument")


def open_errno(filename: str, code: int) -> CorruptImage:
    """A driver's open failing with a bare errno, worded as QEMU's bdrv_open_driver
    (``Could not open 'x': Could not open 'x': Invalid argument``)."""
    import os

    return CorruptImage(f"Could not open '{filename}': Could not open '{filename}': {os.strerror(code)}")


def check_disk_size(size: int) -> None:
    """QEMU's block layer after a driver's open (bdrv_refresh_total_sectors): a disk larger
    than any request can reach (BDRV_MAX_LENGTH) does not open."""
    if size > MAX_IMAGE_SIZE:
        raise CorruptImage("Could not refresh total sector count: File too large")


def check_range(value: int, lo: int, hi: int, what: str) -> int:
    """``lo <= value <= hi`` or CorruptImage naming ``what``; returns ``value``."""
    if not isinstance(value, int) or value < lo or value > hi:
        raise CorruptImage(f"Invalid {what}: {value}")
    return value


def check_aligned(value: int, alignment: int, what: str) -> int:
    """``value`` is a multiple of ``alignment`` (a power of two) or CorruptImage."""
    if alignment > 0 and value % alignment:
        raise CorruptImage(f"Invalid {what}: {value:#x} is not aligned to {alignment}")
    return value


def check_extent(offset: int, length: int, limit: int, what: str) -> None:
    """``[offset, offset+length)`` lies within ``[0, limit)``, without integer surprises."""
    if offset < 0 or length < 0 or offset > MAX_FILE_OFFSET or length > MAX_FILE_OFFSET - offset:
        raise CorruptImage(f"Invalid {what}: offset {offset:#x} length {length:#x}")
    if offset + length > limit:
        raise CorruptImage(f"Invalid {what}: offset {offset:#x} length {length:#x} is past the end ({limit:#x})")


def table_bytes(count: int, entry_size: int, what: str, cap: int = MAX_TABLE_BYTES) -> int:
    """Byte size of a table of ``count`` entries, refusing tables above ``cap``."""
    if count < 0 or entry_size <= 0:
        raise CorruptImage(f"Invalid {what} size: {count}")
    n = count * entry_size
    if n > cap:
        raise CorruptImage(f"{what[0].upper() + what[1:]} is too large ({n} bytes, at most {cap})")
    return n


def check_table(offset: int, count: int, entry_size: int, file_size: int, what: str, *,
                cap: int = MAX_TABLE_BYTES, alignment: int = 1) -> int:
    """Validate a table's placement and size before reading it; returns its byte length."""
    n = table_bytes(count, entry_size, what, cap)
    check_aligned(offset, alignment, f"{what} offset")
    check_extent(offset, n, file_size, what)
    return n


def read_exact(file: "Protocol", offset: int, length: int, what: str, cap: int = MAX_TABLE_BYTES) -> bytes:
    """Read exactly ``length`` bytes (at most ``cap``) or raise CorruptImage (file too short)."""
    if length > cap:
        raise CorruptImage(f"{what[0].upper() + what[1:]} is too large ({length} bytes, at most {cap})")
    check_extent(offset, length, MAX_FILE_OFFSET, what)
    try:
        data = file.pread(offset, length)
    except OSError as e:
        raise CorruptImage(f"Could not read {what}: {e.strerror or e}") from None
    if len(data) != length:
        raise CorruptImage(f"Could not read {what}: the image file ends at {offset + len(data):#x}")
    return data


def check_name(raw: bytes, what: str) -> str:
    """A file name stored in an image: bounded, no NUL, valid UTF-8 (else CorruptImage)."""
    if len(raw) > MAX_NAME_BYTES:
        raise CorruptImage(f"{what[0].upper() + what[1:]} name is too long ({len(raw)} bytes)")
    if b"\0" in raw:
        raise CorruptImage(f"{what[0].upper() + what[1:]} name contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptImage(f"{what[0].upper() + what[1:]} name is not valid UTF-8") from None


def check_no_overlap(regions: list[tuple[int, int, str]]) -> None:
    """Metadata regions ``(offset, length, what)`` must not overlap each other."""
    spans = sorted((off, off + n, what) for off, n, what in regions if n > 0)
    for (a0, a1, aw), (b0, _b1, bw) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise CorruptImage(f"{aw[0].upper() + aw[1:]} at {a0:#x} overlaps {bw} at {b0:#x}")
