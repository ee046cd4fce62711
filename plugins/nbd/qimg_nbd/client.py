"""An NBD client, written from the protocol specification (NetworkBlockDevice/nbd,
doc/proto.md): fixed-newstyle handshake with NBD_OPT_GO (falling back to NBD_OPT_LIST and
NBD_OPT_EXPORT_NAME, or an oldstyle server), structured replies, the ``base:allocation``
metadata context, and a transmission phase where several requests, from one thread or from
several, are in flight at once on one connection.

The server is not trusted: every length and field of every reply is checked before use,
payloads that are not read data are capped (:data:`MAX_PAYLOAD`), data lands only inside
the buffer of the request it answers, and every socket operation has a timeout. Handshake
failures raise QimgError with QEMU's wording; transmission failures raise OSError with the
errno QEMU reports (EIO for a broken connection, EINVAL for a broken reply, the server's
errno for a refused request); a connection that broke stays broken.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading

from qimg.errors import QimgError, with_errno
from qimg.image import zero_fill

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .names import Server

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
CLIENT_MAGIC = 0x00420281861253  # oldstyle
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
OPT_NAMES = {1: "export name", 2: "abort", 3: "list", 4: "peek export", 5: "starttls", 6: "info", 7: "go",
             8: "structured reply", 9: "list meta context", 10: "set meta context", 11: "extended headers"}
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_PLATFORM = 0x80000001, 0x80000002, 0x80000003, 0x80000004
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_SHUTDOWN, REP_ERR_BLOCK_SIZE_REQD = (0x80000005, 0x80000006,
                                                                               0x80000007, 0x80000008)
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

# transmission flags
F_HAS_FLAGS, F_READ_ONLY, F_SEND_FLUSH, F_SEND_FUA, F_ROTATIONAL = 1, 2, 4, 8, 16
F_SEND_TRIM, F_SEND_WRITE_ZEROES, F_SEND_DF, F_CAN_MULTI_CONN = 32, 64, 128, 256
F_SEND_FAST_ZERO = 2048
# commands and their flags
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 1, 2, 4, 8, 16
# structured replies
REPLY_FLAG_DONE = 1
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS = 0, 1, 2, 5
REPLY_ERROR, REPLY_ERROR_OFFSET = 32769, 32770
STATE_HOLE, STATE_ZERO = 1, 2

#: the largest read or write one request carries (QEMU's NBD_MAX_BUFFER_SIZE)
MAX_BUFFER = 32 << 20
#: the largest reply payload that is not read data (QEMU's NBD_MAX_MALLOC_PAYLOAD)
MAX_PAYLOAD = 1000
#: extents one block status answer keeps (asked without NBD_CMD_FLAG_REQ_ONE), and the
#: largest such answer a server may send (the spec's 2^20 extents)
MAX_EXTENTS = 1024
MAX_STATUS_PAYLOAD = 4 + 8 * (1 << 20)
#: the largest option reply read during the handshake (QEMU caps these at NBD_MAX_BUFFER_SIZE;
#: everything a client needs from one is far smaller)
MAX_OPTION_REPLY = 64 << 10
#: requests in flight on one connection (QEMU's MAX_NBD_REQUESTS)
MAX_IN_FLIGHT = 16
#: seconds one connect, handshake step or reply may take (``QIMG_NBD_TIMEOUT``)
DEFAULT_TIMEOUT = 60.0
_EOF = "Unexpected end-of-file before all data were read"

_HDR = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_STRUCT_REST = struct.Struct(">HHQI")  # after the magic: flags, type, cookie, length
_OPT = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")


def timeout_seconds() -> float:
    text = os.environ.get("QIMG_NBD_TIMEOUT", "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def nbd_errno(err: int) -> int:
    """An NBD error value as the system errno QEMU maps it to."""
    return {1: errno.EPERM, 5: errno.EIO, 12: errno.ENOMEM, 28: errno.ENOSPC, 75: errno.EOVERFLOW,
            95: errno.ENOTSUP, 108: errno.ESHUTDOWN}.get(err, errno.EINVAL)


def _io_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Export:
    """What the handshake negotiated."""

    __slots__ = ("size", "flags", "min_block", "pref_block", "max_block", "structured", "context_id")

    def __init__(self) -> None:
        self.size = 0
        self.flags = 0
        self.min_block = 0
        self.pref_block = 0
        self.max_block = 0
        self.structured = False
        self.context_id: int | None = None

    @property
    def read_only(self) -> bool:
        return bool(self.flags & F_READ_ONLY)

    @property
    def max_payload(self) -> int:
        return min(MAX_BUFFER, self.max_block) if self.max_block else MAX_BUFFER


# -- connecting ---------------------------------------------------------------------------------

#: sizeof(sockaddr_un.sun_path) on Linux
_SUN_PATH = 108


def connect(server: Server, timeout: float) -> socket.socket:
    """A connected socket, or QimgError in QEMU's words (``Failed to connect to 'h:p': ...``)."""
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
        infos = socket.getaddrinfo(server.host or None, server.port, type=socket.SOCK_STREAM)
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


