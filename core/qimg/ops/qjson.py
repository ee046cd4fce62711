"""JSON text exactly as QEMU prints it (``--output=json``).

QEMU builds a QDict (a hash table of 512 buckets, each a list with the newest entry first)
and walks it bucket by bucket, so keys come out in an order fixed by their hash, not by
insertion. We reproduce that: the bucket is the public "tdb" string hash modulo 512, and
within a bucket the key inserted last comes first. Dicts must therefore be built in QEMU's
insertion order (the QAPI schema's field order) for colliding keys to match.

The pretty printer follows QEMU's JSON writer: four-space indentation, ``"key": value``,
empty containers as ``{`` newline ``}``, non-ASCII and control characters as ``\\uXXXX``.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


_BUCKETS = 512


def key_hash(key: str) -> int:
    data = key.encode("utf-8", "surrogateescape")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, c in enumerate(data):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % _BUCKETS


def qdict_order(keys: list[str]) -> list[str]:
    """Keys (in insertion order) in the order QEMU iterates a QDict holding them."""
    buckets: dict[int, list[str]] = {}
    for k in keys:
        buckets.setdefault(key_hash(k), []).insert(0, k)
    return [k for b in sorted(buckets) for k in buckets[b]]


def quote(text: str) -> str:
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= cp <= 0xDCFF:  # undecodable byte (surrogateescape): QEMU prints U+FFFD
            out.append("\\uFFFD")
        elif cp < 0x20 or cp >= 0x7F:
            if cp >= 0x10000:
                cp -= 0x10000
                out.append(f"\\u{0xD800 | (cp >> 10):04X}\\u{0xDC00 | (cp & 0x3FF):04X}")
            else:
                out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def dumps(obj: Any, pretty: bool = True) -> str:
    """Serialise dicts (in QDict order), lists and scalars as QEMU's JSON writer."""
    parts: list[str] = []

    def nl(depth: int) -> None:
        parts.append("\n" + " " * (4 * depth) if pretty else " ")

    def emit(value: Any, depth: int) -> None:
        if isinstance(value, dict):
            parts.append("{")
            first = True
            for k in qdict_order(list(value)):
                if not first:
                    parts.append(",")
                nl(depth + 1) if (pretty or not first) else None
                first = False
                parts.append(quote(k) + ": ")
                emit(value[k], depth + 1)
            if pretty:
                nl(depth)
            parts.append("}")
        elif isinstance(value, (list, tuple)):
            parts.append("[")
            first = True
            for item in value:
                if not first:
                    parts.append(",")
                nl(depth + 1) if (pretty or not first) else None
                first = False
                emit(item, depth + 1)
            if pretty:
                nl(depth)
            parts.append("]")
        else:
            parts.append(_scalar(value))

    emit(obj, 0)
    return "".join(parts)
