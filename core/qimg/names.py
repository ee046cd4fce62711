"""Image names as QEMU reads them: protocol prefixes (``nbd://``, ``foo:bar``), ``json:{...}``
pseudo-filenames, ``--image-opts`` option strings, and the directory a relative backing
name is resolved against.

Everything here is parsing with QEMU's messages; :mod:`qimg.api` does the opening.
"""
from __future__ import annotations

from .errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: QEMU copies at most this much of a prefix into its protocol name buffer (char[128])
PROTOCOL_NAME_MAX = 127


def path_has_protocol(name: str) -> bool:
    """QEMU's ``path_has_protocol``: a ``:`` comes before any ``/`` (``foo:bar``, ``nbd://x``,
    ``:x``; not ``./image:top.qcow2``)."""
    for ch in name:
        if ch == ":":
            return True
        if ch == "/":
            return False
    return False


def protocol_prefix(name: str) -> str:
    """The protocol a name with :func:`path_has_protocol` selects (``nbd+unix`` for
    ``nbd+unix:///x``), truncated as QEMU's buffer truncates it."""
    return name.partition(":")[0][:PROTOCOL_NAME_MAX]


def is_host_device(name: str) -> bool:
    """QEMU asks the host device drivers first, so a device node whose name has a colon is
    opened as a file, not as a protocol (``/dev/disk/by-path/pci-0000:00:1f.2``)."""
    if not name.startswith("/dev/"):
        return False
    import os
    import stat

    try:
        mode = os.stat(name).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def parse_json_name(name: str) -> tuple[str, dict[str, Any]]:
    """A ``json:{...}`` name as an ``--image-opts`` option string (QEMU's messages, without
    the ``Could not open`` prefix, on errors), and its flattened values with their JSON types
    (``None`` for ``null``)."""
    from .qemujson import loads

    try:
        value = loads(name[5:])
    except QimgError as e:
        raise QimgError("Could not parse the JSON options: " + e.message) from None
    if not isinstance(value, dict):
        raise QimgError("Invalid JSON object given")
    return flatten_options(value)


def flatten_options(value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Nested options (``{"file": {"driver": "nbd", ...}}``) as an option string with dotted
    keys and ``,,`` escapes, and the flat dict of their typed values."""
    from .options import qobject_text

    typed: dict[str, Any] = {}
    nested: set[str] = set()  # keys a nested object gave

    def walk(obj: Mapping[str, Any], path: str) -> None:
        for key, val in obj.items():
            if isinstance(val, dict) and val:
                walk(val, f"{path}{key}.")
            elif isinstance(val, list) and val:
                # QEMU's qdict_flatten: list items are numbered keys ("inject-error.0.event")
                walk({str(i): item for i, item in enumerate(val)}, f"{path}{key}.")
            else:
                name = path + key
                if not path and name in nested:
                    # QEMU's qdict_flatten puts a nested object's members over the top-level
                    # dotted keys ({"server": {"type": "unix"}, "server.type": "inet"}: unix)
                    continue
                if path:
                    nested.add(name)
                if isinstance(val, int) and not isinstance(val, bool) and not -(1 << 63) <= val < 1 << 64:
                    val = float(val)  # QEMU's parser: an integer out of int64/uint64 is a double
                typed[name] = val  # None: "backing": null

    walk(value, "")
    pairs = [f"{k}={qobject_text(v).replace(',', ',,')}" for k, v in typed.items() if v is not None]
    return ",".join(pairs), typed


def options_text(options: Mapping[str, Any]) -> str:
    """How an options mapping is named in messages: ``key=value,...`` (nested dicts dotted)."""
    return flatten_options(options)[0]


def path_combine(base: str, name: str) -> str:
    """QEMU's ``path_combine``: ``name`` relative to the folder of ``base`` (which may carry a
    ``proto:`` prefix: ``http://h/a/b.qcow2`` + ``c`` = ``http://h/a/c``)."""
    if name.startswith("/"):
        return name
    colon = base.find(":") + 1 if path_has_protocol(base) else 0
    slash = base.rfind("/") + 1
    cut = max(colon, slash)
    return base[:cut] + name
