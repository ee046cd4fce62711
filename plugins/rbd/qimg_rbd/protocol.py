"""The ``rbd`` protocol: an image in a Ceph cluster's RADOS block device pool (QEMU's rbd driver:
the same names, options, create options, messages, ``info`` and block status).

Ceph's own Python bindings (``rados``, ``rbd``: Debian's python3-rados and python3-rbd, not on
PyPI) do the work; they are imported when an rbd image is opened. Reads are blocking librbd
calls that release the GIL, so a bulk copy reads with :attr:`RbdProtocol.parallel_reads` threads
at once, and after its first :data:`DIRECT_AFTER` bytes straight into the copy's buffers through
librbd's C API (:mod:`.direct`: the binding has no read-into); writes are asynchronous (up to :data:`WRITES_IN_FLIGHT` at a time), waited for before
anything that must see them (a read, block status, a size change, flush, close). Block status is
librbd's object map (``diff_iterate`` over whole objects), as QEMU asks it: images without the
fast-diff feature, or whose map is invalid, are all data.

Modules: :mod:`.bindings` (loading Ceph's bindings, their errors), :mod:`.cluster` (connecting),
:mod:`.encryption` (librbd's LUKS), :mod:`.names` (rbd: names and options), :mod:`.direct`
(bulk reads through librbd's C API).
"""
from __future__ import annotations

import errno
import os
import threading
from _bisect import bisect_right
from collections import deque

from qimg.blockstatus import DATA, ZERO
from qimg.errors import QimgError, with_errno
from qimg.options import SIZE, STRING, Option
from qimg.protocol import Protocol

from .bindings import as_oserror, bindings, errno_of, fail
from .cluster import Cluster, location
from .encryption import encrypt_spec, format_encryption, load_encryption
from .names import KEYPAIRS, STRONG, Location, check_location, given_options, parse_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from qimg.driver import SnapshotInfo

