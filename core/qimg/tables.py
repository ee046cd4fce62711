"""On-disk tables (L1/L2, refcounts, BAT, block maps, grain tables) as ``array``s.

Formats store table entries big- or little-endian; these convert whole tables at C speed
(one ``frombytes`` and at most one ``byteswap``), so no driver walks table bytes in Python.
"""
from __future__ import annotations

import sys
from array import array

TYPE_CHECKING = False  # re only when a pattern is first used
if TYPE_CHECKING:
    import re

_LITTLE = sys.byteorder == "little"


def unpack_table(data: bytes | bytearray | memoryview, typecode: str, big_endian: bool) -> array:
    """Entries of ``data`` as an array of ``typecode`` ("I" 32-bit, "Q" 64-bit) in host order."""
    a = array(typecode)
    a.frombytes(data)
    if big_endian == _LITTLE:
        a.byteswap()
    return a


def pack_table(a: array, big_endian: bool) -> bytes:
    """The on-disk bytes of a table held in host order (``a`` is left unchanged)."""
    if big_endian == _LITTLE:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def be64_table(data: bytes | bytearray | memoryview) -> array:
    return unpack_table(data, "Q", True)


def be64_bytes(a: array) -> bytes:
    return pack_table(a, True)


def le64_table(data: bytes | bytearray | memoryview) -> array:
    return unpack_table(data, "Q", False)


def le64_bytes(a: array) -> bytes:
    return pack_table(a, False)


def le32_table(data: bytes | bytearray | memoryview) -> array:
    return unpack_table(data, "I", False)


def le32_bytes(a: array) -> bytes:
    return pack_table(a, False)


class LazyPattern:
    """A bytes regular expression compiled on first use: drivers scan tables for runs with
    ``match``, and ``info`` (which scans none) does not pay for importing ``re``."""

    __slots__ = ("_source", "_compiled")

    def __init__(self, source: bytes) -> None:
        self._source = source
        self._compiled = None

    def match(self, data: bytes | memoryview, pos: int = 0, endpos: int = 2**63 - 1) -> re.Match[bytes] | None:
        pattern = self._compiled
        if pattern is None:
            import re

            pattern = self._compiled = re.compile(self._source)
        return pattern.match(data, pos, endpos)
