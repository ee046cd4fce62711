"""``--object`` definitions: ``secret`` (passphrases for encrypted images, looked up by id here)
and the TLS credentials types (:mod:`qimg.tlscreds`), which share one namespace of ids."""
from __future__ import annotations

import base64

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
        try:
            with open(pairs["file"], "rb") as f:
                value = f.read()
        except OSError as e:
            raise QimgError(f"Unable to read {pairs['file']}: {e.strerror}") from None
    else:
        raise QimgError("Either 'file' or 'data' must be provided")
    if pairs.get("format") == "base64":
        try:
            value = base64.b64decode(value, validate=True)
        except ValueError:
            raise QimgError("Unable to decode base64 secret") from None
    _secrets[ident] = value


def get_secret(ident: str) -> bytes:
    try:
        return _secrets[ident]
    except KeyError:
        raise QimgError(f"No secret with id '{ident}'") from None