#: asynchronous writes one image keeps in flight at most
WRITES_IN_FLIGHT = 16
#: bytes one block status query asks librbd about at least (its answer's runs are kept)
STATUS_ASK = 1 << 30
#: objects one block status query covers at least (a whole image of 4 MiB objects up to 512 GiB
#: in one librbd call: map of a 1 TiB image with 16 data objects took 392 ms of CPU in 1 GiB
#: queries, 159 ms in one; the kept runs stay bounded, at most twice this many)
STATUS_OBJECTS = 1 << 17
#: bytes a bulk copy out of a read-only image reads through the binding before it connects a
#: second time to read through librbd's C API (.direct): that connection's cost is only worth
#: it on larger copies (whole-command medians, all read direct against all through the binding:
#: 128 MiB of data 1.11x the wall time, 1.21x the CPU; 256 MiB 0.91x wall; 512 MiB 0.60x wall,
#: 0.74x CPU)
DIRECT_AFTER = 128 << 20
_LUKS1 = b"LUKS\xba\xbe\x00\x01"
_LUKS2 = b"LUKS\xba\xbe\x00\x02"
class RbdProtocol(Protocol):
    protocol_name = "rbd"
    runtime_options = {"pool": STRING, "namespace": STRING, "image": STRING, "conf": STRING, "snapshot": STRING,
                       "user": STRING, "key-secret": STRING, "password-secret": STRING, KEYPAIRS: STRING,
                       "filename": STRING, "server.": STRING, "server": STRING, "auth-client-required.": STRING,
                       "auth-client-required": STRING, "encrypt.": STRING, "encrypt": STRING}
    strong_runtime_options = STRONG
    #: QEMU's qemu_rbd_create_opts
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
        Option("cluster_size", SIZE, "RBD object size"),
        Option("password-secret", STRING, "ID of secret providing the password"),
        Option("encrypt.format", STRING, "Encrypt the image, format choices: 'luks', 'luks2'"),
        Option("encrypt.cipher-alg", STRING,
               "Name of encryption cipher algorithm (allowed values: aes-128, aes-256)"),
        Option("encrypt.key-secret", STRING, "ID of secret providing LUKS passphrase"),
    ]
    #: reader threads of a bulk copy: librbd keeps one request in flight per thread; more than
    #: 4 (2 MiB each) only add GIL hand-offs (8 measured 1.27x slower than 4 out of rbd: 2 cores)
    parallel_reads = 4
    preallocation_modes = ("off",)  # QEMU's qemu_rbd_co_truncate refuses the others
    reports_dirty_flag = True  # QEMU's rbd driver answers bdrv_get_info (the object size)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return parse_filename(filename)

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> RbdProtocol:
        loc, keypairs, secret_id, legacy = location(options)
        given = given_options(options) if legacy is None else {}
        proto = cls(loc, keypairs, secret_id, writable=writable, given=given, legacy=legacy)
        # every option was taken (the core's unknown-option check has nothing left to see)
        for key in [k for k in options if k != "filename"]:
            del options[key]
        return proto

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> RbdProtocol:
        """Create the image (QEMU's qemu_rbd_co_create_opts: ``size`` rounded up to whole
        sectors, ``cluster_size`` the object size, ``encrypt.*`` a LUKS header librbd writes),
        then open it for the format to write into."""
        opts = dict(options or {})
        size = -(-int(opts.pop("size", 0) or 0) // 512) * 512
        objsize = int(opts.pop("cluster_size", 0) or 0)
        secret_id = opts.pop("password-secret", None)
        if opts.get("preallocation") is not None:
            raise QimgError("Invalid parameter 'preallocation'")
        opts.pop("preallocation", None)
        encrypt = {k[8:]: v for k, v in opts.items() if k.startswith("encrypt.") and v is not None}
        parsed = parse_filename(filename)
        keypairs = parsed.pop(KEYPAIRS, None)
        parsed.pop("snapshot", None)  # (QEMU creates the image and ignores the snapshot name)
        order = None
        if objsize:
            if objsize & (objsize - 1):
                raise with_errno(QimgError("obj size needs to be power of 2"), errno.EINVAL)
            if objsize < 4096:
                raise with_errno(QimgError("obj size too small"), errno.EINVAL)
            order = objsize.bit_length() - 1
        enc = encrypt_spec(encrypt) if encrypt else None
        loc = check_location(parsed)
        _, rbd = bindings()
        cluster = Cluster(loc, keypairs, secret_id)
        try:
            try:
                rbd.RBD().create(cluster.ioctx, loc.image, size, order=order)
            except rbd.Error as e:
                raise fail("error rbd create", e) from None
            if enc is not None:
                format_encryption(rbd, cluster.ioctx, loc.image, enc)
        finally:
            cluster.close()
        return cls(loc, keypairs, secret_id, writable=True, given=given_options(parsed), legacy=None)

    def __init__(self, loc: Location, keypairs: str | None, secret_id: str | None, *, writable: bool,
                 given: dict[str, Any], legacy: str | None) -> None:
        _, rbd = bindings()
        self.loc = loc
        self.given = given
        self.legacy = legacy
        self.snapshot = loc.snapshot
        self.image = None
        self._lock = threading.Lock()
        self._writes: deque = deque()
        self._write_error: int | None = None
        #: the last block status answers, newest first: (starts, runs), the runs (start, end,
        #: flags) in order (a probe of the image's end does not cost the main query)
        self._windows: list[tuple[list[int], list[tuple[int, int, int]]]] = []
        self._direct: Any = None  # a .direct.DirectReader during a bulk copy
        self._opening: Any = None  # held while the DirectReader connects
        self._direct_due = False  # a bulk copy reads: connect the DirectReader after DIRECT_AFTER bytes
        self._through_binding = 0  # bytes that copy read through the binding
        self._cluster = Cluster(loc, keypairs, secret_id)
        try:
            try:
                # read-only opens need no write caps and take no lock (QEMU always opens r/w)
                self.image = rbd.Image(self._cluster.ioctx, loc.image, snapshot=loc.snapshot,
                                       read_only=not writable or loc.snapshot is not None)
            except rbd.Error as e:
                raise fail(f"error reading header from {loc.image}", e) from None
            if loc.encrypt is not None:
                load_encryption(rbd, self.image, loc.encrypt)
            if loc.snapshot is not None and writable:
                raise with_errno(QimgError("rbd snapshots are read-only"), errno.EACCES)
            try:
                st = self.image.stat()
            except rbd.Error as e:
                raise fail(f"error getting image info from {loc.image}", e) from None
        except BaseException:
            self.close()
            raise
        self._size = int(st["size"])
        self.object_size = int(st["obj_size"])
        self.writable = writable
        self.filename = legacy or self._json_name()

    def _json_name(self) -> str:
        from qimg.ops.qjson import dumps

        return "json:" + dumps(self.json_options(), pretty=False)

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        return self.legacy

    def json_options(self) -> dict[str, Any]:
        if self.legacy is not None:
            return {"driver": "rbd", "filename": self.legacy}
        return {"driver": "rbd", **self.given}

    def dirname(self) -> str:
        # an open rbd node has no exact name: a relative backing name of an image in rbd has
        # nothing to be relative to (create -b, though, combines it with the name as a string,
        # as QEMU's path_combine: the default dirname_for)
        raise QimgError("Cannot generate a base directory for rbd nodes")

    # -- info --------------------------------------------------------------------------------
    @property
    def cluster_size(self) -> int | None:
        return self.object_size

    def allocated_size(self) -> int | None:
        return None  # "disk size: unavailable", as QEMU's rbd driver

    def specific_info(self) -> dict:
        """QEMU's ImageInfoSpecificRbd: the LUKS format librbd would find at the start."""
        data: dict[str, Any] = {}
        if self._size >= 8:
            head = bytes(8)
            try:
                head = self._read(0, 8)
            except OSError:
                pass
            if head == _LUKS1:
                data["encryption-format"] = "luks"
            elif head == _LUKS2:
                data["encryption-format"] = "luks2"
        return {"type": "rbd", "data": data}

    # -- I/O ---------------------------------------------------------------------------------
    def size(self) -> int:
        return self._size

    def _read(self, offset: int, n: int) -> bytes:
        _, rbd = bindings()
        try:
            return self.image.read(offset, n)
        except rbd.Error as e:
            raise as_oserror(e) from None

    def start_parallel(self, readers: int) -> None:
        """A bulk copy reads from this image: when it is read-only and not encrypted by librbd,
        past its first :data:`DIRECT_AFTER` bytes the reads go straight into the copy's buffers through
        librbd's C API (.direct: the binding returns a new ``bytes`` per read)."""
        if self._opening is None and not self.writable and self.loc.encrypt is None and self._cluster is not None:
            self._through_binding = 0
            self._direct_due = True

    def _connect_direct(self) -> None:
        """Open the second, read-only handle in a thread of its own (librados releases the GIL);
        reads go through the binding until it is there, and stay there if it fails."""
        from _thread import allocate_lock, start_new_thread

        from .direct import open_reader

        opening = self._opening = allocate_lock()
        opening.acquire()

        def connect() -> None:
            try:
                self._direct = open_reader(self._cluster, self.loc, self._size)
            finally:
                opening.release()

        start_new_thread(connect, ())

    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), self._size - offset)
        if n <= 0:
            return 0
        direct = self._direct
        if direct is not None:
            k = direct.readinto(offset, buf[:n])
            if k < n:  # QEMU pads short reads with zeroes
                buf[k:n] = bytes(n - k)
            return n
        if self._writes:
            self._drain()
        data = self._read(offset, n)
        k = len(data)
        buf[:k] = data
        if k < n:  # QEMU pads short reads with zeroes
            buf[k:n] = bytes(n - k)
        if self._direct_due:
            with self._lock:
                self._through_binding += n
                if self._direct_due and self._through_binding > DIRECT_AFTER:
                    self._direct_due = False
                    self._connect_direct()
        return n

    def pread(self, offset: int, length: int) -> bytes:
        n = min(length, self._size - offset)
        if n <= 0:
            return b""
        if self._writes:
            self._drain()
        data = self._read(offset, n)
        return data if len(data) == n else data + bytes(n - len(data))

    def _check_writable(self) -> None:
        if not self.writable:
            raise OSError(errno.EROFS if self.snapshot is not None else errno.EPERM,
                          os.strerror(errno.EROFS if self.snapshot is not None else errno.EPERM))

    def _grow(self, end: int) -> None:
        """QEMU's rbd driver resizes the image before a write past its end."""
        if end > self._size:
            self._drain()
            self._resize(end)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._check_writable()
        n = len(data)
        if not n:
            return
        self._grow(offset + n)
        self._windows = []
        _, rbd = bindings()
        payload = bytes(data)
        with self._lock:
            self._raise_write_error()
            while len(self._writes) >= WRITES_IN_FLIGHT:
                self._reap(self._writes.popleft())
            try:
                comp = self.image.aio_write(payload, offset, _noop)
            except rbd.Error as e:
                raise as_oserror(e) from None
            self._writes.append((comp, payload))

    def pwritev(self, offset: int, buffers: list) -> None:
        self.pwrite(offset, b"".join(bytes(b) for b in buffers))

    def _reap(self, item: tuple[Any, bytes]) -> None:
        comp = item[0]
        comp.wait_for_complete_and_cb()
        ret = comp.get_return_value()
        if ret < 0 and self._write_error is None:
            self._write_error = -ret

    def _raise_write_error(self) -> None:
        code = self._write_error
        if code is not None:
            self._write_error = None
            raise OSError(code, os.strerror(code))

    def _drain(self) -> None:
        """Wait for every write in flight; raise the first that failed."""
        with self._lock:
            while self._writes:
                self._reap(self._writes.popleft())
            self._raise_write_error()

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._check_writable()
        if length <= 0:
            return
        self._grow(offset + length)
        self._drain()
        self._windows = []
        _, rbd = bindings()
        # QEMU: thick provisioning unless the caller allows deallocation
        flags = 0 if unmap else rbd.RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
        try:
            self.image.write_zeroes(offset, length, flags)
        except rbd.Error as e:
            raise as_oserror(e) from None

    def discard(self, offset: int, length: int) -> None:
        if not self.writable:
            return
        length = min(length, self._size - offset)
        if length <= 0:
            return
        self._drain()
        self._windows = []
        _, rbd = bindings()
        try:
            self.image.discard(offset, length)
        except rbd.Error as e:
            raise as_oserror(e) from None

    def flush(self) -> None:
        if self.image is None:
            return
        self._drain()
        if self.writable and not self.unsafe_cache:
            _, rbd = bindings()
            try:
                self.image.flush()
            except rbd.Error as e:
                raise as_oserror(e) from None

    def _resize(self, size: int) -> None:
        _, rbd = bindings()
        try:
            self.image.resize(size)
        except rbd.Error as e:
            raise fail("Failed to resize file", e) from None
        self._size = size
        self._windows = []

    def truncate(self, size: int) -> None:
        self._check_writable()
        self._drain()
        self._resize(size)

    def allocate(self, offset: int, length: int) -> None:
        raise QimgError("Unsupported preallocation mode 'falloc'")

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """QEMU's qemu_rbd_co_block_status: object-granular allocation from librbd's object map
        (unallocated reads as zeroes); all data without a valid fast-diff map, and (librbd
        before 1.17, whose offsets were wrong otherwise) for clones and fancy striping."""
        size = self._size
        if offset >= size:
            return length, ZERO
        length = min(length, size - offset)
        if self._writes:
            self._drain()
        hit = self._cached_run(offset)
        if hit is not None:
            return min(hit[1] - offset, length), hit[2]
        if not self._has_map():
            return length, DATA
        obj = self.object_size
        start = offset - offset % obj
        end = min(size, max(offset + length, start + max(STATUS_ASK, obj * STATUS_OBJECTS)))
        extents: list[list[int]] = []

        def seen(off: int, n: int, exists: bool) -> None:
            if not exists:
                return  # a hole is unallocated, as QEMU takes it
            if extents and extents[-1][1] == off:
                extents[-1][1] = off + n
            else:
                extents.append([off, off + n])

        _, rbd = bindings()
        try:
            self.image.diff_iterate(start, end - start, None, seen, include_parent=True, whole_object=True)
        except rbd.Error:
            return length, DATA  # QEMU: a failed query reports data
        runs = []
        pos = start
        for s, e in extents:
            s, e = max(s, start), min(e, end)
            if s >= e:
                continue
            if s > pos:
                runs.append((pos, s, ZERO))
            runs.append((s, e, DATA))
            pos = e
        if pos < end:
            runs.append((pos, end, ZERO))
        kept = [([r[0] for r in runs], runs)]
        total = len(runs)
        for window in self._windows:
            total += len(window[1])
            if total > 2 * STATUS_OBJECTS + 2:
                break  # the runs kept stay bounded
            kept.append(window)
        self._windows = kept
        hit = self._cached_run(offset)
        if hit is not None:
            return min(hit[1] - offset, length), hit[2]
        return length, DATA

    def _cached_run(self, offset: int) -> tuple[int, int, int] | None:
        """The kept run holding ``offset``, found by bisection (an image of small objects has
        hundreds of thousands of runs per query; a scan per call made ``map`` quadratic)."""
        for starts, runs in self._windows:
            i = bisect_right(starts, offset) - 1
            if i >= 0 and runs[i][0] <= offset < runs[i][1]:
                return runs[i]
        return None

    def _has_map(self) -> bool:
        _, rbd = bindings()
        try:
            features = self.image.features()
            flags = self.image.flags()
        except rbd.Error:
            return False
        if not features & rbd.RBD_FEATURE_FAST_DIFF or flags & rbd.RBD_FLAG_FAST_DIFF_INVALID:
            return False
        if rbd.RBD().version() < (1, 17, 0):
            if features & rbd.RBD_FEATURE_STRIPINGV2:
                return False
            try:
                self.image.parent_info()
                return False  # a clone
            except rbd.ImageNotFound:
                pass
            except rbd.Error:
                return False
        return True

    # -- snapshots (QEMU's rbd snapshot functions; a raw image over rbd falls back to them) -----
    def snapshot_list(self) -> list[SnapshotInfo]:
        from qimg.driver import SnapshotInfo

        _, rbd = bindings()
        try:
            snaps = list(self.image.list_snaps())
        except rbd.Error:
            return []
        return [SnapshotInfo(s["name"], s["name"], vm_state_size=int(s["size"]), icount=0) for s in snaps]

    def snapshot_create(self, name: str) -> None:
        if not name:
            raise QimgError(os.strerror(errno.EINVAL))
        if len(name.encode()) >= 128:
            raise QimgError(os.strerror(errno.ERANGE))
        self._drain()
        _, rbd = bindings()
        try:
            self.image.create_snap(name)
        except rbd.Error as e:
            from qimg import api

            api.report(f"failed to create snap: {os.strerror(errno_of(e))}")
            raise QimgError(os.strerror(errno_of(e))) from None

    def snapshot_delete(self, id_or_name: str | None, name: str | None = None) -> None:
        name = name if name is not None else id_or_name
        if not name:
            raise QimgError("rbd need a valid snapshot name")
        if id_or_name is not None and id_or_name != name:
            raise QimgError("rbd do not support snapshot id, it should be NULL or equal to snapshot name")
        _, rbd = bindings()
        try:
            self.image.remove_snap(name)
        except rbd.Error as e:
            raise fail("Failed to remove the snapshot", e) from None

    def snapshot_goto(self, id_or_name: str) -> None:
        self._drain()
        _, rbd = bindings()
        try:
            self.image.rollback_to_snap(id_or_name)
        except rbd.Error as e:
            raise fail("Failed to load snapshot", e) from None
        self._windows = []

    def close(self) -> None:
        """Wait for the writes in flight (a failed one is raised here: convert's default cache
        mode never flushes), then close the image and the connection."""
        image, self.image = self.image, None
        opening = getattr(self, "_opening", None)
        if opening is not None:
            with opening:  # the DirectReader's connection attempt has finished
                pass
        direct, self._direct = getattr(self, "_direct", None), None
        if direct is not None:
            direct.close()
        try:
            if image is not None:
                try:
                    with self._lock:
                        while self._writes:
                            self._reap(self._writes.popleft())
                finally:
                    image.close()
        finally:
            cluster = getattr(self, "_cluster", None)
            if cluster is not None:
                cluster.close()
                self._cluster = None
        self._raise_write_error()


def _noop(_completion: Any) -> None:
    pass


