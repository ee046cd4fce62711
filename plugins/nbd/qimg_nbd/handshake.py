"""The NBD handshake, written from the protocol specification (NetworkBlockDevice/nbd,
doc/proto.md): connecting (TCP or unix socket), the fixed-newstyle negotiation with NBD_OPT_GO
(falling back to NBD_OPT_LIST and NBD_OPT_EXPORT_NAME, or an oldstyle server), STARTTLS,
structured replies and the ``base:allocation`` metadata context.

The server is not trusted: every length and field of every option reply is checked and
capped (:data:`~.wire.MAX_OPTION_REPLY`); failures raise QimgError with QEMU's wording.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from qimg.errors import QimgError, with_errno

from .wire import (
    _EOF,
    _OPT,
    _OPT_REPLY,
    CLIENT_MAGIC,
    F_HAS_FLAGS,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    MAX_BUFFER,
    MAX_OPTION_REPLY,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_EXTENDED_HEADERS,
    OPT_GO,
    OPT_LIST,
    OPT_NAMES,
    OPT_SET_META_CONTEXT,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    OPTS_MAGIC,
    REP_ACK,
    REP_ERR_BLOCK_SIZE_REQD,
    REP_ERR_INVALID,
    REP_ERR_PLATFORM,
    REP_ERR_POLICY,
    REP_ERR_SHUTDOWN,
    REP_ERR_TLS_REQD,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_MAGIC,
    REP_META_CONTEXT,
    REP_SERVER,
    Export,
    _io_error,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .names import Server
    from .tls import Tls

# -- connecting ---------------------------------------------------------------------------------

#: sizeof(sockaddr_un.sun_path) on Linux
_SUN_PATH = 108


def connect(server: Server, timeout: float) -> socket.socket:
    """A connected socket, or QimgError in QEMU's words (``Failed to connect to 'h:p': ...``)."""
    if server.kind == "fd":
        return _socket_fd(server.path, timeout)
    if server.kind == "vsock":
        return _vsock(server, timeout)
    if server.kind == "unix":
        if not server.path:  # QEMU connects to an empty address, which nothing listens on
            raise with_errno(QimgError(f"Failed to connect to '': {os.strerror(errno.ECONNREFUSED)}"),
                             errno.ECONNREFUSED)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        addr: str | bytes = server.path
        if server.abstract:
            # the abstract namespace: a NUL, the name, and (not tight) NULs to fill sun_path
            name = b"\0" + os.fsencode(server.path)
            addr = name if server.tight else name.ljust(_SUN_PATH, b"\0")
        try:
            sock.connect(addr)
        except OSError as e:
            sock.close()
            raise _connect_error(server, e) from None
        except ValueError:  # NUL in the path
            sock.close()
            raise with_errno(QimgError(f"Failed to connect to '{server.path}': {os.strerror(errno.EINVAL)}"),
                             errno.EINVAL) from None
        return sock
    try:
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)  # "" fails, as in QEMU
    except (socket.gaierror, UnicodeError) as e:
        text = e.strerror if isinstance(e, socket.gaierror) and e.strerror else str(e)
        raise QimgError(f"address resolution failed for {server.host}:{server.port}: {text}") from None
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        if server.keep_alive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise _connect_error(server, last or _io_error(errno.ECONNREFUSED)) from None


def _socket_fd(text: str, timeout: float) -> socket.socket:
    """``server.type=fd``: a socket the caller opened, by its descriptor number (QEMU's
    ``socket_get_fd`` outside a monitor: qemu_strtoi, then a socket or refused). Each
    connection gets its own duplicate of it."""
    import re
    import stat

    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if m is None:
        # (qemu_strtoi leaves errno as it was, 0: QEMU's message has no reason)
        raise with_errno(QimgError(f"Unable to parse FD number {text}"), errno.EINVAL)
    fd = int(m.group(1))
    if not -(1 << 31) <= fd < 1 << 31:
        raise with_errno(QimgError(f"Unable to parse FD number {text}: {os.strerror(errno.ERANGE)}"), errno.ERANGE)
    try:
        is_socket = fd >= 0 and stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        raise QimgError(f"File descriptor '{text}' is not a socket")
    sock = socket.socket(fileno=os.dup(fd))
    sock.settimeout(timeout)
    return sock


