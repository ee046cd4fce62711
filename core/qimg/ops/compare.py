"""``compare``: do two images show the same guest content? (qemu-img's rules and texts)

Both images are walked by chain block status; only runs that some image allocates are read,
in chunks of at most 2 MiB, compared in C (``bytes.startswith`` on memoryviews) and narrowed
down by bisection to report the first differing 512-byte sector, as qemu-img does.
Exit codes: 0 identical, 1 different; errors raise QimgError with 3 (block status) or 4 (read).
"""
from __future__ import annotations

from ..blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO
from ..errors import QimgError
from .copy import CHUNK, ZERO_VIEW, qemu_run_length, region_is_zero

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..image import Image

EOF = 0x20  # QEMU's BDRV_BLOCK_EOF
_FLAGS = DATA | ZERO | OFFSET_VALID | ALLOCATED
STATUS_WINDOW = 8 << 20


def first_difference(b1: bytearray, b2: bytearray, n: int) -> int:
    """Index of the first byte where ``b1[:n]`` and ``b2[:n]`` differ, or -1."""
    v2 = memoryview(b2)
    if b1.startswith(v2[:n]):
        return -1
    lo, hi = 0, n  # b1[:lo] == b2[:lo]; a difference lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if b1.startswith(v2[lo:mid], lo):
            lo = mid
        else:
            hi = mid
    return lo


def first_nonzero(buf: bytearray, n: int) -> int:
    """Index of the first non-zero byte of ``buf[:n]``, or -1."""
    if region_is_zero(buf, 0, n):
        return -1
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if buf.startswith(ZERO_VIEW[: mid - lo], lo) if mid - lo <= len(ZERO_VIEW) else region_is_zero(buf, lo, mid):
            lo = mid
        else:
            hi = mid
    return lo


def _status(img: "Image", offset: int, length: int, name: str, size: int,
            strict: bool = False, qemu_runs: bool = False) -> tuple[int, int]:
    try:
        # a short window first (drivers cost per cluster of the window); a run that fills it
        # is asked again in full, so the runs are the same as one query would give
        short = min(length, STATUS_WINDOW)
        st = img.chain_status(offset, short)
        if st.length >= short and short < length:
            st = img.chain_status(offset, length)
    except (OSError, QimgError):
        # qemu-img names the image only, never the error
        raise QimgError(f"Sector allocation test failed for {name}", 3) from None
    flags = st.flags & _FLAGS
    if not flags & ALLOCATED and not flags & DATA:
        flags |= ZERO  # unallocated through the whole chain reads as zeroes
    n = max(1, min(st.length, length))
    # QEMU's drivers report at most one block/cluster/L2 table per call; the run end decides
    # the EOF flag, which strict mode compares, and the steps the progress meter takes
    if strict or qemu_runs:
        n = qemu_run_length(img, offset, n, st.depth)
    if offset + n >= size:
        flags |= EOF  # QEMU's status of a run that reaches the end: strict mode compares it too
    return flags, n


def _read(img: "Image", offset: int, view: memoryview, name: str) -> None:
    try:
        img.preadinto(offset, view)
    except (OSError, QimgError) as e:
        text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
        raise QimgError(f"Error while reading offset {offset} of {name}: {text}", 4) from None


def compare(img1: "Image", img2: "Image", *, strict: bool = False,
            say: Callable[[str], None] = print,
            progress: Callable[[float, float], None] | None = None,
            name1: str | None = None, name2: str | None = None, qemu_runs: bool = False) -> int:
    """Compare two images; print qemu-img's result line with ``say``; return 0 or 1.

    ``qemu_runs``: step through the images as QEMU's block status reports them (one block,
    cluster or grain at a time for some formats), so ``progress`` moves in qemu-img's steps."""
    name1 = name1 or img1.filename
    name2 = name2 or img2.filename
    size1, size2 = img1.size, img2.size
    if strict and size1 != size2:
        say("Strict mode: Image size mismatch!")
        return 1
    common = min(size1, size2)
    total = max(size1, size2)
    buf1 = bytearray(CHUNK)
    buf2 = bytearray(CHUNK)
    off = 0
    while off < common:
        f1, n1 = _status(img1, off, common - off, name1, size1, strict, qemu_runs)
        f2, n2 = _status(img2, off, common - off, name2, size2, strict, qemu_runs)
        chunk = min(n1, n2)
        if strict and f1 != f2:
            say(f"Strict mode: Offset {off} block status mismatch!")
            return 1
        a1, a2 = bool(f1 & ALLOCATED), bool(f2 & ALLOCATED)
        if f1 & ZERO and f2 & ZERO:
            pass
        elif a1 == a2:
            if a1:
                chunk = min(chunk, CHUNK)
                # (reading the second image in a helper thread measured no faster here: the
                # thread hand-offs cost as much as they save on a loaded 2-vCPU machine)
                _read(img1, off, memoryview(buf1)[:chunk], name1)
                _read(img2, off, memoryview(buf2)[:chunk], name2)
                d = first_difference(buf1, buf2, chunk)
                if d >= 0:
                    say(f"Content mismatch at offset {off + d // SECTOR * SECTOR}!")
                    return 1
        else:
            chunk = min(chunk, CHUNK)
            img, name = (img1, name1) if a1 else (img2, name2)
            if _nonzero_at(img, off, chunk, buf1, name, say):
                return 1
        off += chunk
        if progress is not None:
            progress(off, total)
    if size1 != size2:
        say("Warning: Image size mismatch!")
        over, name = (img1, name1) if size1 > size2 else (img2, name2)
        while off < total:
            f, n = _status(over, off, total - off, name, over.size, qemu_runs=qemu_runs)
            chunk = n
            if f & ALLOCATED and not f & ZERO:
                chunk = min(chunk, CHUNK)
                if _nonzero_at(over, off, chunk, buf1, name, say):
                    return 1
            off += chunk
            if progress is not None:
                progress(off, total)
    say("Images are identical.")
    return 0


def _nonzero_at(img: "Image", off: int, chunk: int, buf: bytearray, name: str,
                say: Callable[[str], None]) -> bool:
    _read(img, off, memoryview(buf)[:chunk], name)
    z = first_nonzero(buf, chunk)
    if z >= 0:
        say(f"Content mismatch at offset {off + z // SECTOR * SECTOR}!")
        return True
    return False
