"""``rebase``: change an image's backing file, keeping the guest view (safe mode) or not.

Safe mode reads, for every run the image itself does not allocate, what the old and the new
backing chains show; what differs receives the old data, so the image reads the same on top
of the new backing. qemu-img 7.2 compares and writes 512-byte sectors (runs of them one write
each; runs that both chains leave as zeroes are never read); qemu-img 10.0 compares and
writes whole (sub)clusters, optionally compressed (``rebase -c``), and skips what an image of
the chain that becomes the new backing already shows (:func:`copy_differences_aligned`).
Unsafe mode (``-u``) only rewrites the recorded name and format.
"""
from __future__ import annotations

from ..blockstatus import ALLOCATED, DATA, SECTOR, ZERO
from ..errors import QimgError, is_strerror
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
        if msg.startswith(prefix) and not is_strerror(msg[len(prefix):]):
            msg = msg[len(prefix):]  # qemu names the file only in protocol-level errors
        raise QimgError(f"Could not open new backing file '{name}': {msg}", e.exit_code) from None


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


def write_alignment(img: "Image", compress: bool = False) -> int:
    """qemu-img 10.0's rebase write granularity: the image's subcluster (its cluster when
    compressing), from QEMU's bdrv_get_info; 1 byte for a format without clusters."""
    drv = img.driver
    cluster = drv.cluster_size or 0
    if compress:
        return cluster or 1
    return drv.subcluster_size or cluster or 1


def _allocated_above(top: "Image | None", base: "Image", offset: int, length: int) -> tuple[bool, int]:
    """QEMU's bdrv_is_allocated_above(top, base, include_base=false): whether a layer from
    ``top`` down to ``base`` (excluded) allocates the run at ``offset``, and the run's length;
    a layer that ends before ``offset`` answers (0 bytes when it is ``top`` itself, else as
    allocated zeroes)."""
    layer = top
    first = True
    while layer is not None and layer is not base:
        if offset >= layer.size:
            if first:
                return False, 0
            return True, length
        st = layer.driver.block_status(offset, min(length, layer.size - offset))
        length = min(length, st.length)
        if st.flags & ALLOCATED:
            return True, length
        layer = layer.backing
        first = False
    return False, length


def _compare_run(a: bytearray, b: bytearray, start: int, end: int, chunk: int) -> tuple[bool, int]:
    """QEMU's compare_buffers over ``a[start:end]`` and ``b[start:end]``: whether the first
    ``chunk`` bytes differ, and how far (in whole chunks) the buffers keep that answer.

    Pieces are compared in place with ``bytearray.startswith`` (one memcmp, no copy; comparing
    memoryviews goes byte by byte, ~3 ns a byte: 13 s for 4 GiB); equal buffers are told by one
    comparison of the rest."""
    mb = memoryview(b)
    n = end - start
    i = min(n, chunk)
    differ = not a.startswith(mb[start : start + i], start)
    if chunk == 1:
        # byte runs: the XOR of the buffers is zero exactly where they agree
        x = (int.from_bytes(a[start:end], "big") ^ int.from_bytes(b[start:end], "big")).to_bytes(n, "big")
        j = x.find(0) if differ else n - len(x.lstrip(b"\0"))
        return differ, (n if j < 0 else j)
    if not differ and a.startswith(mb[start + i : end], start + i):
        return False, n
    while i < n:
        k = min(n - i, chunk)
        if (not a.startswith(mb[start + i : start + i + k], start + i)) != differ:
            break
        i += k
    return differ, i