def _vsock(server: Server, timeout: float) -> socket.socket:
    """``server.type=vsock``: AF_VSOCK to (cid, port), both parsed as QEMU's parse_uint_full."""
    numbers = []
    for what, text in (("cid", server.host), ("port", server.port)):
        t = text.lstrip(" \t\n\v\f\r")
        if not t.isdigit() or not t.isascii() or int(t) > 0xFFFFFFFF:
            raise QimgError(f"Failed to parse {what} '{text}'")
        numbers.append(int(t))
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except (OSError, AttributeError) as e:
        code = getattr(e, "errno", None) or errno.EAFNOSUPPORT
        raise with_errno(QimgError(f"Failed to create socket family 40: {os.strerror(code)}"), code) from None
    sock.settimeout(timeout)
    try:
        sock.connect((numbers[0], numbers[1]))
    except OSError as e:
        sock.close()
        raise _connect_error(server, e) from None
    return sock


def _connect_error(server: Server, e: OSError) -> QimgError:
    code = errno.ETIMEDOUT if isinstance(e, TimeoutError) and e.errno is None else e.errno
    text = os.strerror(code) if code else str(e)
    return with_errno(QimgError(f"Failed to connect to '{server}': {text}"), code)


# -- the handshake -----------------------------------------------------------------------------

