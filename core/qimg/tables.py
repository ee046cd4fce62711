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


# -- runs in host-order 64-bit tables, found with whole-range C operations ----------------------
_ORDER = sys.byteorder
_U64 = (1 << 64) - 1
#: (k, step) -> (1, 1, ... and 0, step, 2*step, ...) as integers laid out like k host-order u64s
_SERIES: dict[tuple[int, int], tuple[int, int]] = {}


def _series(k: int, step: int) -> tuple[int, int]:
    got = _SERIES.get((k, step))
    if got is None:
        if len(_SERIES) >= 256:
            _SERIES.clear()
        ones = int.from_bytes(array("Q", [1]).tobytes() * k, _ORDER)
        ramp = int.from_bytes(array("Q", range(0, k * step, step)).tobytes(), _ORDER) if step else 0
        got = _SERIES[(k, step)] = (ones, ramp)
    return got


def _first_diff(d: int, k: int) -> int:
    """Index of the first nonzero u64 of the k-entry integer ``d`` (laid out as _series)."""
    if _ORDER == "little":
        return ((d & -d).bit_length() - 1) >> 6
    return k - 1 - ((d.bit_length() - 1) >> 6)  # pragma: no cover - big-endian hosts


def zero_run(a: array, i: int, n: int, stride: int = 1) -> int:
    """Number of leading zero entries in a[i : i+n*stride : stride] (checked in C)."""
    if stride == 1:
        # growing chunks: cost follows the zero run found, not the (up to 32 MiB) table
        done, step = 0, 512
        mv = memoryview(a)
        while done < n:
            k = min(step, n - done)
            raw = bytes(mv[i + done : i + done + k].cast("B"))
            z = (len(raw) - len(raw.lstrip(b"\0"))) // 8
            done += z
            if z < k:
                return done
            step *= 2
        return done
    part = a[i : i + n * stride : stride]
    raw = part.tobytes()
    return (len(raw) - len(raw.lstrip(b"\0"))) // 8


def same_run(vals: array, e0: int, step: int, start: int = 0, count: int | None = None) -> int:
    """How many entries of the 64-bit table ``vals[start:start+count]`` from the first equal
    e0, e0+step, e0+2*step... (C operations over whole ranges, none per entry).

    A range of entries is read as one integer and compared with the expected series built the
    same way (e0 * 1,1,1... + 0,step,2*step...); the first mismatch is the lowest differing
    bit of their XOR. Ranges grow 64, 512, 4096... entries, so the cost follows the run found,
    not the (up to 8192-entry) table."""
    n = len(vals) - start if count is None else min(count, len(vals) - start)
    if n <= 0 or vals[start] != e0:
        return 0
    if step:
        n = min(n, (_U64 - e0) // step + 1)  # the series ends where it would leave 64 bits
    if n == 1:
        return 1
    mv = memoryview(vals)
    done, k = 0, 64
    while done < n:
        k = min(k, n - done)
        at = start + done
        have = int.from_bytes(mv[at : at + k], _ORDER)
        ones, ramp = _series(k, step)
        d = have ^ ((e0 + done * step) * ones + ramp)
        if d:
            return done + _first_diff(d, k)
        done += k
        k *= 8
    return done
