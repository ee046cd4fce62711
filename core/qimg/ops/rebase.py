"""``rebase``: change an image's backing file, keeping the guest view (safe mode) or not.

Safe mode reads, for every run the image itself does not allocate, what the old and the new
backing chains show; sectors that differ receive the old data (runs of them one write each,
as qemu-img 7.2), so the image reads the same on top of the new backing. Runs that both chains leave as zeroes are
never read. Unsafe mode (``-u``) only rewrites the recorded name and format.
"""
from __future__ import annotations

from ..blockstatus import ALLOCATED, DATA, SECTOR, ZERO
from ..errors import QimgError
from ..image import zero_fill
from .copy import CHUNK, run_length

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..image import Image


def open_new_backing(img: "Image", name: str, fmt: str | None, force_share: bool = True) -> "Image":
    """Open the new backing file as the image will see it (relative to its folder)."""
    import qimg

    from ..api import resolve_backing_name

    path = resolve_backing_name(img.filename, name)
    try:
        return qimg.open(path, fmt, force_share=force_share)
    except QimgError as e:
        msg = e.message
        prefix = f"Could not open '{path}': "
        if msg.startswith(prefix) and not _is_strerror(msg[len(prefix):]):
            msg = msg[len(prefix):]  # qemu names the file only in protocol-level errors
        raise QimgError(f"Could not open new backing file '{name}': {msg}", e.exit_code) from None


def _is_strerror(text: str) -> bool:
    import errno
    import os

    return text in {os.strerror(n) for n in errno.errorcode}


def _zero_everywhere(img: "Image | None", offset: int, length: int) -> int:
    """Length of the run at ``offset`` that ``img`` surely reads as zeroes (0 if not)."""
    if img is None:
        return length
    if offset >= img.size:
        return length
    st = img.chain_status(offset, min(length, img.size - offset))
    if st.flags & ZERO or not st.flags & (ALLOCATED | DATA):
        return min(st.length, length)
    return 0


def _read(img: "Image | None", offset: int, view: memoryview) -> None:
    if img is None:
        zero_fill(view)
    else:
        img.preadinto(offset, view)  # zeroes past its end


def copy_differences(img: "Image", old: "Image | None", new: "Image | None",
                     progress: Callable[[float, float], None] | None = None) -> None:
    """Write old-backing data into ``img`` where old and new backing views differ.

    As qemu-img 7.2: chunks of at most 2 MiB, cut where the image's allocation changes and
    at the end of either backing file; in each chunk every run of differing 512-byte sectors is
    one write (of zeroes past the old backing's end), so formats whose layout follows the
    writes (qed) end up as qemu-img leaves them. Progress: each unallocated chunk adds
    ``100 / (size // min(size, 2 MiB))`` percent.
    """
    size = img.size
    buf_old = bytearray(CHUNK)
    buf_new = bytearray(CHUNK)
    step = 100.0 / max(1, size // max(1, min(size, CHUNK)))
    done = 0.0
    off = 0
    while off < size:
        n = min(CHUNK, size - off)
        st = img.block_status(off, n)
        n = run_length(st, n, img)
        if st.flags & ALLOCATED:
            off += n
            continue
        old_is_zero = old is None or off >= old.size
        if not old_is_zero:
            n = min(n, old.size - off)
        if new is not None and off < new.size:
            n = min(n, new.size - off)
        _rebase_chunk(img, old, new, off, n, old_is_zero, buf_old, buf_new)
        off += n
        done += step
        if progress:
            progress(min(done, 100.0), 100.0)


def _rebase_chunk(img: "Image", old: "Image | None", new: "Image | None", off: int, k: int,
                  old_is_zero: bool, buf_old: bytearray, buf_new: bytearray) -> None:
    end = off + k
    skip = off
    while skip < end:
        z = min(_zero_everywhere(old, skip, end - skip), _zero_everywhere(new, skip, end - skip))
        if z <= 0:
            break
        skip += z  # both chains read zeroes here: nothing differs (and nothing is read)
    # runs start on sectors counted from the chunk's start, as qemu-img compares
    first = off + (skip - off) // SECTOR * SECTOR
    k = end - first
    if k <= 0:
        return
    vo = memoryview(buf_old)[:k]
    vn = memoryview(buf_new)[:k]
    _read(old, first, vo)
    _read(new, first, vn)
    pos = 0
    while pos < k:
        d = _first_diff_from(buf_old, buf_new, pos, k)
        if d < 0:
            break
        start = d // SECTOR * SECTOR
        stop = start + SECTOR
        while stop < k and vo[stop:stop + SECTOR] != vn[stop:stop + SECTOR]:
            stop += SECTOR
        stop = min(stop, k)
        try:
            if old_is_zero:
                img.write_zeroes(first + start, stop - start)
            else:
                img.pwrite(first + start, vo[start:stop])
        except OSError as e:
            raise QimgError(f"Error while writing to COW image: {e.strerror or e}") from None
        pos = stop


def _first_diff_from(a: bytearray, b: bytearray, start: int, end: int) -> int:
    """First index in [start, end) where ``a`` and ``b`` differ, or -1."""
    vb = memoryview(b)
    if a.startswith(vb[start:end], start):
        return -1
    lo, hi = start, end
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a.startswith(vb[lo:mid], lo):
            lo = mid
        else:
            hi = mid
    return lo


def rebase(img: "Image", backing: str | None, backing_fmt: str | None, *, unsafe: bool = False,
           force_share: bool = False, progress: Callable[[float, float], None] | None = None) -> None:
    """Rebase ``img`` (open writable; with its old chain unless ``unsafe``) onto ``backing``
    (None or "" = no backing file)."""
    from ..plugins import get_registry

    name = backing or None
    if backing_fmt is not None:
        # any driver name, a protocol's too (QEMU's bdrv_find_format: host_device, nbd, ...)
        reg = get_registry()
        if backing_fmt not in reg.formats and reg.protocol(backing_fmt) is None:
            raise QimgError(f"Invalid format name: '{backing_fmt}'")
    missing_fmt = QimgError(f"Could not change the backing file to '{name}': backing format must be specified")
    if not unsafe:
        new = open_new_backing(img, name, backing_fmt, force_share) if name is not None else None
        try:
            copy_differences(img, img.backing, new, progress)
        finally:
            if new is not None:
                new.close()
        img.flush()
    if progress:
        progress(100.0, 100.0)  # qemu-img reports completion before rewriting the name
    if name is not None and backing_fmt is None:
        raise missing_fmt  # as qemu-img: only after the safe mode copied the differences
    try:
        img.driver.change_backing_file(name, backing_fmt if name is not None else None)
    except QimgError as e:
        shown = "(null)" if backing is None else backing  # qemu-img prints a NULL name so
        raise QimgError(f"Could not change the backing file to '{shown}': {e.message}",
                        e.exit_code) from None
    img.flush()
