"""The VMDK text descriptor: parse and build (``# Disk DescriptorFile`` ... ``#DDB``)."""
from __future__ import annotations

import re

from qimg.errors import QimgError
from qimg.values import Value

EXTENT_TYPES = ("FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW")
ACCESS = ("RW", "RDONLY", "NOACCESS")
CREATE_TYPES = ("monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
                "twoGbMaxExtentFlat", "vmfs", "vmfsSparse", "vmfsRaw", "vmfsRDM", "vmfsPassthroughRawDeviceMap",
                "fullDevice", "partitionedDevice", "custom")
#: types whose extents qimg reads (the device/raw-map ones need host devices)
SUPPORTED_CREATE_TYPES = ("monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
                          "twoGbMaxExtentFlat", "vmfs", "vmfsSparse", "custom")
MAX_EXTENTS = 65536

_EXTENT_RE = re.compile(r'^(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KV_RE = re.compile(r'^([A-Za-z0-9_.]+)\s*=\s*(.*?)\s*$')


class ExtentLine(Value):
    """One extent line: access, size in sectors, type, file name, offset (sectors into the
    file, FLAT)."""

    __slots__ = _fields = ("access", "sectors", "type", "filename", "offset")

    def __init__(self, access: str, sectors: int, type: str, filename: str | None,  # noqa: A002
                 offset: int) -> None:
        self.access = access
        self.sectors = sectors
        self.type = type
        self.filename = filename
        self.offset = offset


class Descriptor(Value):
    """A parsed descriptor: its text, ``key=value`` entries and extent lines."""

    __slots__ = _fields = ("text", "values", "extents")

    def __init__(self, text: str, values: dict[str, str] | None = None,
                 extents: list[ExtentLine] | None = None) -> None:
        self.text = text
        self.values: dict[str, str] = {} if values is None else values
        self.extents: list[ExtentLine] = [] if extents is None else extents

    @property
    def create_type(self) -> str | None:
        return self.values.get("createType")

    def _hex(self, key: str) -> int:
        try:
            return int(self.values.get(key, "ffffffff"), 16) & 0xFFFFFFFF
        except ValueError:
            return 0xFFFFFFFF

    @property
    def cid(self) -> int:
        return self._hex("CID")

    @property
    def parent_cid(self) -> int:
        return self._hex("parentCID")

    @property
    def parent_hint(self) -> str | None:
        return self.values.get("parentFileNameHint") or None


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def parse(raw: bytes) -> Descriptor:
    """Parse descriptor bytes (NUL padding ends the text); QEMU's messages on bad input."""
    raw = raw.split(b"\0", 1)[0]
    text = raw.decode("utf-8", errors="replace")
    desc = Descriptor(text)
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        head = s.split(None, 1)[0]
        if head in ACCESS:
            m = _EXTENT_RE.match(s)
            if not m or m.group(3) not in EXTENT_TYPES:
                raise QimgError(f"Invalid extent line: {line}")
            typ = m.group(3)
            if typ != "ZERO" and m.group(4) is None:
                raise QimgError(f"Invalid extent line: {line}")
            if len(desc.extents) >= MAX_EXTENTS:
                raise QimgError("Too many extents in the descriptor")
            desc.extents.append(ExtentLine(head, int(m.group(2)), typ, m.group(4), int(m.group(5) or 0)))
            continue
        m = _KV_RE.match(s)
        if m:
            desc.values.setdefault(m.group(1), _unquote(m.group(2)))
    if "createType" not in desc.values:
        raise QimgError("invalid VMDK image descriptor")
    return desc


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
