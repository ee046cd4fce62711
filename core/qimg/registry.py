"""The registry plugins fill: formats and protocols by name, loaded lazily."""
from __future__ import annotations

import sys

from .errors import QimgError, QimgValueError
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .driver import Format
    from .protocol import Protocol

    ProbeFn = Callable[[bytes, str], int]


def import_module(name: str) -> Any:
    """``importlib.import_module`` for an absolute name, without importing importlib and
    warnings at start-up (``-X importtime`` shows such imports, unlike import_module's)."""
    __import__(name)
    return sys.modules[name]


def load_object(path: str) -> Any:
    """Import ``"package.module:Attr"``."""
    module, _, attr = path.partition(":")
    obj: Any = import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def _load_driver(kind: str, name: str, path: str) -> Any:
    """Import a registered driver class; a broken plugin becomes one clean error line."""
    try:
        return load_object(path)
    except (ImportError, AttributeError) as e:
        raise QimgError(f"Could not load the {kind} driver '{name}' ({path}): {e}") from None


#: bytes a probe sees (QEMU's BLOCK_PROBE_BUF_SIZE)
PROBE_BYTES = 512

#: QEMU asks its drivers in the order it registered them and keeps the first best score. Only
#: vdi (its magic at byte 64) can tie with another format's magic at byte 0 (a polyglot): the
#: formats listed win such ties, in this order, over the others (registration order). Measured
#: with X+vdi polyglots; qemu-img 7.2 and 10.0 link their drivers in different orders.
PROBE_FIRST: dict[str, tuple[str, ...]] = {
    "7.2": ("qed", "vdi"),
    "10.0": ("qed", "vhdx", "vmdk", "vpc", "vdi"),
}


class FormatEntry(Value):
    """A registered format: its name, ``"module:Class"`` driver path, probe and description."""

    __slots__ = ("name", "driver", "probe", "description", "plugin", "_cls")
    _fields = ("name", "driver", "probe", "description", "plugin")

    def __init__(self, name: str, driver: str, probe: ProbeFn | None = None, description: str = "",
                 plugin: str = "", _cls: Any = None) -> None:
        self.name = name
        self.driver = driver
        self.probe = probe
        self.description = description
        self.plugin = plugin
        self._cls = _cls

    def load(self) -> "type[Format]":
        if self._cls is None:
            self._cls = _load_driver("format", self.name, self.driver)
        return self._cls


class ProtocolEntry(Value):
    """A registered protocol: its name, ``"module:Class"`` driver path and filename prefixes."""

    __slots__ = ("name", "driver", "prefixes", "plugin", "_cls")
    _fields = ("name", "driver", "prefixes", "plugin")

    def __init__(self, name: str, driver: str, prefixes: tuple[str, ...] = (), plugin: str = "",
                 _cls: Any = None) -> None:
        self.name = name
        self.driver = driver
        self.prefixes = prefixes
        self.plugin = plugin
        self._cls = _cls

    def load(self) -> "type[Protocol]":
        if self._cls is None:
            self._cls = _load_driver("protocol", self.name, self.driver)
        return self._cls


class Registry:
    """What plugins registered. Duplicate names are refused (pluggy would hide them)."""

    def __init__(self) -> None:
        self.formats: dict[str, FormatEntry] = {}
        self.protocols: dict[str, ProtocolEntry] = {}
        self.current_plugin = ""

    def add_format(self, name: str, driver: str, *, probe: ProbeFn | None = None, description: str = "") -> None:
        if name in self.formats:
            other = self.formats[name].plugin
            raise QimgError(f"Format '{name}' is registered twice (by {other} and {self.current_plugin})")
        self.formats[name] = FormatEntry(name, driver, probe, description, self.current_plugin)

    def add_protocol(self, name: str, driver: str, *, prefixes: tuple[str, ...] = ()) -> None:
        if name in self.protocols:
            raise QimgError(f"Protocol '{name}' is registered twice")
        self.protocols[name] = ProtocolEntry(name, driver, tuple(prefixes) or (name,), self.current_plugin)

    def format(self, name: str) -> FormatEntry:
        """Entry for a format name, or qemu-img's ``Unknown file format`` error."""
        try:
            return self.formats[name]
        except KeyError:
            raise QimgValueError(f"Unknown file format '{name}'") from None

    def format_names(self) -> list[str]:
        return sorted(self.formats)

    def scores(self, head: bytes, filename: str) -> dict[str, int]:
        """Every probing format's score for a file's first bytes (``head``), as QEMU's probes
        see them: 512 bytes, zeroes past the end of a shorter file."""
        head = head[:PROBE_BYTES].ljust(PROBE_BYTES, b"\0")
        out: dict[str, int] = {}
        for name, entry in self.formats.items():
            if entry.probe is not None:
                out[name] = int(entry.probe(head, filename))
        return out

    def probe(self, head: bytes, filename: str) -> FormatEntry | None:
        """Best-scoring format for the first bytes of a file, as QEMU's bdrv_probe_all: an
        empty file is raw; among equal scores QEMU's driver order decides (:data:`PROBE_FIRST`)."""
        if not head and "raw" in self.formats:
            return self.formats["raw"]
        scores = self.scores(head, filename)
        best = max(scores.values(), default=0)
        if best <= 0:
            return None
        tied = [n for n, sc in scores.items() if sc == best]
        if len(tied) > 1:
            from . import compat

            first = PROBE_FIRST.get(compat.name(), ())
            tied.sort(key=lambda n: first.index(n) if n in first else len(first))
        return self.formats[tied[0]]

    def protocol_for(self, filename: str) -> ProtocolEntry | None:
        """The protocol a ``prefix:`` filename selects, or None for a plain path or a prefix
        no installed protocol has (:meth:`find_protocol` says which)."""
        try:
            return self.find_protocol(filename)
        except QimgError:
            return None

    def find_protocol(self, filename: str) -> ProtocolEntry | None:
        """QEMU's ``bdrv_find_protocol`` for a name the user typed: None for a plain path (no
        ``:`` before the first ``/``, or a host device), the entry whose prefixes hold the
        name's prefix exactly, or QEMU's ``Unknown protocol 'x'`` error."""
        from .names import is_host_device, path_has_protocol, protocol_prefix

        if not path_has_protocol(filename) or is_host_device(filename):
            return None
        head = protocol_prefix(filename)
        for entry in self.protocols.values():
            if head in entry.prefixes:
                return entry
        raise QimgValueError(f"Unknown protocol '{head}'")

    def protocol(self, name: str) -> ProtocolEntry | None:
        """The protocol registered under a driver name (``driver=nbd``), or None."""
        return self.protocols.get(name)

    def driver_names(self) -> list[str]:
        """Every driver name ``-f``/``driver=`` accepts: formats and protocols (``--help``)."""
        return sorted(set(self.formats) | set(self.protocols))
