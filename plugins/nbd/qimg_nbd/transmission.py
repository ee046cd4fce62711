"""The NBD transmission phase (NetworkBlockDevice/nbd, doc/proto.md): several requests, from
one thread or from several, in flight at once on one connection, simple and structured
replies.

The server is not trusted: every length and field of every reply is checked before use,
payloads that are not read data are capped (:data:`~.wire.MAX_PAYLOAD`), data lands only inside
the buffer of the request it answers, and every socket operation has a timeout. Failures raise
OSError with the errno QEMU reports (EIO for a broken connection, EINVAL for a broken reply, the
server's errno for a refused request); a connection that broke stays broken.
"""
from __future__ import annotations

import errno
import socket
import struct
import threading

from qimg.image import zero_fill

from .wire import (
    _EXT_HDR,
    _EXT_REST,
    _HDR,
    _SIMPLE,
    _STRUCT_REST,
    CMD_BLOCK_STATUS,
    CMD_DISC,
    CMD_FLAG_PAYLOAD_LEN,
    CMD_FLAG_REQ_ONE,
    CMD_READ,
    CMD_WRITE,
    DEFAULT_TIMEOUT,
    EXTENDED_REPLY_MAGIC,
    EXTENDED_REQUEST_MAGIC,
    MAX_BUFFER,
    MAX_EXTENTS,
    MAX_IN_FLIGHT,
    MAX_PAYLOAD,
    MAX_STATUS_PAYLOAD,
    REPLY_BLOCK_STATUS,
    REPLY_BLOCK_STATUS_EXT,
    REPLY_FLAG_DONE,
    REPLY_NONE,
    REPLY_OFFSET_DATA,
    REPLY_OFFSET_HOLE,
    REQUEST_MAGIC,
    SIMPLE_MAGIC,
    STRUCTURED_MAGIC,
    Export,
    _io_error,
    nbd_errno,
)


class _Request:
    """One request in flight: where its reply goes, and what became of it."""

    __slots__ = ("cookie", "cmd", "offset", "length", "buf", "done", "error", "extent", "extents", "got", "covered",
                 "one")

    def __init__(self, cookie: int, cmd: int, offset: int, length: int, buf: memoryview | None) -> None:
        self.cookie = cookie
        self.cmd = cmd
        self.offset = offset
        self.length = length
        self.buf = buf
        self.done = False
        self.error: OSError | None = None  # the server refused the request
        self.extent: tuple[int, int] | None = None  # block status: the first (length, flags)
        self.extents: list[tuple[int, int]] = []  # block status: every extent kept
        self.one = False  # block status asked with NBD_CMD_FLAG_REQ_ONE
        self.got = False  # a read got data or a hole; block status got its chunk
        self.covered = 0  # bytes of a read that chunks filled


