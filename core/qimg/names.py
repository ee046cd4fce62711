"""Image names as QEMU reads them: protocol prefixes (``nbd://``, ``foo:bar``), ``json:{...}``
pseudo-filenames, ``--image-opts`` option strings, and the directory a relative backing
name is resolved against.

Everything here is parsing with QEMU's messages; :mod:`qimg.api` does the opening.
"""
from __future__ import annotations

import sys

from .errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: QEMU copies at most this much of a prefix into its protocol name buffer (char[128])
PROTOCOL_NAME_MAX = 127
#: QEMU's JSON parser refuses objects nested deeper than this
JSON_MAX_NESTING = 1024


def path_has_protocol(name: str) -> bool:
    """QEMU's ``path_has_protocol``: a ``:`` comes before any ``/`` (``foo:bar``, ``nbd://x``,
    ``:x``; not ``./image:top.qcow2``)."""
    for ch in name:
        if ch == ":":
            return True
        if ch == "/":
            return False
    return False


def protocol_prefix(name: str) -> str:
    """The protocol a name with :func:`path_has_protocol` selects (``nbd+unix`` for
    ``nbd+unix:///x``), truncated as QEMU's buffer truncates it."""
    return name.partition(":")[0][:PROTOCOL_NAME_MAX]


def is_host_device(name: str) -> bool:
    """QEMU asks the host device drivers first, so a device node whose name has a colon is
    opened as a file, not as a protocol (``/dev/disk/by-path/pci-0000:00:1f.2``)."""
    if not name.startswith("/dev/"):
        return False
    import os
    import stat

    try:
        mode = os.stat(name).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def _json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (checked before parsing: Python's parser and
    the flattening recurse, and a hostile name must not reach the recursion limit)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth -= 1
    return deepest


def _standard_json(text: str) -> tuple[str, list[int] | None]:
    """QEMU's JSON dialect as standard JSON: its lexer takes strings in single quotes too
    (``{'driver': 'file'}``, iotests write them so) and ``\\'`` in either kind of string.
    Returns the text for Python's parser and, when it changed, the position in ``text`` of each
    of its characters (for error messages); ``None`` when it is the same."""
    if "'" not in text:
        return text, None
    out: list[str] = []
    where: list[int] = []
    quote = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if not quote:
            if ch in "\"'":
                quote = ch
                ch = '"'
        elif ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "'":
                out.append("'")
                where.append(i)
            else:
                out.append(ch + nxt)
                where.extend((i, i + 1))
            i += 2
            continue
        elif ch == quote:
            quote = ""
            ch = '"'
        elif ch == '"':  # a double quote inside single quotes
            out.append('\\"')
            where.extend((i, i))
            i += 1
            continue
        out.append(ch)
        where.append(i)
        i += 1
    return "".join(out), where


def parse_json_name(name: str) -> tuple[str, dict[str, Any]]:
    """A ``json:{...}`` name as an ``--image-opts`` option string (QEMU's messages, without
    the ``Could not open`` prefix, on errors), and its flattened values with their JSON types
    (``None`` for ``null``)."""
    import json

    text = name[5:]
    prefix = "Could not parse the JSON options: "
    if not text.strip():
        raise QimgError(prefix + "Expecting a JSON value")
    std, where = _standard_json(text)
    if _json_depth(std) > JSON_MAX_NESTING:
        raise QimgError(prefix + "JSON nesting depth limit exceeded")  # QEMU's parser limit
    # up to QEMU's 1024 levels: Python's parser and the flattening below recurse per level
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * JSON_MAX_NESTING))
    try:
        value = json.loads(std)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise QimgError(prefix + "Expecting at most one JSON value") from None
        pos = e.pos if where is None else (where[e.pos] if e.pos < len(where) else len(text))
        if e.msg.startswith("Unterminated string"):  # QEMU's lexer: the rest is one bad token
            raise QimgError(prefix + f"JSON parse error, stray '{text[pos:]}'") from None
        rest = text[pos:].lstrip()
        if not rest:
            raise QimgError(prefix + "JSON parse error, premature EOI") from None
        word = rest[: len(rest) - len(rest.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"))]
        if word:
            raise QimgError(prefix + f"JSON parse error, invalid keyword '{word}'") from None
        raise QimgError(prefix + "JSON parse error, expecting value") from None
    if not isinstance(value, dict):
        raise QimgError("Invalid JSON object given")
    return flatten_options(value)


def flatten_options(value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Nested options (``{"file": {"driver": "nbd", ...}}``) as an option string with dotted
    keys and ``,,`` escapes, and the flat dict of their typed values."""
    pairs: list[str] = []
    typed: dict[str, Any] = {}

    def walk(obj: Mapping[str, Any], path: str) -> None:
        for key, val in obj.items():
            if isinstance(val, dict) and val:
                walk(val, f"{path}{key}.")
            elif isinstance(val, list) and val:
                # QEMU's qdict_flatten: list items are numbered keys ("inject-error.0.event")
                walk({str(i): item for i, item in enumerate(val)}, f"{path}{key}.")
            elif val is None:
                typed[path + key] = None  # "backing": null
            else:
                if isinstance(val, int) and not isinstance(val, bool) and not -(1 << 63) <= val < 1 << 64:
                    val = float(val)  # QEMU's parser: an integer out of int64/uint64 is a double
                typed[path + key] = val
                if isinstance(val, bool):
                    text = "on" if val else "off"
                elif isinstance(val, float):
                    text = f"{val:.17g}" # QEMU's qnum_to_string of a double (1.0 is "1")
                else:
                    text = str(val)
                pairs.append(f"{path}{key}={text.replace(',', ',,')}")

    walk(value, "")
    return ",".join(pairs), typed


def options_text(options: Mapping[str, Any]) -> str:
    """How an options mapping is named in messages: ``key=value,...`` (nested dicts dotted)."""
    return flatten_options(options)[0]


def path_combine(base: str, name: str) -> str:
    """QEMU's ``path_combine``: ``name`` relative to the folder of ``base`` (which may carry a
    ``proto:`` prefix: ``http://h/a/b.qcow2`` + ``c`` = ``http://h/a/c``)."""
    if name.startswith("/"):
        return name
    colon = base.find(":") + 1 if path_has_protocol(base) else 0
    slash = base.rfind("/") + 1
    cut = max(colon, slash)
    return base[:cut] + name
