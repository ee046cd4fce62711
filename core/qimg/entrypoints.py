"""Cheap discovery of the ``qimg`` entry-point group.

``importlib.metadata`` (what pluggy's ``load_setuptools_entrypoints`` uses) imports zipfile,
email, csv, ... and parses every distribution's metadata: tens of milliseconds on every ``qimg``
start. The installed-distribution layout it reads is simple, so for the common case (plain
directories on ``sys.path``, the standard path finder) this module reads the same files itself:
each ``*.dist-info``/``*.egg-info`` directory's ``entry_points.txt``, in ``sys.path`` order and
directory order, as ``importlib.metadata.distributions()`` does. Anything unusual (a zip file on
the path, a meta-path finder that supplies distributions) falls back to importlib.metadata, so no
plugin is ever missed.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator

_METADATA_DIRS = (".dist-info", ".egg-info")
_STANDARD_FINDERS = ("BuiltinImporter", "FrozenImporter", "PathFinder", "DistutilsMetaFinder")


def _fast_path_ok() -> bool:
    for finder in sys.meta_path:
        name = getattr(finder, "__name__", type(finder).__name__)
        if name not in _STANDARD_FINDERS and hasattr(finder, "find_distributions"):
            return False
    return True


def _parse_group(text: str, group: str) -> Iterator[tuple[str, str]]:
    """``(name, value)`` of one section of an entry_points.txt (an ini file)."""
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[" and line.endswith("]"):
            inside = line[1:-1].strip() == group
            continue
        if inside:
            name, sep, value = line.partition("=")
            if sep:
                yield name.strip(), value.strip()


def _scan(group: str) -> list[tuple[str, str]] | None:
    """Entry points of ``group`` as (name, value), or None when the fast scan cannot be trusted."""
    if not _fast_path_ok():
        return None
    found: list[tuple[str, str]] = []
    key = group.encode()
    for entry in sys.path:
        path = entry or "."
        try:
            names = os.listdir(path)
        except NotADirectoryError:
            if os.path.exists(path):
                return None  # a zip archive on the path: let importlib.metadata read it
            continue
        except OSError:
            continue
        for name in names:
            if not name.lower().endswith(_METADATA_DIRS):
                continue
            data = _read_file(os.path.join(path, name, "entry_points.txt"))
            if data is not None and key in data:  # cheap pre-filter before decoding and parsing
                found.extend(_parse_group(data.decode("utf-8"), group))
    return found


def _read_file(path: str) -> bytes | None:
    """A small file's bytes, or None if it cannot be read (plain os calls: this runs for every
    installed distribution on every start)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no entry points (or an egg-info file)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def entry_points(group: str) -> list[tuple[str, str]]:
    """Every ``(name, "module:attr")`` of ``group``, first occurrence of a name first."""
    found = _scan(group)
    if found is None:
        import importlib.metadata as md

        found = [(ep.name, ep.value) for dist in md.distributions() for ep in dist.entry_points
                 if ep.group == group]
    return found


def load(value: str) -> object:
    """Import an entry point's ``module:attr.attr [extras]`` value."""
    from .registry import import_module

    value = value.split("[", 1)[0].strip()
    module, _, attr = value.partition(":")
    obj: object = import_module(module.strip())
    for part in attr.strip().split(".") if attr.strip() else []:
        obj = getattr(obj, part)
    return obj
