"""Discovery of the ``qimg`` entry-point group: qimg's one reader of installed distributions.

``importlib.metadata`` (what pluggy's ``load_setuptools_entrypoints`` uses) imports zipfile,
email, csv, ... and parses every distribution's metadata: ~33 ms measured on the reference
machine, more than a whole ``qimg info`` of a raw image, on every ``qimg`` start. What it reads
for entry points is simple, so this module reads the same files itself, in its order: for each
``sys.path`` entry, each ``*.dist-info``/``*.egg-info`` directory's ``entry_points.txt`` (a
directory on the path is listed with ``os``; a zip archive on the path is read with ``zipfile``,
imported only then), then the distributions that other import finders on ``sys.meta_path``
supply through their ``find_distributions`` (the protocol importlib.metadata itself asks them
by). There is no fallback to importlib.metadata at run time; tests/test_perf_paths.py checks this
reader against it, with a zip archive and a finder of its own on the path.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator

_METADATA_DIRS = (".dist-info", ".egg-info")
#: finders that supply no distributions besides the ``sys.path`` scan below (``PathFinder`` is
#: that scan; setuptools' editable-install finder supplies none)
_PATH_FINDERS = ("BuiltinImporter", "FrozenImporter", "PathFinder", "DistutilsMetaFinder")


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


def _scan_dir(path: str, key: bytes, group: str, found: list[tuple[str, str]]) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        if name.lower().endswith(_METADATA_DIRS):
            data = _read_file(os.path.join(path, name, "entry_points.txt"))
            if data is not None and key in data:  # cheap pre-filter before decoding and parsing
                found.extend(_parse_group(data.decode("utf-8"), group))


def _scan_zip(path: str, group: str, found: list[tuple[str, str]]) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            tops: dict[str, None] = {}
            for name in z.namelist():
                tops.setdefault(name.split("/", 1)[0], None)
            for top in tops:
                if top.lower().endswith(_METADATA_DIRS):
                    try:
                        data = z.read(top + "/entry_points.txt")
                    except KeyError:
                        continue
                    found.extend(_parse_group(data.decode("utf-8"), group))
    except (OSError, zipfile.BadZipFile):
        return


def _scan_path(key: bytes, group: str, found: list[tuple[str, str]]) -> None:
    """What importlib.metadata's ``PathFinder`` finds: the ``sys.path`` entries, in order."""
    for entry in sys.path:
        path = entry or "."
        if os.path.isdir(path):
            _scan_dir(path, key, group, found)
        elif os.path.isfile(path):
            _scan_zip(path, group, found)


def _scan(group: str) -> list[tuple[str, str]]:
    """Entry points of ``group`` as (name, value), in importlib.metadata's order: each finder of
    ``sys.meta_path`` in turn, the path finder's part read here, any other finder's asked by the
    ``find_distributions`` protocol (setuptools' editable-install finder supplies none)."""
    found: list[tuple[str, str]] = []
    key = group.encode()
    for finder in sys.meta_path:
        name = getattr(finder, "__name__", type(finder).__name__)
        if name == "PathFinder":
            _scan_path(key, group, found)
        elif name not in _PATH_FINDERS and hasattr(finder, "find_distributions"):
            from importlib.metadata import DistributionFinder

            for dist in finder.find_distributions(DistributionFinder.Context()):
                text = dist.read_text("entry_points.txt")
                if text:
                    found.extend(_parse_group(text, group))
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
    return _scan(group)


def load(value: str) -> object:
    """Import an entry point's ``module:attr.attr [extras]`` value."""
    from .registry import import_module

    value = value.split("[", 1)[0].strip()
    module, _, attr = value.partition(":")
    obj: object = import_module(module.strip())
    for part in attr.strip().split(".") if attr.strip() else []:
        obj = getattr(obj, part)
    return obj
