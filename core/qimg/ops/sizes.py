"""Size arguments exactly as QEMU's ``qemu_strtosz`` reads them (command-line sizes, offsets,
and QemuOpts size options such as resize's)."""
from __future__ import annotations

import re
from fractions import Fraction

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE = re.compile(r"\s*\+?(?:0[xX]([0-9a-fA-F]+)|([0-9]+)(\.[0-9]*)?)([bkmgtpeBKMGTPE]?)")


def strtosz(text: str, warn: Callable[[str], None] | None = None, limit: int = 1 << 63) -> int:
    """``[ws][+]DIGITS[.DIGITS][suffix]`` or ``0xHEX[suffix]``; binary suffixes b/k/M/G/T/P/E.

    Raises ValueError when malformed, OverflowError when the value reaches ``limit`` (int64's;
    QemuOpts size options allow up to 2^64).
    A suffix on a hex number is accepted with QEMU's deprecation warning (through ``warn``).
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(text)
    hexdigits, digits, frac, suffix = m.groups()
    shift = _SHIFT[suffix.lower()]
    if hexdigits is not None:
        if suffix:
            from ..compat import has

            if has("hex-size-suffix-refused"):
                raise ValueError(text)  # deprecated in 7.2, refused since
            if warn is not None:
                warn(f"warning: Using a multiplier suffix on hex numbers is deprecated: {text}")
        value = int(hexdigits, 16) << shift
    else:
        if frac and frac != "." and shift == 0:
            raise ValueError(text)  # a fraction of a byte
        value = int(Fraction(digits + (frac if frac and frac != "." else "")) * (1 << shift))
    if value >= limit:
        raise OverflowError(text)
    return value


_NEGATIVE = re.compile(r"\s*-[0-9]")


def is_negative(text: str) -> bool:
    """A negative number (qemu-img 10.0's ``qemu_strtosz`` calls it out of range, 7.2 invalid)."""
    return _NEGATIVE.match(text) is not None
