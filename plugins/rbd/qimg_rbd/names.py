"""rbd names and open options as QEMU's rbd driver reads them.

``rbd:pool[/namespace]/image[@snapshot][:key=value[:key=value...]]``: ``conf`` names the Ceph
configuration file, ``id`` the user; every other pair goes to librados' configuration as it is
(``mon_host``, ``auth_supported``, ``client_mount_timeout``...). A backslash escapes the next
character (``\\:``, ``\\@``, ``\\/``, ``\\=``, ``\\\\``), as QEMU's ``qemu_rbd_next_tok``.

The options form (``--image-opts``, ``json:``) is QEMU's BlockdevOptionsRbd: ``pool``,
``namespace``, ``image``, ``conf``, ``snapshot``, ``encrypt.*``, ``user``,
``auth-client-required`` (a list), ``key-secret``, ``server`` (a list of ``host``/``port``);
checked here with the QAPI visitor's messages before anything connects.
"""
from __future__ import annotations

import json

from qimg.errors import QimgError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: the key under which parse_filename hands the librados pairs to open (QEMU's "=keyvalue-pairs":
#: a JSON list [key, value, key, value...], a name no user option can have)
KEYPAIRS = "=keyvalue-pairs"
#: the options of a node that change which data is reached (QEMU's qemu_rbd_strong_runtime_opts)
STRONG = ("pool", "namespace", "image", "conf", "snapshot", "user", "server.", "password-secret")
_AUTH_MODES = ("cephx", "none")
_ENCRYPT_FORMATS = ("luks", "luks2", "luks-any")


def _find(text: str, delim: str, start: int = 0) -> int:
    """Index of the first unescaped ``delim`` in ``text`` from ``start``, or -1 (a backslash
    skips the character after it, unless it is the last one)."""
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == delim:
            return i
        if c == "\\" and i + 1 < n:
            i += 1
        i += 1
    return -1


def _tok(text: str, delim: str) -> tuple[str, str | None]:
    """``text`` split at its first unescaped ``delim``: (before, after) or (text, None)."""
    i = _find(text, delim)
    if i < 0:
        return text, None
    return text[:i], text[i + 1:]


def unescape(text: str) -> str:
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            i += 1
            c = text[i]
        out.append(c)
        i += 1
    return "".join(out)


def parse_filename(filename: str) -> dict[str, Any]:
    """An ``rbd:`` name as open options (QEMU's qemu_rbd_parse_filename), or QimgError with
    its message. librados pairs other than ``conf`` and ``id`` go under :data:`KEYPAIRS`."""
    if not filename.startswith("rbd:"):
        raise QimgError("File name must start with 'rbd:'")
    pool, rest = _tok(filename[4:], "/")
    if rest is None:
        raise QimgError("Pool name is required")
    out: dict[str, Any] = {"pool": unescape(pool)}
    if _find(rest, "@") >= 0:
        image, rest = _tok(rest, "@")
        snap, rest = _tok(rest, ":")
        out["snapshot"] = unescape(snap)
    else:
        image, rest = _tok(rest, ":")
    if _find(image, "/") >= 0:
        ns, image = _tok(image, "/")
        out["namespace"] = unescape(ns)
    else:
        out["namespace"] = ""
    out["image"] = unescape(image or "")
    pairs: list[str] = []
    error = None
    while rest is not None:
        name, rest = _tok(rest, "=")
        if rest is None:
            error = f"conf option {name} has no value"
            break
        name = unescape(name)
        value, rest = _tok(rest, ":")
        value = unescape(value)
        if name == "conf":
            out["conf"] = value
        elif name == "id":
            out["user"] = value
        else:
            pairs += [name, value]
    if pairs:
        out[KEYPAIRS] = json.dumps(pairs)
    if error is not None:
        raise QimgError(error)
    return out


class Location:
    """The checked open options of an rbd node (QEMU's BlockdevOptionsRbd)."""

    __slots__ = ("pool", "namespace", "image", "conf", "snapshot", "user", "key_secret", "auth_client_required",
                 "servers", "encrypt")

    def __init__(self) -> None:
        self.pool = ""
        self.namespace: str | None = None
        self.image = ""
        self.conf: str | None = None
        self.snapshot: str | None = None
        self.user: str | None = None
        self.key_secret: str | None = None
        self.auth_client_required: list[str] | None = None
        self.servers: list[tuple[str, str]] | None = None
        self.encrypt: dict[str, Any] | None = None

    def mon_host(self) -> str | None:
        """The ``server`` list as librados' ``mon_host`` (``[v6]:port`` for IPv6 addresses)."""
        if not self.servers:
            return None
        return ";".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.servers)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _not_null(key: str, value: Any) -> None:
    """A JSON null where a string belongs: QEMU's keyval visitor takes numbers and booleans as
    their text, and calls a null an internal error."""
    if value is None:
        raise QimgError(f"Internal error: parameter {key} invalid")


