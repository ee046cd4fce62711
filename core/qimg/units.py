"""Size parsing and printing, as QEMU's ``qemu_strtosz`` and ``size_to_str`` do."""
from __future__ import annotations

from .errors import QimgError

TYPE_CHECKING = False  # neither typing nor re at start-up (`info` parses no size)
if TYPE_CHECKING:
    import re

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
_SIZE_PATTERN = r"^\s*([0-9]+(?:\.[0-9]*)?|0[xX][0-9a-fA-F]+)\s*([a-zA-Z]?)\s*$"
_size_re: re.Pattern | None = None


def _match(text: str) -> re.Match | None:
    """The size pattern, compiled on first use (not at start-up)."""
    global _size_re
    if _size_re is None:
        import re

        _size_re = re.compile(_SIZE_PATTERN)
    return _size_re.match(text)


def parse_size(text: str, default_suffix: str = "b", limit: int = 1 << 63) -> int:
    """Parse ``1.5G``, ``512``, ``64k``.  Raise ValueError on junk or overflow.

    Like qemu_strtosz: suffixes b/k/M/G/T/P/E in either case, binary multiples,
    fractions allowed only with a suffix other than bytes, result below ``limit`` (int64).
    """
    m = _match(text)
    if not m:
        raise ValueError(text)
    num, suffix = m.group(1), m.group(2).lower()
    if not suffix:
        suffix = default_suffix
    if suffix not in _SUFFIX:
        raise ValueError(text)
    mult = _SUFFIX[suffix]
    if num.lower().startswith("0x"):
        if m.group(2):
            raise ValueError(text)
        value = int(num, 16)
    elif "." in num:
        if mult == 1:
            raise ValueError(text)
        from fractions import Fraction

        value = int(Fraction(num) * mult)
    else:
        value = int(num) * mult
    if value >= limit:
        raise ValueError(text)
    return value


def parse_image_size(text: str) -> int:
    """Size argument of create/measure, with qemu-img's error text."""
    if _looks_too_big(text):
        raise QimgError("Invalid image size specified. Must be between 0 and 9223372036854775807.")
    try:
        if text.startswith("-"):
            raise ValueError(text)
        return parse_size(text)
    except ValueError:
        from .compat import program

        raise QimgError(
            "Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
            f"{program()}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
        ) from None


def _looks_too_big(text: str) -> bool:
    """A well-formed size that does not fit in int64 (qemu-img words that error differently)."""
    m = _match(text)
    if not m or text.startswith("-"):
        return False
    try:
        parse_size(text)
    except ValueError:
        num, suffix = m.group(1), (m.group(2) or "b").lower()
        return suffix in _SUFFIX and not num.lower().startswith("0x") and ("." not in num or suffix != "b")
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
