"""URIs as QEMU's protocol drivers read them (``ssh://user@host:port/path?query``): QEMU 7.2's
own RFC 3986 parser (util/uri.c: only RFC 3986's characters, a port of digits up to 65535, an
IPv6 literal kept with its brackets, ``query_params_parse`` splitting at '&', or at ';' when
there is no '&') or, with the ``glib-uri`` difference (10.0), GLib's ``g_uri_parse`` (other
bytes taken as they are, an empty port as none, brackets removed, parameters split at '&'). :func:`parse` gives None where the parser fails; the driver words that failure.
"""
from __future__ import annotations

import socket

from . import compat

#: the characters RFC 3986 allows in a URI (QEMU 7.2's parser refuses any other; GLib takes them)
URI_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%")


class URI:
    """A parsed URI: ``scheme``, ``user`` (the whole user information, unescaped), ``host``
    (unescaped; 7.2 keeps an IPv6 literal's brackets), ``port`` (0 when absent), ``path``
    (unescaped), ``query`` (as written; None without '?'), ``fragment``."""

    __slots__ = ("scheme", "user", "host", "port", "path", "query", "fragment")

    def __init__(self, scheme: str, user: str | None, host: str | None, port: int, path: str, query: str | None,
                 fragment: str | None) -> None:
        self.scheme, self.user, self.host, self.port = scheme, user, host, port
        self.path, self.query, self.fragment = path, query, fragment


def unescape(text: str) -> str | None:
    """Percent-decoding; None for a broken escape."""
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
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


def is_ip(text: str, family: int) -> bool:
    """Whether ``text`` is an address of ``family`` (AF_INET, AF_INET6) as inet_pton reads it."""
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


def parse(text: str) -> URI | None:
    """``scheme://[user@]host[:port]/path[?query][#fragment]`` as the running profile's QEMU
    parses it, or None."""
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not (scheme[0].isascii() and scheme[0].isalpha()):
        return None
    glib = compat.has("glib-uri")
    if not rest.startswith("//"):  # no authority ("ssh:/path"): no host
        if not glib and not URI_CHARS.issuperset(rest):
            return None
        rest, _, fragment = rest.partition("#")
        path, qsep, query = rest.partition("?")
        upath = unescape(path)
        if upath is None:
            return None
        return URI(scheme, None, None, 0, upath, query if qsep else None, fragment)
    rest = rest[2:]
    if not glib and not URI_CHARS.issuperset(rest):
        return None
    rest, _, fragment = rest.partition("#")
    if not glib and ("#" in fragment or "[" in fragment or "]" in fragment):
        return None
    rest, qsep, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    path = slash + path
    if not glib and ("[" in path or "]" in path or "[" in query or "]" in query):
        return None
    user = None
    if "@" in authority:
        at = authority.find("@")
        userinfo, authority = authority[:at], authority[at + 1:]
        if not userinfo and not glib:
            # 7.2 unescapes an empty user information with its length 0, which its
            # uri_string_unescape reads as "to the end": the user is the rest of the URI
            userinfo = text[len(scheme) + 3:]
        user = unescape(userinfo)
        if user is None or ("@" in authority and not glib):  # 7.2: a host has no '@' (GLib takes it)
            return None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        inner, after = authority[1:close], authority[close + 1:]
        if after and not after.startswith(":"):
            return None
        port_text = after[1:] if after else None
        if glib:
            host = unescape(inner)
            if host is None or not is_ip(host.partition("%")[0], socket.AF_INET6):
                return None  # GLib takes IPv6 addresses (and a zone) only
        else:
            host = "[" + inner + "]"
    else:
        host, colon, port_text = authority.partition(":")
        if not colon:
            port_text = None
        escaped = "%" in host
        host = unescape(host)
        if host is None:
            return None
        if glib and escaped and (is_ip(host, socket.AF_INET) or is_ip(host, socket.AF_INET6)):
            return None  # GLib: an IP address may not be percent-encoded
    port = 0
    if port_text is not None:
        if port_text == "" and not glib:
            return None  # 7.2: a ':' needs digits after it
        if port_text:
            if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
                return None
            port = int(port_text)
    upath = unescape(remove_dot_segments(path) if glib else path)
    if upath is None:
        return None
    return URI(scheme, user, host or None, port, upath, query if qsep else None, fragment)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 (GLib applies it to a parsed URI's path; QEMU 7.2's parser does not)."""
    out: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if out:
                out.pop()
        elif path == "/..":
            path = "/"
            if out:
                out.pop()
        elif path in (".", ".."):
            path = ""
        else:
            cut = path.find("/", 1)
            cut = len(path) if cut < 0 else cut
            out.append(path[:cut])
            path = path[cut:]
    return "".join(out)


def query_params(query: str | None) -> list[tuple[str, str]] | None:
    """The query's parameters, every piece in order (repeated names too), unescaped; None
    when the query is invalid. 7.2's ``query_params_parse``: pieces end at the next '&' (at
    the next ';' when no '&' is left), empty pieces and "=value" are skipped, a piece without
    '=' is a name with an empty value. GLib (10.0): pieces end at '&', each needs an '=' (an
    empty last one aside)."""
    params: list[tuple[str, str]] = []
    if not query:
        return params
    if compat.has("glib-uri"):
        parts = query.split("&")
        if parts[-1] == "":
            parts.pop()  # GLib: a '&' at the end ends the query
        for part in parts:
            key, eq, value = part.partition("=")
            k, v = unescape(key), unescape(value)
            if not eq or k is None or v is None:
                return None
            params.append((k, v))
        return params
    while query:
        end = query.find("&")
        if end < 0:
            end = query.find(";")
        if end < 0:
            end = len(query)
        part = query[:end]
        if part and not (part[0] == "=" and len(part) > 1):
            key, _, value = part.partition("=")
            k, v = unescape(key), unescape(value)
            if k is None or v is None:
                return None
            params.append((k, v))
        query = query[end + 1:]
    return params
