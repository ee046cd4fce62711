"""The ``nbd`` protocol: an export of an NBD server as an image's bytes (QEMU's nbd driver).

Reads larger than the server's maximum are split and the pieces sent at once; several
threads may read at the same time (a bulk copy keeps :attr:`NBDProtocol.parallel_reads`
requests in flight), over extra connections when the server says they share one cache
(``NBD_FLAG_CAN_MULTI_CONN``), else pipelined on one. Block status comes from the
``base:allocation`` context as QEMU asks it (one extent per request), so ``map``, sparse
``convert`` and ``compare`` see what qemu-img sees.
"""
from __future__ import annotations

import errno
import functools
import os
import threading
import time
from _thread import get_ident, start_new_thread
from bisect import bisect_right

from qimg.blockstatus import DATA, ZERO
from qimg.errors import QimgError, with_errno
from qimg.options import NUMBER, SIZE, STRING, Option
from qimg.protocol import Protocol

from . import handshake, transmission, wire
from .names import MAX_STRING, exact_filename, parse_filename, server_from_options
from .tls import Tls

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: connections a multi-conn export is read over at most
MAX_CONNECTIONS = 4
#: bytes one block status request asks about at least (the answer's extents are kept)
STATUS_ASK = 1 << 30
_INT_MAX = (1 << 31) - 1
_NO_MORE = 1 << 64  # beyond any run's end: a bisection key that sorts after every (offset, end, ...)
#: seconds between connection attempts under open-timeout and reconnect-delay: doubling from the
#: first to the last (QEMU's connect thread)
RETRY_FIRST, RETRY_MAX = 1, 16
_sleep = time.sleep  # between attempts (tests hook it to start a server at that moment)


def _reconnecting(method):
    """Requests of a node with ``reconnect-delay``: when a connection broke, made again within
    the delay (from the first failure) and the whole request sent again (reads, writes, zeroes,
    trims and flushes are all safe to repeat); otherwise the failure as it was."""
    @functools.wraps(method)
    def run(self, *args, **kw):
        deadline = None
        while True:
            generation = self._generation
            try:
                return method(self, *args, **kw)
            except OSError:
                if not self.reconnect_delay:
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_delay
                if not self._reconnect(generation, deadline):
                    raise
    return run


