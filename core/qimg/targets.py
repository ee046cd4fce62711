"""What one open asks for, parsed once (:class:`Target`): a path or protocol URL, a ``json:``
name, an ``--image-opts`` string or an options mapping, as :func:`qimg.open` receives them.
"""
from __future__ import annotations

import os

from .errors import QimgError
from .plugins import get_registry

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


class Target:
    """What one open asks for, parsed once: the file name (None when options name the data),
    the driver, driver options, whether the name may carry a protocol prefix, and what the
    user gave (for QEMU's ``json:`` naming and the unsupported-option check)."""

    __slots__ = ("filename", "fmt", "options", "parse_filename", "user_keys", "given")

    def __init__(self, filename: str | None, fmt: str | None, options: dict[str, Any], parse_filename: bool,
                 user_keys: list[str], given: dict[str, Any]) -> None:
        self.filename = filename
        self.fmt = fmt
        self.options = options
        self.parse_filename = parse_filename
        self.user_keys = user_keys
        self.given = given


def target_from_options(text: str, typed: dict[str, Any], fmt: str | None, json_fmt: str | None,
                  extra: dict[str, Any], joined: bool = False) -> Target:
    """An option string (``--image-opts``, or a ``json:`` name flattened) as a target.
    ``joined``: a ``json:`` name's, which QEMU joins into the node's options (qdict_join): they
    arrive in the order the json QDict iterates them (the keys of one hash bucket reversed;
    a driver that names its node by them, rbd's ``server.N.*``, shows that order)."""
    from .options import parse_dotted, split_options

    reg = get_registry()
    pairs = split_options(text)
    parsed: dict[str, Any] = parse_dotted(text)
    driver = json_fmt or parsed.pop("driver", None)
    parsed.pop("driver", None)
    if driver is not None and driver not in reg.formats and reg.protocol(driver) is None:
        raise QimgError(f"Unknown driver '{driver}'")
    if pairs and pairs[0][1] is None and pairs[0][0]:
        pairs[0] = ("file", pairs[0][0])  # QEMU's implied first key
    for key, value in pairs:
        if key == "file" and value is not None:
            raise QimgError(f"Cannot find device='{value}' nor node-name='{value}'")
    if driver is None and not any(k == "file" or k.startswith("file.") for k, _ in pairs):
        raise QimgError("Must specify either driver or file")
    # a protocol named as the image's driver takes its file name at the top level
    top_protocol = driver is not None and (driver == "file" or driver not in reg.formats)
    fname = parsed.pop("filename", None) if top_protocol else parsed.pop("file.filename", None)
    fdriver = parsed.get("file.driver")
    if fname is None and (driver == "file" or not top_protocol) and fdriver in (None, "file"):
        raise QimgError('A block device must be specified for "file"')
    if "backing" in typed and typed["backing"] is None:
        parsed["backing"] = None  # json: "backing": null, no backing file
    for key, value in typed.items():
        # a null where QEMU's QAPI visitor reads the options ("Internal error: parameter port
        # invalid"): inside a socket address (nbd's and ssh's "server", ssh's
        # "host-key-check"), and ssh's own members; a QemuOpts option ignores one, as the
        # option string leaves it out
        if value is None:
            *parents, leaf = key.split(".")
            node = ".".join(parents)
            node_driver = driver if not node else parsed.get(node + ".driver")
            if any(p in ("server", "host-key-check") for p in parents) or \
                    (node_driver == "ssh" and leaf in ("user", "path")):
                parsed[key] = None
    if parsed.get("backing") == "":
        from . import api  # its report() is the one the command line redirects

        api.report('warning: Use of "backing": "" is deprecated; use "backing": null instead')
    # values as given: a json: name's keep their JSON types (false, 5), an option string's are
    # text ("off", "5"); drivers type them, and QEMU names an image with them as given
    given = {k: typed.get(k, v) for k, v in parsed.items()}
    if joined:
        from .ops.qjson import qdict_order

        given = {k: given[k] for k in qdict_order(list(given))}
    options = dict(extra)
    options.update(given)
    # "backing" null or "": no backing file, taken by every open
    user_keys = [k for k, v in parsed.items() if k != "backing" or v not in ("", None)]
    return Target(fname, driver, options, False, user_keys, given)


def uses_file_protocol(t: Target) -> bool:
    """Whether the image's bytes are a host file (the ``file`` protocol opens them)."""
    reg = get_registry()
    if t.fmt is not None and t.fmt != "file" and t.fmt not in reg.formats:
        return False
    if t.options.get("file.driver") not in (None, "file"):
        return False
    if t.filename is None or not t.parse_filename:
        return True
    try:
        entry = reg.find_protocol(t.filename)
    except QimgError:
        return False
    return entry is None or entry.name == "file"


def target_from_image_opts(text: str) -> tuple[str, str | None, dict[str, Any]]:
    """A ``--target-image-opts`` string as (file name, driver, the other options), for the
    checks convert makes before it opens the target (which :func:`open` then does with the
    string itself). The name is "" when options alone name the data (``file.driver=nbd``)."""
    from .options import parse_dotted

    opts: dict[str, Any] = dict(parse_dotted(text))
    fmt = opts.pop("driver", None)
    fname = opts.pop("file.filename", None) or opts.pop("filename", None)
    fdriver = opts.get("file.driver")
    reg = get_registry()
    remote = fdriver not in (None, "file") or (fmt is not None and fmt != "file" and fmt not in reg.formats)
    if fname is None and not remote:
        raise QimgError(f"Could not open '{text}': A block device must be specified for \"file\"")
    return fname or "", fmt, opts


def parse_target(target: Any, fmt: str | None, image_opts: bool, options: Mapping[str, Any] | None) -> Target:
    """``qimg.open``'s first argument, whatever its kind, as a :class:`Target`."""
    from .names import flatten_options, parse_json_name

    extra = dict(options or {})
    if not isinstance(target, (str, os.PathLike)) and hasattr(target, "items"):
        if fmt:
            raise QimgError("--image-opts and --format are mutually exclusive")
        text, typed = flatten_options(target)
        return target_from_options(text, typed, None, None, extra)
    name = os.fspath(target)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not image_opts and name.startswith("json:"):
        # QEMU's json: pseudo-protocol: the same options --image-opts takes, as a JSON object
        # (a -f format still wins over its "driver")
        text, typed = parse_json_name(name)
        return target_from_options(text, typed, None, fmt, extra, joined=True)
    if image_opts:
        if fmt:
            raise QimgError("--image-opts and --format are mutually exclusive")
        return target_from_options(name, {}, None, None, extra)
    return Target(name, fmt, extra, True, [], {})


def shown_name(target: Any) -> str:
    from .names import options_text

    if not isinstance(target, (str, os.PathLike)) and hasattr(target, "items"):
        return options_text(target)
    name = os.fspath(target)
    return os.fsdecode(name) if isinstance(name, bytes) else name
