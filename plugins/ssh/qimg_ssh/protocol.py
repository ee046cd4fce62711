"""The ``ssh`` protocol: a file on an SSH server, read and written over SFTP (QEMU's ssh driver:
the same names, options, host key checks, authentication and messages).

The server's host key is checked against ``~/.ssh/known_hosts`` (and
``/etc/ssh/ssh_known_hosts``) by default, or against a fingerprint, or not at all; the user
authenticates with public keys only, from the SSH agent (``SSH_AUTH_SOCK``) and then the default
key files of ``~/.ssh`` (``id_ed25519``, ``id_ecdsa``, ``id_rsa``), as libssh's
``ssh_userauth_publickey_auto``. The home folder is the user's from the password database, as
libssh's (``HOME`` is not consulted). A read asks for its range in SFTP requests of 32 KiB with up
to :data:`READ_WINDOW` of them in flight (:class:`_PipelinedRead`); writes are pipelined and their
acknowledgements collected, failures raised, before any read, resize, flush or close
(:meth:`SshProtocol._settle`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import threading

from qimg.errors import QimgError, with_errno
from qimg.options import SIZE, STRING, Option, qobject_text
from qimg.protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: seconds to connect and finish the SSH handshake (QEMU waits without limit)
CONNECT_TIMEOUT = float(os.environ.get("QIMG_SSH_TIMEOUT") or 120)
_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
_NAME_KEYS = ("user", "host", "port", "path", "host_key_check")
#: the members of QEMU's InetSocketAddress (server.*)
_INET_KEYS = ("host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp")
#: SFTP status codes of the errno paramiko raises
_SFTP_CODES = {errno.ENOENT: 2, errno.EACCES: 3}


#: bytes per SFTP read request and how many are in flight: OpenSSH's sftp-server answers reads of
#: up to 256 KiB less 1 KiB whole (its SFTP_MAX_READ_LENGTH); a server that answers less (the
#: SFTP draft lets it) sets the size for the rest (``_PipelinedRead.request``)
READ_REQUEST = 256 * 1024 - 1024
READ_WINDOW = 8
#: reads not larger than this are one plain SFTP read (qcow2's headers and tables)
SMALL_READ = 32768
#: the SFTP channel's receive window and largest packet: the server sends each answer in a few
#: large packets (paramiko handles every packet in Python) and never waits for window room with
#: READ_WINDOW requests in flight (paramiko's defaults are 2 MiB and 32 KiB)
CHANNEL_WINDOW = 16 << 20
#: reader threads of a bulk copy from a read-only node (each keeps READ_WINDOW requests in flight)
PARALLEL_READS = 4
CHANNEL_PACKET = 256 << 10


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


class _PipelinedRead:
    """One range read as SFTP read requests of :data:`READ_REQUEST` bytes with up to
    :data:`READ_WINDOW` in flight, answers taken in order, on the calling thread (several
    threads may each run one at once on the same channel: ``locks``).

    Why not paramiko's own: ``SFTPFile.read`` sends one request and waits for its answer (64 MiB
    from sshd on loopback took 18 s, one round trip per 32 KiB), and ``SFTPFile.readv`` prefetches
    from a thread that polls every 10 ms for room and, when its queue drains meanwhile, leaves the
    rest to one-at-a-time reads with answers kept in a buffer nobody reads (4 in flight: 24 s).
    This sends the requests itself through the SFTP client's request/answer primitives, the same
    ones paramiko's prefetch uses (``_async_request`` routes each answer to this object's
    ``_async_response``): 16 in flight read the same 64 MiB in ~1.1 s. tests/test_ssh.py checks
    it against ``SFTPFile.read`` byte for byte, at the end of the file and past it.
    """

    def __init__(self, sftp: Any, f: Any, request: int = READ_REQUEST, locks: tuple[Any, Any] | None = None) -> None:
        self.sftp, self.f = sftp, f
        self.request = request  # bytes per request: lowered to what the server answers whole
        self.answers: dict[int, bytes | BaseException] = {}
        # several threads reading at once (a read-only node): requests are sent under one lock
        # and answers read under another, one answer at a time, each handed to its own reader
        self._send_lock, self._recv_lock = locks if locks is not None else (_NO_LOCK, _NO_LOCK)

    def _wait(self, num: int) -> None:
        """Until the answer to request ``num`` is in: read answers (anyone's) one at a time."""
        answers = self.answers
        while num not in answers:
            with self._recv_lock:
                if num not in answers:
                    self.sftp._read_response()  # one answer, handed to its requester

    def _async_response(self, t: int, msg: Any, num: int) -> None:  # called by paramiko
        from paramiko.sftp import CMD_DATA

        if t == CMD_DATA:
            self.answers[num] = msg.get_string()
            return
        try:
            self.sftp._convert_status(msg)  # raises: EOFError at the end of the file, else the error
            self.answers[num] = b""
        except EOFError:
            self.answers[num] = b""
        except Exception as e:  # noqa: BLE001 - an IOError/SFTPError for this request
            self.answers[num] = e

    def into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; the count of bytes up to the first short answer."""
        from collections import deque

        from paramiko.sftp import CMD_READ, int64

        handle = self.f.handle
        pending: deque[tuple[int, int, int]] = deque()  # (request number, position in buf, length)
        pos = 0
        while pos < len(buf) or pending:
            while pos < len(buf) and len(pending) < READ_WINDOW:
                k = min(self.request, len(buf) - pos)
                with self._send_lock:
                    num = self.sftp._async_request(self, CMD_READ, handle, int64(offset + pos), k)
                pending.append((num, pos, k))
                pos += k
            num, at, k = pending[0]
            self._wait(num)
            pending.popleft()
            data = self.answers.pop(num)
            if isinstance(data, BaseException):
                raise data
            buf[at:at + len(data)] = data
            if len(data) < k:
                self._drain(pending)
                pending.clear()
                if not data:
                    return at  # the end of the file
                # the server answers less per request: ask again from there, in pieces of that size
                self.request = min(self.request, len(data))
                pos = at + len(data)
        return len(buf)

    def _drain(self, pending) -> None:
        """Wait for the answers still due (they would otherwise arrive during a later request)."""
        for num, _, _ in pending:
            self._wait(num)
        self.answers.clear()


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or "root"


def _ssh_dir() -> str:
    import pwd

    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = os.environ.get("HOME") or "/"
    return os.path.join(home, ".ssh")


def parse_url(filename: str) -> dict[str, Any]:
    """``ssh://[user@]host[:port]/path[?host_key_check=X]`` as open options (QEMU's
    ``parse_uri``). A name its URI parser refuses gives no options and no message (QEMU
    returns without one: the open then misses 'server')."""
    from qimg import api, compat
    from qimg.uri import parse, query_params

    uri = parse(filename)
    if uri is None:
        return {}
    if uri.scheme != "ssh":
        raise QimgError("URI scheme must be 'ssh'")
    if not uri.host:
        raise QimgError("missing hostname in URI")
    if not uri.path:
        raise QimgError("missing remote path in URI")
    params = query_params(uri.query)
    if params is None:
        if compat.has("glib-uri"):
            params = []  # 10.0 reads no parameter from a query GLib refuses
        else:
            raise QimgError("could not parse query parameters")
    out: dict[str, Any] = {}
    if uri.user:
        out["user"] = uri.user
    out["server.host"] = uri.host
    out["server.port"] = str(uri.port or 22)
    out["path"] = uri.path
    for key, value in params:
        if key == "host_key_check":  # the one query parameter QEMU understands
            out["host_key_check"] = value
        elif compat.has("glib-uri"):
            api.report(f"warning: Unsupported parameter '{key}' in URI")  # 7.2 ignores it silently
    return out


# QEMU's qemu_strtou64 (base 0: hexadecimal, octal, decimal; a sign and leading spaces) on the
# whole value, and its qemu_strtoi (base 10)
_C_U64 = re.compile(r"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_C_INT = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def _legacy_port(value: Any) -> str:
    """The legacy ``port`` option, a QEMU_OPT_NUMBER: checked as QEMU parses it, kept as
    given (the connection uses the text)."""
    text = qobject_text(value)
    m = _C_U64.fullmatch(text)
    if not m:
        raise QimgError("Parameter 'port' expects a number")
    digits = m.group(1)
    base = 16 if digits[1:2] in ("x", "X") else 8 if digits.startswith("0") else 10
    if int(digits, base) >= 1 << 64:
        raise QimgError(f"Value '{text}' is too large for parameter 'port'")
    return text


def canonical_name(user: str, host: str, port: str, path: str, host_key_check: str | None) -> str:
    """The name QEMU gives an ssh node (``ssh_refresh_filename``)."""
    name = f"ssh://{user}@{host}:{port}{path}"
    return name + (f"?host_key_check={host_key_check}" if host_key_check is not None else "")


class SshProtocol(Protocol):
    protocol_name = "ssh"
    runtime_options = {"server.": STRING, "path": STRING, "user": STRING, "host-key-check.": STRING,
                       "host": STRING, "port": STRING, "host_key_check": STRING}
    #: QEMU's ssh_strong_runtime_opts
    strong_runtime_options = ("host", "port", "path", "user", "host_key_check", "server.")
    #: QEMU's ssh_create_opts
    create_opts = [Option("size", SIZE, "Virtual disk size")]
    parallel_reads = 1  # writable: one read at a time; read-only: PARALLEL_READS (set when opened)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if options and any(k in options for k in _NAME_KEYS):
            raise QimgError("user, host, port, path, host_key_check cannot be used at the same time as a file option")
        return parse_url(filename)

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        opts = parse_url(filename)
        if "server.host" not in opts:
            raise QimgError("Parameter 'server' is missing")
        if "host_key_check" in opts:
            raise QimgError("Cannot generate a base directory with host_key_check set")
        from qimg.names import path_combine

        name = canonical_name(opts.get("user") or _user(), opts["server.host"], opts.get("server.port", "22"),
                              opts["path"], None)
        return path_combine(name, "")

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> SshProtocol:
        return cls(options, writable=writable)

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> SshProtocol:
        parsed, size = cls.creation_options(filename, options, check_preallocation=False)
        proto = cls(parsed, writable=True, create=True)
        if size:
            proto.truncate(int(size))
        return proto

    def __init__(self, options: dict[str, Any], *, writable: bool, create: bool = False) -> None:
        opts = dict(options)
        opts.pop("filename", None)
        given = {k: v for k, v in opts.items()
                 if k in self.strong_runtime_options or k.startswith("server.")}
        host = opts.pop("host", None)
        port = opts.pop("port", None)
        if port is not None:
            port = _legacy_port(port)
            if host is None:
                raise QimgError("port may not be used without host")
        for key, value in opts.items():
            if value is None and (key in ("user", "path") or key.startswith(("server.", "host-key-check."))):
                raise QimgError(f"Internal error: parameter {key} invalid")  # a json: null
        for key in ("server", "host-key-check"):
            if key in opts:  # a json: name's string where QEMU's QAPI wants an object
                raise QimgError(f"Invalid parameter type for '{key}', expected: object")
        server = {k[7:]: v for k, v in opts.items() if k.startswith("server.")}
        for k in list(opts):
            if k.startswith("server."):
                del opts[k]
        if host is not None:  # QEMU's legacy options overwrite server.host and server.port
            server["host"] = host
            server["port"] = port if port is not None else "22"
        if not server:
            raise QimgError("Parameter 'server' is missing")
        if "host" not in server:
            raise QimgError("Parameter 'server.host' is missing")
        if "port" not in server:
            raise QimgError("Parameter 'server.port' is missing")
        for key in server:  # QEMU's InetSocketAddress
            if key not in _INET_KEYS:
                raise QimgError(f"Parameter 'server.{key}' is unexpected")
        path = opts.pop("path", None)
        if path is None:
            raise QimgError("Parameter 'path' is missing")
        self.host = qobject_text(server.pop("host"))
        self.port = qobject_text(server.pop("port", "22"))
        if not _C_INT.fullmatch(self.port):
            raise QimgError("Use only numeric port value")  # (QEMU's qemu_strtoi, base 10)
        self._plain_server = not any(k in server for k in ("ipv4", "ipv6", "to", "numeric"))
        self.path = qobject_text(path)
        user = opts.pop("user", None)
        if user is not None and qobject_text(user) == "":
            raise QimgError("failed to set the user in the libssh session: Invalid argument in ssh_options_set "
                            "(libssh error code: 2)")
        self.user = qobject_text(user) if user is not None else _user()
        self.legacy_check = opts.pop("host_key_check", None)
        check = {k[15:]: v for k, v in opts.items() if k.startswith("host-key-check.")}
        for key in opts:  # QEMU's QAPI visitor refuses other keys before connecting
            if not key.startswith("host-key-check."):
                raise QimgError(f"Parameter '{key.partition('.')[0]}' is unexpected")
        mode, kind, expected = self._host_key_mode(check)
        self.given = given
        self.writable = writable
        self.filename = canonical_name(self.user, self.host, self.port, self.path, self.legacy_check)
        self._lock = threading.Lock()
        self._read_request = READ_REQUEST  # bytes per pipelined SFTP read (_PipelinedRead.request)
        # a read-only node is read by several threads at once on its one SFTP channel (a bulk
        # copy keeps their requests in flight together); a writable one a read at a time, as
        # reads must first collect the answers to pipelined writes (_settle)
        self._locks = (threading.Lock(), threading.Lock())
        if not writable:
            self.parallel_reads = PARALLEL_READS
        self._transport = None
        self._sftp = None
        self._f = None
        try:
            self._connect(mode, kind, expected)
            self._open_file(writable, create)
        except BaseException:
            self.close()
            raise

    def _host_key_mode(self, check: dict[str, Any]) -> tuple[str, str | None, str | None]:
        legacy = self.legacy_check
        if legacy is not None:
            legacy = str(legacy)
            if legacy == "no":
                return "none", None, None
            if legacy == "yes":
                return "known_hosts", None, None
            for kind in ("md5", "sha1", "sha256"):
                if legacy.startswith(kind + ":"):
                    return "hash", kind, legacy[len(kind) + 1:]
            raise QimgError(f"unknown host_key_check setting ({legacy})")
        mode = str(check.get("mode", "known_hosts"))
        if mode not in ("none", "hash", "known_hosts"):
            raise QimgError(f"Parameter 'mode' does not accept value '{mode}'")
        members = ("mode", "type", "hash") if mode == "hash" else ("mode",)  # QEMU's SshHostKeyCheck union
        for key in check:
            if key not in members:
                raise QimgError(f"Parameter 'host-key-check.{key}' is unexpected")
        if mode != "hash":
            return mode, None, None
        kind = check.get("type")
        if kind is None:
            raise QimgError("Parameter 'host-key-check.type' is missing")
        if kind not in _HASHES:
            raise QimgError(f"Parameter 'type' does not accept value '{kind}'")
        if check.get("hash") is None:
            raise QimgError("Parameter 'host-key-check.hash' is missing")
        return "hash", str(kind), str(check["hash"])

    # -- connection --------------------------------------------------------------------------
    def _connect(self, mode: str, kind: str | None, expected: str | None) -> None:
        import socket

        import paramiko

        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise QimgError(f"address resolution failed for {self.host}:{self.port}: {e.strerror}") from None
        sock = None
        last: OSError | None = None
        for family, stype, proto, _, addr in infos:
            s = socket.socket(family, stype, proto)
            s.settimeout(CONNECT_TIMEOUT)
            try:
                s.connect(addr)
                sock = s
                break
            except OSError as e:
                s.close()
                last = e
        if sock is None:
            text = os.strerror(last.errno) if last is not None and last.errno else "Connection failed"
            raise with_errno(QimgError(f"Failed to connect to '{self.host}:{self.port}': {text}"),
                             last.errno if last is not None else None)
        sock.settimeout(None)
        t = paramiko.Transport(sock)
        self._transport = t
        try:
            t.start_client(timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise QimgError(f"failed to establish SSH session: {e or 'connection closed'}") from None
        self._check_host_key(t.get_remote_server_key(), mode, kind, expected)
        self._authenticate(t)
        try:
            self._sftp = paramiko.SFTPClient.from_transport(t, window_size=CHANNEL_WINDOW,
                                                            max_packet_size=CHANNEL_PACKET)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise QimgError(f"failed to initialize sftp handle: {e}") from None

    def _check_host_key(self, key: Any, mode: str, kind: str | None, expected: str | None) -> None:
        if mode == "none":
            return
        blob = key.asbytes()
        if mode == "hash":
            got = _HASHES[kind](blob).hexdigest()
            if expected.replace(":", "").lower() != got:
                raise QimgError(f"remote host {key.get_name()} key fingerprint '{kind}:{got}' does not match "
                                f"host_key_check '{kind}:{expected}'")
            return
        import base64

        import paramiko

        known = paramiko.HostKeys()
        for path in (os.path.join(_ssh_dir(), "known_hosts"), "/etc/ssh/ssh_known_hosts"):
            try:
                known.load(path)
            except (OSError, paramiko.SSHException):
                continue
        name = self.host if self.port == "22" else f"[{self.host}]:{self.port}"
        entry = known.lookup(name)
        if not entry:
            raise QimgError("no host key was found in known_hosts")
        if key.get_name() not in entry:
            raise QimgError("host key for this server not found, another type exists")
        if entry[key.get_name()].asbytes() != blob:
            fp = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
            raise QimgError(f"host key ({key.get_name()} key with fingerprint SHA256:{fp}) does not match the one in "
                            "known_hosts; this may be a possible attack")

    def _authenticate(self, t: Any) -> None:
        import paramiko

        failed = QimgError("failed to authenticate using publickey authentication and the identities held by your "
                           "ssh-agent")
        try:
            t.auth_none(self.user)
            return
        except paramiko.BadAuthenticationType as e:
            if "publickey" not in e.allowed_types:
                raise failed from None
        except (paramiko.SSHException, EOFError, OSError):
            raise failed from None
        keys: list[Any] = []
        agent = None
        if os.environ.get("SSH_AUTH_SOCK"):
            try:
                agent = paramiko.Agent()
                keys += list(agent.get_keys())
            except (paramiko.SSHException, OSError):
                agent = None
        for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
            path = os.path.join(_ssh_dir(), name)
            if os.path.exists(path):
                try:
                    keys.append(paramiko.PKey.from_path(path))
                except (paramiko.SSHException, OSError, ValueError):
                    continue  # an encrypted key (libssh would ask for its passphrase) or another kind
        try:
            for key in keys:
                try:
                    t.auth_publickey(self.user, key)
                    return
                except paramiko.AuthenticationException:
                    continue
                except (paramiko.SSHException, EOFError, OSError):
                    break
        finally:
            if agent is not None:
                agent.close()
        raise failed

    def _open_file(self, writable: bool, create: bool) -> None:
        mode = "w+b" if create else ("r+b" if writable else "rb")
        try:
            f = self._sftp.open(self.path, mode)
        except OSError as e:
            raise self._sftp_error(f"failed to open remote file '{self.path}'", e) from None
        self._f = f
        if writable:
            f.set_pipelined(True)
        try:
            self._size = f.stat().st_size or 0
        except OSError as e:
            raise self._sftp_error("failed to read file attributes", e) from None

    @staticmethod
    def _sftp_error(what: str, e: OSError) -> QimgError:
        code = _SFTP_CODES.get(e.errno, 4)
        text = e.strerror or str(e)
        return with_errno(QimgError(f"{what}: SFTP server: {text} (libssh error code: 1, sftp error code: {code})"),
                          e.errno)

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        return self.filename if self._plain_server else None

    def json_options(self) -> dict[str, Any]:
        # QEMU names the node with its options flat ("server.host"), in QDict order
        from qimg.ops.qjson import qdict_order

        return {"driver": "ssh", **{k: self.given[k] for k in qdict_order(list(self.given))}}

    def dirname(self) -> str:
        if self.legacy_check is not None:
            raise QimgError("Cannot generate a base directory with host_key_check set")
        name = self.exact_filename()
        if not name:
            raise QimgError("Cannot generate a base directory for this ssh node")
        from qimg.names import path_combine

        return path_combine(name, "")

    # -- I/O ---------------------------------------------------------------------------------
    def size(self) -> int:
        return self._size

    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), self._size - offset)
        if n <= 0:
            return 0
        if not self.writable:
            reader = _PipelinedRead(self._sftp, self._f, self._read_request, self._locks)
            try:
                got = reader.into(offset, buf[:n])
            except Exception as e:  # noqa: BLE001 - OSError, EOFError, paramiko.SSHException (connection broken)
                raise OSError(errno.EIO, os.strerror(errno.EIO)) from e
            if got == n:
                self._read_request = reader.request
            return got
        try:
            with self._lock:
                self._settle()
                if n <= SMALL_READ:
                    self._f.seek(offset)
                    got = self._read_plain(buf[:n])
                else:
                    reader = _PipelinedRead(self._sftp, self._f, self._read_request)
                    got = reader.into(offset, buf[:n])
                    if got == n:  # a short answer inside the file: the server's limit, kept
                        self._read_request = reader.request
        except Exception as e:  # noqa: BLE001 - OSError, EOFError, paramiko.SSHException (connection broken)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from e
        return got

    def _settle(self) -> None:
        """Send what paramiko still buffers and wait for every pipelined write's answer, raising
        the first failure. Any other request or read would take those answers and drop them
        (paramiko keeps a write's answer only for the write's own later wait), and a read past
        the buffer would miss the buffered bytes."""
        f = self._f
        f.flush()
        pending = f._reqs
        while pending:
            self._sftp._read_response(pending.popleft())  # an error status raises IOError

    def _read_plain(self, buf: memoryview) -> int:
        got = 0
        while got < len(buf):
            piece = self._f.read(len(buf) - got)
            if not piece:
                break
            buf[got:got + len(piece)] = piece
            got += len(piece)
        return got

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if not self.writable:
            raise with_errno(QimgError("Cannot write to a read-only ssh node"), errno.EACCES)
        try:
            with self._lock:
                self._f.seek(offset)
                self._f.write(bytes(data))
                self._size = max(self._size, offset + len(data))
        except Exception as e:  # noqa: BLE001 - OSError, paramiko.SSHException
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from e

    def check_resize(self, size: int) -> None:
        if size < self._size:
            raise with_errno(QimgError("ssh driver does not support shrinking files"), errno.ENOTSUP)

    def truncate(self, size: int) -> None:
        self.check_resize(size)
        if size == self._size:
            return
        try:
            with self._lock:
                self._settle()
                self._f.truncate(size)
                self._size = size
        except OSError as e:
            raise self._sftp_error("failed to resize the remote file", e) from None

    def flush(self) -> None:
        if self._f is None or not self.writable:
            return
        try:
            with self._lock:
                self._settle()
        except Exception as e:  # noqa: BLE001
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from e

    def close(self) -> None:
        if self._f is not None and self.writable:
            try:
                self._settle()
            except Exception:  # noqa: BLE001 - closing a broken connection (flush reports failures)
                pass
        for obj in (self._f, self._sftp, self._transport):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._f = self._sftp = self._transport = None