def copy_differences_aligned(img: "Image", old: "Image | None", new: "Image | None",
                             progress: Callable[[float, float], None] | None = None, *,
                             prefix: "Image | None" = None, compress: bool = False) -> None:
    """Write old-backing data into ``img`` where old and new backing views differ, as
    qemu-img 10.0 (since 8.2) does.

    Chunks of at most 2 MiB where the image allocates nothing, skipping what the layers above
    ``prefix`` (the new backing when it is in the old chain) leave unchanged; each chunk is
    widened to the image's (sub)cluster boundaries (whole clusters when compressing) and
    compared in (sub)cluster pieces; a run of differing pieces is one write of the old data,
    of zeroes when it starts at or past the old backing's end (data up to there, even where
    the old backing reads zeroes past its end within the chunk).
    """
    from .copy import qemu_run_length

    size = img.size
    align = write_alignment(img, compress)
    old_size = old.size if old is not None else 0
    new_size = new.size if new is not None else 0
    cap = CHUNK + 2 * align
    buf_old = bytearray(cap)
    buf_new = bytearray(cap)
    # as QEMU: a float step of 100 / (size / min(size, 2 MiB)), the division in integers
    step = 100.0 / (size // min(size, CHUNK)) if size else 0.0
    done = 0.0
    off = 0
    while off < size:
        n = min(CHUNK, size - off)
        st = img.driver.block_status(off, n)
        n = qemu_run_length(img, off, run_length(st, n, img), 0)
        if st.flags & ALLOCATED:
            off += n
            continue
        if prefix is not None:
            asked = n
            changed, n = _allocated_above(img.backing, prefix, off, n)
            if not changed and n:
                off += n
                continue
            if not n:
                n = asked  # past the old backing's end: reads as zeroes, compared below
        start = off // align * align
        end = min(-(-(off + n) // align) * align, size)
        off, n = start, end - start
        n_old = min(n, max(0, old_size - off))
        n_new = min(n, max(0, new_size - off))
        vo = memoryview(buf_old)[:n]
        vn = memoryview(buf_new)[:n]
        zero_fill(vo[n_old:])
        old_eof = n_old == 0
        if n_old:
            old.preadinto(off, vo[:n_old])  # type: ignore[union-attr]
        zero_fill(vn[n_new:])
        if n_new:
            new.preadinto(off, vn[:n_new])  # type: ignore[union-attr]
        written = 0
        while written < n:
            differ, k = _compare_run(buf_old, buf_new, written, n, align)
            if differ:
                if old_eof:
                    img.write_zeroes(off + written, k)
                elif compress:
                    img.write_compressed(off + written, vo[written:written + k])
                else:
                    img.pwrite(off + written, vo[written:written + k])
            written += k
            if off + written >= old_size:
                old_eof = True
        done += step
        if progress:
            progress(min(done, 100.0), 100.0)
        off += n


def find_in_chain(img: "Image", name: str) -> "Image | None":
    """The image of ``img``'s backing chain that ``name`` (relative to ``img``'s folder)
    designates (QEMU's bdrv_find_backing_image), or None."""
    import os

    from ..api import resolve_backing_name

    want = os.path.realpath(resolve_backing_name(img.filename, name))
    layer = img.backing
    while layer is not None:
        fname = layer.filename[5:] if layer.filename.startswith("file:") else layer.filename
        if os.path.realpath(fname) == want:
            return layer
        layer = layer.backing
    return None


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
           force_share: bool = False, progress: Callable[[float, float], None] | None = None,
           compress: bool = False) -> None:
    """Rebase ``img`` (open writable; with its old chain unless ``unsafe``) onto ``backing``
    (None or "" = no backing file). ``compress`` (qemu-img 10.0's ``rebase -c``) writes the
    copied clusters compressed."""
    from ..compat import has
    from ..plugins import get_registry

    if compress and not img.driver.supports_compression:
        raise QimgError("Compression not supported for this file format")
    name = backing or None
    if backing_fmt is not None:
        # any driver name, a protocol's too (QEMU's bdrv_find_format: host_device, nbd, ...)
        reg = get_registry()
        if backing_fmt not in reg.formats and reg.protocol(backing_fmt) is None:
            raise QimgError(f"Invalid format name: '{backing_fmt}'")
    if has("rebase-aligned-copy") and img.driver.info_extra().get("dirty-flag", False) is None:
        # qemu-img 10.0 asks the driver's bdrv_get_info for its write alignment first: a
        # driver without one (parallels) fails here, -u or not
        raise QimgError("could not get block driver info")
    missing_fmt = QimgError(f"Could not change the backing file to '{name}': backing format must be specified")
    if not unsafe and has("rebase-aligned-copy"):
        # qemu-img 10.0 reuses an image of the chain as the new backing (QEMU's prefix chain)
        prefix = find_in_chain(img, name) if name is not None else None
        new = prefix if prefix is not None else (
            open_new_backing(img, name, backing_fmt, force_share) if name is not None else None)
        try:
            copy_differences_aligned(img, img.backing, new, progress, prefix=prefix, compress=compress)
        finally:
            if new is not None and new is not prefix:
                new.close()
        img.flush()
    elif not unsafe:
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
