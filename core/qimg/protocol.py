"""Protocols: where an image's bytes are stored. ``file`` is the one built in; plugins add
others (``nbd``). :class:`Protocol` is the written contract (docs/plugins.md shows a plugin).

Drivers do all I/O through a Protocol object (``self.file``), never through paths, so any
format works over any protocol. Offsets and lengths are bytes; no alignment is required.
"""
from __future__ import annotations

import errno
import os
import stat

from .blockstatus import DATA, SECTOR, ZERO
from .errors import QimgError, os_error_text, with_errno

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, ClassVar

    from .options import Option

# A zero page for comparisons and hole filling; sized for typical cluster runs.
ZERO_CHUNK = bytes(1 << 20)


class Protocol:
    """Base class of protocol drivers: where an image's bytes live (QEMU's protocol
    BlockDriver). A format driver reads and writes its file only through these methods.

    **Naming and opening** (class level). A plugin registers the class with
    ``registry.add_protocol(name, "module:Class", prefixes=(...))``; the core then opens it for

    - a name with one of its prefixes (``nbd://h/x``, ``nbd:h:10809``): :meth:`parse_filename`
      turns the name into open options, then :meth:`open` gets them;
    - options naming it (``driver=nbd,server.type=unix,...`` at the top level, where the
      protocol is the image's driver, or ``file.driver=nbd,file.server...`` under a format;
      ``json:{"driver": "nbd", ...}`` the same as JSON): :meth:`open` gets those options
      (the ``file.`` prefix removed), typed by :attr:`runtime_options`.

    **Names it gives back**: :meth:`exact_filename` (the name ``info`` and ``map`` show, QEMU's
    ``bdrv_refresh_filename``; None when no name says it all), :meth:`json_options` (the
    options of a ``json:{...}`` name), :meth:`dirname` (what a relative backing file name is
    resolved against, or QEMU's error when there is none).

    **I/O** (instance level): offsets and lengths are bytes, no alignment is required.
    Reads past the end are short; :meth:`size` is the length; :meth:`block_status` answers
    what is data, what reads as zeroes. Every method may raise OSError or QimgError; a
    capability the protocol lacks raises QimgError with qemu-img's words (``Cannot grow NBD
    nodes``). ``writable`` False means every write raises.
    """

    #: the driver name: ``driver=`` in options and ``json:`` names, ``info``'s "protocol type"
    protocol_name: ClassVar[str] = ""
    #: open options this protocol takes besides ``filename``/``driver`` (name -> option type of
    #: :mod:`qimg.options`; a name ending in "." takes every key under it); QEMU refuses
    #: others ("Block protocol 'x' doesn't support the option 'y'")
    runtime_options: ClassVar[Mapping[str, str]] = {}
    #: options that change which data is reached (QEMU's ``strong_runtime_opts``): a format
    #: over this protocol that has one of them in its name is shown as ``json:{...}``
    strong_runtime_options: ClassVar[tuple[str, ...]] = ()
    #: ``-o`` options this protocol adds to a format's create options (``preallocation``...)
    create_opts: ClassVar[list[Option]] = []
    #: whether an image can be created over this protocol at all (QEMU: the driver has
    #: ``create_opts``); False: ``create`` and ``convert`` refuse before anything else with
    #: "Protocol driver 'x' does not support image creation" (http)
    can_create: ClassVar[bool] = True
    #: requests a bulk copy should keep in flight to hide latency (threads reading at once;
    #: such a protocol's pread/preadinto must then be safe to call from several threads)
    parallel_reads: ClassVar[int] = 1
    #: the preallocation modes a growth (``resize --preallocation``) may ask for; any other is
    #: refused with QEMU's "Unsupported preallocation mode" (rbd: only ``off``)
    preallocation_modes: ClassVar[tuple[str, ...]] = ("off", "falloc", "full")

    #: the name as given (with the protocol's prefix)
    filename: str
    #: opened for writing
    writable: bool
    #: cache=unsafe (qemu-img convert's default): flush() does not reach the disk
    unsafe_cache: bool = False
    #: QEMU's bdrv_get_info works on this protocol: its ``info`` node has a "dirty-flag"
    reports_dirty_flag: bool = False
    #: the cluster size that bdrv_get_info reports (``info``'s cluster_size of this node and of
    #: a raw image over it: rbd's object size), or None
    cluster_size: int | None = None
    #: the node is a block device (``convert`` cannot assume a new target reads as zeroes)
    is_block: bool = False
    #: block status names where the data lies in this node (QEMU's offset: ``map``'s "offset"
    #: and "Mapped to"); False for a node over several children (quorum), whose data has no
    #: single place
    maps_offsets: ClassVar[bool] = True

    def start_parallel(self, readers: int) -> None:
        """A bulk copy is about to read with ``readers`` threads (at most ``parallel_reads``): a
        latency-bound protocol may open more connections now. Default: nothing to do."""

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A name with this protocol's prefix as open options (QEMU's ``bdrv_parse_filename``),
        or QimgError with QEMU's message (``No valid URL specified``). ``options`` are the
        options given beside the name (QEMU refuses some together with a name). Default: the
        name is the ``filename`` option."""
        return {"filename": filename}

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "Protocol":
        """Open with ``options`` (from :meth:`parse_filename` or given; values typed as
        :attr:`runtime_options` says). ``filename`` is the name the user gave (for messages).
        Errors are QimgError with QEMU's message, without the ``Could not open 'x':`` prefix
        the core adds."""
        raise NotImplementedError

    @classmethod
    def creation_options(cls, filename: str, options: dict[str, Any] | None,
                         check_preallocation: bool = True, merge: bool = True) -> tuple[dict[str, Any], Any]:
        """The first step of every ``create``: ``(open options, size)`` from a filename and the
        creation options. ``size`` and ``preallocation`` are taken out (a mode other than
        ``off`` refused with QEMU's ``Unsupported preallocation mode``, unless
        ``check_preallocation`` is false), the filename is parsed by :meth:`parse_filename`
        and, with ``merge``, the remaining options override what it gives."""
        from .errors import QimgError

        rest = dict(options or {})
        size = rest.pop("size", None)
        mode = rest.pop("preallocation", None)
        if check_preallocation and mode not in (None, "off"):
            raise QimgError(f"Unsupported preallocation mode '{mode}'")
        opts = cls.parse_filename(filename, rest)
        if merge:
            opts.update(rest)
        return opts, size

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> "Protocol":
        """Open ``filename`` for a new image (a format's create writes into what this returns).
        ``options`` may hold the ``size`` the image needs and a ``preallocation`` mode. The
        default is QEMU's fallback for protocols that cannot create: no preallocation, the
        existing target is opened writable, must be large enough (``truncate`` may refuse to
        grow it) and its first sector is zeroed, so that nothing stale is probed."""
        from .errors import QimgError

        opts, size = cls.creation_options(filename, options, merge=False)  # QEMU opens the target by name
        try:
            proto = cls.open(opts, writable=True, filename=filename)
        except QimgError as e:
            from . import compat

            prefix = compat.text("protocol-create-fallback").format(cls.protocol_name)
            raise with_errno(QimgError(prefix + e.message, e.exit_code), e.errno) from None
        try:
            if size is not None:
                proto.truncate(int(size))  # may refuse to grow (nbd: "Cannot grow NBD nodes")
            n = min(SECTOR, proto.size())
            if n:
                proto.write_zeroes(0, n, unmap=True)
        except BaseException:
            proto.close()
            raise
        return proto

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        """The name that opens this again (what ``info`` shows); None if options say more."""
        return self.filename

    def json_options(self) -> dict[str, Any]:
        """This node's options as a ``json:`` name holds them (``{"driver": ..., ...}``)."""
        return {"driver": self.protocol_name, "filename": self.filename}

    def dirname(self) -> str:
        """The prefix a relative backing file name is appended to (``http://h/dir/``), or
        QimgError (QEMU: ``Cannot generate a base directory for NBD nodes``)."""
        name = self.exact_filename()
        if not name:
            raise QimgError(f"Cannot generate a base directory for {self.protocol_name} nodes")
        return type(self).dirname_for(name)

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        """:meth:`dirname` of the node a name opens (without opening it): QEMU's
        ``path_combine`` keeps everything up to the last ``/``."""
        from .names import path_combine

        return path_combine(filename, "")

    # -- I/O ---------------------------------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; shorter only at end of file."""
        buf = bytearray(length)
        n = self.preadinto(offset, memoryview(buf))
        return bytes(buf[:n]) if n < length else bytes(buf)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; return bytes read (short at EOF)."""
        data = self.pread(offset, len(buf))
        buf[: len(data)] = data
        return len(data)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (a short write is an error)."""
        raise NotImplementedError

    def size(self) -> int:
        """The node's length in bytes."""
        raise NotImplementedError

    def truncate(self, size: int) -> None:
        """Change the size (a format's create and growth call it)."""
        raise NotImplementedError

    def check_resize(self, size: int) -> None:
        """Refuse an exact size change ``qemu-img resize`` asks of a raw image over this
        protocol, in qemu-img's words (``Cannot resize NBD nodes``); the default allows it."""

    def flush(self) -> None:
        """Make written data stable (nothing to do by default; ``unsafe_cache`` skips it)."""

    def close(self) -> None:
        """Release the node (connections, descriptors); called once."""

    def allocated_size(self) -> int | None:
        """Bytes actually used on the host (``disk size``), or None if unknown (``unavailable``)."""
        return None

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """``(n, flags)``: the run of ``n`` bytes (1 <= n <= length) from ``offset`` that has one
        status; ``flags`` holds :data:`qimg.blockstatus.DATA` (stored data) and/or
        :data:`qimg.blockstatus.ZERO` (reads as zeroes); neither: unknown contents that must
        be read. Default: derived from :meth:`data_extents`."""
        for _start, n, is_data in self.data_extents(offset, length):
            return max(1, min(n, length)), (DATA if is_data else ZERO)
        return length, DATA

    @property
    def driver_name(self) -> str:
        """The QEMU driver of this open protocol, ``info``'s "protocol type" of a child node
        (qemu-img 10.0): :attr:`protocol_name`, unless what was opened has its own (the file
        protocol opens device nodes with QEMU's ``host_device``)."""
        return self.protocol_name

    def child_nodes(self) -> list[tuple[str, "Protocol"]]:
        """This node's children in QEMU's block graph, as qemu-img 10.0's ``info`` lists them:
        ``(child name, protocol)``. Default: none; a filter over another node lists it
        (blkdebug: ``image``), and ``info`` then shows this node as an image with a child."""
        return []

    def specific_info(self) -> dict | None:
        """The protocol's ``format-specific`` info in ``info`` (``{"type": ..., "data": {...}}``),
        or None when QEMU's driver reports none."""
        return None

    def data_extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """Yield ``(start, length, is_data)`` runs covering the range; ``is_data`` False: the
        run reads as zeroes. A protocol implements this or :meth:`block_status`."""
        if type(self).block_status is Protocol.block_status:
            yield offset, length, True
            return
        end = offset + length
        while offset < end:
            n, flags = self.block_status(offset, end - offset)
            yield offset, n, not (flags & ZERO)
            offset += n

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Make a range read as zeroes; may deallocate when ``unmap``."""
        end = offset + length
        while offset < end:
            n = min(len(ZERO_CHUNK), end - offset)
            self.pwrite(offset, memoryview(ZERO_CHUNK)[:n])
            offset += n

    def discard(self, offset: int, length: int) -> None:
        """Hint that a range is unused (trim); may do nothing."""

    def debug_event(self, event: str) -> None:
        """A format driver over this protocol reached one of QEMU's blkdebug events
        (``read_aio`` before reading guest data, ``l1_update`` before writing an L1 table,
        ... the names of QEMU's BlkdebugEvent): a debugging protocol (blkdebug) arms its
        error injection rules on it. Default: nothing."""

    def allocate(self, offset: int, length: int) -> None:
        """Reserve space (``preallocation=falloc``)."""
        raise NotImplementedError

    # -- internal snapshots of the protocol (rbd): a format without its own (raw) falls back
    # to these, as QEMU's bdrv_snapshot_* fall back to the primary child. The defaults are a
    # protocol without snapshots.
    def snapshot_list(self) -> list:
        """The protocol's snapshots as :class:`qimg.driver.SnapshotInfo` (default: none)."""
        return []

    def snapshot_create(self, name: str) -> None:
        """Take a snapshot of the protocol's data named ``name`` (rbd: an RBD snapshot)."""
        from .errors import NotSupported

        raise NotSupported("Operation not supported")

    def snapshot_goto(self, id_or_name: str) -> None:
        """Roll the data back to a snapshot."""
        from .errors import NotSupported

        raise NotSupported("Operation not supported")

    def snapshot_delete(self, id_or_name: str | None, name: str | None = None) -> None:
        """Delete a snapshot (by name; an id, when given, must equal it for rbd)."""
        from .errors import NotSupported

        raise NotSupported("Operation not supported")

    def set_perms(self, perm: int, shared: int) -> None:
        """Advertise permissions to other processes (:mod:`qimg.locking`); no-op by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: QEMU's file preallocation modes (PreallocMode without ``metadata``, a format's business)
PREALLOC_MODES = ("off", "falloc", "full")


def preallocate(file: Protocol, start: int, end: int, mode: str) -> None:
    """Grow ``file`` from ``start`` to ``end`` as QEMU's file protocol truncates with a
    preallocation mode: ``off`` sparse, ``falloc`` reserved blocks, ``full`` written zeroes."""
    if end <= start:
        return
    if mode not in file.preallocation_modes:
        raise QimgError(f"Unsupported preallocation mode '{mode}'")
    if mode == "off":
        file.truncate(end)
    elif mode == "falloc":
        file.truncate(end)
        file.allocate(start, end - start)
    elif mode == "full":
        pos = start
        while pos < end:
            n = min(len(ZERO_CHUNK), end - pos)
            file.pwrite(pos, memoryview(ZERO_CHUNK)[:n])
            pos += n
    else:
        raise QimgError(f"Unsupported preallocation mode '{mode}'")


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


def file_path(filename: str) -> str:
    """The host path of a file protocol name: without its ``file:`` prefix, and with ``./``
    before it when what is left would read as a protocol (``file:image:top.qcow2`` is
    ``./image:top.qcow2``), as QEMU's file driver parses it."""
    if not filename.startswith("file:"):
        return filename
    path = filename[5:]
    from .names import path_has_protocol

    return "./" + path if path_has_protocol(path) else path


class FileProtocol(Protocol):
    """A host file or block device, with pread/pwrite, SEEK_DATA/SEEK_HOLE and fallocate.

    ``filename`` may carry the ``file:`` prefix; messages name the path without it, as QEMU's.
    """

    protocol_name = "file"
    parallel_reads = 1  # page-cache reads: one reader beside the writer keeps both busy

    def __init__(self, filename: str, writable: bool = False, create: bool = False) -> None:
        self.filename = filename
        self.writable = writable
        path = file_path(filename)
        self.path = path
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT  # truncated below, once the locks say nobody uses the file
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise with_errno(QimgError(f"Could not open '{path}': {os_error_text(e)}"), e.errno) from None
        except ValueError:  # a NUL byte in a name read from a hostile image
            raise with_errno(QimgError(f"Could not open '{path}': {os.strerror(errno.EINVAL)}"), errno.EINVAL) from None
        st = os.fstat(self.fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self.fd)
            raise with_errno(QimgError(f"Could not open '{path}': Is a directory"), errno.EISDIR)
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
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "FileProtocol":
        name = options.get("filename")
        if not name:
            raise QimgError("The 'file' block driver requires a file name")
        return cls(str(name), writable=writable)

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> "FileProtocol":
        """Create (or truncate) a file for a new image."""
        try:
            return cls(filename, writable=True, create=True)
        except QimgError as e:
            # qemu's file driver words a failed creation "Could not create"
            path = file_path(filename)
            prefix = f"Could not open '{path}'"
            if e.message.startswith(prefix):
                raise with_errno(QimgError(f"Could not create '{path}'" + e.message[len(prefix):], e.exit_code),
                                 e.errno) from None
            raise

    def exact_filename(self) -> str | None:
        return self.filename

    def json_options(self) -> dict[str, Any]:
        return {"driver": "file", "filename": self.path}

    def dirname(self) -> str:
        import os.path

        folder = os.path.dirname(self.filename)
        return folder if not folder or folder.endswith("/") else folder + "/"

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

    reports_dirty_flag = True

    @property
    def driver_name(self) -> str:
        # QEMU opens a device node (/dev/sdX, /dev/null) with its host_device driver
        return "host_device" if self.is_device else self.protocol_name

    def specific_info(self) -> dict:
        """QEMU's file driver reports its type and, where the file system has one (XFS), the
        extent size hint."""
        data: dict = {}
        try:
            import fcntl
            import struct

            # FS_IOC_FSGETXATTR: struct fsxattr (xflags, extsize, nextents, projid, cowextsize, pad)
            raw = fcntl.ioctl(self.fd, 0x801C581F, bytes(28))
            extsize = struct.unpack_from("=I", raw, 4)[0]
            if extsize:
                data["extent-size-hint"] = extsize
        except OSError:
            pass
        return {"type": "file", "data": data}

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


def nested_options(driver: str, given: dict[str, Any]) -> dict[str, Any]:
    """QEMU's nested form of flat dotted options (``server.host`` -> ``{"server": {"host": ...}}``)
    under ``driver``: what a protocol's ``json_options`` gives for ``json:{...}`` names."""
    out: dict[str, Any] = {"driver": driver}
    for key, value in given.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


class creation_scope:
    """``with creation_scope():`` around a command that creates an image and then opens it
    again (``convert``, ``dd``): a protocol that cannot change what it stores in place (s3)
    may keep the node it created in this process until the scope ends, instead of storing it
    at close, and hand it to the next open of the same name (:func:`defer_to_creation_scope`).
    At the end each deferred finisher runs with ``ok`` (whether the body succeeded); the first
    error of a finisher is raised after all have run, unless the body already failed."""

    _open: list[creation_scope] = []

    def __enter__(self) -> creation_scope:
        self.finishers: list = []
        creation_scope._open.append(self)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        creation_scope._open.remove(self)
        ok = kind is None
        first: BaseException | None = None
        for fn in self.finishers:
            try:
                fn(ok)
            except BaseException as e:  # noqa: BLE001 - every finisher runs
                first = first or e
        if first is not None and ok:
            raise first


def current_creation_scope() -> creation_scope | None:
    """The innermost open :class:`creation_scope` (its ``finishers`` may be added to), or None."""
    return creation_scope._open[-1] if creation_scope._open else None


def defer_to_creation_scope(fn) -> bool:
    """Run ``fn(ok)`` when the innermost open :class:`creation_scope` ends; False (and nothing
    deferred) when none is open."""
    if not creation_scope._open:
        return False
    creation_scope._open[-1].finishers.append(fn)
    return True
