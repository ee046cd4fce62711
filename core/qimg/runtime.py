"""Open options (``--image-opts`` / ``json:`` keys): typed as QEMU's option lists type them
and checked with its messages, before a driver sees them.

QEMU checks in layers: the block layer's own options, then the file protocol's (when the
file is opened), then the format's (when the driver opens). :func:`check_common`,
:func:`check_file` and :func:`convert_typed` follow that order; a driver declares the types
of its own options in ``Format.runtime_options`` (a dict name -> option type) and checks
their meaning itself.
"""
from __future__ import annotations

from .errors import QimgError
from .options import BOOL, NUMBER, SIZE, STRING, Option, qobject_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (opens run this)
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from typing import Any

#: the block layer's options for every node, in the order QEMU reads them
COMMON_TYPES = {"read-only": BOOL, "auto-read-only": BOOL, "force-share": BOOL, "node-name": STRING,
                "discard": STRING, "detect-zeroes": STRING, "cache.direct": BOOL, "cache.no-flush": BOOL}
#: the file protocol's options (``file.<name>``)
FILE_TYPES = {"filename": STRING, "driver": STRING, "aio": STRING, "aio-max-batch": NUMBER,
              "locking": STRING, "pr-manager": STRING, "x-check-cache-dropped": BOOL, "drop-cache": BOOL}

_DISCARD = ("ignore", "off", "unmap", "on")
_DETECT_ZEROES = ("off", "on", "unmap")
_LOCKING = ("on", "off", "auto")
_AIO = ("threads", "native", "io_uring")
NODE_NAME_MAX = 31
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def parse_number(name: str, text: str) -> int:
    """QEMU's number option: strtoull in base 0 (0x.., 0.. octal, a sign wraps), nothing after."""
    s = text.lstrip(" \t\n\r\f\v")
    negative = s[:1] == "-"
    if s[:1] in "+-":
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x":
        base, digits = 16, s[2:]
    elif s[:1] == "0" and len(s) > 1:
        base, digits = 8, s[1:]
    else:
        digits = s
    try:
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError
        value = int(digits, base)
    except ValueError:
        raise QimgError(f"Parameter '{name}' expects a number") from None
    if value >= 1 << 64:
        raise QimgError(f"Value '{text}' is too large for parameter '{name}'")
    return (-value) % (1 << 64) if negative else value


def convert_value(name: str, kind: str, value: Any) -> Any:
    """An option value as its type. A ``json:`` name's (or the library's) number or boolean is
    first written as QEMU writes it (``qobject_text``: ``true`` is "on", ``0`` is "0") and
    parsed as the text would be; other values (lists, objects) pass."""
    if isinstance(value, (bool, int, float)):
        value = qobject_text(value)
    if not isinstance(value, str):
        return value
    if kind == NUMBER:
        return parse_number(name, value)
    if kind == SIZE:
        from .units import parse_size

        text = value.lstrip(" \t\n\r\f\v")
        if text[:1] == "+" and text[1:2].isdigit():
            text = text[1:]  # strtod's sign (one, then digits)
        try:
            if text.startswith("-"):
                raise ValueError
            size = parse_size(text, limit=1 << 128)  # the range is checked below, as QEMU words it
        except ValueError:
            return Option(name, SIZE, "").convert(value)  # raises QEMU's message with its hint lines
        if size >= 1 << 64:
            raise QimgError(f"Value '{value}' is out of range for parameter '{name}'")
        return size
    if kind == BOOL:
        return Option(name, BOOL, "").convert(value)
    return value


def convert_typed(opts: MutableMapping[str, Any], types: Mapping[str, str], prefix: str = "",
                  shown: str | None = None) -> None:
    """Convert ``opts[prefix + name]`` for every typed name (a name ending in "." types every
    key under it); ``shown`` replaces the prefix in messages (QEMU names ``file.x`` as ``x``)."""
    for key in list(opts):
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        kind = types.get(name)
        if kind is None:
            kind = next((t for n, t in types.items() if n.endswith(".") and name.startswith(n)), None)
        if kind is None or kind == STRING:
            continue
        opts[key] = convert_value(name if shown is None else shown + name, kind, opts[key])


def check_common(opts: MutableMapping[str, Any]) -> None:
    """The block layer's options, as ``bdrv_open_common`` checks them."""
    convert_typed(opts, COMMON_TYPES)
    name = opts.get("node-name")
    if name is not None:
        name = str(name)
        if not name or not name[0].isascii() or not name[0].isalpha() or not set(name) <= _ID_CHARS:
            raise QimgError(f"Invalid node-name: '{name}'")
        if len(name) > NODE_NAME_MAX:
            raise QimgError("Node name too long")
    discard = opts.get("discard")
    if discard is not None and discard not in _DISCARD:
        raise QimgError("Invalid discard option")
    zeroes = opts.get("detect-zeroes")
    if zeroes is not None:
        if zeroes not in _DETECT_ZEROES:
            raise QimgError(f"invalid parameter value: {zeroes}")
        if zeroes == "unmap" and discard not in ("unmap", "on"):
            raise QimgError("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")


def check_file(opts: MutableMapping[str, Any], prefix: str = "file.") -> None:
    """The file protocol's options (``file.*`` of a format; QEMU names them without the
    prefix); ``prefix`` "" when the file protocol is the image's driver."""
    convert_typed(opts, FILE_TYPES, prefix, shown="")
    for key, allowed in ((prefix + "locking", _LOCKING), (prefix + "aio", _AIO)):
        value = opts.get(key)
        if value is not None and value not in allowed:
            raise QimgError(f"invalid parameter value: {value}")
    if opts.get(prefix + "aio") == "native" and opts.get("cache.direct") is not True:
        raise QimgError("aio=native was specified, but it requires cache.direct=on, which was not specified.")


def runtime_types(cls: type) -> Mapping[str, str]:
    """The option types a driver declares (``runtime_options`` as a dict; a set types nothing)."""
    declared = cls.runtime_options
    return declared if isinstance(declared, dict) else {}


def unsupported_option(cls: type, keys: list[str], backing_open: bool = False) -> str | None:
    """QEMU's message for the first open option neither the file nor the format takes: the
    file's first (its node opens first), then the format's; "first" in QEMU's QDict order.
    ``backing``/``backing.*`` belong to the backing image when it is opened."""
    from .ops.qjson import qdict_order

    common = (*COMMON_TYPES, "file")
    for name in qdict_order([k[5:] for k in keys if k.startswith("file.")]):
        if "." not in name and name not in FILE_TYPES:
            return f"Block protocol 'file' doesn't support the option '{name}'"
    allowed = cls.runtime_options
    for key in qdict_order([k for k in keys if not k.startswith("file.")]):
        if backing_open and (key == "backing" or key.startswith("backing.")):
            continue
        if allowed is None or key in common or key in allowed:
            continue
        if any(n.endswith(".") and key.startswith(n) for n in (*allowed, *common)):
            continue
        if cls.is_protocol:
            return f"Block protocol '{cls.format_name}' doesn't support the option '{key}'"
        return f"Block format '{cls.format_name}' does not support the option '{key}'"
    return None
