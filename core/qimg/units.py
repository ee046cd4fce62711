"""Size parsing and printing, as QEMU's ``qemu_strtosz`` and ``size_to_str`` do."""
from __future__ import annotations

from .errors import QimgValueError

TYPE_CHECKING = False  # neither typing nor re at start-up (`info` parses no size)
if TYPE_CHECKING:
    import re
    from collections.abc import Callable

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
# qemu_strtosz's syntax: [ws][+]DIGITS[.DIGITS][suffix] or 0xHEX[suffix], nothing after; since
# QEMU 8.1 also [ws][+].DIGITS[suffix] (no integral digits)
_SIZE_PATTERN = r"\s*\+?(?:0[xX]([0-9a-fA-F]+)|([0-9]*)(\.[0-9]*)?)([a-zA-Z]?)"
# what QEMU 8.1's qemu_strtosz calls out of range rather than invalid: a negative integer, or a
# negative fraction without integral digits, with nothing after it
_NEGATIVE_PATTERN = r"\s*-(?:[0-9]+|\.[0-9]+)"
_size_re: re.Pattern | None = None
_negative_re: re.Pattern | None = None


def sector_round(size: int) -> int:
    """QEMU's ``ROUND_UP(size, 512)`` on the uint64 a create option holds: a size within 511
    bytes of 2^64 wraps to 0 (``-o size=18446744073709551614`` makes an empty image), 2^63 and
    more stay what the driver then refuses as negative or too large."""
    return (size + 511) & ~511 & ((1 << 64) - 1)


class SizeRange(OverflowError, ValueError):
    """qemu_strtosz's range error for a negative number (QEMU 8.1 on; 7.2 calls it invalid):
    callers that word both cases catch it first, others see a ValueError."""


def _match(text: str) -> re.Match | None:
    """The size pattern, compiled on first use (not at start-up)."""
    global _size_re
    if _size_re is None:
        import re

        _size_re = re.compile(_SIZE_PATTERN)
    return _size_re.fullmatch(text)


def _is_negative(text: str) -> bool:
    global _negative_re
    if _negative_re is None:
        import re

        _negative_re = re.compile(_NEGATIVE_PATTERN)
    return _negative_re.fullmatch(text) is not None


def strtosz(text: str, default_suffix: str = "b", on_hex_suffix: Callable[[], None] | None = None,
            rework: bool | None = None) -> int:
    """The value QEMU's ``qemu_strtosz`` reads, unbounded (callers check the range, which QEMU
    reports as ERANGE); ValueError on junk. Suffixes b/k/M/G/T/P/E in either case, binary.

    A fraction is a double scaled to 64 fixed-point bits, as QEMU does: with a suffix, its
    share rounds half up ("0.0005k" is 1); without one (bytes), only a fraction that scales to
    0 is taken ("1024.0", "1."), any other ("1.5") is junk. A suffix on a hex number calls
    ``on_hex_suffix`` (QEMU's deprecation warning) and is junk without one.

    ``rework`` (default: the profile's feature ``strtosz-rework``, qemu-img 10.0) reads as QEMU
    8.1 on does: a fraction may lack integral digits (".5M"), a negative number is out of range
    (:class:`SizeRange`; with anything after it, junk), a fraction that reads as 1.0 is one more
    unit (7.2: none) and any other non-zero one is at least 2^-64 (a fraction of a byte)."""
    if rework is None:
        from .compat import has

        rework = has("strtosz-rework")
    m = _match(text)
    if not m:
        if rework and _is_negative(text):
            raise SizeRange(text)
        raise ValueError(text)
    hexdigits, digits, frac, suffix = m.groups()
    if hexdigits is None and not digits and (not rework or frac is None or len(frac) < 2):
        raise ValueError(text)  # no digits (10.0: ".5" needs one after the point)
    mult = _SUFFIX.get((suffix or default_suffix).lower())
    if mult is None:
        raise ValueError(text)
    if hexdigits is not None:
        if suffix:
            if on_hex_suffix is None:
                raise ValueError(text)
            on_hex_suffix()
        return int(hexdigits, 16) * mult
    value = int(digits or "0")
    if value >= 1 << 64:
        # strtoull's range error stands only when it ends the text; with more after it, junk
        if frac is not None or suffix:
            raise ValueError(text)
        return value
    if frac is None:
        return value * mult
    fraction = float("0" + frac) if frac != "." else 0.0
    if rework and fraction == 1.0:
        value, valf = value + 1, 0  # 8.1 carries a fraction that rounded to 1.0
    else:
        # the C cast of a fraction that rounded up to 1.0 (2^64) gives 0 on x86-64
        valf = int(fraction * 2.0**64) % (1 << 64)
        if rework and not valf and fraction:
            valf = 1
    if mult == 1:
        if valf:
            raise ValueError(text)  # a fraction of a byte
        return value
    part = valf * mult
    return value * mult + (part >> 64) + ((part >> 63) & 1)


def parse_size(text: str, default_suffix: str = "b", limit: int = 1 << 63) -> int:
    """Parse ``1.5G``, ``512``, ``64k``.  Raise ValueError on junk or overflow.

    Like qemu_strtosz (:func:`strtosz`), a result below ``limit`` (int64's); no suffix on
    hex numbers.
    """
    value = strtosz(text, default_suffix)
    if value >= limit:
        raise ValueError(text)
    return value


def parse_image_size(text: str) -> int:
    """Size argument of create/measure, with qemu-img's error text."""
    if _looks_too_big(text):
        raise QimgValueError("Invalid image size specified. Must be between 0 and 9223372036854775807.")
    try:
        if text.startswith("-"):
            raise ValueError(text)
        return parse_size(text)
    except ValueError:
        from .compat import program

        raise QimgValueError(
            "Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
            f"{program()}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
        ) from None


def _looks_too_big(text: str) -> bool:
    """A well-formed size that does not fit in int64 (qemu-img words that error differently)."""
    if text.startswith("-"):
        return False
    try:
        return strtosz(text) >= 1 << 63
    except ValueError:
        return False


def size_to_str(size: int) -> str:
    """Human size as QEMU's ``size_to_str``: ``1 MiB``, ``4 KiB``, ``1.5 GiB``, ``512 B``."""
    suffixes = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    if size < 1024:
        return f"{size} B"
    # QEMU switches unit once the value would print as >= 1000 of the smaller one:
    # i = floor(log2(x)) // 10 with x = size * 1.024 (floor(log2) is the bit length of int(x) - 1)
    x = size * (1024 / 1000)
    bits = int(x).bit_length()
    if bits % 10 == 0 and x > (1 << bits) * (1 - 1e-9):
        # a hair below a unit boundary math.log2 rounds up: keep its answer there
        import math

        i = int(math.floor(math.log2(x)) // 10)
    else:
        i = (bits - 1) // 10
    i = min(i, len(suffixes) - 1)
    div = 1 << (10 * i)
    value = size / div
    return f"{value:0.3g} {suffixes[i]}"
