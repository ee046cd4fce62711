"""The VMDK text descriptor, read as QEMU reads it, and built as qemu-img writes it.

QEMU does not parse the descriptor as a grammar: it looks for ``createType``, ``CID``,
``parentCID`` and ``parentFileNameHint`` with ``strstr`` (the first occurrence anywhere, even
in a comment), and reads extent lines with one ``sscanf`` per line start. What it accepts and
what it refuses ("Invalid extent line", "invalid VMDK image descriptor") follow from that, so
the functions below reproduce those C semantics on the bytes (a NUL ends the text), including
the lines QEMU skips: anything not starting with ``RW``, ZERO extents, sizes of 0 or less.
"""
from __future__ import annotations

import re

from qimg.errors import QimgError

#: extent types QEMU opens (others on an RW line are skipped)
EXTENT_TYPES = ("FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE")
#: createType values QEMU opens in a descriptor file (a sparse file sets its own)
DESC_CREATE_TYPES = ("monolithicFlat", "vmfs", "vmfsSparse", "seSparse", "twoGbMaxExtentSparse",
                     "twoGbMaxExtentFlat")
MAX_EXTENTS = 65536
#: DESC_SIZE: the bytes QEMU reads for CID, parentCID and parentFileNameHint
DESC_SIZE = 20 * 512

_SPACE = b" \t\n\v\f\r"
_INT64_MAX = 2**63 - 1


class ExtentLine:
    """One extent line as QEMU's sscanf read it: access, sectors, type, file name, offset (in
    sectors, FLAT; -1 when absent) and the line's text (for the error message)."""

    __slots__ = ("access", "sectors", "type", "filename", "offset", "text")

    def __init__(self, access: str, sectors: int, type: str, filename: str, offset: int,  # noqa: A002
                 text: str) -> None:
        self.access = access
        self.sectors = sectors
        self.type = type
        self.filename = filename
        self.offset = offset
        self.text = text


