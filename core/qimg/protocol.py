"""Protocols: where an image's bytes are stored. ``file`` is the one built in.

Drivers do all I/O through a Protocol object (``self.file``), never through paths, so any
format works over any protocol. Offsets and lengths are bytes; no alignment is required.
"""
from __future__ import annotations

import errno
import os
import stat

from .errors import QimgError, os_error_text

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator

# A zero page for comparisons and hole filling; sized for typical cluster runs.
ZERO_CHUNK = bytes(1 << 20)


class Protocol:
    """Base class of protocol drivers. Every method may raise OSError."""

    filename: str
    writable: bool
    #: cache=unsafe (qemu-img convert's default): flush() does not reach the disk
    unsafe_cache: bool = False

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; shorter only at end of file."""
        raise NotImplementedError

    def preadinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; return bytes read (short at EOF)."""
        data = self.pread(offset, len(buf))
        buf[: len(data)] = data
        return len(data)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def truncate(self, size: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def allocated_size(self) -> int | None:
        """Bytes actually used on the host (``disk size``), or None if unknown."""
        return None

    def data_extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """Yield ``(start, length, is_data)`` runs covering the range (holes read as zero)."""
        yield offset, length, True

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Make a range read as zeroes; may deallocate when ``unmap``."""
        end = offset + length
        while offset < end:
            n = min(len(ZERO_CHUNK), end - offset)
            self.pwrite(offset, memoryview(ZERO_CHUNK)[:n])
            offset += n

    def discard(self, offset: int, length: int) -> None:
        """Hint that a range is unused; may do nothing."""

    def allocate(self, offset: int, length: int) -> None:
        """Reserve space (``preallocation=falloc``)."""
        raise NotImplementedError

    def set_perms(self, perm: int, shared: int) -> None:
        """Advertise permissions to other processes (:mod:`qimg.locking`); no-op by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_libc = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (Python's os only offers posix_fallocate)."""
    global _libc
    import ctypes
    import ctypes.util

    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class FileProtocol(Protocol):
    """A host file or block device, with pread/pwrite, SEEK_DATA/SEEK_HOLE and fallocate."""

    def __init__(self, filename: str, writable: bool = False, create: bool = False) -> None:
        self.filename = filename
        self.writable = writable
        path = filename[5:] if filename.startswith("file:") else filename
        self.path = path
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT  # truncated below, once the locks say nobody uses the file
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise QimgError(f"Could not open '{filename}': {os_error_text(e)}") from None
        except ValueError:  # a NUL byte in a name read from a hostile image
            raise QimgError(f"Could not open '{filename}': {os.strerror(errno.EINVAL)}") from None
        st = os.fstat(self.fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self.fd)
            raise QimgError(f"Could not open '{filename}': Is a directory")
        self.is_block = stat.S_ISBLK(st.st_mode)
        #: a block or character device (/dev/sdX, /dev/null): sized by seeking, never truncated
        self.is_device = self.is_block or stat.S_ISCHR(st.st_mode)
        # a file opened read-only does not change size under us (writers are locked out), so
        # block status need not fstat on every call; writable files are asked each time
        self._ro_size = None if writable or self.is_device else st.st_size
        self._seek_ok = True
        self._perms = (0, 0xF)  # (held, shared) advertised on self.fd, see set_perms
        if create:
            from .locking import create_perms

            try:
                self.set_perms(*create_perms())
            except QimgError:
                os.close(self.fd)
                raise
            if not self.is_device:
                os.ftruncate(self.fd, 0)
            # like QEMU's file creation, hold the locks only while truncating: the format's
            # own open of the new image takes the lasting ones
            self.set_perms(0, 0xF)

    def set_perms(self, perm: int, shared: int) -> None:
        """Take QEMU-compatible permission locks (:func:`qimg.locking.apply`) on this file."""
        from .locking import apply

        if apply(self.fd, perm, shared, self.path, held=self._perms):
            self._perms = (perm, shared)

    @classmethod
    def create(cls, filename: str) -> "FileProtocol":
        """Create (or truncate) a file for a new image."""
        try:
            return cls(filename, writable=True, create=True)
        except QimgError as e:
            # qemu's file driver words a failed creation "Could not create"
            prefix = f"Could not open '{filename}'"
            if e.message.startswith(prefix):
                raise QimgError(f"Could not create '{filename}'" + e.message[len(prefix):], e.exit_code) from None
            raise

    def pread(self, offset: int, length: int) -> bytes:
        if length > (16 << 20):  # a length from a hostile image: never allocate past the end of file
            length = max(0, min(length, self.size() - offset))
        try:
            out = os.pread(self.fd, length, offset)
        except (OverflowError, ValueError):  # offsets/lengths beyond off_t (hostile metadata)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        if len(out) == length or not out:
            return out
        parts = [out]
        got = len(out)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        got = 0
        total = len(buf)
        while got < total:
            try:
                n = os.preadv(self.fd, [buf[got:]], offset + got)
            except OverflowError:  # an offset beyond off_t (hostile metadata)
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
            if n <= 0:
                break
            got += n
        return got

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            try:
                n = os.pwrite(self.fd, view, offset)
            except OverflowError:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
            view = view[n:]
            offset += n

    def pwritev(self, offset: int, buffers: list) -> None:
        total = sum(len(b) for b in buffers)
        n = os.pwritev(self.fd, buffers, offset)
        if n < total:
            # rare short write: finish the rest piecewise
            joined = memoryview(b"".join(bytes(b) for b in buffers))
            self.pwrite(offset + n, joined[n:])

    def size(self) -> int:
        if self._ro_size is not None:
            return self._ro_size
        if self.is_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        if self.is_device:
            # QEMU: a device keeps its size; asking for more is an error, for less nothing
            if size > self.size():
                raise QimgError("Cannot grow device files")
            return
        os.ftruncate(self.fd, size)

    def flush(self) -> None:
        if self.writable and not self.unsafe_cache:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def allocated_size(self) -> int | None:
        return os.fstat(self.fd).st_blocks * 512

    def data_extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        end = offset + length
        size = self.size()
        while offset < end:
            if offset >= size:
                yield offset, end - offset, False
                return
            kind, nxt = self._probe_extent(offset, size)
            nxt = min(nxt, end)
            yield offset, nxt - offset, kind
            offset = nxt

    def _probe_extent(self, offset: int, size: int) -> tuple[bool, int]:
        """(is_data, end of that run) using SEEK_DATA/SEEK_HOLE."""
        if not self._seek_ok:
            return True, size
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False, size  # hole up to EOF
            self._seek_ok = False
            return True, size
        if data > offset:
            return False, data
        try:
            hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        except OSError:
            return True, size
        return True, hole

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        if length <= 0:
            return
        try:
            if unmap:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            else:
                _fallocate(self.fd, FALLOC_FL_ZERO_RANGE, offset, length)
            if offset + length > self.size():
                self.truncate(offset + length)
            return
        except OSError:
            pass
        super().write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        try:
            _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError:
            pass

    def allocate(self, offset: int, length: int) -> None:
        os.posix_fallocate(self.fd, offset, length)

    def copy_range_to(self, dst: "FileProtocol", src_off: int, dst_off: int, length: int) -> bool:
        """Copy with copy_file_range; False when the kernel refuses (caller falls back)."""
        try:
            while length > 0:
                n = os.copy_file_range(self.fd, dst.fd, length, src_off, dst_off)
                if n <= 0:
                    return length == 0
                src_off += n
                dst_off += n
                length -= n
            return True
        except (OSError, AttributeError):
            return False