class Connection:
    """The transmission phase on one connection. Any thread may submit requests and wait for
    them; the thread that waits reads replies for every request (one reader at a time), so
    no thread runs when nobody waits."""

    def __init__(self, sock: socket.socket, info: Export, timeout: float = DEFAULT_TIMEOUT) -> None:
        # the timeout as the kernel's SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket: Python's own
        # socket timeout would poll() before every recv
        sock.settimeout(None)
        tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.sock = sock
        self.info = info
        # a plain socket's recv waits for the whole length (one system call and one wake-up
        # for a read's data instead of one per socket buffer's worth); TLS sockets take no flags
        self._waitall = socket.MSG_WAITALL if type(sock) is socket.socket else 0
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._receiving = False
        self._pending: dict[int, _Request] = {}
        self._next = 1
        self._broken: OSError | None = None
        self._hdr = bytearray(_SIMPLE.size)
        self._payload = bytearray(MAX_PAYLOAD)
        self._status = bytearray(8 + 16 * MAX_EXTENTS)

    # -- requests ----------------------------------------------------------------------
    def submit(self, cmd: int, offset: int, length: int, *, flags: int = 0, data: memoryview | None = None,
               buf: memoryview | None = None) -> _Request:
        while True:
            with self._cond:
                if self._broken is not None:
                    raise _io_error(errno.EIO)
                if len(self._pending) < MAX_IN_FLIGHT:
                    cookie = self._next
                    self._next = cookie + 1
                    req = _Request(cookie, cmd, offset, length, buf)
                    req.one = bool(flags & CMD_FLAG_REQ_ONE)
                    self._pending[cookie] = req
                    break
                if self._receiving:
                    self._cond.wait()
                    continue
                self._receiving = True
            # every slot is taken and nobody reads: this thread reads a reply to free one
            self._pump()
        header = self._header(flags, cmd, cookie, offset, length)
        try:
            with self._send_lock:
                if data is not None:
                    self.sock.sendall(header)
                    self.sock.sendall(data)
                else:
                    self.sock.sendall(header)
        except (TimeoutError, BlockingIOError):  # SO_SNDTIMEO ran out
            self._fail(errno.ETIMEDOUT)
            raise _io_error(errno.ETIMEDOUT) from None
        except OSError:
            self._fail(errno.EIO)
            raise _io_error(errno.EIO) from None
        return req

    def _header(self, flags: int, cmd: int, cookie: int, offset: int, length: int) -> bytes:
        if self.info.extended:  # a write's length is its payload's, and says so
            flags |= CMD_FLAG_PAYLOAD_LEN if cmd == CMD_WRITE else 0
            return _EXT_HDR.pack(EXTENDED_REQUEST_MAGIC, flags, cmd, cookie, offset, length)
        return _HDR.pack(REQUEST_MAGIC, flags, cmd, cookie, offset, length)

    def wait(self, req: _Request) -> _Request:
        """Until ``req`` is answered; its error (the server's) is raised, as a broken connection's."""
        while True:
            with self._cond:
                while not req.done and self._receiving and self._broken is None:
                    self._cond.wait()
                if req.done:
                    break
                if self._broken is not None:
                    raise _io_error(self._broken.errno or errno.EIO)
                self._receiving = True
            self._pump()
        if req.error is not None:
            raise req.error
        return req

    def _pump(self) -> None:
        """Read one reply as the connection's reader (``_receiving`` is set by the caller)."""
        try:
            self._receive_one()
        except OSError as e:
            self._fail(e.errno or errno.EIO)
        finally:
            with self._cond:
                self._receiving = False
                self._cond.notify_all()

    def request(self, cmd: int, offset: int, length: int, **kw) -> _Request:
        return self.wait(self.submit(cmd, offset, length, **kw))

    def _fail(self, code: int) -> None:
        """The connection is unusable: every waiting request fails with ``code``."""
        with self._cond:
            if self._broken is None:
                self._broken = _io_error(code)
            for req in self._pending.values():
                if not req.done:
                    req.error = _io_error(code)
                    req.done = True
            self._pending.clear()
            self._cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def broken(self) -> bool:
        return self._broken is not None

    # -- replies -----------------------------------------------------------------------
    def _recv_into(self, view: memoryview) -> None:
        got, n = 0, len(view)
        waitall = self._waitall
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], 0, waitall)
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out
                raise _io_error(errno.ETIMEDOUT) from None
            except InterruptedError:
                continue
            if k == 0:
                raise _io_error(errno.EIO)  # the server dropped the connection
            got += k

    def _drop(self, n: int) -> None:
        view = memoryview(self._payload)
        while n > 0:
            k = min(n, len(view))
            self._recv_into(view[:k])
            n -= k

    def _owner(self, cookie: int) -> _Request:
        req = self._pending.get(cookie)
        if req is None:
            # a cookie we never sent (or already answered): the reply stream is lost, and a
            # lost stream is a broken connection (EIO), as QEMU reports it
            raise _io_error(errno.EIO)
        return req

    def _finish(self, req: _Request) -> None:
        with self._cond:
            req.done = True
            self._pending.pop(req.cookie, None)
            self._cond.notify_all()

    def _receive_one(self) -> None:
        """Read one reply (simple) or one chunk (structured or extended) and hand it to its
        request."""
        hdr = memoryview(self._hdr)
        self._recv_into(hdr[:4])
        (magic,) = struct.unpack_from(">I", hdr)
        if self.info.extended:  # every reply has the extended header, no simple ones
            if magic != EXTENDED_REPLY_MAGIC:
                raise _io_error(errno.EIO)
            rest = bytearray(_EXT_REST.size)
            self._recv_into(memoryview(rest))
            flags, rtype, cookie, _offset, length = _EXT_REST.unpack(rest)
            if length > MAX_BUFFER + 8 and rtype != REPLY_BLOCK_STATUS_EXT:
                raise _io_error(errno.EIO)  # no chunk but a status one is this long: the stream is lost
            self._chunk(self._owner(cookie), flags, rtype, length)
            return
        if magic == SIMPLE_MAGIC:
            self._recv_into(hdr[4:16])
            _, error, cookie = _SIMPLE.unpack(hdr)
            req = self._owner(cookie)
            if req.cmd == CMD_READ and self.info.structured:
                raise _io_error(errno.EINVAL)  # reads must get structured replies
            if req.cmd == CMD_BLOCK_STATUS and not error:
                raise _io_error(errno.EINVAL)  # status needs a chunk
            if error:
                req.error = _io_error(nbd_errno(error))
            elif req.cmd == CMD_READ:
                self._recv_into(req.buf)
            self._finish(req)
            return
        if magic != STRUCTURED_MAGIC or not self.info.structured:
            raise _io_error(errno.EIO)  # a reply header that cannot be: the stream is lost
        rest = bytearray(_STRUCT_REST.size)
        self._recv_into(memoryview(rest))
        flags, rtype, cookie, length = _STRUCT_REST.unpack(rest)
        self._chunk(self._owner(cookie), flags, rtype, length)

    def _chunk(self, req: _Request, flags: int, rtype: int, length: int) -> None:
        """The payload of one structured or extended reply chunk for ``req``."""
        hdr = memoryview(self._hdr)
        done = bool(flags & REPLY_FLAG_DONE)
        if rtype == REPLY_NONE:
            if not done or length:
                raise _io_error(errno.EINVAL)
        elif rtype == REPLY_OFFSET_DATA:
            if req.cmd != CMD_READ or length <= 8:
                raise _io_error(errno.EINVAL)
            self._recv_into(hdr[:8])
            (offset,) = struct.unpack_from(">Q", hdr)
            size = length - 8
            if offset < req.offset or size > req.length or offset - req.offset > req.length - size:
                raise _io_error(errno.EINVAL)  # outside the request: never written anywhere
            start = offset - req.offset
            self._recv_into(req.buf[start:start + size])
            req.got = True
            req.covered += size
        elif rtype == REPLY_OFFSET_HOLE:
            if req.cmd != CMD_READ or length != 12:
                raise _io_error(errno.EINVAL)
            body = memoryview(self._payload)[:12]
            self._recv_into(body)
            offset, size = struct.unpack_from(">QI", body)
            if size == 0 or offset < req.offset or size > req.length or offset - req.offset > req.length - size:
                raise _io_error(errno.EINVAL)
            start = offset - req.offset
            zero_fill(req.buf[start:start + size])
            req.got = True
            req.covered += size
        elif rtype == REPLY_BLOCK_STATUS_EXT:
            if not self.info.extended or req.cmd != CMD_BLOCK_STATUS or length < 24 or (length - 8) % 16 or req.got:
                raise _io_error(errno.EINVAL)
            if length > (MAX_PAYLOAD if req.one else 8 + 16 * (1 << 20)):
                raise _io_error(errno.EINVAL)  # more than the spec lets a server send
            keep = min(length, 8 + 16 * MAX_EXTENTS)
            body = memoryview(self._status)[:keep]
            self._recv_into(body)
            self._drop(length - keep)  # extents past what one answer keeps: asked again later
            context, count = struct.unpack_from(">II", body)
            if context != self.info.context_id or count != (length - 8) // 16:
                raise _io_error(errno.EINVAL)
            extents = [struct.unpack_from(">QQ", body, 8 + 16 * i) for i in range((keep - 8) // 16)]
            self._extents(req, extents)
        elif rtype == REPLY_BLOCK_STATUS:
            if self.info.extended:
                raise _io_error(errno.EINVAL)  # extended headers: only the 64-bit status chunk
            if req.cmd != CMD_BLOCK_STATUS or length < 12 or (length - 4) % 8 or req.got:
                raise _io_error(errno.EINVAL)
            if length > (MAX_PAYLOAD if req.one else MAX_STATUS_PAYLOAD):
                raise _io_error(errno.EINVAL)  # more than the spec lets a server send
            keep = min(length, 4 + 8 * MAX_EXTENTS)
            body = memoryview(self._status)[:keep]
            self._recv_into(body)
            self._drop(length - keep)  # extents past what one answer keeps: asked again later
            (context,) = struct.unpack_from(">I", body)
            if context != self.info.context_id:
                raise _io_error(errno.EINVAL)
            extents = [struct.unpack_from(">II", body, 4 + 8 * i) for i in range((keep - 4) // 8)]
            self._extents(req, extents)
        elif rtype & 0x8000:
            if length < 6 or length > MAX_PAYLOAD:
                raise _io_error(errno.EINVAL)
            body = memoryview(self._payload)[:length]
            self._recv_into(body)
            error, msg_len = struct.unpack_from(">IH", body)
            if error == 0 or msg_len > length - 6:
                raise _io_error(errno.EINVAL)
            if req.error is None:
                req.error = _io_error(nbd_errno(error))
        else:
            raise _io_error(errno.EINVAL)  # a chunk type this request cannot get
        if done:
            if req.cmd == CMD_READ and req.error is None and req.covered != req.length:
                # chunks may not overlap, so this is a gap (or an overlap): nothing would
                # have filled part of the caller's buffer
                req.error = _io_error(errno.EINVAL)
            self._finish(req)

    @staticmethod
    def _extents(req: _Request, extents: list[tuple[int, int]]) -> None:
        if req.one:
            extents = extents[:1]  # a server that sent more than asked: the rest is ignored
        if any(n == 0 for n, _ in extents):
            raise _io_error(errno.EINVAL)
        req.extent = extents[0]
        req.extents = extents
        req.got = True

    # -- closing -----------------------------------------------------------------------
    def close(self) -> None:
        if not self.broken:
            try:
                with self._send_lock:
                    self.sock.sendall(self._header(0, CMD_DISC, 0, 0, 0))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
