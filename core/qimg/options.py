"""Option strings (``-o a=b,c=d``) and typed option declarations, as QEMU's QemuOpts.

A driver declares its create and amend options as a list of :class:`Option`; the same
data serves ``-o help``, validation, and conversion of the strings to Python values.
"""
from __future__ import annotations

from .errors import QimgError, QimgValueError
from .values import FrozenValue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

SIZE, BOOL, STRING, NUMBER = "size", "bool", "str", "num"

_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}


class Option(FrozenValue):
    """One create/amend option: ``name``, ``type`` (size/bool/str/num), ``help``, ``default``.

    Immutable and compared by value (as the frozen dataclass it was, without importing
    dataclasses at start-up)."""

    __slots__ = ("name", "type", "help", "default")
    _fields = __slots__

    name: str
    type: str
    help: str
    default: Any

    def __init__(self, name: str, type: str, help: str, default: Any = None) -> None:  # noqa: A002
        self._set(name=name, type=type, help=help, default=default)

    def help_line(self) -> str:
        kind = {SIZE: "<size>", BOOL: "<bool (on/off)>", STRING: "<str>", NUMBER: "<num>"}[self.type]
        left = f"  {self.name}={kind}"
        return f"{left:<24} - {self.help}" if self.help else left

    def convert(self, value: str, *, quiet: bool = False) -> Any:
        """String to typed value, raising QimgError with QEMU's message. A size is QemuOpts'
        uint64 (0 to 2^64 - 1: what QEMU keeps as int64 shows as negative, see
        :func:`as_int64`); 7.2 warns about a suffix on a hex size through ``qimg.api.report``
        unless ``quiet``."""
        if self.type == BOOL:
            v = value  # qapi_bool_parse: lower case only ("ON" is refused)
            if v in _TRUE:
                return True
            if v in _FALSE:
                return False
            raise QimgValueError(f"Parameter '{self.name}' expects 'on' or 'off'")
        if self.type == SIZE:
            try:
                # 2^64 and more is out of range, as is a negative number in 10.0 (SizeRange;
                # 7.2: invalid, below); 7.2 accepts a suffix on a hex number with a warning,
                # 10.0 refuses it
                from .ops.sizes import strtosz

                return strtosz(value, None if quiet else _report, limit=1 << 64)
            except OverflowError:
                raise QimgValueError(f"Value '{value}' is out of range for parameter '{self.name}'") from None
            except ValueError:
                raise QimgValueError(
                    f"Parameter '{self.name}' expects a non-negative number below 2^64\n"
                    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                    "and exabytes, respectively."
                ) from None
        if self.type == NUMBER:
            number = strtou64(value)
            if number is None:
                raise QimgValueError(f"Parameter '{self.name}' expects a number")
            if number < 0:
                raise QimgValueError(f"Value '{value}' is too large for parameter '{self.name}'")
            # as QEMU prints it and its int64 options read it; a QAPI visitor reads the text
            # again as an int64 (qemu_strtoi64) and refuses one out of range
            return Number(as_int64(number), int64_overflow=strtoi64(value) is None)
        return value


def _c_integer(text: str) -> tuple[bool, int] | None:
    """C's strto(u)ll with base 0 as QEMU's qemu_strto* call it: (negative, magnitude), or None
    when the text is not a number (``0x`` hex, a leading 0 octal, leading white space and a
    sign allowed, nothing after)."""
    import re

    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10
    return m.group(1) == "-", int(digits, base)


def strtou64(text: str) -> int | None:
    """QEMU's ``qemu_strtou64(text, NULL, 0)`` as QemuOpts reads a number (see
    :func:`_c_integer`); a negative number wraps modulo 2^64. None when it is not a number, -1
    when it is out of range (more than 64 bits either way)."""
    parsed = _c_integer(text)
    if parsed is None:
        return None
    negative, number = parsed
    if number >= 1 << 64:
        return -1
    return (-number) & ((1 << 64) - 1) if negative else number


class Number(int):
    """A QemuOpts number (its int64 value) that remembers whether its text is out of an
    int64's range (``int64_overflow``): QEMU's QAPI visitors, which parse the option's text
    again, refuse such a number with "Parameter 'x' expects integer"."""

    int64_overflow: bool

    def __new__(cls, value: int, int64_overflow: bool = False) -> "Number":
        n = super().__new__(cls, value)
        n.int64_overflow = int64_overflow
        return n


