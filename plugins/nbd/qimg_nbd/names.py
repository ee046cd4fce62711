"""NBD names and options as QEMU's nbd driver reads them.

Names: ``nbd://host[:port]/export`` (``nbd+tcp://`` the same), ``nbd+unix:///export?socket=PATH``,
the legacy ``nbd:host:port[:exportname=X]`` and ``nbd:unix:PATH[:exportname=X]``. Options:
``server.type=inet|unix`` with ``server.host``/``server.port`` or ``server.path``, ``export``,
and the legacy ``host``/``port``/``path``. Everything becomes one server address and an
export name, with QEMU's messages for what is wrong.
"""
from __future__ import annotations

import socket

from qimg import api, compat, uri
from qimg.errors import QimgError
from qimg.options import qobject_text

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
    """RFC 3986 percent-decoding; a broken escape makes the URL invalid (as QEMU's parser).
    An escaped NUL: GLib (10.0) refuses it, 7.2's C strings end there."""
    if "%" not in text:
        return text
    out = uri.unescape(text)
    if out is None:
        raise QimgError(_URL_ERROR)
    if "\0" in out:
        if compat.has("glib-uri"):
            raise QimgError(_URL_ERROR)
        out = out[:out.index("\0")]
    return out


def _uri_params(query: str) -> list[tuple[str, str]]:
    """QEMU 7.2's ``query_params_parse``: pieces end at the next '&' (at the next ';' when no
    '&' is left); empty pieces and "=value" are skipped; a piece without '=' is a name with an
    empty value; every piece counts, repeated names too."""
    params = []
    while query:
        end = query.find("&")
        if end < 0:
            end = query.find(";")
        if end < 0:
            end = len(query)
        part = query[:end]
        if part and not (part[0] == "=" and len(part) > 1):  # "=value" is ignored (CGI.pm's rule)
            key, _, value = part.partition("=")
            params.append((_unescape(key), _unescape(value)))
        query = query[end + 1:]
    return params


def _glib_params(query: str) -> list[tuple[str, str]] | None:
    """GLib's ``g_uri_parse_params`` (separator '&'): every piece but an empty last one needs
    an '='; a repeated name keeps its last value; None when the query is invalid."""
    table: dict[str, str] = {}
    pos = 0
    while pos < len(query):
        end = query.find("&", pos)
        if end < 0:
            end = len(query)
        key, eq, value = query[pos:end].partition("=")
        if not eq:
            return None
        try:
            table[_unescape(key)] = _unescape(value)
        except QimgError:
            return None
        pos = end + 1
    return list(table.items())


