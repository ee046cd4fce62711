"""NBD names and options as QEMU's nbd driver reads them.

Names: ``nbd://host[:port]/export`` (``nbd+tcp://`` the same), ``nbd+unix:///export?socket=PATH``,
the legacy ``nbd:host:port[:exportname=X]`` and ``nbd:unix:PATH[:exportname=X]``. Options:
``server.type=inet|unix`` with ``server.host``/``server.port`` or ``server.path``, ``export``,
and the legacy ``host``/``port``/``path``. Everything becomes one server address and an
export name, with QEMU's messages for what is wrong.
"""
from __future__ import annotations

from qimg.errors import QimgError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_PORT = 10809
#: NBD_MAX_STRING_SIZE: the longest export name a client may send
MAX_STRING = 4096
_URL_ERROR = "No valid URL specified"
_SCHEMES = {"nbd": False, "nbd+tcp": False, "nbd+unix": True}


def _unescape(text: str) -> str:
    """RFC 3986 percent-decoding; a broken escape makes the URL invalid (as QEMU's parser)."""
    if "%" not in text:
        return text
    out = bytearray()
    raw = text.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or not all(ch in b"0123456789abcdefABCDEF" for ch in pair):
                raise QimgError(_URL_ERROR)
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_url(name: str) -> dict[str, Any]:
    """``nbd[+tcp|+unix]://...`` as options (QEMU's ``nbd_parse_uri``)."""
    scheme, sep, rest = name.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise QimgError(_URL_ERROR)
    is_unix = _SCHEMES[scheme]
    rest = rest.partition("#")[0]
    rest, qsep, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    path = slash + path
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise QimgError(_URL_ERROR)
        host, after = authority[1:close], authority[close + 1:]
        if after and not after.startswith(":"):
            raise QimgError(_URL_ERROR)
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = authority.partition(":")
        if not colon:
            port_text = None
        host = _unescape(host)
    port = None
    if port_text is not None and port_text != "":
        if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
            raise QimgError(_URL_ERROR)
        port = int(port_text)
    opts: dict[str, Any] = {}
    export = _unescape(path)
    if export.startswith("/"):
        export = export[1:]
    if export:
        opts["export"] = export
    params: list[tuple[str, str]] = []
    if qsep and query:
        for part in query.split("&"):
            if not part:
                continue
            key, _, value = part.partition("=")
            params.append((_unescape(key), _unescape(value)))
    if len(params) > 1 or (is_unix and not params) or (not is_unix and params):
        raise QimgError(_URL_ERROR)
    if is_unix:
        if host or port is not None or params[0][0] != "socket":
            raise QimgError(_URL_ERROR)
        opts["server.type"] = "unix"
        opts["server.path"] = params[0][1]
    else:
        if not host:
            raise QimgError(_URL_ERROR)
        opts["server.type"] = "inet"
        opts["server.host"] = host
        opts["server.port"] = str(port or DEFAULT_PORT)
    return opts


def inet_parse(spec: str) -> tuple[str, str]:
    """QEMU's ``inet_parse`` for ``host:port`` / ``[v6]:port`` / ``:port`` (options after a
    comma are dropped; sizes as its sscanf buffers)."""
    if spec.startswith(":"):
        port = spec[1:].split(",", 1)[0][:32]
        if not port:
            raise QimgError(f"error parsing port in address '{spec}'")
        return "", port
    if spec.startswith("["):
        close = spec.find("]")
        host = spec[1:close] if close > 0 else ""
        if close <= 1 or len(host) > 64 or spec[close + 1:close + 2] != ":" or not spec[close + 2:].split(",", 1)[0]:
            raise QimgError(f"error parsing IPv6 address '{spec}'")
        return host, spec[close + 2:].split(",", 1)[0][:32]
    host, colon, port = spec.partition(":")
    port = port.split(",", 1)[0]
    if not host or not colon or not port or len(host) > 64:
        raise QimgError(f"error parsing address '{spec}'")
    return host, port[:32]


