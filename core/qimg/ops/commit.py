"""``commit``: write what the images above ``base`` allocate into ``base``.

Runs allocated anywhere above the base (by chain block status) are read through the top
image's view and written into a writable handle of the base; runs nothing above allocates
are never read. A top larger than the base grows the base. Without ``drop`` the top image is
emptied afterwards (``Format.make_empty``); ``-b`` implies ``drop`` in the CLI, as qemu-img.
"""
from __future__ import annotations

import errno
import os

from ..blockstatus import ALLOCATED, ZERO
from ..errors import NotSupported, QimgError
from .copy import COPY, SKIP, Copier, Piece, WriteError, parallel_safe, run_length
from .copy import ZERO as ZERO_OP

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..image import Image


def find_in_chain(top: "Image", name: str) -> "Image | None":
    """The backing image ``name`` designates (as the recorded name or a path resolved
    against the referring image's folder), or None."""
    from ..api import resolve_backing_name

    img = top
    while img.backing is not None:
        back = img.backing
        if name == img.driver.backing_filename:
            return back
        cand = resolve_backing_name(img.filename, name)
        if os.path.realpath(cand) == os.path.realpath(back.filename):
            return back
        img = back
    return None


def base_named(top: "Image", name: str, shown: str) -> "Image":
    """:func:`find_in_chain`, or qemu-img's error naming the image as ``shown``."""
    base = find_in_chain(top, name)
    if base is None:
        raise QimgError(f"Did not find '{name}' in the backing chain of '{shown}'")
    return base


def reopen_writable(top: "Image", base: "Image") -> "Image":
    """Replace ``base`` in ``top``'s chain by a writable handle of the same image.

    The read-only handle (and its chain) is closed first so that the permission locks of
    the new handle do not conflict with it; the chain above keeps working unchanged.
    """
    import qimg

    parent = top
    while parent.backing is not None and parent.backing is not base:
        parent = parent.backing
    if parent.backing is not base:
        raise QimgError(f"'{base.filename}' is not in the backing chain of '{top.filename}'")
    if not type(base.driver).reopenable:
        from ..driver import NODE_NAME

        raise QimgError(f"Block format '{base.format}' used by node '{NODE_NAME}' does not support reopening files")
    # the same node again: its file name and the options it was opened with (a backing file's
    # key secret, a json: name's blkdebug node)
    base.close()
    new = qimg.open(base.filename, base.format, writable=True, options=base.open_options or None)
    new.driver.probed = base.driver.probed  # (a probed raw node stays one: its first sector is guarded)
    parent.backing = new
    parent.driver.backing = new
    return new


def commit(top: "Image", base: "Image | None" = None, *, drop: bool = False,
           progress: Callable[[float, float], None] | None = None, rate_limit: int = 0) -> None:
    """Commit ``top`` (opened writable, with its chain) into ``base`` (default: its backing)."""
    if top.backing is None:
        raise QimgError("Image does not have a backing file")
    if base is None:
        base = top.backing
    size = top.size
    target = reopen_writable(top, base)
    try:
        if target.size < size:
            try:
                target.truncate(size)
            except QimgError as e:
                raise QimgError(f"Could not resize '{base.filename}': {e.message}", e.exit_code) from None
        copier = Copier(target, top.preadinto, zero_init=False, granule=0, workers=4,
                        serial_reads=not parallel_safe(top),
                        unmap=True, rate_limit=rate_limit, progress_all=True,
                        progress=(lambda done: progress(done, size)) if progress else None)
        try:
            copier.run(_plan(top, target, size))
        except WriteError as e:
            raise QimgError(f"Block job failed: {e.reason}") from None
        try:
            target.flush()  # the job's last step: its failure fails the job
        except OSError as e:
            raise QimgError(f"Block job failed: {e.strerror or e}") from None
    finally:
        target.flush()
    if not drop:
        try:
            top.driver.make_empty()
        except NotSupported:
            pass  # qemu-img only empties the top when its driver can (qed, vmdk, vhdx cannot)
        except OSError as e:
            raise QimgError(f"Failed to empty {top.filename}: {os.strerror(e.errno or errno.EIO)}") from None
        except QimgError as e:
            raise QimgError(f"Failed to empty {top.filename}: {e.message}", e.exit_code) from None
        top.flush()


def _plan(top: "Image", base: "Image", size: int) -> Iterator[Piece]:
    off = 0
    while off < size:
        st = top.chain_status(off, size - off, base)
        n = run_length(st, size - off, top)
        if not st.flags & ALLOCATED:
            op = SKIP
        elif st.flags & ZERO:
            op = ZERO_OP
        else:
            op = COPY
        yield Piece(off, n, op)
        off += n
