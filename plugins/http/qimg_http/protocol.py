"""The ``http`` and ``https`` protocols: an image on a web server, read with Range requests
(QEMU's curl driver: read-only, the same options, messages and names).

Opening sends one HEAD request: the length comes from ``Content-Length`` and the server must
answer ``Accept-Ranges: bytes``. Reads are ``GET`` requests for byte ranges; a small read asks
for ``readahead`` more bytes and keeps them (qcow2's metadata reads hit those), a large one asks
for exactly what it needs. Several threads may read at once (a bulk copy keeps
:attr:`HttpProtocol.parallel_reads` requests in flight), each on a pooled keep-alive
connection. Errors are worded as libcurl words them (``The requested URL returned error: 404``),
since that is what qemu-img prints.
"""
from __future__ import annotations

import errno
import os
import threading
import time

from qimg.errors import QimgError, with_errno
from qimg.options import BOOL, NUMBER, SIZE, STRING
from qimg.protocol import Protocol
from qimg.runtime import convert_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

READAHEAD_DEFAULT = 256 * 1024
TIMEOUT_DEFAULT = 5
TIMEOUT_MAX = 10000
#: connections (and requests in flight) per image, as QEMU's CURL_NUM_STATES
CONNECTIONS = 8
#: read-ahead buffers kept per image
CACHED = 8
#: redirects followed before giving up
MAX_REDIRECTS = 50
#: the error libcurl (GnuTLS build, as Debian's qemu-img uses) gives for any certificate it cannot trust
CERT_FAILED = "server certificate verification failed. CAfile: none CRLfile: none"

_SECRET_OPTIONS = ("cookie-secret", "password-secret", "proxy-password-secret")


class CurlError(Exception):
    """A failed transfer, with libcurl's words for it."""


def _secret(ident: Any) -> str:
    from qimg.secrets import get_secret

    data = get_secret(str(ident))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise QimgError(f"Data from secret {ident} is not valid UTF-8") from None


def _basic(user: str, password: str | None) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")


