"""The ``rbd`` protocol: an image in a Ceph cluster's RADOS block device pool (QEMU's rbd driver:
the same names, options, create options, messages, ``info`` and block status).

Ceph's own Python bindings (``rados``, ``rbd``: Debian's python3-rados and python3-rbd, not on
PyPI) do the work; they are imported when an rbd image is opened. Reads are blocking librbd
calls that release the GIL, so a bulk copy reads with :attr:`RbdProtocol.parallel_reads` threads
at once; writes are asynchronous (up to :data:`WRITES_IN_FLIGHT` at a time), waited for before
anything that must see them (a read, block status, a size change, flush, close). Block status is
librbd's object map (``diff_iterate`` over whole objects), as QEMU asks it: images without the
fast-diff feature, or whose map is invalid, are all data.

Connecting is bounded: librados' ``client_mount_timeout`` is :data:`CONNECT_TIMEOUT` seconds
(``QIMG_RBD_TIMEOUT``) unless the configuration file or the name sets it (QEMU keeps librados'
300 s).
"""
from __future__ import annotations

import errno
import json
import os
import threading
from collections import deque

from qimg.blockstatus import DATA, ZERO
from qimg.errors import QimgError, with_errno
from qimg.options import SIZE, STRING, Option
from qimg.protocol import Protocol

from .names import KEYPAIRS, STRONG, Location, check_location, given_options, parse_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from qimg.driver import SnapshotInfo

#: seconds librados may take to reach the monitors (QIMG_RBD_TIMEOUT; librados' own default is 300)
CONNECT_TIMEOUT = os.environ.get("QIMG_RBD_TIMEOUT") or "30"
#: asynchronous writes one image keeps in flight at most
WRITES_IN_FLIGHT = 16
#: bytes one block status query asks librbd about at least (its answer's runs are kept)
STATUS_ASK = 1 << 30
_LUKS1 = b"LUKS\xba\xbe\x00\x01"
_LUKS2 = b"LUKS\xba\xbe\x00\x02"
MISSING = ("the Ceph Python bindings 'rados' and 'rbd' are not installed: install the Debian packages "
           "python3-rados and python3-rbd (docs/protocols/rbd.md)")

_mods: tuple[Any, Any] | None = None


#: where distributions install the bindings for their Python (Debian's, and Fedora's folders)
SYSTEM_FOLDERS = ("/usr/lib/python3/dist-packages", "/usr/lib64/python{v}/site-packages",
                  "/usr/lib/python{v}/site-packages")


def bindings() -> tuple[Any, Any]:
    """Ceph's ``rados`` and ``rbd`` modules, or a one-line QimgError saying what to install.
    In a virtual environment that does not see the system's packages, the two extension
    modules are loaded from the system's folder when they were built for this Python (and
    only they: nothing else of the system's packages comes along)."""
    global _mods
    if _mods is None:
        try:
            import rados
            import rbd
        except ImportError:
            rados, rbd = _system_bindings()
        _mods = (rados, rbd)
    return _mods


def _system_bindings() -> tuple[Any, Any]:
    import importlib.machinery
    import importlib.util
    import sys
    import sysconfig

    if sys.modules.get("rados", 0) is None or sys.modules.get("rbd", 0) is None:
        raise QimgError(MISSING)  # blocked on purpose (None in sys.modules)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for folder in SYSTEM_FOLDERS:
        folder = folder.format(v=version)
        paths = [os.path.join(folder, name + suffix) for name in ("rados", "rbd")]
        if not all(os.path.exists(p) for p in paths):
            continue
        mods = []
        try:
            for name, path in zip(("rados", "rbd"), paths, strict=True):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                spec = importlib.util.spec_from_file_location(name, path, loader=loader)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod  # rbd imports rados by name
                loader.exec_module(mod)
                mods.append(mod)
        except Exception:  # noqa: BLE001 - built for another Python, or broken: say what to install
            for name in ("rados", "rbd"):
                sys.modules.pop(name, None)
            continue
        return mods[0], mods[1]
    raise QimgError(MISSING)


def _errno(e: BaseException) -> int:
    code = getattr(e, "errno", None)
    return abs(code) if isinstance(code, int) and code else errno.EIO


def _fail(what: str, e: BaseException) -> QimgError:
    """QEMU's error_setg_errno: ``what: strerror``, the errno kept."""
    code = _errno(e)
    return with_errno(QimgError(f"{what}: {os.strerror(code)}"), code)


