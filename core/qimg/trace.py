"""Named trace events, as QEMU's ``-T``/``--trace`` (log backend).

Code emits ``trace.event("map_entry", start=0, length=4096)``; nothing happens unless the
event was enabled (``qimg -T enable=map_*``), so the cost when tracing is off is one global
lookup and one function call. Hot loops may test :data:`active` first.

Every event is declared in :data:`EVENTS` (name -> field list, shown by ``-T help``); plugins
may add theirs with :func:`declare`. An enabled event prints one line, like QEMU's log
backend: ``name field value field value`` (strings quoted), on stderr or the ``file=`` file.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import IO, Any

#: the catalogue: event name -> its fields (documentation only)
EVENTS: dict[str, str] = {
    # ops.info
    "info_image": "filename format virtual_size",
    # ops.map
    "map_entry": "start length depth present zero data offset",
    # ops.check
    "check_start": "filename fix",
    "check_result": "corruptions leaks check_errors corruptions_fixed leaks_fixed",
    # ops.measure
    "measure_result": "format required fully_allocated",
    # ops.create
    "create_image": "filename format size",
    # ops.resize
    "resize_image": "filename old_size new_size shrink preallocation",
    # ops.snapshot
    "snapshot_op": "filename op name",
    # ops.amend
    "amend_image": "filename options",
    # ops.bitmap (in ops.amend)
    "bitmap_op": "filename op name",
}

#: True when at least one event is enabled (cheap test for hot paths)
active = False
_enabled: set[str] = set()
_out: IO[str] | None = None


def declare(name: str, fields: str = "") -> None:
    """Add an event to the catalogue (plugins call this at import time)."""
    EVENTS.setdefault(name, fields)


def list_events() -> list[str]:
    return list(EVENTS)


def enable(pattern: str, state: bool = True) -> bool:
    """Enable (or disable) events matching a glob; return True if any matched."""
    global active
    import fnmatch  # only -T needs it: not at start-up

    matched = [n for n in EVENTS if fnmatch.fnmatchcase(n, pattern)]
    for n in matched:
        if state:
            _enabled.add(n)
        else:
            _enabled.discard(n)
    active = bool(_enabled)
    return bool(matched)


def is_enabled(name: str) -> bool:
    return name in _enabled


def set_output(stream: IO[str] | None) -> None:
    global _out
    _out = stream


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return "(null)"
    return str(value)


def event(name: str, /, **fields: Any) -> None:
    """Emit a trace event if it is enabled."""
    if not active or name not in _enabled:
        return
    parts = [name]
    for k, v in fields.items():
        parts.append(f"{k} {_fmt(v)}")
    out = _out or sys.stderr
    out.write(" ".join(parts) + "\n")
    out.flush()


def reset() -> None:
    """Disable every event (tests)."""
    global active, _out
    _enabled.clear()
    active = False
    _out = None
