"""The generic block layer: an open image with its backing chain.

This is what ``qimg.open`` returns and what every command uses. It does, once for every
format, what QEMU's ``block/io.c`` does: bounds checks, zeroes past the end, falling through
to the backing image for unallocated runs, and chain-wide block status with depth.
"""
from __future__ import annotations

import io
import os

from .blockstatus import ALLOCATED, DATA, ZERO, Status
from .errors import QimgError
from .protocol import ZERO_CHUNK

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from .driver import Format

#: deepest backing chain we follow before calling it an error (guards hostile loops too)
MAX_CHAIN_DEPTH = 256


def zero_fill(view: memoryview) -> None:
    """Zero a writable buffer without allocating per call."""
    n = len(view)
    pos = 0
    while pos < n:
        k = min(len(ZERO_CHUNK), n - pos)
        view[pos : pos + k] = ZERO_CHUNK[:k]
        pos += k


def is_zero(data: bytes | memoryview) -> bool:
    """True when a buffer holds only zero bytes (compared in C, not per byte)."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(view)
    pos = 0
    while pos < n:
        k = min(len(ZERO_CHUNK), n - pos)
        if view[pos : pos + k] != ZERO_CHUNK[:k]:
            return False
        pos += k
    return True


class Image:
    """An open image: guest-visible reads and writes over a driver and its backing chain."""

    def __init__(self, driver: "Format", *, format_name: str, filename: str,
                 backing: "Image | None" = None) -> None:
        self.driver = driver
        self.format = format_name
        self.filename = filename
        #: the name QEMU gives the image where it differs from the file's (``json:{...}``
        #: when open options change what the image is); None: the file name
        self.display_name: str | None = None
        #: the protocol class under the format when it is not the ``file`` protocol (nbd...)
        self.protocol_class: type | None = None
        #: the driver options the image was opened with (a backing file's ``backing.*`` keys,
        #: a json: name's nodes): the same node opens again with them (commit's reopen)
        self.open_options: dict[str, Any] = {}
        self.backing = backing
        driver.backing = backing
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("rw" if self.writable else "ro")
        return f"<qimg.Image {self.filename!r} format={self.format!r} size={self.size} {state}>"

    # -- facts ----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.driver.size

    @property
    def writable(self) -> bool:
        return self.driver.writable

    @property
    def chain(self) -> "Chain":
        """This image and its backing images, top first (a list; calling it, as earlier
        versions' method, gives the same list)."""
        out = Chain()
        img: Image | None = self
        while img is not None:
            out.append(img)
            img = img.backing
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reads ------------------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.preadinto(offset, memoryview(buf))
        return bytes(buf)

    def preadinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with guest data from ``offset``; zeroes past the end."""
        if offset < 0:
            raise QimgError("Invalid offset")
        buf = memoryview(buf).cast("B") if memoryview(buf).format != "B" else memoryview(buf)
        n = len(buf)
        size = self.size
        pos = 0
        drv = self.driver
        while pos < n:
            off = offset + pos
            if off >= size:
                zero_fill(buf[pos:])
                return
            try:
                st = drv.block_status(off, min(n - pos, size - off))
            except OSError:
                if not drv.is_protocol:
                    raise
                # a protocol node's block status only spares reading zeroes: when it fails
                # (blkdebug's injected block-status errors), the data is read, as QEMU reads
                # without asking
                k = min(n - pos, size - off)
                drv.read(off, buf[pos : pos + k])
                pos += k
                continue
            k = st.length
            if k <= 0:
                raise QimgError(f"'{self.filename}': driver returned an empty block status run")
            view = buf[pos : pos + k]
            if st.flags & ZERO:
                zero_fill(view)
            elif st.flags & (ALLOCATED | DATA):
                drv.read(off, view)
            elif self.backing is not None:
                self.backing.preadinto(off, view)
            else:
                zero_fill(view)
            pos += k

    # -- writes -----------------------------------------------------------------
    def _check_write(self, offset: int, length: int) -> None:
        if not self.writable:
            raise QimgError(f"'{self.filename}' is opened read-only")
        if offset < 0 or offset + length > self.size:
            raise QimgError(f"Write of {length} bytes at {offset} is beyond the end of '{self.filename}'")

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B") if memoryview(data).format != "B" else memoryview(data)
        self._check_write(offset, len(view))
        if len(view):
            self.driver.write(offset, view)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._check_write(offset, length)
        if length:
            self.driver.write_zeroes(offset, length, unmap)

    def write_compressed(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._check_write(offset, len(view))
        self.driver.write_compressed(offset, view)

    def discard(self, offset: int, length: int) -> None:
        self._check_write(offset, length)
        self.driver.discard(offset, length)

    def flush(self) -> None:
        if self.writable:
            self.driver.flush()

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        old = self.size
        if (size > old and self.backing is not None and not self.driver.truncate_zeroes_backing_area
                and self.backing.size > old):
            # the grown area must not show the backing file's data (QEMU's block layer asks the
            # driver to zero it): a driver that cannot is refused, one without resize says so
            from .driver import Format

            if type(self.driver).truncate is not Format.truncate:
                raise QimgError("Block driver does not support requested flags")
        self.driver.truncate(size, shrink=shrink, preallocation=preallocation)

    # -- block status -----------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        """This layer's status for the run at ``offset`` (past the end: unallocated zeroes)."""
        size = self.size
        if offset >= size:
            return Status(ZERO, max(length, 1))
        st = self.driver.block_status(offset, min(length, size - offset))
        if st.length <= 0:  # a driver bug on hostile metadata must not make callers loop forever
            raise QimgError(f"'{self.filename}': driver returned an empty block status run")
        return st

    def chain_status(self, offset: int, length: int, base: "Image | None" = None) -> Status:
        """Status across the chain down to (not including) ``base``, with ``depth``.

        A run allocated nowhere has depth == number of layers searched and no DATA.
        """
        img: Image | None = self
        depth = 0
        while img is not None and img is not base:
            st = img.block_status(offset, length)
            if st.flags & ALLOCATED:
                return Status(st.flags, st.length, st.host_offset, st.file, depth)
            length = st.length
            img = img.backing
            depth += 1
        return Status(0, length, None, None, depth)

    def extents(self, offset: int = 0, length: int | None = None, base: "Image | None" = None) -> Iterator[Status]:
        """Iterate chain statuses over a range, merged where identical in kind."""
        end = self.size if length is None else offset + length
        while offset < end:
            st = self.chain_status(offset, end - offset, base)
            yield st
            offset += st.length

    # -- life cycle ---------------------------------------------------------------
    def inactivate(self) -> int:
        """QEMU's bdrv_inactivate_all over this image's chain, top first, stopping at the first
        failure: 0, or that failure's errno (qemu-img 10.0's ``bitmap`` and ``commit`` report it
        as "Error while closing the image"). The chain's close afterwards writes nothing more."""
        import errno

        if self._closed:
            return 0
        for img in self.chain:
            try:
                err = img.driver.inactivate()
            except OSError as e:
                err = e.errno or errno.EIO
            except QimgError:
                err = errno.EIO
            if err:
                return err
        return 0

    def close(self) -> None:
        """Close the image and its backing chain (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        for img in self.chain:
            try:
                img.driver.close()
            except OSError as e:
                raise QimgError(f"Could not close '{img.filename}': {os.strerror(e.errno or 5)}") from None

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def as_file(self) -> "ImageFile":
        """A seekable binary file object over the guest view."""
        return ImageFile(self)


class Chain(list):
    """An image's chain, top first: a list that may also be called (``img.chain()``)."""

    __slots__ = ()

    def __call__(self) -> "Chain":
        return self


class ImageFile(io.RawIOBase):
    """The guest view of an image as a binary file (``io.RawIOBase``): ``read``, ``readinto``,
    ``write``, ``seek``, ``tell``; wrap it in ``io.BufferedReader`` for small reads, or hand it
    to any code that takes a file (``shutil.copyfileobj``, ``tarfile``, ``hashlib.file_digest``).

    The file has the image's virtual size: reads stop there, writes past it fail with
    ``OSError`` (ENOSPC, as a block device's). Closing the file leaves the image open
    (``Image.as_file``); it closes the image only when the file owns it (``qimg.open_file``).
    """

    def __init__(self, image: Image, *, owns_image: bool = False) -> None:
        super().__init__()
        self.image = image
        self.pos = 0
        self._owns = owns_image

    @property
    def name(self) -> str:
        return self.image.filename

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self.image.writable

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if whence == 0:
            base = 0
        elif whence == 1:
            base = self.pos
        elif whence == 2:
            base = self.image.size
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if base + offset < 0:
            raise OSError(22, "Invalid argument")  # as lseek's EINVAL
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self.pos

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self.image.size - self.pos))
        if n:
            self.image.preadinto(self.pos, view[:n])
        self.pos += n
        return n

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not self.image.writable:
            raise io.UnsupportedOperation("write: the image is open read-only")
        view = memoryview(b).cast("B")
        if self.pos + len(view) > self.image.size:
            import errno

            from .errors import os_error

            raise os_error(f"Write of {len(view)} bytes at {self.pos} is beyond the end of '{self.image.filename}'",
                           errno.ENOSPC, self.image.filename)
        self.image.pwrite(self.pos, view)
        self.pos += len(view)
        return len(view)

    def flush(self) -> None:
        if not self.closed and not self.image.closed:
            self.image.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()
            if self._owns:
                self.image.close()
