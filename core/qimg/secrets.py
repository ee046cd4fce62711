"""``--object`` definitions: ``secret`` (passphrases for encrypted images, looked up by id here)
and the TLS credentials types (:mod:`qimg.tlscreds`), which share one namespace of ids."""
from __future__ import annotations

import errno
import os

from .errors import QimgError, bad_value, invalid_parameter, missing_parameter
from .options import split_options

_secrets: dict[str, bytes] = {}


def add_object(text: str) -> None:
    """Register an object definition; only ``secret`` objects are meaningful to qimg."""
    import re

    items = split_options(text)
    if any(key == "" for key, _ in items):
        raise invalid_parameter("")  # an empty piece, even the implied first one
    if items and items[0][1] is None:  # QEMU's implied first key is qom-type
        items[0] = ("qom-type", items[0][0])
    for key, _ in items:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", key):
            raise invalid_parameter(key)
    pairs = dict(items)
    qom_type = pairs.pop("qom-type", None)
    if qom_type is None:
        raise missing_parameter("qom-type")
    from . import tlscreds

    if qom_type in tlscreds.TYPES:
        if pairs.get("id") and (pairs["id"] in _secrets or pairs["id"] in tlscreds._creds):
            raise QimgError(f"attempt to add duplicate property '{pairs['id']}' to object (type 'container')")
        tlscreds.add(qom_type, pairs)
        return
    if qom_type != "secret":
        raise bad_value("qom-type", qom_type)
    ident = pairs.get("id")
    if not ident:
        raise missing_parameter("id")
    for key in pairs:
        if key not in ("id", "data", "file", "format", "keyid", "iv", "loaded"):
            raise QimgError(f"Parameter '{key}' is unexpected")
    if ident in _secrets or ident in tlscreds._creds:
        raise QimgError(f"attempt to add duplicate property '{ident}' to object (type 'container')")
    if "data" in pairs and pairs["data"] is not None:
        value = pairs["data"].encode()
    elif "file" in pairs and pairs["file"] is not None:
        path = pairs["file"]
        try:
            f = open(path, "rb")
        except IsADirectoryError:  # (GLib opens a folder, and fails reading it)
            raise QimgError(f"Unable to read {path}: Error reading file \u201c{path}\u201d: "
                            f"{os.strerror(errno.EISDIR)}") from None
        except OSError as e:  # g_file_get_contents' words
            raise QimgError(f"Unable to read {path}: Failed to open file \u201c{path}\u201d: {e.strerror}") from None
        try:
            with f:
                value = f.read()
        except OSError as e:
            raise QimgError(f"Unable to read {path}: Error reading file \u201c{path}\u201d: {e.strerror}") from None
    else:
        raise QimgError("Either 'file' or 'data' must be provided")
    if pairs.get("format") == "base64":
        value = _base64(value)
    _secrets[ident] = value


_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n")


def _base64(data: bytes) -> bytes:
    """QEMU's qbase64_decode: only base64's characters (and newlines) are allowed, then GLib's
    g_base64_decode: whole groups of four decoded ('=' counts as a zero), a partial last group
    dropped, and one byte less for each '=' among the last two characters."""
    if any(b not in _BASE64 for b in data):
        raise QimgError("Base64 data contains invalid characters")
    out = bytearray()
    value = count = 0
    ranked = [b for b in data if b != 0x0A]
    for b in ranked:
        value = (value << 6) | _B64_VALUES.get(b, 0)
        count += 1
        if count == 4:
            out += value.to_bytes(3, "big")
            value = count = 0
    for b in ranked[-2:]:
        if b == 0x3D and out:
            out.pop()
    return bytes(out)


_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def get_secret(ident: str) -> bytes:
    try:
        return _secrets[ident]
    except KeyError:
        raise QimgError(f"No secret with id '{ident}'") from None