def strtoi64(text: str) -> int | None:
    """QEMU's ``qemu_strtoi64(text, NULL, 0)``: None when the text is not a number or the
    number is out of an int64's range (a negative number does not wrap)."""
    parsed = _c_integer(text)
    if parsed is None:
        return None
    number = -parsed[1] if parsed[0] else parsed[1]
    return number if -(1 << 63) <= number < 1 << 63 else None


def _report(message: str) -> None:
    from . import api

    api.report(message)


def as_int64(value: int) -> int:
    """A QemuOpts number (uint64) as QEMU prints and mostly keeps it: int64, so 2^63 and more
    are negative (``size=18446744073709551614`` is ``size=-2``)."""
    return value - (1 << 64) if value >= 1 << 63 else value


#: a QemuOpts size of 2^64 - 1 is QEMU's "not set" (-1): ``-o size=18446744073709551615`` asks
#: for no size (create then takes the backing file's or needs one)
SIZE_UNSET = (1 << 64) - 1


def split_options(text: str) -> list[tuple[str, str | None]]:
    """Split ``a=b,c,,d=e,flag`` into pairs; ``,,`` is an escaped comma.

    A bare name (no ``=``) yields ``(name, None)``; callers treat it as ``on`` for
    booleans and ``help``/``?`` as the help request.
    """
    pairs: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        # key up to '=' or ','
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        key = text[i:j]
        if j < n and text[j] == "=":
            j += 1
            buf = []
            while j < n:
                if text[j] == ",":
                    if j + 1 < n and text[j + 1] == ",":
                        buf.append(",")
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            pairs.append((key, "".join(buf)))
        else:
            pairs.append((key, None))
        i = j + 1
    return pairs


def qobject_text(value: Any) -> str:
    """A typed option value (a ``json:`` name's, the library's) as the text QEMU turns it into
    before an option list or a QAPI visitor parses it (``qemu_opts_from_qdict_entry``,
    ``qdict_crumple_for_keyval_qiv``): true/false as on/off, a double by ``%.17g`` (1.0 is
    "1", as ``qnum_to_string``), other scalars as written."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.17g}"
    return str(value)


def merge_option_strings(strings: Iterable[str]) -> str:
    """Repeated ``-o`` options merge with a comma, as qemu-img does."""
    return ",".join(s for s in strings if s)


def options_string(options: Mapping[str, Any]) -> str:
    """A mapping of options as a ``-o`` string (the library's keyword form): booleans as
    on/off, ``,`` in values doubled, None values left out; parsed and checked as ``-o`` is."""
    parts = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{key}={str(value).replace(',', ',,')}")
    return ",".join(parts)


def is_help_request(text: str | None) -> bool:
    """True when an option string asks for the option list (``help`` or ``?`` anywhere)."""
    if not text:
        return False
    return any(k in ("help", "?") and v is None for k, v in split_options(text))


def parse_options(text: str, declared: list[Option], *, prefix_error: str = "", quiet: bool = False) -> dict[str, Any]:
    """Validate and convert an option string against declared options.

    Later values of a repeated key win, as with QemuOpts. Unknown keys raise
    ``Invalid parameter 'x'``. Nested names (``encrypt.format``) are kept flat. Each call is
    one QEMU parse of the string: 7.2's hex-size warnings come once per call unless ``quiet``.
    """
    by_name = {o.name: o for o in declared}
    result: dict[str, Any] = {}
    for key, value in split_options(text):
        if not key and value is None:
            continue
        if value is None:
            # QemuOpts' short form: a bare ``FLAG`` means ``FLAG=on``, ``noFLAG`` means ``FLAG=off``
            key, value = (key[2:], "off") if key.startswith("no") else (key, "on")
        opt = by_name.get(key)
        if opt is None:
            raise QimgValueError(f"{prefix_error}Invalid parameter '{key}'")
        try:
            result[key] = opt.convert(value, quiet=quiet)
        except QimgError as e:
            raise QimgValueError(prefix_error + e.message) from None
    return result


def options_help(format_name: str, declared: list[Option]) -> str:
    """The text of ``qemu-img create -f FMT -o help``."""
    lines = [f"Supported {format_name} options:"]
    lines += [o.help_line() for o in sorted(declared, key=lambda o: o.name)]
    lines += ["", "The protocol level may support further options.",
              "Specify the target filename to include those options."]
    return "\n".join(lines)


def parse_dotted(text: str) -> dict[str, str]:
    """``driver=qcow2,file.filename=x`` (``--image-opts``) into a flat dict of strings."""
    out: dict[str, str] = {}
    for k, v in split_options(text):
        out[k] = "on" if v is None else v
    return out

