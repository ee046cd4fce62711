"""Bulk reads straight into the copy buffer through librbd's C API (ctypes), beside the binding.

Why a hand-written path beside Ceph's own binding: the binding's ``Image.read`` and
``Image.aio_read`` return a fresh ``bytes`` per request (it has no read-into, and it does not
hand its ``rbd_image_t`` to other code), which then has to be copied into the copy buffer:
a new 2 MiB object, its page faults and one more copy for every request. Measured on the test
cluster (single-node Ceph 16.2, memstore OSD, loopback; the 2 shared cores under load 5-13),
reading the 512 MiB allocated half of a 1 GiB image in 2 MiB requests, 4 in flight, in one
process (connection not counted), 3-4 runs each, alternating: the binding's ``read`` from 4
threads 0.41-1.00 s, its ``aio_read`` 0.44-0.78 s; ``rbd_read`` into reused buffers from 4
threads 0.31-0.51 s, ``rbd_aio_read`` 0.30-0.47 s. Whole ``convert -O raw`` of that image to
tmpfs (``perf stat -r 5``, twice): 687/719 ms CPU and 1.44/1.60 s wall, against 808/759 ms and
1.75/1.75 s through the binding (docs/performance.md has the comparison with qemu-img). So a
bulk copy out of rbd (``RbdProtocol.start_parallel``) opens the image a second time, read-only,
through this module (connecting in a thread of its own once the copy has read ``DIRECT_AFTER``
bytes through the binding: the second connection's cost is not worth it on smaller copies) and
then reads with ``rbd_read`` from the copy's reader threads (ctypes releases the GIL during the
call) into the caller's buffer.

The second connection is configured exactly as the binding's was: :class:`~.cluster.Cluster`
records every configuration call that succeeded (the configuration file, librados pairs,
monitors, key...) and they are replayed here, with the binding's cluster and client names. When
anything here fails (no librbd by its usual soname, a refused connection), the copy reads
through the binding as before: this path is only ever a faster way to the same bytes.
tests/test_rbd.py::test_direct_reads_match_the_binding reads the same images (a namespace, a
snapshot, the unaligned end) both ways and compares them.
"""
from __future__ import annotations

import ctypes
import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cluster import Cluster
    from .names import Location

_vp = ctypes.c_void_p
_libs: tuple[ctypes.CDLL, ctypes.CDLL] | None = None


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """librados and librbd (already in the process: the binding linked them) with the
    signatures used here."""
    global _libs
    if _libs is None:
        rados = ctypes.CDLL("librados.so.2")
        rbd = ctypes.CDLL("librbd.so.1")
        rados.rados_create2.argtypes = [ctypes.POINTER(_vp), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64]
        rados.rados_conf_read_file.argtypes = [_vp, ctypes.c_char_p]
        rados.rados_conf_set.argtypes = [_vp, ctypes.c_char_p, ctypes.c_char_p]
        rados.rados_connect.argtypes = [_vp]
        rados.rados_ioctx_create.argtypes = [_vp, ctypes.c_char_p, ctypes.POINTER(_vp)]
        rados.rados_ioctx_set_namespace.argtypes = [_vp, ctypes.c_char_p]
        rados.rados_ioctx_set_namespace.restype = None
        rados.rados_ioctx_destroy.argtypes = [_vp]
        rados.rados_ioctx_destroy.restype = None
        rados.rados_shutdown.argtypes = [_vp]
        rados.rados_shutdown.restype = None
        rbd.rbd_open_read_only.argtypes = [_vp, ctypes.c_char_p, ctypes.POINTER(_vp), ctypes.c_char_p]
        rbd.rbd_read.argtypes = [_vp, ctypes.c_uint64, ctypes.c_size_t, _vp]
        rbd.rbd_read.restype = ctypes.c_ssize_t
        rbd.rbd_get_size.argtypes = [_vp, ctypes.POINTER(ctypes.c_uint64)]
        rbd.rbd_close.argtypes = [_vp]
        _libs = (rados, rbd)
    return _libs


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


class DirectReader:
    """A read-only handle on the image, opened through librbd's C API; :meth:`readinto`
    reads into a caller's writable buffer (a memoryview of a bytearray)."""

    def __init__(self, cluster: Cluster, loc: Location, size: int) -> None:
        rados, rbd = _load()
        self._rbd = rbd
        self._rados = rados
        self._cluster = _vp()
        self._ioctx = _vp()
        self._image = _vp()
        ok = False
        try:
            # the binding's rados.Rados(rados_id=user): cluster name "", entity client.USER
            name = f"client.{loc.user}" if loc.user else "client.admin"
            if rados.rados_create2(ctypes.byref(self._cluster), b"", name.encode(), 0) < 0:
                self._cluster = _vp()
                raise OSError(errno.EIO, "rados_create2")
            for key, value in cluster.settings:
                if key is None:
                    ret = rados.rados_conf_read_file(self._cluster, _b(value))
                else:
                    ret = rados.rados_conf_set(self._cluster, _b(key), _b(value))
                if ret < 0:
                    raise OSError(-ret, os.strerror(-ret))
            for call in (lambda: rados.rados_connect(self._cluster),
                         lambda: rados.rados_ioctx_create(self._cluster, _b(loc.pool), ctypes.byref(self._ioctx))):
                ret = call()
                if ret < 0:
                    raise OSError(-ret, os.strerror(-ret))
            rados.rados_ioctx_set_namespace(self._ioctx, _b(loc.namespace or ""))
            ret = rbd.rbd_open_read_only(self._ioctx, _b(loc.image), ctypes.byref(self._image), _b(loc.snapshot))
            if ret < 0:
                self._image = _vp()
                raise OSError(-ret, os.strerror(-ret))
            got = ctypes.c_uint64()
            if rbd.rbd_get_size(self._image, ctypes.byref(got)) < 0 or got.value != size:
                raise OSError(errno.ESTALE, "the image changed")  # not the image the binding opened
            ok = True
        finally:
            if not ok:
                self.close()

    def readinto(self, offset: int, view: memoryview) -> int:
        """Read ``len(view)`` bytes at ``offset`` into ``view``; the count librbd read."""
        n = len(view)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
        ret = self._rbd.rbd_read(self._image, offset, n, addr)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        return ret

    def close(self) -> None:
        if self._image:
            self._rbd.rbd_close(self._image)
            self._image = _vp()
        if self._ioctx:
            self._rados.rados_ioctx_destroy(self._ioctx)
            self._ioctx = _vp()
        if self._cluster:
            self._rados.rados_shutdown(self._cluster)
            self._cluster = _vp()


def open_reader(cluster: Cluster, loc: Location, size: int) -> DirectReader | None:
    """A :class:`DirectReader` on the image ``cluster`` opened, or None when librbd's C API
    cannot be reached or refuses (the caller then reads through the binding)."""
    try:
        return DirectReader(cluster, loc, size)
    except (OSError, AttributeError):
        return None