class _Handshake:
    """One handshake on a connected socket (QEMU's nbd_receive_negotiate)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise with_errno(QimgError(f"{what}: {os.strerror(errno.ETIMEDOUT)}"), errno.ETIMEDOUT) from None
            except OSError as e:
                if type(e).__module__ == "ssl":  # the server ended the TLS session (refused our certificate)
                    raise self._tls_eof(what) from None
                raise with_errno(QimgError(f"{what}: {os.strerror(e.errno or errno.EIO)}"), e.errno) from None
            if k == 0:
                if type(self.sock).__module__ == "ssl":
                    raise self._tls_eof(what)
                raise QimgError(f"{what}: {_EOF}")
            got += k
        return bytes(buf)

    @staticmethod
    def _tls_eof(what: str) -> QimgError:
        from qimg.compat import text

        return with_errno(QimgError(f"{what}: {text('tls-read-eof')}"), errno.ECONNABORTED)

    def send(self, data: bytes, what: str) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            code = errno.ETIMEDOUT if isinstance(e, TimeoutError) else (e.errno or errno.EIO)
            raise with_errno(QimgError(f"{what}: {os.strerror(code)}"), code) from None

    def option(self, opt: int, data: bytes = b"") -> None:
        self.send(_OPT.pack(OPTS_MAGIC, opt, len(data)) + data, "Failed to send option request header")

    def abort(self) -> None:
        try:
            self.sock.sendall(_OPT.pack(OPTS_MAGIC, OPT_ABORT, 0))
        except OSError:
            pass

    def reply(self, opt: int) -> tuple[int, bytes]:
        """One option reply: (type, payload), the payload capped."""
        magic, ropt, rtype, length = _OPT_REPLY.unpack(self.read(_OPT_REPLY.size, "Failed to read option reply"))
        if magic != REP_MAGIC:
            self.abort()
            raise QimgError("Unexpected option reply magic")
        if ropt != opt:
            self.abort()
            raise QimgError(f"Unexpected option type {ropt} ({OPT_NAMES.get(ropt, 'unknown')}), expected {opt} "
                            f"({OPT_NAMES.get(opt, 'unknown')})")
        if length > MAX_OPTION_REPLY:
            self.abort()
            if rtype & 0x80000000:
                raise QimgError("server error message is too long")
            raise QimgError(f"server's reply to option {opt} ({OPT_NAMES.get(opt, 'unknown')}) is too long")
        return rtype, self.read(length, "Failed to read option reply payload") if length else b""

    def error(self, opt: int, rtype: int, payload: bytes, tls: bool) -> QimgError | None:
        """The error an option reply carries (None for ERR_UNSUP: the caller falls back)."""
        if rtype == REP_ERR_UNSUP:
            return None
        name = f"option {opt} ({OPT_NAMES.get(opt, 'unknown')})"
        hint = None
        if rtype == REP_ERR_POLICY:
            msg = f"Denied by server for {name}"
        elif rtype == REP_ERR_INVALID:
            msg = f"Invalid parameters for {name}"
        elif rtype == REP_ERR_PLATFORM:
            msg = f"Server lacks support for {name}"
        elif rtype == REP_ERR_TLS_REQD:
            msg = f"TLS negotiation required before {name}"
            if not tls:
                hint = "Did you forget a valid tls-creds?"
        elif rtype == REP_ERR_UNKNOWN:
            msg = "Requested export not available"
        elif rtype == REP_ERR_SHUTDOWN:
            msg = f"Server shutting down before {name}"
        elif rtype == REP_ERR_BLOCK_SIZE_REQD:
            msg = f"Server requires INFO_BLOCK_SIZE for {name}"
        else:
            msg = f"Unknown error code when asking for {name}"
        if hint:  # QEMU's hints, in the order it appends them
            msg += "\n" + hint
        if payload:
            msg += "\nserver reported: " + payload.decode("utf-8", "replace").replace("\0", "")
        self.abort()
        return QimgError(msg)

    def starttls(self) -> None:
        """NBD_OPT_STARTTLS, acknowledged by the server (QEMU's nbd_receive_starttls)."""
        self.option(OPT_STARTTLS)
        rtype, payload = self.reply(OPT_STARTTLS)
        if rtype & 0x80000000:
            err = self.error(OPT_STARTTLS, rtype, payload, True)
            raise err or QimgError("Server don't support STARTTLS option")
        if rtype != REP_ACK:
            self.abort()
            raise QimgError(f"Server rejected request to start TLS {rtype:x}")
        if payload:
            self.abort()
            raise QimgError(f"Start TLS response was not zero {len(payload)}")

    def simple_option(self, opt: int) -> bool:
        """An option without data that the server acks: True; unsupported or refused: False
        (QEMU asks it "not strictly": any error reply, such as a TLS-only server's
        "TLS required", only means the option is not there; the next option says why)."""
        self.option(opt)
        rtype, payload = self.reply(opt)
        if rtype & 0x80000000:
            return False
        if rtype != REP_ACK:
            self.abort()
            raise QimgError(f"Server answered option {opt} ({OPT_NAMES[opt]}) with an unexpected reply type {rtype}")
        if payload:
            self.abort()
            raise QimgError(f"Server answered option {opt} ({OPT_NAMES[opt]}) with an unexpected payload")
        return True

    def meta_context(self, export: bytes, context: bytes) -> int | None:
        """NBD_OPT_SET_META_CONTEXT for one context: its id, or None if the server has none."""
        data = struct.pack(">I", len(export)) + export + struct.pack(">II", 1, len(context)) + context
        self.option(OPT_SET_META_CONTEXT, data)
        found: int | None = None
        while True:
            rtype, payload = self.reply(OPT_SET_META_CONTEXT)
            if rtype & 0x80000000:
                err = self.error(OPT_SET_META_CONTEXT, rtype, payload, False)
                if err is not None:
                    raise err
                return None
            if rtype == REP_ACK:
                if payload:
                    self.abort()
                    raise QimgError("Server replied with a non-empty acknowledgement of meta contexts")
                return found
            if rtype != REP_META_CONTEXT:
                self.abort()
                raise QimgError(f"Unexpected reply type {rtype} to option {OPT_SET_META_CONTEXT} (set meta context)")
            if len(payload) < 4:
                self.abort()
                raise QimgError("Server sent a meta context reply too short to hold an id")
            if found is not None:
                self.abort()
                raise QimgError("Server replied with more than one context")
            if payload[4:] != context:
                self.abort()
                raise QimgError(f"Server replied with unexpected meta context name: "
                                f"{payload[4:].decode('utf-8', 'replace')}")
            (found,) = struct.unpack(">I", payload[:4])

    def go(self, export: bytes, info: Export, tls: bool) -> bool:
        """NBD_OPT_GO asking for block sizes: True with ``info`` filled, False if unsupported."""
        data = struct.pack(">I", len(export)) + export + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self.option(OPT_GO, data)
        have_export = False
        while True:
            rtype, payload = self.reply(OPT_GO)
            if rtype & 0x80000000:
                err = self.error(OPT_GO, rtype, payload, tls)
                if err is not None:
                    raise err
                return False
            if rtype == REP_ACK:
                if payload:
                    self.abort()
                    raise QimgError("server sent invalid NBD_REP_ACK")
                if not have_export:
                    self.abort()
                    raise QimgError("broken server omitted NBD_INFO_EXPORT")
                return True
            if rtype != REP_INFO:
                self.abort()
                raise QimgError(f"unexpected reply type {rtype}, expected {REP_INFO}")
            if len(payload) < 2:
                self.abort()
                raise QimgError(f"server sent an info reply too short ({len(payload)} bytes)")
            (kind,) = struct.unpack(">H", payload[:2])
            body = payload[2:]
            if kind == INFO_EXPORT:
                if len(body) != 10:
                    self.abort()
                    raise QimgError(f"remaining export info len {len(body)} is unexpected size")
                info.size, info.flags = struct.unpack(">QH", body)
                have_export = True
            elif kind == INFO_BLOCK_SIZE:
                if len(body) != 12:
                    self.abort()
                    raise QimgError(f"remaining export info len {len(body)} is unexpected size")
                lo, pref, hi = struct.unpack(">III", body)
                _check_block_sizes(lo, pref, hi)
                info.min_block, info.pref_block, info.max_block = lo, pref, hi
            # names, descriptions and what is unknown are ignored, as the spec asks

    def list_has(self, export: bytes) -> bool:
        """NBD_OPT_LIST: whether the server lists ``export`` (True if it cannot list)."""
        self.option(OPT_LIST)
        found = False
        while True:
            rtype, payload = self.reply(OPT_LIST)
            if rtype & 0x80000000:
                err = self.error(OPT_LIST, rtype, payload, False)
                if err is not None:
                    raise err
                return True
            if rtype == REP_ACK:
                if payload:
                    self.abort()
                    raise QimgError("length too long for option end")
                return found
            if rtype != REP_SERVER:
                self.abort()
                raise QimgError(f"Unexpected reply type {rtype:x} expected {REP_SERVER:x}")
            if len(payload) < 4:
                self.abort()
                raise QimgError(f"incorrect option length {len(payload)}")
            (nlen,) = struct.unpack(">I", payload[:4])
            if nlen > len(payload) - 4:
                self.abort()
                raise QimgError("incorrect option name length")
            if payload[4:4 + nlen] == export:
                found = True


def _check_block_sizes(lo: int, pref: int, hi: int) -> None:
    if lo == 0 or lo & (lo - 1) or lo > (64 << 10):
        raise QimgError(f"server minimum block size {lo} is not a power of two")
    if pref < lo or pref & (pref - 1) or pref > MAX_BUFFER:
        raise QimgError(f"server preferred block size {pref} is not valid")
    if hi < pref or hi % lo:
        raise QimgError(f"server maximum block size {hi} is not valid")


def handshake(sock: socket.socket, export: str, *, tls: Tls | None = None,
              context: str = "base:allocation") -> tuple[socket.socket, Export]:
    """Negotiate ``export`` on a connected socket (over TLS when ``tls``): the socket to use
    from now on (the TLS one) and what was negotiated. ``context`` is the one metadata context
    asked for (QEMU's client asks for one: ``base:allocation``, or its ``x-dirty-bitmap``)."""
    h = _Handshake(sock)
    try:
        return _negotiate(h, export, tls, context.encode("utf-8", "surrogateescape"))
    except BaseException:
        if h.sock is not sock:
            h.sock.close()  # the TLS socket (it took over the connected one's descriptor)
        raise


def _negotiate(h: _Handshake, export: str, tls: Tls | None, context: bytes) -> tuple[socket.socket, Export]:
    info = Export()
    name = export.encode("utf-8", "surrogateescape")
    (magic,) = struct.unpack(">Q", h.read(8, "Failed to read initial magic"))
    if magic != NBDMAGIC:
        raise QimgError(f"Bad initial magic received: 0x{magic:x}")
    (magic,) = struct.unpack(">Q", h.read(8, "Failed to read server magic"))
    if magic == CLIENT_MAGIC:  # oldstyle: no export names, no options
        if name:
            raise QimgError("Server does not support non-empty export names")
        if tls is not None:
            raise QimgError("Server does not support STARTTLS")
        info.size, flags = struct.unpack(">QI", h.read(12, "Failed to read export length"))
        info.flags = flags & 0xFFFF
        h.read(124, "Failed to read reserved block")
        return h.sock, _checked(info)
    if magic != OPTS_MAGIC:
        raise QimgError(f"Bad server magic received: 0x{magic:x}")
    (sflags,) = struct.unpack(">H", h.read(2, "Failed to read server flags"))
    fixed = bool(sflags & FLAG_FIXED_NEWSTYLE)
    no_zeroes = bool(sflags & FLAG_NO_ZEROES)
    cflags = (FLAG_FIXED_NEWSTYLE if fixed else 0) | (FLAG_NO_ZEROES if no_zeroes else 0)
    h.send(struct.pack(">I", cflags), "Failed to send clientflags field")
    if tls is not None:
        if not fixed:
            raise QimgError("Server does not support STARTTLS")
        h.starttls()
        h.sock = tls.wrap(h.sock)
    if fixed:
        # QEMU 10.0's client asks for extended headers first (7.2's knows none), then
        # structured replies, which extended headers include
        from qimg import compat

        if compat.has("nbd-extended-headers"):
            info.extended = h.simple_option(OPT_EXTENDED_HEADERS)
        info.structured = info.extended or h.simple_option(OPT_STRUCTURED_REPLY)
        if info.structured:
            info.context_id = h.meta_context(name, context)
        if h.go(name, info, tls is not None):
            return h.sock, _checked(info)
        if info.extended:  # the spec: a server with extended headers has NBD_OPT_GO
            h.abort()
            raise QimgError("Server does not support NBD_OPT_GO with extended headers")
        # the server knows no NBD_OPT_GO: an older one; see that it has the export first,
        # as NBD_OPT_EXPORT_NAME cannot say it has not
        if not h.list_has(name):
            h.abort()
            raise QimgError(f"No export with name '{export}' available")
    h.send(_OPT.pack(OPTS_MAGIC, OPT_EXPORT_NAME, len(name)) + name, "Failed to send export name")
    info.size, info.flags = struct.unpack(">QH", h.read(10, "Failed to read export length"))
    if not no_zeroes:
        h.read(124, "Failed to read reserved block")
    return h.sock, _checked(info)


def _checked(info: Export) -> Export:
    if info.size >= 1 << 63:
        raise QimgError(f"export size {info.size} is too large")
    if not info.flags & F_HAS_FLAGS:
        info.flags = 0  # no flags: nothing but reads and writes
    return info