def _oserror(e: BaseException) -> OSError:
    code = _errno(e)
    return OSError(code, os.strerror(code))


class Cluster:
    """A connection to a cluster and an I/O context on one pool (and namespace), as QEMU's
    qemu_rbd_connect makes it, with its messages."""

    def __init__(self, loc: Location, keypairs: str | None, secret_id: str | None) -> None:
        rados, _ = bindings()
        if secret_id:
            if loc.key_secret:
                raise QimgError("Legacy 'password-secret' clashes with 'key-secret'")
            loc.key_secret = secret_id
        mon_host = loc.mon_host()
        self.ioctx = None
        try:
            self.cluster = rados.Rados(rados_id=loc.user)
        except rados.Error as e:
            raise _fail("error initializing", e) from None
        try:
            self._configure(rados, loc, keypairs, mon_host)
            try:
                self.cluster.connect()
            except rados.Error as e:
                raise _fail("error connecting", e) from None
            try:
                self.ioctx = self.cluster.open_ioctx(loc.pool)
            except rados.Error as e:
                raise _fail(f"error opening pool {loc.pool}", e) from None
            if loc.namespace:
                _, rbd = bindings()
                try:
                    exists = rbd.RBD().namespace_exists(self.ioctx, loc.namespace)
                except rbd.Error as e:
                    raise _fail("error checking namespace", e) from None
                if not exists:
                    raise with_errno(QimgError(f"namespace '{loc.namespace}' does not exist"), errno.ENOENT)
            self.ioctx.set_namespace(loc.namespace or "")
        except BaseException:
            self.close()
            raise

    def _configure(self, rados: Any, loc: Location, keypairs: str | None, mon_host: str | None) -> None:
        c = self.cluster
        try:
            c.conf_read_file(loc.conf)  # None: the default places, whose absence is no error
        except rados.Error as e:
            if loc.conf is not None:
                raise _fail(f"error reading conf file {loc.conf}", e) from None
        if keypairs:
            pairs = json.loads(keypairs)
            for key, value in zip(pairs[0::2], pairs[1::2], strict=False):
                try:
                    c.conf_set(key, value)
                except rados.Error as e:
                    raise with_errno(QimgError(f"invalid conf option {key}: {os.strerror(_errno(e))}"),
                                     errno.EINVAL) from None
        if mon_host:
            try:
                c.conf_set("mon_host", mon_host)
            except rados.Error as e:
                raise _oserror(e) from None
        if loc.key_secret:
            import base64

            from qimg.secrets import get_secret

            key = base64.b64encode(get_secret(loc.key_secret)).decode()
            try:
                c.conf_set("key", key)
            except rados.Error as e:
                raise _fail("Could not set 'key'", e) from None
        if loc.auth_client_required is not None:
            try:
                c.conf_set("auth_client_required", ";".join(loc.auth_client_required))
            except rados.Error as e:
                raise _fail("Could not set 'auth_client_required'", e) from None
        try:
            c.conf_set("rbd_cache", "true")
        except rados.Error:
            pass  # (QEMU ignores this one's failure too)
        # a bounded wait for the monitors (qemu-img waits librados' 300 s) unless set otherwise
        try:
            if c.conf_get("client_mount_timeout") in ("300", "300.000000"):
                c.conf_set("client_mount_timeout", CONNECT_TIMEOUT)
        except rados.Error:
            pass

    def close(self) -> None:
        if self.ioctx is not None:
            try:
                self.ioctx.close()
            except Exception:  # noqa: BLE001 - closing after a failure
                pass
            self.ioctx = None
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self.cluster = None


