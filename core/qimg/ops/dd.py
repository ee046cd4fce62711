"""``dd``: copy a byte range of an image into a new image (qemu-img's arithmetic).

The output size is ``min(input size, count*bs) - skip*bs`` (qemu-img computes it so, which
makes ``count`` include the skipped blocks); a skip past that end is reported and produces an
empty image with exit status 0, as qemu-img does. Every block is read and written, holes too
(qemu-img dd's output is fully allocated).
"""
from __future__ import annotations

from ..errors import QimgError
from .copy import COPY, Copier, Piece, parallel_safe

#: largest request dd makes (bs is up to 2 GiB): bounds its memory
MAX_DD_CHUNK = 32 << 20

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

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
    """Everything is read and written, holes and zeroes too: qemu-img dd writes every block
    it reads, so the output is fully allocated (its map and check say so)."""
    if size > 0:
        yield Piece(0, size, COPY)


def dd(src: "Image", out_filename: str, out_fmt: str, *, bs: int = 512, count: int | None = None,
       skip: int | None = None, in_name: str | None = None,
       create_options: dict[str, Any] | None = None,
       warn: Callable[[str], None] | None = None) -> None:
    """Copy ``src`` from ``skip*bs`` into a new ``out_fmt`` image ``out_filename``."""
    import qimg

    from ..plugins import get_registry
    from .create import format_class, supports_create

    cls = format_class(out_fmt)
    get_registry().find_protocol(out_filename)  # QEMU's "Unknown protocol 'x'", before creating
    if not supports_create(cls):  # dmg, bochs, cloop
        raise QimgError(f"Format driver '{out_fmt}' does not support image creation")
    size = output_size(src.size, bs, count, skip)
    start = (skip or 0) * bs
    if size is None:
        if warn is not None:
            warn(f"{in_name or src.filename}: cannot skip to specified offset")
        size = 0
    from ..protocol import creation_scope

    # the target is created, then opened again: a protocol may keep what it created until
    # then (s3 uploads the whole object once, at the end)
    with creation_scope():
        try:
            qimg.create(out_filename, out_fmt, size, create_options or {})
        except (QimgError, OSError) as e:
            text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
            raise QimgError(f"{out_filename}: error while creating output image: {text}") from None
        with qimg.open(out_filename, out_fmt, writable=True) as out:
            def read(offset: int, view: memoryview) -> None:
                try:
                    src.preadinto(start + offset, view)
                except (QimgError, OSError) as e:
                    raise _ReadError(_text(e)) from None

            # qemu-img dd reads and writes one bs-sized block at a time: the same requests give
            # the same cluster allocation order (bounded, as a hostile bs must not cost memory)
            copier = Copier(out, read, zero_init=out.driver.zero_init, granule=0, workers=1,
                            serial_reads=not parallel_safe(src), chunk=min(bs, MAX_DD_CHUNK))
            try:
                copier.run(_plan(src, start, size))
                out.flush()
            except _ReadError as e:
                raise QimgError(f"error while reading from input image file: {e.message}") from None
            except (QimgError, OSError) as e:
                raise QimgError(f"error while writing to output image file: {_text(e)}") from None


class _ReadError(QimgError):
    """A read of the input failed (qemu-img names the side that failed)."""


def _text(e: BaseException) -> str:
    return e.message if isinstance(e, QimgError) else (getattr(e, "strerror", None) or str(e))
