"""Whose behaviour qimg reproduces: a *profile*, chosen by the environment variable
``QIMG_COMPAT``: ``10.0`` (the default, what current distributions ship) or ``7.2``.

A profile covers everything a script can see: help texts, which options exist, output lines and
JSON keys, messages, exit codes. The differences between profiles are data, kept in the tables
below (and beside each command's option table), never ``if version`` branches scattered through
the code: code asks :func:`has` for a named behaviour, or :func:`text` for a message whose
wording changed, and the tables say which profile has what.
"""
from __future__ import annotations

import os

#: the profiles, oldest first: name -> the qemu-img version it reproduces
PROFILES: dict[str, tuple[int, int, int]] = {
    "7.2": (7, 2, 0),
    "10.0": (10, 0, 2),
}
DEFAULT = "10.0"

#: named behaviours -> the first profile that has them (older profiles do not)
FEATURES: dict[str, str] = {}

#: messages whose wording changed -> {first profile with this wording: text}
TEXTS: dict[str, dict[str, str]] = {}


class UnknownProfile(ValueError):
    pass


def name() -> str:
    """The selected profile's name (``QIMG_COMPAT``, read at each call so tests can switch)."""
    value = os.environ.get("QIMG_COMPAT") or DEFAULT
    if value not in PROFILES:
        raise UnknownProfile(
            f"QIMG_COMPAT={value!r} is not a profile qimg knows (choose one of: {', '.join(PROFILES)})"
        )
    return value


def version() -> tuple[int, int, int]:
    """The qemu-img version the selected profile reproduces, e.g. (10, 0, 2)."""
    return PROFILES[name()]


def version_string() -> str:
    return ".".join(map(str, version()))


def has(feature: str) -> bool:
    """Whether the selected profile has the named behaviour (a key of :data:`FEATURES`)."""
    return version() >= PROFILES[FEATURES[feature]]


def text(key: str) -> str:
    """The selected profile's wording of a message (a key of :data:`TEXTS`)."""
    v = version()
    best = None
    for profile, msg in TEXTS[key].items():
        pv = PROFILES[profile]
        if pv <= v and (best is None or pv > best[0]):
            best = (pv, msg)
    if best is None:
        raise KeyError(f"{key!r} has no wording for profile {name()}")
    return best[1]