def _indexed(opts: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    """A flattened list member (``name.0.host``, ``name.1``...) taken out of ``opts``: its
    elements in index order (a dict of sub-keys each, ``""`` for a scalar element)."""
    prefix = name + "."
    keys = [k for k in opts if k.startswith(prefix)]
    if not keys:
        return None
    items: dict[int, dict[str, Any]] = {}
    for key in keys:
        head, _, sub = key[len(prefix):].partition(".")
        if not head.isdigit():
            # (QEMU's visitor sees an object where the list belongs)
            raise QimgError(f"Invalid parameter type for '{name}', expected: array")
        items.setdefault(int(head), {})[sub] = opts.pop(key)
    if max(items) + 1 != len(items):
        raise QimgError(f"List indices are not contiguous, saw {len(items)} elements but {max(items)} largest index")
    return [items[i] for i in range(len(items))]


def _encryption(enc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """QEMU's RbdEncryptionOptions (``encrypt.*``, flattened): ``format`` (``luks``, ``luks2``;
    10.0 adds ``luks-any``), ``key-secret``, and in 10.0 a ``parent`` of the same kind (the
    encryption of a clone's parent), checked in the visitor's order and words."""
    from qimg import compat

    layered = compat.has("rbd-layered-encryption")
    fmt = enc.get("format")
    if fmt is None:
        raise QimgError(f"Parameter '{prefix}format' is missing")
    if fmt not in (_ENCRYPT_FORMATS if layered else _ENCRYPT_FORMATS[:2]):
        # (the union's discriminator is named without the member's prefix)
        raise QimgError(f"Parameter 'format' does not accept value '{fmt}'")
    _not_null(prefix + "format", fmt)
    if enc.get("key-secret") is None:
        raise QimgError(f"Parameter '{prefix}key-secret' is missing")
    out: dict[str, Any] = {"format": _text(fmt), "key-secret": _text(enc["key-secret"])}
    if layered and ("parent" in enc or any(k.startswith("parent.") for k in enc)):
        if "parent" in enc:
            raise QimgError(f"Invalid parameter type for '{prefix}parent', expected: object")
        out["parent"] = _encryption({k[7:]: v for k, v in enc.items() if k.startswith("parent.")}, prefix + "parent.")
    from qimg.ops.qjson import qdict_order

    known = ("format", "key-secret", "parent") if layered else ("format", "key-secret")
    for key in qdict_order(list(dict.fromkeys(k.split(".", 1)[0] for k in enc))):
        if key not in known:
            raise QimgError(f"Parameter '{prefix}{key}' is unexpected")
    return out


def check_location(options: Mapping[str, Any]) -> Location:
    """The options of an rbd node, checked as QEMU's QAPI visitor checks BlockdevOptionsRbd
    (members in schema order, then the keys nobody took)."""
    opts = dict(options)
    loc = Location()

    def take(key: str, required: bool = False) -> str | None:
        if key not in opts:
            if any(k.startswith(key + ".") for k in opts):  # a list or an object (json:'s, flattened)
                raise QimgError(f"Parameters '{key}.*' are unexpected")
            if required:
                raise QimgError(f"Parameter '{key}' is missing")
            return None
        value = opts.pop(key)
        if isinstance(value, (dict, list)):
            raise QimgError(f"Invalid parameter type for '{key}', expected: string")
        _not_null(key, value)
        return _text(value)

    loc.pool = take("pool", True) or ""
    loc.namespace = take("namespace")
    loc.image = take("image", True) or ""
    loc.conf = take("conf")
    loc.snapshot = take("snapshot")
    if "encrypt" in opts:
        raise QimgError("Invalid parameter type for 'encrypt', expected: object")
    enc = {k[8:]: opts.pop(k) for k in [k for k in opts if k.startswith("encrypt.")]}
    if enc:
        loc.encrypt = _encryption(enc, "encrypt.")
    loc.user = take("user")
    if "auth-client-required" in opts:
        value = opts.pop("auth-client-required")
        if not isinstance(value, list):
            raise QimgError("Invalid parameter type for 'auth-client-required', expected: array")
        opts.update({f"auth-client-required.{i}": v for i, v in enumerate(value)})
        if not value:  # an empty list is a list: librados is told no mode at all
            loc.auth_client_required = []
    modes = _indexed(opts, "auth-client-required")
    if modes is not None:
        loc.auth_client_required = []
        for i, item in enumerate(modes):
            value = item.get("")
            if set(item) == {""}:
                _not_null(f"auth-client-required[{i}]", value)
            if value is None or set(item) != {""}:
                raise QimgError(f"Invalid parameter type for 'auth-client-required[{i}]', expected: string")
            if value not in _AUTH_MODES:
                # (QEMU's flat visitor names a list element of an enum so)
                raise QimgError(f"Parameter 'null' does not accept value '{value}'")
            loc.auth_client_required.append(str(value))
    loc.key_secret = take("key-secret")
    if "server" in opts:
        value = opts.pop("server")
        if not isinstance(value, list):
            raise QimgError("Invalid parameter type for 'server', expected: array")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise QimgError(f"Invalid parameter type for 'server[{i}]', expected: object")
            opts.update({f"server.{i}.{k}": v for k, v in item.items()})
    servers = _indexed(opts, "server")
    if servers is not None:
        loc.servers = []
        for i, item in enumerate(servers):
            for key in ("host", "port"):
                if key not in item:
                    raise QimgError(f"Parameter 'server.{i}.{key}' is missing")
            for key in item:
                if key not in ("host", "port"):
                    raise QimgError(f"Parameter 'server.{i}.{key}' is unexpected")
            for key in ("host", "port"):
                _not_null(f"server[{i}].{key}", item[key])
            loc.servers.append((_text(item["host"]), _text(item["port"])))
    if opts:
        from qimg.ops.qjson import qdict_order

        raise QimgError(f"Parameter '{qdict_order(list(opts))[0]}' is unexpected")
    return loc


def given_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The strong options among ``options``, as a ``json:`` name of the node shows them (flat
    keys as given: ``server.0.host``), in the order QEMU's append_strong_runtime_options puts
    them into the name's QDict: the driver's list in order, the keys under a prefix
    (``server.``) in the order the node's own options QDict iterates them."""
    from qimg.ops.qjson import qdict_order

    flat: dict[str, Any] = {}
    for key, value in options.items():
        if key == "server" and isinstance(value, list):
            for i, item in enumerate(value):
                for sub, v in (item.items() if isinstance(item, dict) else ()):
                    flat[f"server.{i}.{sub}"] = v
        else:
            flat[key] = value
    out = {}
    for name in STRONG:
        if not name.endswith("."):
            if name in flat:
                out[name] = flat[name]
            continue
        for key in qdict_order([k for k in flat if k.startswith(name)]):
            out[key] = flat[key]
    return out