def _location(options: dict[str, Any]) -> tuple[Location, str | None, str | None, str | None]:
    """(location, keypairs, password secret, the legacy file name) of open options, as QEMU's
    qemu_rbd_open reads them: the options form first; failing that, and with no librados
    pairs, a ``filename`` holding an rbd: name (deprecated, with QEMU's warning)."""
    opts = dict(options)
    keypairs = opts.pop(KEYPAIRS, None)
    secret_id = opts.pop("password-secret", None)
    try:
        return check_location(opts), keypairs, secret_id, None
    except QimgError as first:
        if keypairs is not None:
            raise
        name = opts.pop("filename", None)
        if not isinstance(name, str):
            raise
        try:
            parsed = parse_filename(name)
        except QimgError:
            raise first from None
        keypairs = parsed.pop(KEYPAIRS, None)
        opts.update(parsed)
        try:
            loc = check_location(opts)
        except QimgError:
            raise first from None
        from qimg import api

        api.report("warning: RBD options encoded in the filename as keyvalue pairs is deprecated")
        return loc, keypairs, secret_id, name


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
    parallel_reads = 8
    reports_dirty_flag = True  # QEMU's rbd driver answers bdrv_get_info (the object size)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return parse_filename(filename)

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        # QEMU's rbd node has no exact name: relative backing names have nothing to be relative to
        raise QimgError("Cannot generate a base directory for rbd nodes")

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> RbdProtocol:
        loc, keypairs, secret_id, legacy = _location(options)
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
        enc = _encrypt_spec(encrypt) if encrypt else None
        loc = check_location(parsed)
        _, rbd = bindings()
        cluster = Cluster(loc, keypairs, secret_id)
        try:
            try:
                rbd.RBD().create(cluster.ioctx, loc.image, size, order=order)
            except rbd.Error as e:
                raise _fail("error rbd create", e) from None
            if enc is not None:
                _format_encryption(rbd, cluster.ioctx, loc.image, enc)
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
        self._runs: list[tuple[int, int, int]] = []
        self._cluster = Cluster(loc, keypairs, secret_id)
        try:
            try:
                # read-only opens need no write caps and take no lock (QEMU always opens r/w)
                self.image = rbd.Image(self._cluster.ioctx, loc.image, snapshot=loc.snapshot,
                                       read_only=not writable or loc.snapshot is not None)
            except rbd.Error as e:
                raise _fail(f"error reading header from {loc.image}", e) from None
            if loc.encrypt is not None:
                _load_encryption(rbd, self.image, loc.encrypt)
            if loc.snapshot is not None and writable:
                raise with_errno(QimgError("rbd snapshots are read-only"), errno.EACCES)
            try:
                st = self.image.stat()
            except rbd.Error as e:
                raise _fail(f"error getting image info from {loc.image}", e) from None
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
            raise _oserror(e) from None

    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), self._size - offset)
        if n <= 0:
            return 0
        if self._writes:
            self._drain()
        data = self._read(offset, n)
        k = len(data)
        buf[:k] = data
        if k < n:  # QEMU pads short reads with zeroes
            buf[k:n] = bytes(n - k)
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
        self._runs = []
        _, rbd = bindings()
        payload = bytes(data)
        with self._lock:
            self._raise_write_error()
            while len(self._writes) >= WRITES_IN_FLIGHT:
                self._reap(self._writes.popleft())
            try:
                comp = self.image.aio_write(payload, offset, _noop)
            except rbd.Error as e:
                raise _oserror(e) from None
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
        self._runs = []
        _, rbd = bindings()
        # QEMU: thick provisioning unless the caller allows deallocation
        flags = 0 if unmap else rbd.RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
        try:
            self.image.write_zeroes(offset, length, flags)
        except rbd.Error as e:
            raise _oserror(e) from None

    def discard(self, offset: int, length: int) -> None:
        if not self.writable:
            return
        length = min(length, self._size - offset)
        if length <= 0:
            return
        self._drain()
        self._runs = []
        _, rbd = bindings()
        try:
            self.image.discard(offset, length)
        except rbd.Error as e:
            raise _oserror(e) from None

    def flush(self) -> None:
        if self.image is None:
            return
        self._drain()
        if self.writable and not self.unsafe_cache:
            _, rbd = bindings()
            try:
                self.image.flush()
            except rbd.Error as e:
                raise _oserror(e) from None

    def _resize(self, size: int) -> None:
        _, rbd = bindings()
        try:
            self.image.resize(size)
        except rbd.Error as e:
            raise _fail("Failed to resize file", e) from None
        self._size = size
        self._runs = []

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
        for start, end, flags in self._runs:
            if start <= offset < end:
                return min(end - offset, length), flags
        if not self._has_map():
            return length, DATA
        obj = self.object_size
        start = offset - offset % obj
        end = min(size, max(offset + length, start + STATUS_ASK))
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
        self._runs = runs
        for s, e, flags in runs:
            if s <= offset < e:
                return min(e - offset, length), flags
        return length, DATA

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

            api.report(f"failed to create snap: {os.strerror(_errno(e))}")
            raise QimgError(os.strerror(_errno(e))) from None

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
            raise _fail("Failed to remove the snapshot", e) from None

    def snapshot_goto(self, id_or_name: str) -> None:
        self._drain()
        _, rbd = bindings()
        try:
            self.image.rollback_to_snap(id_or_name)
        except rbd.Error as e:
            raise QimgError(os.strerror(_errno(e))) from None
        self._runs = []

    def close(self) -> None:
        """Wait for the writes in flight (a failed one is raised here: convert's default cache
        mode never flushes), then close the image and the connection."""
        image, self.image = self.image, None
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


