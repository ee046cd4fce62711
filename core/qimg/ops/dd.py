"""``dd``: copy a byte range of an image into a new image (qemu-img's arithmetic).

The output size is ``min(input size, count*bs) - skip*bs`` (qemu-img computes it so, which
makes ``count`` include the skipped blocks); a skip past that end is reported and produces an
empty image with exit status 0, as qemu-img does. Holes of the input are not read.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..blockstatus import ALLOCATED, DATA, ZERO
from ..errors import QimgError
from .copy import COPY, Copier, Piece, parallel_safe, run_length
from .copy import ZERO as ZERO_OP

if TYPE_CHECKING:
    from ..image import Image


def output_size(in_size: int, bs: int, count: int | None, skip: int | None) -> int | None:
    """Bytes to copy, or None when ``skip`` lies beyond what ``count`` leaves."""
    size = in_size
    if count is not None and count * bs < size:
        size = count * bs
    if skip is not None:
        if skip * bs > size:
            return None
        size -= skip * bs
    return size


def _plan(src: "Image", start: int, size: int) -> Iterator[Piece]:
    off = 0
    while off < size:
        st = src.chain_status(start + off, size - off)
        n = run_length(st, size - off, src)
        op = ZERO_OP if st.flags & ZERO or not st.flags & (DATA | ALLOCATED) else COPY
        yield Piece(off, n, op)
        off += n


def dd(src: "Image", out_filename: str, out_fmt: str, *, bs: int = 512, count: int | None = None,
       skip: int | None = None, in_name: str | None = None,
       create_options: dict[str, Any] | None = None,
       warn: Callable[[str], None] | None = None) -> None:
    """Copy ``src`` from ``skip*bs`` into a new ``out_fmt`` image ``out_filename``."""
    import qimg

    size = output_size(src.size, bs, count, skip)
    start = (skip or 0) * bs
    if size is None:
        if warn is not None:
            warn(f"{in_name or src.filename}: cannot skip to specified offset")
        size = 0
    try:
        qimg.create(out_filename, out_fmt, size, create_options or {})
    except (QimgError, OSError) as e:
        text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
        raise QimgError(f"{out_filename}: error while creating output image: {text}") from None
    with qimg.open(out_filename, out_fmt, writable=True) as out:
        def read(offset: int, view: memoryview) -> None:
            src.preadinto(start + offset, view)

        copier = Copier(out, read, zero_init=type(out.driver).zero_init, granule=0, workers=4,
                        serial_reads=not parallel_safe(src))
        copier.run(_plan(src, start, size))
        out.flush()