class NBDProtocol(Protocol):
    protocol_name = "nbd"
    runtime_options = {"server.": STRING, "export": STRING, "host": STRING, "port": STRING, "path": STRING,
                       "tls-creds": STRING, "tls-hostname": STRING, "x-dirty-bitmap": STRING,
                       "reconnect-delay": NUMBER, "open-timeout": NUMBER}
    strong_runtime_options = ("path", "host", "port", "export", "tls-creds", "tls-hostname", "server.")
    #: QEMU's bdrv_create_opts_simple: an export cannot be created, only written into
    create_opts = [Option("size", SIZE, "Virtual disk size"),
                   Option("preallocation", STRING, "Preallocation mode (allowed values: off)")]
    parallel_reads = 4

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return parse_filename(filename, options)

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        raise QimgError("Cannot generate a base directory for NBD nodes")

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> NBDProtocol:
        opts = dict(options)
        # what a json: name of this node holds: the strong options as given (QEMU's
        # full_open_options keep the user's spelling: "path", or "server.path")
        given = {k: v for k, v in options.items()
                 if k in cls.strong_runtime_options or any(k.startswith(p) for p in cls.strong_runtime_options
                                                           if p.endswith("."))}
        server = server_from_options(opts)
        export = opts.pop("export", None)
        if export is not None:
            export = str(export)
            if len(export.encode("utf-8", "surrogateescape")) > MAX_STRING:
                raise QimgError("export name too long to send to server")
        creds = opts.pop("tls-creds", None)
        hostname = opts.pop("tls-hostname", None)
        tls = None
        if creds is not None:
            from qimg import tlscreds

            found = tlscreds.get(str(creds))
            if hostname is None and server.kind == "inet":
                hostname = server.host  # QEMU checks the certificate against the host connected to
            tls = Tls(found.client_context(), None if hostname is None else str(hostname), found.checks_certificate,
                      psk=found.psk is not None)
        bitmap = opts.pop("x-dirty-bitmap", None)
        reconnect_delay = int(opts.pop("reconnect-delay", 0) or 0)
        open_timeout = int(opts.pop("open-timeout", 0) or 0)
        opts.pop("filename", None)
        options.clear()
        options.update(opts)  # what is left: the core names it as unsupported
        return cls(server, export, writable, given, tls, reconnect_delay=reconnect_delay, open_timeout=open_timeout,
                   x_dirty_bitmap=None if bitmap is None else str(bitmap))

    def __init__(self, server, export: str | None, writable: bool, given: dict[str, Any] | None = None,
                 tls: Tls | None = None, *, reconnect_delay: int = 0, open_timeout: int = 0,
                 x_dirty_bitmap: str | None = None) -> None:
        self.server = server
        #: QEMU's x-dirty-bitmap: the metadata context asked for in place of base:allocation,
        #: its two low bits read as if they were base:allocation's (a set bit of a
        #: qemu:dirty-bitmap:NAME context reads as a hole: "data": false)
        self.x_dirty_bitmap = x_dirty_bitmap
        #: qemu:allocation-depth through x-dirty-bitmap: depths past 2 read as 2 (QEMU's hack)
        self._alloc_depth = x_dirty_bitmap == "qemu:allocation-depth"
        #: seconds a request waits for a broken connection to be made again (QEMU's
        #: reconnect-delay; 0: a broken connection fails the request)
        self.reconnect_delay = reconnect_delay
        self._generation = 0  # connections made again so far
        self._reconnect_lock = threading.Lock()
        self.export = export
        self.tls = tls
        self.given = dict(given or {})
        self.timeout = wire.timeout_seconds()
        self._exact = exact_filename(server, export)
        if self._exact is None:
            from qimg.ops.qjson import dumps

            self.filename = "json:" + dumps(self.json_options(), pretty=False)
        else:
            self.filename = self._exact
        self._conns: list[transmission.Connection] = []
        self._lock = threading.Lock()
        self._extents: list[tuple[int, int, int]] = []  # (start, end, flags) of the last status answer
        self._turn = 0
        self._mine: dict[int, transmission.Connection] = {}  # thread -> its connection (multi-conn)
        self._growing = threading.Lock()  # held while connections are opened in the background
        self._closing = False
        if open_timeout:  # QEMU's open-timeout: attempts until then, the last one's error after
            conn = self._connect_until(time.monotonic() + open_timeout)
        else:
            conn = self._connect()
        info = conn.info
        if x_dirty_bitmap is not None and info.context_id is None:
            conn.close()
            # QEMU's "requested x-dirty-bitmap ... not found" is lost on the way, as above
            raise with_errno(QimgError(f"Could not open image: {os.strerror(errno.EINVAL)}"), errno.EINVAL)
        if writable and info.read_only:
            conn.close()
            # QEMU's nbd driver loses its "NBD export is read-only" on the way: the block layer
            # reports the bare errno
            raise with_errno(QimgError(f"Could not open image: {os.strerror(errno.EACCES)}"), errno.EACCES)
        self.writable = writable
        self.info = info
        # QEMU's request alignment: the server's minimum block size, else 1 when block status
        # or an unaligned size need byte granularity, else a sector
        self.align = info.min_block or (1 if info.size % 512 or info.context_id is not None else 512)
        self._conns.append(conn)

    def _connect(self) -> transmission.Connection:
        sock = handshake.connect(self.server, self.timeout)
        try:
            sock, info = handshake.handshake(sock, self.export or "", tls=self.tls,
                                             context="base:allocation" if self.x_dirty_bitmap is None else self.x_dirty_bitmap)
        except BaseException:
            sock.close()
            raise
        return transmission.Connection(sock, info, self.timeout)

    def _connect_until(self, deadline: float) -> transmission.Connection:
        """Connect and negotiate, trying again after 1, 2, 4 ... 16 seconds while the deadline
        allows; after it, the last attempt's error."""
        wait = RETRY_FIRST
        while True:
            try:
                return self._connect()
            except QimgError as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                last = e
            _sleep(min(wait, left))
            wait = min(wait * 2, RETRY_MAX)
            if time.monotonic() >= deadline:
                raise last  # QEMU's timer ends the wait with the last attempt's error

    def _reconnect(self, generation: int, deadline: float) -> bool:
        """After a failed request: True when the request may be sent again (a connection broke
        and a new one is up, made here or by another thread since ``generation``)."""
        with self._reconnect_lock:
            if self._generation != generation:
                return True
            if not self._conns or not any(c.broken for c in self._conns):
                return False  # the server refused the request: no connection problem
            try:
                conn = self._connect_until(deadline)
            except QimgError:
                return False
            if conn.info.size != self.info.size:
                conn.close()  # not the same export any more
                return False
            with self._lock:
                old, self._conns = self._conns, [conn]
                self._mine = {}
                self._extents = []
                self._generation += 1
            for c in old:
                c.close()
            return True

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        return self._exact

    def json_options(self) -> dict[str, Any]:
        # QEMU's options are flat ("server.path", not {"server": {"path": ...}}), copied from
        # one QDict into another: keys that share a hash bucket come out reversed
        from qimg.ops.qjson import qdict_order

        return {"driver": "nbd", **{k: self.given[k] for k in qdict_order(list(self.given))}}

    def dirname(self) -> str:
        raise QimgError("Cannot generate a base directory for NBD nodes")

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> transmission.Connection:
        """A connection for the calling thread. Over several (multi-conn), each thread keeps
        the one it was given (round robin) until more are opened: it then reads its own
        replies, without handing them to another thread."""
        conns = self._conns
        if not conns:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if len(conns) == 1:
            return conns[0]
        ident = get_ident()
        mine = self._mine.get(ident)
        if mine is not None:
            return mine
        with self._lock:
            conns = self._conns or conns
            self._turn = (self._turn + 1) % len(conns)
            conn = self._mine[ident] = conns[self._turn]
        return conn

    def _grow(self, wanted: int, generation: int) -> None:
        """Open connections up to ``wanted`` (in a thread of its own, while the first one
        already serves the readers); a failure leaves the ones there are."""
        if self.server.kind == "fd":
            wanted = 1  # the caller's socket is one connection
        try:
            while len(self._conns) < min(wanted, MAX_CONNECTIONS) and not self._closing:
                try:
                    conn = self._connect()
                except Exception:  # noqa: BLE001 - nothing may escape this thread; the connections there are carry on
                    return
                with self._lock:
                    if (self._closing or generation != self._generation or conn.info.size != self.info.size
                            or conn.info.flags != self.info.flags):
                        conn.close()
                        return
                    self._conns = [*self._conns, conn]
                    self._mine = {}  # the readers spread over the new set
        finally:
            self._growing.release()

        # -- I/O ---------------------------------------------------------------------------------
    def size(self) -> int:
        return self.info.size

    def allocated_size(self) -> int | None:
        return None

    @_reconnecting
    def preadinto(self, offset: int, buf: memoryview) -> int:
        if offset >= self.info.size:
            return 0
        n = min(len(buf), self.info.size - offset)
        view = memoryview(buf).cast("B")[:n] if memoryview(buf).format != "B" else memoryview(buf)[:n]
        a = self.align
        if a > 1 and (offset % a or n % a):
            # the server's minimum block: read the aligned span around it
            start = offset - offset % a
            end = min(-(-(offset + n) // a) * a, -(-self.info.size // a) * a)
            bounce = bytearray(end - start)
            self._read(start, memoryview(bounce))
            view[:] = memoryview(bounce)[offset - start:offset - start + n]
            return n
        self._read(offset, view)
        return n

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.info.size - offset))
        buf = bytearray(length)
        self.preadinto(offset, memoryview(buf))
        return bytes(buf)

    def _read(self, offset: int, view: memoryview) -> None:
        """Read ``view`` at ``offset`` (aligned as the server wants): the pieces of at most the
        server's maximum are all in flight before the first answer is awaited. Past the end of
        the export (an unaligned tail rounded up) reads as zeroes."""
        size = self.info.size
        if offset + len(view) > size:
            tail = max(0, size - offset)
            view[tail:] = bytes(len(view) - tail)
            view = view[:tail]
        if not len(view):
            return
        conn = self._conn()
        step = self.info.max_payload
        reqs = []
        try:
            pos = 0
            while pos < len(view):
                k = min(step, len(view) - pos)
                reqs.append(conn.submit(wire.CMD_READ, offset + pos, k, buf=view[pos:pos + k]))
                pos += k
        finally:
            _wait_all(conn, reqs)

    @_reconnecting
    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._check_writable()
        self._extents = []
        view = memoryview(data).cast("B") if memoryview(data).format != "B" else memoryview(data)
        n = len(view)
        if offset + n > self.info.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        a = self.align
        if a > 1 and (offset % a or n % a):
            start = offset - offset % a
            end = -(-(offset + n) // a) * a
            bounce = bytearray(end - start)
            self._read(start, memoryview(bounce))
            bounce[offset - start:offset - start + n] = view
            offset, view = start, memoryview(bounce)[:min(end, self.info.size) - start]
        conn = self._conns[0]
        step = self.info.max_payload
        reqs = []
        try:
            pos = 0
            while pos < len(view):
                k = min(step, len(view) - pos)
                reqs.append(conn.submit(wire.CMD_WRITE, offset + pos, k, data=view[pos:pos + k]))
                pos += k
        finally:
            _wait_all(conn, reqs)

    def pwritev(self, offset: int, buffers: list) -> None:
        self.pwrite(offset, b"".join(bytes(b) for b in buffers))

    @_reconnecting
    def write_zeroes(self, offset: int, length: int, unmap: bool = False, fast: bool = False) -> None:
        """NBD_CMD_WRITE_ZEROES as QEMU sends it: NO_HOLE unless ``unmap`` (QEMU's
        BDRV_REQ_MAY_UNMAP), FAST_ZERO for ``fast`` (BDRV_REQ_NO_FALLBACK: fails with ENOTSUP
        rather than write slowly). Without the command: written zero buffers, as QEMU's
        fallback (unless ``fast``)."""
        self._check_writable()
        self._extents = []
        if length <= 0:
            return
        if offset + length > self.info.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        info = self.info
        if not info.flags & wire.F_SEND_WRITE_ZEROES or (fast and not info.flags & wire.F_SEND_FAST_ZERO):
            if fast:
                raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
            super().write_zeroes(offset, length, unmap)
            return
        flags = (0 if unmap else wire.CMD_FLAG_NO_HOLE) | (wire.CMD_FLAG_FAST_ZERO if fast else 0)
        a = self.align
        if a > 1 and (offset % a or length % a):
            head = min(length, (-offset) % a)
            if head:
                self.pwrite(offset, bytes(head))
                offset, length = offset + head, length - head
            tail = length % a
            if tail:
                self.pwrite(offset + length - tail, bytes(tail))
                length -= tail
            if not length:
                return
        conn = self._conns[0]
        step = info.max_payload  # QEMU's max_pwrite_zeroes
        while length > 0:
            k = min(step, length)
            conn.request(wire.CMD_WRITE_ZEROES, offset, k, flags=flags)
            offset += k
            length -= k

    @_reconnecting
    def discard(self, offset: int, length: int) -> None:
        """NBD_CMD_TRIM where the server has it (a hint: nothing otherwise)."""
        if not self.writable or not self.info.flags & wire.F_SEND_TRIM or length <= 0:
            return
        self._extents = []
        conn = self._conns[0]
        a = self.align
        start = -(-offset // a) * a
        end = (offset + length) // a * a
        step = _INT_MAX - _INT_MAX % a
        while start < end:
            k = min(step, end - start)
            conn.request(wire.CMD_TRIM, start, k)
            start += k

    @_reconnecting
    def flush(self) -> None:
        if self.writable and self.info.flags & wire.F_SEND_FLUSH and self._conns and not self.unsafe_cache:
            self._conns[0].request(wire.CMD_FLUSH, 0, 0)

    @_reconnecting
    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """The status of the run at ``offset`` from ``base:allocation``, as QEMU reads it: HOLE
        clears DATA, ZERO sets ZERO; no context: all data. One request answers many runs (the
        extents after the first are kept until a write), where QEMU asks one extent at a time:
        the runs, once merged as map and convert merge them, are the same."""
        info = self.info
        if offset >= info.size:
            return length, ZERO
        length = min(length, info.size - offset)
        if info.context_id is None:
            return length, DATA
        with self._lock:
            runs = self._extents
            if runs:  # sorted and contiguous: the run holding offset, found by bisection
                i = bisect_right(runs, (offset, _NO_MORE, 0)) - 1
                if i >= 0 and runs[i][0] <= offset < runs[i][1]:
                    return min(runs[i][1] - offset, length), runs[i][2]
        ask = min(max(length, STATUS_ASK), info.size - offset, _INT_MAX - _INT_MAX % self.align)
        req = self._conn().request(wire.CMD_BLOCK_STATUS, offset, ask)
        if req.extent is None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # "Server did not reply with any status extents"
        runs = []
        pos, end = offset, offset + ask
        lo = info.min_block
        for n, raw in req.extents:
            if self._alloc_depth and raw > 2:
                raw = 2
            flags = (0 if raw & wire.STATE_HOLE else DATA) | (ZERO if raw & wire.STATE_ZERO else 0)
            if lo and n % lo:
                # an unaligned extent (a compliance bug QEMU works around): whole blocks, or one
                # block of "allocated" (always a safe answer), and nothing after it is trusted
                if n > lo:
                    n -= n % lo
                else:
                    n, flags = lo, DATA
                runs.append((pos, min(pos + n, end), flags))
                break
            runs.append((pos, min(pos + n, end), flags))
            pos += n
            if pos >= end:
                break
        with self._lock:
            self._extents = runs
        first_end, first_flags = runs[0][1], runs[0][2]
        return max(1, min(first_end - offset, length)), first_flags

    def truncate(self, size: int) -> None:
        """An export has the size it has: a smaller one is fine (nothing changes), as QEMU's
        inexact truncate of NBD nodes; a larger one cannot be."""
        if size > self.info.size:
            raise QimgError("Cannot grow NBD nodes")

    def check_resize(self, size: int) -> None:
        """``qemu-img resize``'s exact size change: refused unless nothing changes."""
        if size != self.info.size:
            raise QimgError("Cannot resize NBD nodes")

    def _check_writable(self) -> None:
        if not self.writable:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def start_parallel(self, readers: int) -> None:
        """A bulk copy is about to read with ``readers`` threads: over a read-only multi-conn
        export, more connections are opened in the background."""
        if (not self.info.flags & wire.F_CAN_MULTI_CONN or self.writable
                or len(self._conns) >= min(readers, MAX_CONNECTIONS) or not self._growing.acquire(False)):
            return
        start_new_thread(self._grow, (readers, self._generation))

    def close(self) -> None:
        self._closing = True
        with self._growing:  # the background opener has finished (and kept or closed its connection)
            pass
        conns, self._conns = self._conns, []
        self._mine = {}
        for conn in conns:
            conn.close()


def _wait_all(conn: transmission.Connection, reqs: list) -> None:
    """Wait for every request (none may still write into a buffer when the caller moves on),
    then raise the first failure."""
    first: BaseException | None = None
    for req in reqs:
        try:
            conn.wait(req)
        except OSError as e:
            if first is None:
                first = e
    if first is not None:
        raise first