def parse_url(name: str) -> dict[str, Any]:
    """``nbd[+tcp|+unix]://...`` as options (QEMU's ``nbd_parse_uri``)."""
    scheme, sep, rest = name.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise QimgError(_URL_ERROR)
    is_unix = _SCHEMES[scheme]
    glib = compat.has("glib-uri")
    if not glib and not uri.URI_CHARS.issuperset(rest):
        raise QimgError(_URL_ERROR)
    rest, _, fragment = rest.partition("#")
    if not glib and ("#" in fragment or "[" in fragment or "]" in fragment):
        raise QimgError(_URL_ERROR)
    rest, qsep, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    path = slash + path
    if not glib and ("[" in path or "]" in path or "[" in query or "]" in query):
        raise QimgError(_URL_ERROR)
    if "@" in authority:
        authority = authority.partition("@")[2]
        if "@" in authority and not glib:  # 7.2: a host has no '@' (GLib takes it)
            raise QimgError(_URL_ERROR)
    bracketed = authority.startswith("[")
    if bracketed:
        close = authority.find("]")
        if close < 0:
            raise QimgError(_URL_ERROR)
        host, after = _unescape(authority[1:close]), authority[close + 1:]
        if after and not after.startswith(":"):
            raise QimgError(_URL_ERROR)
        port_text = after[1:] if after else None
        if glib and not uri.is_ip(host.partition("%")[0], socket.AF_INET6):
            raise QimgError(_URL_ERROR)  # GLib takes IPv6 addresses (and a zone) only
    else:
        host, colon, port_text = authority.partition(":")
        if not colon:
            port_text = None
        escaped = "%" in host
        host = _unescape(host)
        if glib and escaped and (uri.is_ip(host, socket.AF_INET) or uri.is_ip(host, socket.AF_INET6)):
            raise QimgError(_URL_ERROR)  # GLib: an IP address may not be percent-encoded
    port = None
    if port_text == "" and not glib:
        raise QimgError(_URL_ERROR)  # 7.2's parser: a ':' needs digits after it
    if port_text is not None and port_text != "":
        if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
            raise QimgError(_URL_ERROR)
        port = int(port_text)
    opts: dict[str, Any] = {}
    if glib:
        from qimg.uri import remove_dot_segments

        path = remove_dot_segments(path)  # GLib's parse removes "." and ".." segments
    export = _unescape(path)
    if export.startswith("/"):
        export = export[1:]
    if export:
        opts["export"] = export
    params = _glib_params(query) if glib else _uri_params(query) if qsep else []
    if params is None or len(params) > 1 or (is_unix and not params and (qsep or not glib)) or \
            (not is_unix and params):
        raise QimgError(_URL_ERROR)
    if is_unix:
        if not qsep:
            # QEMU 10.0 looks the socket up in a table it never made (no query): GLib complains
            api.report("GLib: g_hash_table_lookup: assertion 'hash_table != NULL' failed")
            raise QimgError(_URL_ERROR)
        if host or port is not None or params[0][0] != "socket":
            raise QimgError(_URL_ERROR)
        opts["server.type"] = "unix"
        opts["server.path"] = params[0][1]
    else:
        if not host and not (bracketed and not glib):  # 7.2: "[]" is a host, the empty one
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
    """Where the NBD server listens: ``kind`` "inet" (host, port), "unix" (path), "vsock" (cid
    in ``host``, port) or "fd" (a connected socket's descriptor number in ``path``), with the
    socket options of QEMU's SocketAddress that change the connection: ``keep_alive``,
    ``abstract``, ``tight``; ``plain``: a URL can name it (no ``ipv4``, ``ipv6`` or ``to``)."""

    __slots__ = ("kind", "host", "port", "path", "keep_alive", "abstract", "tight", "plain")

    def __init__(self, kind: str, host: str = "", port: str = "", path: str = "", **opts: Any) -> None:
        self.kind, self.host, self.port, self.path = kind, host, port, path
        self.keep_alive = opts.get("keep_alive", False)
        self.abstract = opts.get("abstract", False)
        self.tight = opts.get("tight", True)
        self.plain = opts.get("plain", True)

    def __str__(self) -> str:
        return self.path if self.kind in ("unix", "fd") else f"{self.host}:{self.port}"


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
    for key in addr:  # a json: null where QEMU's visitor wants a string
        if addr[key] is None and "." not in key:
            raise QimgError(f"Internal error: parameter {key} invalid")
    kind = addr.pop("type", None)
    if kind is None:
        raise QimgError("Parameter 'type' is missing")
    kind = qobject_text(kind)
    if kind == "inet":
        wanted = ("host", "port")
        allowed = {"host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp"}
    elif kind == "unix":
        wanted = ("path",)
        allowed = {"path", "abstract", "tight"}
    elif kind == "vsock":
        wanted = ("cid", "port")
        allowed = {"cid", "port"}
    elif kind == "fd":
        wanted = ("str",)
        allowed = {"str"}
    else:
        raise QimgError(f"Parameter 'type' does not accept value '{kind}'")
    for key in addr:
        if "." in key:  # a json: list or object where a member is a string
            raise QimgError(f"Parameters '{key.partition('.')[0]}.*' are unexpected")
    for key in addr:
        if key not in allowed:
            raise QimgError(f"Parameter '{key}' is unexpected")
    for key in wanted:
        if addr.get(key) is None:
            raise QimgError(f"Parameter '{key}' is missing")
    if kind == "vsock":
        return Server("vsock", host=qobject_text(addr["cid"]), port=qobject_text(addr["port"]), plain=False)
    if kind == "fd":
        return Server("fd", path=qobject_text(addr["str"]), plain=False)
    flags = {k: _bool(k, addr[k]) for k in ("numeric", "ipv4", "ipv6", "keep-alive", "mptcp", "abstract", "tight")
             if k in addr}
    if kind == "unix":
        return Server("unix", path=qobject_text(addr["path"]), abstract=flags.get("abstract", False),
                      tight=flags.get("tight", True))
    if "to" in addr:
        _uint16("to", addr["to"])  # the last port to try: a listener's option, ignored by a connect
    ipv4, ipv6 = flags.get("ipv4"), flags.get("ipv6")
    if ipv4 is False and ipv6 is False:
        raise QimgError("Cannot disable IPv4 and IPv6 at same time")
    # qemu-img connects the same whatever ipv4, ipv6, numeric and mptcp say (observed with
    # 7.2 and 10.0: ipv6=on reaches 127.0.0.1, numeric=on resolves localhost): they only
    # change the node's name, as does ``to``
    return Server("inet", host=qobject_text(addr["host"]), port=qobject_text(addr["port"]), keep_alive=flags.get("keep-alive", False),
                  plain=ipv4 is None and ipv6 is None and "to" not in addr)


def _bool(key: str, value: Any) -> bool:
    """A boolean option as QEMU's visitors take it: JSON true/false or on/off (yes/no, true/false)."""
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    raise QimgError(f"Parameter '{key}' expects 'on' or 'off'")


def _uint16(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise QimgError(f"Parameter '{key}' expects integer")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip()
        try:
            n = int(text, 0) if text.lower().startswith(("0x", "-0x")) else int(text, 10)
        except ValueError:
            raise QimgError(f"Parameter '{key}' expects integer") from None
    if not 0 <= n <= 0xFFFF:
        raise QimgError(f"Parameter '{key}' expects uint16_t")
    return n


def exact_filename(server: Server, export: str | None) -> str | None:
    """The name QEMU gives an NBD node (``nbd_refresh_filename``): one spelling for every way
    of naming it; the export is not escaped."""
    if not server.plain:
        return None  # QEMU's nbd_refresh_filename: a json: name says the rest
    if server.kind == "unix":
        return f"nbd+unix:///{export}?socket={server.path}" if export is not None else \
            f"nbd+unix://?socket={server.path}"
    if export is not None:
        return f"nbd://{server.host}:{server.port}/{export}"
    return f"nbd://{server.host}:{server.port}"