def c_string(raw: bytes) -> bytes:
    """The bytes up to the first NUL (a C string)."""
    return raw.split(b"\0", 1)[0]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _skip_space(s: bytes, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    return i


def _scan_word(s: bytes, i: int, width: int) -> tuple[bytes | None, int]:
    """``%<width>s``: skip white space, then up to ``width`` non-space bytes (None at the end)."""
    i = _skip_space(s, i)
    j = i
    while j < len(s) and j - i < width and s[j] not in _SPACE:
        j += 1
    return (s[i:j] if j > i else None), j


def _scan_int(s: bytes, i: int, base: int = 10) -> tuple[int | None, int]:
    """``%lld`` / ``%x`` as glibc's scanf: white space, a sign, digits; out of range saturates."""
    i = _skip_space(s, i)
    j = i
    neg = False
    if j < len(s) and s[j] in b"+-":
        neg = s[j] == 0x2D
        j += 1
    if base == 16 and s[j:j + 2] in (b"0x", b"0X") and j + 2 < len(s) and chr(s[j + 2]) in "0123456789abcdefABCDEF":
        j += 2
    digits = "0123456789" if base == 10 else "0123456789abcdefABCDEF"
    k = j
    while k < len(s) and chr(s[k]) in digits:
        k += 1
    if k == j:
        return None, k
    v = int(s[j:k], base)
    if base == 10:
        v = -v if neg else v
        v = max(-_INT64_MAX - 1, min(_INT64_MAX, v))
    else:  # strtoul into a uint32: saturate at ULONG_MAX, negate modulo, then truncate
        v = min(v, 2**64 - 1)
        if neg:
            v = (-v) % 2**64
        v &= 0xFFFFFFFF
    return v, k


def scan_extent(s: bytes, i: int) -> tuple[int, list]:
    """``sscanf(p, "%10s %lld %10s \\"%511[^\\n\\r\\"]\\" %lld", ...)`` at ``s[i:]``: the count of
    conversions and the values (access, sectors, type, name, offset)."""
    vals: list = []
    access, i = _scan_word(s, i, 10)
    if access is None:
        return -1, vals
    vals.append(_text(access))
    sectors, i = _scan_int(s, i)
    if sectors is None:
        return 1, vals
    vals.append(sectors)
    typ, i = _scan_word(s, i, 10)
    if typ is None:
        return 2, vals
    vals.append(_text(typ))
    i = _skip_space(s, i)
    if i >= len(s) or s[i] != 0x22:
        return 3, vals
    i += 1
    j = i
    while j < len(s) and j - i < 511 and s[j] not in b"\n\r\"":
        j += 1
    if j == i:
        return 3, vals
    vals.append(_text(s[i:j]))
    if j >= len(s) or s[j] != 0x22:
        return 4, vals
    offset, _ = _scan_int(s, j + 1)
    if offset is None:
        return 4, vals
    vals.append(offset)
    return 5, vals


def extent_lines(desc: bytes) -> list[ExtentLine]:
    """QEMU's vmdk_parse_extents over descriptor bytes: the extent lines it opens, in order;
    ``Invalid extent line: ...`` for the lines it refuses."""
    desc = c_string(desc)
    out: list[ExtentLine] = []
    p = 0
    n = len(desc)
    while p < n:
        nl = desc.find(b"\n", p)
        nxt = n if nl < 0 else nl + 1
        matches, vals = scan_extent(desc, p)
        if matches >= 4 and vals[0] == "RW":
            typ = vals[2]
            offset = vals[4] if matches == 5 else -1
            if typ == "FLAT":
                invalid = matches != 5 or offset < 0
            elif typ == "VMFS":
                invalid = matches != 4
                offset = 0
            else:
                invalid = matches != 4
            if invalid:
                line = desc[p:nl if nl >= 0 else n]
                raise QimgError(f"Invalid extent line: {_text(line)}")
            if vals[1] > 0 and typ in EXTENT_TYPES:
                if len(out) >= MAX_EXTENTS:
                    raise QimgError("Too many extents in the descriptor")
                out.append(ExtentLine("RW", vals[1], typ, vals[3], offset, _text(desc[p:nxt])))
        p = nxt
    return out


def description(desc: bytes, name: str) -> str | None:
    """QEMU's vmdk_parse_description: the first ``name`` anywhere, two bytes skipped (``="``),
    the value up to the next quote (None: not found, no quote, or 127 bytes and more)."""
    desc = c_string(desc)
    at = desc.find(name.encode())
    if at < 0:
        return None
    start = at + len(name) + 2
    if start >= len(desc):
        return None
    end = desc.find(b'"', start)
    if end < 0 or end - start + 1 > 128:
        return None
    return _text(desc[start:end])


def read_cid(area: bytes, parent: bool) -> int | None:
    """QEMU's vmdk_read_cid on the DESC_SIZE bytes at the descriptor: the first ``CID`` (or
    ``parentCID``) anywhere, the byte after it skipped, a hex number (None: missing)."""
    area = c_string(area[:DESC_SIZE - 1])
    key = b"parentCID" if parent else b"CID"
    at = area.find(key)
    if at < 0:
        return None
    v, _ = _scan_int(area, at + len(key) + 1, 16)
    return v


def parent_hint(area: bytes) -> str | None:
    """QEMU's vmdk_parent_open: the name after the first ``parentFileNameHint`` (two bytes
    skipped) up to the next quote; "" when empty. Raises EINVAL's error when it has no end."""
    area = c_string(area[:DESC_SIZE])
    at = area.find(b"parentFileNameHint")
    if at < 0:
        return None
    start = at + len("parentFileNameHint") + 2
    end = area.find(b'"', start)
    if end < 0 or end - start > 4095:
        raise QimgError("Invalid argument")
    return _text(area[start:end])


def rewrite_cid(desc: bytes, cid: int) -> bytes | None:
    """QEMU's vmdk_write_cid on the descriptor buffer (its length kept): ``CID`` gets the new
    value and a newline, followed by everything from the first ``parentCID`` on; None when
    there is no ``parentCID`` (QEMU's write then fails with EINVAL)."""
    size = len(desc)
    buf = bytearray(desc)
    buf[size - 1] = 0
    text = c_string(bytes(buf))
    at = text.find(b"parentCID")
    if at < 0:
        return None
    tail = text[at:]
    c = text.find(b"CID")
    if c >= 0:
        # snprintf at CID's value, then strcat of the saved tail; the bytes after the new end
        # keep what the buffer held
        new = (text[:c + 4] + f"{cid:x}\n".encode() + tail)[:size - 1]
        buf[:len(new)] = new
        if len(new) < size:
            buf[len(new)] = 0
    return bytes(buf)


def build(*, cid: int, parent_cid: int, create_type: str, parent_hint: str | None, extents: list[str],
          hw_version: str, cylinders: int, heads: int, adapter: str, tools_version: str) -> str:
    """The descriptor text qemu-img writes (same lines, same order)."""
    parent = f'parentFileNameHint="{parent_hint}"\n' if parent_hint else "\n"
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid:x}\n"
        f"parentCID={parent_cid:x}\n"
        f'createType="{create_type}"\n'
        f"{parent}"
        "# Extent description\n"
        + "".join(e + "\n" for e in extents)
        + "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.virtualHWVersion = "{hw_version}"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        'ddb.geometry.sectors = "63"\n'
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.toolsVersion = "{tools_version}"\n'
    )


def with_cid(text: str, cid: int) -> str:
    """The descriptor text with its ``CID=`` line replaced."""
    return re.sub(r"(?m)^CID=.*$", f"CID={cid:x}", text, count=1)
