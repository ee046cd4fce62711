"""On-disk tables (L1/L2, refcounts, BAT, block maps, grain tables) as ``array``s.

Formats store table entries big- or little-endian; these convert whole tables at C speed
(one ``frombytes`` and at most one ``byteswap``), so no driver walks table bytes in Python.
"""
from __future__ import annotations

import sys
from array import array

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


def read_table(file, offset: int, count: int, typecode: str, big_endian: bool) -> array:
    """``count`` entries read from ``file`` (a Protocol) at ``offset`` straight into the array
    (one buffer, no copies); what lies past the end of the file reads as zeroes, as QEMU's."""
    a = array(typecode, bytes(array(typecode).itemsize)) * count
    if count:
        file.preadinto(offset, memoryview(a).cast("B"))
        if big_endian == _LITTLE:
            a.byteswap()
    return a


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


#: byte patterns of counters, by (shift, low bits): see _lanes_match
_PATTERNS: dict[tuple[int, int], bytes] = {}
#: longest range _lanes_match compares at once
_LANE_MAX = 8192


def _pattern(t: int, low: int) -> bytes:
    """Byte j of the result is byte 0 of (j >> t) for t >= 0, of (j << -t) | low for t < 0,
    for j from 0 to one period plus _LANE_MAX."""
    got = _PATTERNS.get((t, low))
    if got is None:
        if t >= 0:
            period = b"".join(bytes([v]) * (1 << t) for v in range(256))
        else:
            period = bytes(((x << -t) & 255) | low for x in range(1 << (8 + t)))
        got = period * (-(-_LANE_MAX // len(period)) + 1)
        _PATTERNS[(t, low)] = got
    return got


def _lanes_match(raw: bytes, e0: int, bits: int, k: int) -> bool:
    """Whether the k little-endian u64s in ``raw`` are e0, e0 + 2**bits, e0 + 2*2**bits...
    (none past 64 bits): each of the 8 byte lanes (raw[lane::8], one C slice) is compared with
    the bytes that lane must hold, sliced from a cached pattern; no arithmetic per entry."""
    c0 = e0 >> bits  # the counter that steps by one
    for lane in range(8):
        lo = 8 * lane
        if lo + 8 <= bits:  # below the step: constant
            want = bytes([(e0 >> lo) & 255]) * k
        elif lo >= bits:
            t = lo - bits
            first, last = c0 >> t, (c0 + k - 1) >> t
            if last - first <= 1:  # one change at most
                m = min(k, ((first + 1) << t) - c0)
                want = bytes([first & 255]) * m + bytes([(first + 1) & 255]) * (k - m)
            else:
                at = c0 & ((1 << (t + 8)) - 1)
                want = _pattern(t, 0)[at : at + k]
        else:  # the lane holding the step's bit
            sh = bits - lo
            at = c0 & ((1 << (8 - sh)) - 1)
            want = _pattern(-sh, (e0 >> lo) & ((1 << sh) - 1))[at : at + k]
        if raw[lane::8] != want:
            return False
    return True


def same_run(vals: array, e0: int, step: int, start: int = 0, count: int | None = None) -> int:
    """How many entries of the 64-bit table ``vals[start:start+count]`` from the first equal
    e0, e0+step, e0+2*step... (C operations over whole ranges, none per entry).

    With a power-of-two step (L2 tables: one cluster), a range is compared byte lane by byte
    lane with slices of cached patterns (_lanes_match); otherwise, and to locate the first
    mismatch, it is read as one integer and compared with the expected series built the same
    way (e0 * 1,1,1... + 0,step,2*step...): the first mismatch is the lowest differing bit of
    their XOR. Ranges grow 64, 512, 4096... entries, so the cost follows the run found,
    not the (up to 8192-entry) table."""
    n = len(vals) - start if count is None else min(count, len(vals) - start)
    if n <= 0 or vals[start] != e0:
        return 0
    if step:
        n = min(n, (_U64 - e0) // step + 1)  # the series ends where it would leave 64 bits
    if n == 1:
        return 1
    mv = memoryview(vals)
    lanes = _ORDER == "little" and step > 0 and step & (step - 1) == 0 and vals.itemsize == 8
    bits = step.bit_length() - 1
    # a range whose last entry fits the series is usually one run: compared whole at once
    done, k = 0, n if vals[start + n - 1] == e0 + (n - 1) * step else 64
    while done < n:
        k = min(k, n - done, _LANE_MAX)
        at = start + done
        if not step:
            if vals[at : at + k].tobytes() == array("Q", [e0]).tobytes() * k:
                done += k
                k *= 8
                continue
        elif lanes and _lanes_match(vals[at : at + k].tobytes(), e0 + done * step, bits, k):
            done += k
            k *= 8
            continue
        have = int.from_bytes(mv[at : at + k], _ORDER)
        ones, ramp = _series(k, step)
        d = have ^ ((e0 + done * step) * ones + ramp)
        if d:
            return done + _first_diff(d, k)
        done += k
        k *= 8
    return done


#: entries one comparison of equal_run covers at most
_UNIFORM_MAX = 1 << 20
#: (typecode, value) -> an array of such entries, grown to the longest range compared yet
#: (a small table never pays for a large one; a few values are ever asked)
_UNIFORMS: dict[tuple[str, int], array] = {}


def _uniform(typecode: str, value: int, k: int) -> array:
    """At least ``k`` entries of ``value``."""
    got = _UNIFORMS.get((typecode, value))
    if got is None or len(got) < k:
        if len(_UNIFORMS) >= 8:
            _UNIFORMS.clear()
        got = _UNIFORMS[(typecode, value)] = array(typecode, [value]) * max(k, 4096)
    return got


def equal_run(vals: array, start: int, value: int, count: int | None = None) -> int:
    """How many entries of ``vals[start:start+count]`` (any typecode) from the first equal
    ``value`` (a run of unallocated entries), compared in C a range at a time: ranges grow
    64, 512, 4096... entries and a mismatching one is halved down to the first other entry,
    so time follows the run and memory stays that of one range. (A regular expression over
    the table's bytes, ``(?:unit)*``, takes about 16 bytes of matcher state per entry: 1 GiB
    for a 64 MiB table.)"""
    n = len(vals) - start if count is None else min(count, len(vals) - start)
    if n <= 0 or vals[start] != value:
        return 0
    done, k = 0, 64
    while done < n:
        k = min(k, n - done, _UNIFORM_MAX)
        at = start + done
        unit = _uniform(vals.typecode, value, k)
        if vals[at : at + k] == (unit if k == len(unit) else unit[:k]):
            done += k
            k *= 8
            continue
        while k > 1:
            h = k // 2
            if vals[at : at + h] == unit[:h]:
                done, at, k = done + h, at + h, k - h
            else:
                k = h
        return done
    return done


def consecutive_run(vals: array, start: int, e0: int, count: int | None = None) -> int:
    """How many entries of ``vals[start:start+count]`` (any integer typecode) from the first
    equal e0, e0+1, e0+2... (a block map stored in order), compared in C a range at a time
    against ``array(range(...))``: ranges grow 64, 512, 4096... entries, and a mismatching
    range is halved down to the first differing entry, so the cost follows the run found."""
    n = len(vals) - start if count is None else min(count, len(vals) - start)
    if n <= 0 or vals[start] != e0:
        return 0
    limit = (1 << (8 * vals.itemsize)) - e0  # the series ends where the type's range does
    n = min(n, limit)
    code = vals.typecode
    done, k = 0, 64
    while done < n:
        k = min(k, n - done, 1 << 20)
        at, want = start + done, e0 + done
        if vals[at : at + k] == array(code, range(want, want + k)):
            done += k
            k *= 8
            continue
        while k > 1:  # the first mismatch lies in this range: halve it
            h = k // 2
            if vals[at : at + h] == array(code, range(want, want + h)):
                done, at, want, k = done + h, at + h, want + h, k - h
            else:
                k = h
        return done
    return done


def nonzero_spans(a: array, start: int = 0):
    """(first, end) of each run of nonzero entries of ``a`` from ``start`` (allocated entries of a
    table whose unallocated ones are 0), found in C: zero runs by :func:`equal_run`, the end of
    a nonzero run by ``array.index``. Python steps follow the number of runs, not of entries."""
    n = len(a)
    i = start
    while i < n:
        i += equal_run(a, i, 0)
        if i >= n:
            return
        try:
            j = a.index(0, i)
        except ValueError:
            j = n
        yield i, j
        i = j


def nonzero_max(a: array) -> int:
    """The largest entry of ``a`` (0 when all are zero), looking only at its nonzero runs: a
    sparse table's maximum in C time that follows its allocated entries."""
    return max((max(a[i:j]) for i, j in nonzero_spans(a)), default=0)