class HttpProtocol(Protocol):
    protocol_name = "http"
    # sslverify is typed by open itself: QEMU names the image with the value as written ("off")
    runtime_options = {"url": STRING, "readahead": SIZE, "sslverify": STRING, "timeout": NUMBER, "cookie": STRING,
                       "cookie-secret": STRING, "username": STRING, "password-secret": STRING,
                       "proxy-username": STRING, "proxy-password-secret": STRING}
    #: QEMU's curl_strong_runtime_opts: with one of them the image is named json:{...}
    strong_runtime_options = ("url", "sslverify", "cookie", "cookie-secret", "username", "password-secret",
                              "proxy-username", "proxy-password-secret")
    parallel_reads = CONNECTIONS
    can_create = False  # read-only: create and convert refuse before anything else

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"url": filename}

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> Protocol:
        raise QimgError(f"Protocol driver '{cls.protocol_name}' does not support image creation")

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> HttpProtocol:
        if writable:
            raise with_errno(QimgError("curl driver does not support writes"), errno.EACCES)
        opts = dict(options)
        sslverify = bool(convert_value("sslverify", BOOL, opts.pop("sslverify", True)))
        # a name is parsed into "url"; "filename" given as an option is refused once open
        named = opts.pop("filename", None) is not None
        readahead = int(opts.pop("readahead", READAHEAD_DEFAULT))
        if readahead & 0x1FF:
            raise QimgError(f"HTTP_READAHEAD_SIZE {readahead} is not a multiple of 512")
        timeout = int(opts.pop("timeout", TIMEOUT_DEFAULT))
        if not 0 <= timeout <= TIMEOUT_MAX:
            raise QimgError("timeout parameter is too large or negative")
        cookie = opts.pop("cookie", None)
        cookie_secret = opts.pop("cookie-secret", None)
        if cookie is not None and cookie_secret is not None:
            raise QimgError("curl driver cannot handle both cookie and cookie secret")
        if cookie_secret is not None:
            cookie = _secret(cookie_secret)
        url = opts.pop("url", None)
        if url is None:
            raise QimgError("curl block driver requires an 'url' option")
        url = str(url)
        name = cls.protocol_name
        if not url.startswith(name + "://"):
            raise QimgError(f"{name} curl driver cannot handle the URL '{url}' (does not start with '{name}://')")
        username = opts.pop("username", None)
        secret = opts.pop("password-secret", None)
        password = _secret(secret) if secret is not None else None
        proxy_user = opts.pop("proxy-username", None)
        secret = opts.pop("proxy-password-secret", None)
        proxy_password = _secret(secret) if secret is not None else None
        given = {k: options[k] for k in cls.strong_runtime_options if k in options and k != "url"}
        options.clear()
        options.update(opts)  # what is left: the core names it as unsupported
        proto = cls(url, readahead=readahead, timeout=timeout, sslverify=sslverify, cookie=cookie,
                    username=username, password=password, proxy_user=proxy_user, proxy_password=proxy_password,
                    given=given)
        if named:
            proto.close()
            raise QimgError(f"Block protocol '{name}' doesn't support the option 'filename'")
        return proto

    def __init__(self, url: str, *, readahead: int = READAHEAD_DEFAULT, timeout: int = TIMEOUT_DEFAULT,
                 sslverify: bool = True, cookie: str | None = None, username: str | None = None,
                 password: str | None = None, proxy_user: str | None = None, proxy_password: str | None = None,
                 given: dict[str, Any] | None = None) -> None:
        self.filename = self.url = url
        self.writable = False
        self.readahead = readahead
        self.given = dict(given or {})
        self._lock = threading.Lock()
        self._cache: list[tuple[int, bytes]] = []  # (offset, data) of recent read-aheads, newest last
        # the request target as given (urllib3 would re-encode it; curl sends it as it is)
        self._target = url
        self._cookie, self._username, self._password = cookie, username, password
        self._proxy_user, self._proxy_password = proxy_user, proxy_password
        self._seconds = timeout
        self._sslverify = sslverify
        self._pool: Any = None  # urllib3's, made when first needed (_urllib3)
        # Reads take a fast path first: HEAD and GETs on pooled keep-alive http.client
        # connections, reading straight into the caller's buffer (urllib3's readinto reads into
        # a new bytes object and copies it, its pool costs more Python per request, and importing
        # it costs more than a whole small convert). Whatever that path does not expect (a
        # redirect, an error status, a refused or broken connection, a proxy in the environment)
        # is asked again through urllib3, which follows redirects and words the failure as
        # libcurl does.
        self._idle: list[Any] = []
        self._ssl_context: Any = None
        parts = curl_url(url)
        if parts is None:
            # libcurl refuses the URL before it fills QEMU's error buffer: the reason is empty
            raise QimgError("CURL: Error opening file: ")
        self._scheme, user, password, self._host, self._port, self._path = parts
        if self._port == 0:  # libcurl connects to port 0, which refuses (urllib3 would take 80)
            raise QimgError(f"CURL: Error opening file: Failed to connect to {self._host} port 0 after 0 ms: "
                            "Couldn't connect to server")
        self._headers = self._auth_headers(user, password)
        # the URL the requests go to: the host and port as libcurl read them, the path as given
        # (urllib3 re-encodes a stray '%'; the fast path sends it as it is, as libcurl does)
        shown_host = f"[{self._host}]" if ":" in self._host else self._host
        self._target = f"{self._scheme}://{shown_host}:{self._port}{self._path}"
        self._fast = _proxy_for(self._scheme, self._host) is None
        try:
            size = self._fast_head() if self._fast else None
            if size is not None:
                self._size = size
                return
            self._fast = False
            self._urllib3()
            self._size = self._head()
        except CurlError as e:
            if self._pool is not None:
                self._pool.clear()
            raise QimgError(f"CURL: Error opening file: {e}") from None

    def _auth_headers(self, url_user: str | None, url_password: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._cookie:
            headers["Cookie"] = str(self._cookie)
        # as libcurl (7.88) under QEMU's options, observed: with password-secret, the
        # username option (else the URL's user) and that password; without it, the URL's
        # credentials when it has some, else the username option alone
        username, password = self._username, self._password
        if password is not None:
            if username is None:
                username = url_user
        elif url_user is not None:
            username, password = url_user, url_password
        if username is not None:
            headers["Authorization"] = _basic(str(username), password)
        return headers

    def _urllib3(self) -> Any:
        """urllib3's pool manager (made on first use) with this image's settings."""
        if self._pool is not None:
            return self._pool
        import urllib3

        timeout = self._seconds
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout) if timeout else urllib3.Timeout(None, None)
        self._retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS,
                                      raise_on_redirect=True, raise_on_status=False)
        pool_kw: dict[str, Any] = {"num_pools": 4, "maxsize": CONNECTIONS, "block": True}
        if self._scheme == "https":
            if self._sslverify:
                pool_kw.update(cert_reqs="CERT_REQUIRED")
            else:
                pool_kw.update(cert_reqs="CERT_NONE", assert_hostname=False)
                import warnings

                warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        proxy = _proxy_for(self._scheme, self._host)
        if proxy is not None:
            headers = {}
            if self._proxy_user is not None:
                headers["Proxy-Authorization"] = _basic(str(self._proxy_user), self._proxy_password)
            self._pool = urllib3.ProxyManager(proxy, proxy_headers=headers, **pool_kw)
        else:
            self._pool = urllib3.PoolManager(**pool_kw)
        return self._pool

    # -- requests ----------------------------------------------------------------------------
    def _request(self, method: str, headers: dict[str, str] | None = None) -> Any:
        """One request (redirects followed), its response unread; libcurl's words on failure."""
        import urllib3

        h = dict(self._headers)
        if headers:
            h.update(headers)
        start = time.monotonic()
        for again in (True, False):
            try:
                resp = self._urllib3().request(method, self._target, headers=h, preload_content=False,
                                               timeout=self._timeout, retries=self._retries, redirect=True)
                break
            except urllib3.exceptions.MaxRetryError as e:
                if again and _closed_unanswered(e.reason):
                    # as libcurl: a kept connection the server (or proxy) closed as the request
                    # went out is retried once on a new one
                    continue
                raise CurlError(self._why(e.reason, start)) from None
            except urllib3.exceptions.HTTPError as e:
                raise CurlError(self._why(e, start)) from None
            except (ValueError, LookupError):
                raise CurlError("URL using bad/illegal format or missing URL") from None
        if resp.status >= 400:
            resp.drain_conn()
            resp.release_conn()
            raise CurlError(f"The requested URL returned error: {resp.status}")
        return resp

    def _why(self, err: BaseException | None, start: float) -> str:
        """libcurl's error text for a failed request."""
        import ssl

        import urllib3.exceptions as ux

        ms = int((time.monotonic() - start) * 1000)
        if isinstance(err, ux.ProxyError):
            inner = err.original_error
            if isinstance(inner, (ux.NewConnectionError, ux.NameResolutionError)) or \
                    (isinstance(inner, ux.ConnectTimeoutError) and not isinstance(inner, ux.NewConnectionError)):
                proxy = self._pool.proxy
                if isinstance(inner, ux.NameResolutionError):
                    return f"Could not resolve proxy: {proxy.host}"
                if isinstance(inner, ux.NewConnectionError):
                    return f"Failed to connect to {proxy.host} port {proxy.port} after {ms} ms: Couldn't connect to server"
                return f"Connection timed out after {ms} milliseconds"
            err = inner
        if isinstance(err, ux.NameResolutionError):
            return f"Could not resolve host: {self._host}"
        if isinstance(err, ux.SSLError) or isinstance(err, ssl.SSLError):
            inner = err.args[0] if err.args else err
            if isinstance(inner, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
                return CERT_FAILED
            if "WRONG_VERSION_NUMBER" in str(err) or "record layer failure" in str(err):
                return "gnutls_handshake() failed: An unexpected TLS packet was received."
            return f"gnutls_handshake() failed: {inner}"
        if isinstance(err, ux.ConnectTimeoutError) and not isinstance(err, ux.NewConnectionError):
            return f"Connection timed out after {ms} milliseconds"
        if isinstance(err, ux.NewConnectionError):
            return f"Failed to connect to {self._host} port {self._port} after {ms} ms: Couldn't connect to server"
        if isinstance(err, ux.ReadTimeoutError):
            return f"Operation timed out after {ms} milliseconds with 0 bytes received"
        if isinstance(err, ux.ResponseError) and "redirect" in str(err):
            return f"Maximum ({MAX_REDIRECTS}) redirects followed"
        if isinstance(err, ux.ProtocolError):
            text = str(err)
            if "reset" in text.lower():
                return "Recv failure: Connection reset by peer"
            return "Empty reply from server"
        return str(err) if err is not None else "Unknown error"

    def _head(self) -> int:
        resp = self._request("HEAD")
        if resp.retries is not None and resp.retries.history:
            self._fast = False  # redirected: every read follows the redirect through urllib3
        try:
            length = resp.headers.get("Content-Length")
            ranges = any(k == "Accept-Ranges" and v.startswith("bytes") for k, v in resp.headers.iteritems())
        finally:
            resp.drain_conn()
            resp.release_conn()
        try:
            size = int(length) if length is not None else -1
        except ValueError:
            size = -1
        if size < 0:
            raise CurlError("Server didn't report file size.")
        if not ranges:
            raise CurlError("Server does not support 'range' (byte ranges).")
        return size

    def _get(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with the bytes at ``offset`` (short only at the end of the file)."""
        n = min(len(buf), self._size - offset)
        if n <= 0:
            return 0
        if self._fast and self._fast_get(offset, buf[:n]):
            return n
        start = time.monotonic()
        resp = self._request("GET", {"Range": f"bytes={offset}-{offset + n - 1}"})
        import urllib3

        ok = False
        try:
            if resp.status != 206:
                if resp.status != 200 or offset != 0:
                    raise CurlError("Server does not support 'range' (byte ranges).")
            else:
                rng = resp.headers.get("Content-Range", "")
                if not rng.startswith(f"bytes {offset}-"):
                    raise CurlError(f"Server answered the range {offset}-{offset + n - 1} with '{rng}'")
            got = 0
            view = buf[:n]
            while got < n:
                try:
                    k = resp.readinto(view[got:])
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    raise CurlError(self._why(e, start)) from None
                if not k:
                    break
                got += k
            if got < n:
                raise CurlError(f"transfer closed with {n - got} bytes remaining to read")
            ok = resp.status == 206 and resp.length_remaining in (0, None)
            return n
        finally:
            if ok:
                resp.release_conn()
            else:
                resp.close()  # a body not read to its end: the connection cannot be reused

    def _idle_connection(self) -> Any:
        """A kept keep-alive connection, or None."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _connection(self) -> Any:
        """A kept keep-alive connection, or a new one (not yet connected)."""
        return self._idle_connection() or self._new_connection()

    def _new_connection(self) -> Any:
        import http.client

        timeout = self._seconds or None
        if self._scheme != "https":
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        if self._ssl_context is None:
            import ssl

            ctx = ssl.create_default_context()
            if not self._sslverify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl_context = ctx
        return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl_context)

    def _fast_head(self) -> int | None:
        """The length from a HEAD on the fast path, or None (urllib3 asks again)."""
        import http.client

        conn = self._connection()
        keep = False
        try:
            conn.putrequest("HEAD", self._path, skip_accept_encoding=True)
            for key, value in self._headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
            length = resp.getheader("Content-Length")
            ranges = any(k.lower() == "accept-ranges" and v.startswith("bytes") for k, v in resp.getheaders())
            if resp.status >= 400:
                # libcurl's answer to it, whatever urllib3 would make of the URL (it re-encodes)
                raise CurlError(f"The requested URL returned error: {resp.status}")
            if resp.status != 200 or length is None or not length.isdigit() or not ranges:
                return None
            keep = not resp.will_close
            return int(length)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            self._release(conn, keep)

    def _release(self, conn: Any, keep: bool) -> None:
        """A pooled connection back to the pool (``keep``: its answer was read whole and the
        server keeps it open), or closed."""
        if keep:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def _fast_get(self, offset: int, view: memoryview) -> bool:
        """``view`` filled from ``offset`` with one GET on a pooled connection: True; False when
        anything was not as expected (the caller asks again through urllib3)."""
        import http.client

        n = len(view)
        conn = self._idle_connection()
        kept = conn is not None
        conn = conn or self._new_connection()
        keep = False
        try:
            try:
                resp = self._send_get(conn, offset, n)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not kept:
                    return False
                # a kept connection the server closed meanwhile (its keep-alive timeout): once
                # more on a new one, before anything else
                conn.close()
                conn = self._new_connection()
                resp = self._send_get(conn, offset, n)
            if resp.status != 206 or resp.length != n or \
                    not (resp.getheader("Content-Range") or "").startswith(f"bytes {offset}-"):
                return False
            got = 0
            while got < n:
                k = resp.readinto(view[got:])
                if not k:
                    return False
                got += k
            keep = not resp.will_close and resp.isclosed()
            return True
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            self._release(conn, keep)

    def _send_get(self, conn: Any, offset: int, n: int) -> Any:
        conn.putrequest("GET", self._path, skip_accept_encoding=True)
        for key, value in self._headers.items():
            conn.putheader(key, value)
        conn.putheader("Range", f"bytes={offset}-{offset + n - 1}")
        conn.endheaders()
        return conn.getresponse()

    def _read_error(self, e: CurlError) -> OSError:
        from qimg import api

        api.report(f"curl: {e}")
        return OSError(errno.EIO, os.strerror(errno.EIO))

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        # QEMU's curl_refresh_filename: options that change what is reached hide the URL
        if not self._sslverify or any(k != "sslverify" for k in self.given):
            return None
        return self.url

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": self.protocol_name, "url": self.url}
        out.update(self.given)
        return out

    # -- I/O ---------------------------------------------------------------------------------
    def size(self) -> int:
        return self._size

    def preadinto(self, offset: int, buf: memoryview) -> int:
        length = len(buf)
        if offset >= self._size or not length:
            return 0
        n = min(length, self._size - offset)
        with self._lock:
            for start, data in reversed(self._cache):
                if start <= offset and offset + n <= start + len(data):
                    buf[:n] = memoryview(data)[offset - start:offset - start + n]
                    return n
        try:
            if n >= self.readahead:
                return self._get(offset, buf)
            want = min(n + self.readahead, self._size - offset)
            data = bytearray(want)
            self._get(offset, memoryview(data))
        except CurlError as e:
            raise self._read_error(e) from None
        buf[:n] = memoryview(data)[:n]
        with self._lock:
            self._cache.append((offset, bytes(data)))
            del self._cache[:-CACHED]
        return n

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self._size - offset)))
        n = self.preadinto(offset, memoryview(buf))
        return bytes(buf[:n])

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise with_errno(QimgError("curl driver does not support writes"), errno.EACCES)

    def truncate(self, size: int) -> None:
        raise QimgError("Image format driver does not support resize")

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.clear()
        for conn in getattr(self, "_idle", ()):
            conn.close()
        self._idle = []
        self._cache = []