def _load_encryption(rbd: Any, image: Any, enc: dict[str, str]) -> None:
    """Open an image librbd encrypted (``encrypt.format``, ``encrypt.key-secret``), as QEMU's
    qemu_rbd_encryption_load: reads and writes are then the plaintext."""
    from qimg.secrets import get_secret

    fmt = {"luks": rbd.RBD_ENCRYPTION_FORMAT_LUKS1, "luks2": rbd.RBD_ENCRYPTION_FORMAT_LUKS2}.get(enc["format"])
    if fmt is None:  # luks-any: librbd 16 knows no such format
        raise with_errno(QimgError(f"unknown image encryption format: {enc['format']}"), errno.ENOTSUP)
    passphrase = get_secret(enc["key-secret"])
    try:
        image.encryption_load(fmt, passphrase.decode("utf-8", "surrogateescape"))
    except rbd.Error as e:
        raise _fail("encryption load fail", e) from None


def _encrypt_spec(enc: dict[str, Any]) -> dict[str, Any]:
    """The ``encrypt.*`` create options as QEMU's RbdEncryptionCreateOptions, checked."""
    fmt = enc.get("format")
    if fmt is None:
        raise QimgError("Parameter 'format' is missing")
    if fmt not in ("luks", "luks2"):
        raise QimgError(f"Parameter 'format' does not accept value '{fmt}'")
    alg = enc.get("cipher-alg")
    if alg is not None and alg not in ("aes-128", "aes-256", "aes-192", "des-rfb", "cast5-128", "serpent-128",
                                       "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256",
                                       "sm4"):
        raise QimgError(f"Parameter 'cipher-alg' does not accept value '{alg}'")
    if enc.get("key-secret") is None:
        raise QimgError("Parameter 'key-secret' is missing")
    for key in enc:
        if key not in ("format", "cipher-alg", "key-secret"):
            raise QimgError(f"Parameter '{key}' is unexpected")
    return {"format": fmt, "alg": alg, "secret": enc["key-secret"]}


def _format_encryption(rbd: Any, ioctx: Any, name: str, enc: dict[str, Any]) -> None:
    """Write librbd's LUKS header into a new image (and grow it by what the header takes), as
    QEMU's qemu_rbd_encryption_format; a failure removes the image again."""
    from qimg.secrets import get_secret

    try:
        passphrase = get_secret(enc["secret"])
        alg = enc["alg"]
        if alg not in (None, "aes-128", "aes-256"):
            raise with_errno(QimgError(f"unknown encryption algorithm: {alg}"), errno.ENOTSUP)
        cipher = rbd.RBD_ENCRYPTION_ALGORITHM_AES128 if alg == "aes-128" else rbd.RBD_ENCRYPTION_ALGORITHM_AES256
        fmt = rbd.RBD_ENCRYPTION_FORMAT_LUKS1 if enc["format"] == "luks" else rbd.RBD_ENCRYPTION_FORMAT_LUKS2
        try:
            image = rbd.Image(ioctx, name)
        except rbd.Error as e:
            raise _fail(f"error opening image '{name}' for encryption format", e) from None
        try:
            raw = image.size()
            try:
                image.encryption_format(fmt, passphrase.decode("utf-8", "surrogateescape"), cipher)
            except rbd.Error as e:
                raise _fail("encryption format fail", e) from None
            effective = image.size()
            try:
                image.resize(raw + (raw - effective))
            except rbd.Error as e:
                raise _fail("cannot resize image after format", e) from None
        finally:
            image.close()
    except BaseException:
        try:
            rbd.RBD().remove(ioctx, name)
        except Exception:  # noqa: BLE001 - the image may not exist
            pass
        raise
