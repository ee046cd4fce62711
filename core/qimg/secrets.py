"""``--object secret,...`` definitions: passphrases for encrypted images, looked up by id."""
from __future__ import annotations

import base64

from .errors import QimgError
from .options import split_options

_secrets: dict[str, bytes] = {}


def add_object(text: str) -> None:
    """Register an object definition; only ``secret`` objects are meaningful to qimg."""
    pairs = dict(split_options(text))
    qom_type = pairs.pop("qom-type", None)
    if qom_type is None and text.split(",", 1)[0] in ("secret",):
        qom_type = text.split(",", 1)[0]
        pairs.pop(qom_type, None)
    if qom_type != "secret":
        raise QimgError(f"Invalid object type '{qom_type}'" if qom_type else "Parameter 'id' is missing")
    ident = pairs.get("id")
    if not ident:
        raise QimgError("Parameter 'id' is missing")
    if ident in _secrets:
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
        raise QimgError("Either 'data' or 'file' must be provided")
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