class Tls:
    """TLS for the connections of one node: the client's SSL context (from its
    ``tls-creds``), the name the server's certificate must carry (``tls-hostname``, else the
    server's host name; none for a unix socket) and whether the server is verified."""

    __slots__ = ("context", "hostname", "verify")

    def __init__(self, context: Any, hostname: str | None, verify: bool) -> None:
        self.context, self.hostname, self.verify = context, hostname, verify
        context.check_hostname = bool(verify and hostname)

    def wrap(self, sock: socket.socket) -> socket.socket:
        """The TLS handshake on ``sock``; QimgError in QEMU's (gnutls') words when it fails."""
        import ssl

        try:
            tls_sock = self.context.wrap_socket(sock, server_hostname=self.hostname or None,
                                                do_handshake_on_connect=False)
            tls_sock.do_handshake()
        except ssl.SSLCertVerificationError as e:
            raise QimgError(_verify_message(e, self.hostname)) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
            raise QimgError("TLS handshake failed: The TLS connection was non-properly terminated.") from None
        except ssl.SSLError as e:
            raise QimgError(f"TLS handshake failed: {e.reason or e}") from None
        except TimeoutError:
            raise with_errno(QimgError(f"TLS handshake failed: {os.strerror(errno.ETIMEDOUT)}"),
                             errno.ETIMEDOUT) from None
        except OSError as e:
            raise QimgError(f"TLS handshake failed: {os.strerror(e.errno or errno.EIO)}") from None
        if self.verify and not self.hostname:
            tls_sock.close()
            raise QimgError("No hostname for certificate validation")
        return tls_sock


def _verify_message(e: Any, hostname: str | None) -> str:
    """gnutls' words (as QEMU prints them) for OpenSSL's certificate verification codes."""
    code = getattr(e, "verify_code", 0)
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return f"Certificate does not match the hostname {hostname}"
    if code in (2, 18, 19, 20, 21):  # no issuer found, self-signed, cannot verify the leaf
        return "The certificate hasn't got a known issuer"
    if code == 10:
        return "The certificate has expired"
    if code == 9:
        return "The certificate is not yet activated"
    if code == 23:
        return "The certificate has been revoked"
    return f"The certificate is not trusted: {getattr(e, 'verify_message', None) or e}"


def handshake(sock: socket.socket, export: str, *, tls: Tls | None = None) -> tuple[socket.socket, Export]:
    """Negotiate ``export`` on a connected socket (over TLS when ``tls``): the socket to use
    from now on (the TLS one) and what was negotiated."""
    h = _Handshake(sock)
    try:
        return _negotiate(h, export, tls)
    except BaseException:
        if h.sock is not sock:
            h.sock.close()  # the TLS socket (it took over the connected one's descriptor)
        raise


def _negotiate(h: _Handshake, export: str, tls: Tls | None) -> tuple[socket.socket, Export]:
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
        info.structured = h.simple_option(OPT_STRUCTURED_REPLY)
        if info.structured:
            info.context_id = h.meta_context(name, b"base:allocation")
        if h.go(name, info, tls is not None):
            return h.sock, _checked(info)
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


# -- transmission --------------------------------------------------------------------------------

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
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._receiving = False
        self._pending: dict[int, _Request] = {}
        self._next = 1
        self._broken: OSError | None = None
        self._hdr = bytearray(_SIMPLE.size)
        self._payload = bytearray(MAX_PAYLOAD)
        self._status = bytearray(4 + 8 * MAX_EXTENTS)

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
        header = _HDR.pack(REQUEST_MAGIC, flags, cmd, cookie, offset, length)
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
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
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
        """Read one reply (simple) or one chunk (structured) and hand it to its request."""
        hdr = memoryview(self._hdr)
        self._recv_into(hdr[:4])
        (magic,) = struct.unpack_from(">I", hdr)
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
        req = self._owner(cookie)
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
        elif rtype == REPLY_BLOCK_STATUS:
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
            if req.one:
                extents = extents[:1]  # a server that sent more than asked: the rest is ignored
            if any(n == 0 for n, _ in extents):
                raise _io_error(errno.EINVAL)
            req.extent = extents[0]
            req.extents = extents
            req.got = True
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

    # -- closing -----------------------------------------------------------------------
    def close(self) -> None:
        if not self.broken:
            try:
                with self._send_lock:
                    self.sock.sendall(_HDR.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
