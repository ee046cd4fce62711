"""Size arguments exactly as QEMU's ``qemu_strtosz`` reads them (command-line sizes, offsets,
and QemuOpts size options such as resize's), with its warning and range error."""
from __future__ import annotations

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable


def strtosz(text: str, warn: Callable[[str], None] | None = None, limit: int = 1 << 63) -> int:
    """``[ws][+]DIGITS[.DIGITS][suffix]`` or ``0xHEX[suffix]`` (:func:`qimg.units.strtosz`).

    Raises ValueError when malformed, OverflowError when the value reaches ``limit`` (int64's;
    QemuOpts size options allow up to 2^64) or, in the 10.0 profile, is negative
    (:class:`qimg.units.SizeRange`). A suffix on a hex number is accepted with 7.2's deprecation
    warning (through ``warn``), refused by 10.0.
    """
    from ..units import strtosz as _strtosz

    def hex_suffix() -> None:
        from ..compat import has

        if has("strtosz-rework"):
            raise ValueError(text)  # deprecated in 7.2, refused since
        if warn is not None:
            warn(f"warning: Using a multiplier suffix on hex numbers is deprecated: {text}")

    value = _strtosz(text, on_hex_suffix=hex_suffix)
    if value >= limit:
        raise OverflowError(text)
    return value