class HttpsProtocol(HttpProtocol):
    protocol_name = "https"


#: bytes libcurl 7.88 refuses in a host name (hostname_check), besides controls and space
_HOST_JUNK = frozenset("/:#?!@{}[]\\$'\"^`*<>=;,+&()%")


def _pct_decode(text: str) -> str | None:
    from qimg.uri import unescape

    return unescape(text)


def curl_url(url: str) -> tuple[str, str | None, str | None, str, int, str] | None:
    """``scheme://[user[:password]@]host[:port][/path][?query][#fragment]`` as libcurl 7.88
    reads it (urlapi's parseurl): (scheme, user, password, host, port, request target), the
    user and password percent-decoded, an IPv6 literal without its brackets, the path and query
    as written; None for a URL it refuses (CURLE_URL_MALFORMAT): a space or control byte
    anywhere, more than three slashes, an empty or malformed host, a port that is not a
    number up to 65535 (an empty one is the scheme's)."""
    import socket

    if any(c <= " " or c == "\x7f" for c in url):
        return None
    scheme, _, rest = url.partition("://")
    if rest.startswith("/"):
        rest = rest[1:]  # a third slash is taken
        if rest.startswith("/"):
            return None
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    user = password = None
    if "@" in authority:
        login, _, authority = authority.partition("@")
        name, colon, secret = login.partition(":")
        user, password = _pct_decode(name), _pct_decode(secret) if colon else None
        if user is None or (colon and password is None):
            return None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        inner, after = authority[1:close], authority[close + 1:]
        host, _, zone = inner.partition("%25")
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except (OSError, ValueError):
            return None
        if after and not after.startswith(":"):
            return None
        port_text = after[1:]
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            host, port_text = authority, ""
        decoded = _pct_decode(host)
        if decoded is None or any(c in _HOST_JUNK or c <= " " for c in decoded):
            return None
        host = decoded
    if not host:
        return None
    default = 443 if scheme == "https" else 80
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = default
    target = tail.partition("#")[0]
    if target.startswith("?"):
        target = "/" + target
    return scheme, user, password, host, port, target or "/"


def _closed_unanswered(err: BaseException | None) -> bool:
    """Whether a request failed because its connection was closed before any answer (urllib3
    wraps that in ProtocolError or ProxyError: "Connection aborted", RemoteDisconnected...)."""
    import http.client

    for arg in getattr(err, "args", ()):
        if isinstance(arg, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            return True
    return False


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy libcurl would use for a URL, from the environment (``http_proxy`` (lower case
    only), ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), or None."""
    env = os.environ
    if scheme == "http":
        proxy = env.get("http_proxy")
    else:
        proxy = env.get("https_proxy") or env.get("HTTPS_PROXY")
    proxy = proxy or env.get("all_proxy") or env.get("ALL_PROXY")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    for entry in no_proxy.split(","):
        entry = entry.strip().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return proxy if "://" in proxy else "http://" + proxy