def parse_filename(name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Any NBD name as options (QEMU's ``nbd_parse_filename``)."""
    for key in given or {}:
        if key in ("host", "port", "path", "export") or key.startswith("server."):
            raise QimgError(f"Option '{key}' cannot be used with a file name")
    if "://" in name:
        return parse_url(name)
    opts: dict[str, Any] = {}
    marker = ":exportname="
    at = name.find(marker)
    if at >= 0:
        if not name[at + len(marker):]:
            return opts
        opts["export"] = name[at + len(marker):]
        name = name[:at]
    if not name.startswith("nbd:"):
        raise QimgError("File name string for NBD must start with 'nbd:'")
    spec = name[4:]
    if not spec:
        return opts
    if spec.startswith("unix:"):
        opts["server.type"] = "unix"
        opts["server.path"] = spec[5:]
    else:
        host, port = inet_parse(spec)
        opts.update({"server.type": "inet", "server.host": host, "server.port": port})
    return opts


class Server:
    """Where the NBD server listens: ``kind`` "inet" (host, port) or "unix" (path)."""

    __slots__ = ("kind", "host", "port", "path")

    def __init__(self, kind: str, host: str = "", port: str = "", path: str = "") -> None:
        self.kind, self.host, self.port, self.path = kind, host, port, path

    def __str__(self) -> str:
        return self.path if self.kind == "unix" else f"{self.host}:{self.port}"


def server_from_options(opts: dict[str, Any]) -> Server:
    """The server address from open options, consuming them: the legacy ``host``/``port``/
    ``path`` first (QEMU's ``nbd_process_legacy_socket_options``), then ``server.*``."""
    path, host, port = opts.pop("path", None), opts.pop("host", None), opts.pop("port", None)
    if path is not None or host is not None or port is not None:
        if any(k.startswith("server.") for k in opts):
            raise QimgError("Cannot use 'server' and path/host/port at the same time")
        if path is not None and host is not None:
            raise QimgError("path and host may not be used at the same time")
        if path is not None:
            if port is not None:
                raise QimgError("port may not be used without host")
            opts["server.type"], opts["server.path"] = "unix", path
        elif host is not None:
            opts["server.type"], opts["server.host"] = "inet", host
            opts["server.port"] = port if port is not None else str(DEFAULT_PORT)
    addr = {k[7:]: opts.pop(k) for k in [k for k in opts if k.startswith("server.")]}
    if not addr:
        raise QimgError("NBD server address missing")
    kind = addr.pop("type", None)
    if kind is None:
        raise QimgError("Parameter 'type' is missing")
    kind = str(kind)
    if kind == "inet":
        wanted = ("host", "port")
        allowed = {"host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp"}
    elif kind == "unix":
        wanted = ("path",)
        allowed = {"path", "abstract", "tight"}
    elif kind in ("fd", "vsock"):
        raise QimgError(f"NBD servers of type '{kind}' are not supported by qimg (inet and unix are)")
    else:
        raise QimgError(f"Parameter 'type' does not accept value '{kind}'")
    for key in addr:
        if key not in allowed:
            raise QimgError(f"Parameter '{key}' is unexpected")
    for key in wanted:
        if addr.get(key) is None:
            raise QimgError(f"Parameter '{key}' is missing")
    extra = [k for k in addr if k not in wanted]
    if extra:
        raise QimgError(f"NBD server option '{extra[0]}' is not supported by qimg")
    if kind == "unix":
        return Server("unix", path=str(addr["path"]))
    return Server("inet", host=str(addr["host"]), port=str(addr["port"]))


def exact_filename(server: Server, export: str | None) -> str:
    """The name QEMU gives an NBD node (``nbd_refresh_filename``): one spelling for every way
    of naming it; the export is not escaped."""
    if server.kind == "unix":
        return f"nbd+unix:///{export}?socket={server.path}" if export is not None else \
            f"nbd+unix://?socket={server.path}"
    if export is not None:
        return f"nbd://{server.host}:{server.port}/{export}"
    return f"nbd://{server.host}:{server.port}"
