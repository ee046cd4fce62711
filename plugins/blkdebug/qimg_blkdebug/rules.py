"""blkdebug's rules, as QEMU's block/blkdebug.c keeps them: ``inject-error`` and ``set-state``
sections from a config file (QEMU's ini-like format) and from open options (``inject-error.0.event=...``
or one unnumbered section, ``json:`` lists the same), events that arm rules, and the check each
request makes against the armed ones.

Semantics (QEMU 7.2):

- the image starts in state 1; a rule with a ``state`` (not 0) applies only in that state;
- an event (the format driver's ``debug_event("l1_update")``, ``none`` once when the node
  opens) arms the ``inject-error`` rules of that event, replacing what was armed before, and
  applies the ``set-state`` rules (the last one processed wins);
- a request of an I/O type (read, write, write-zeroes, discard, flush, block-status) fails with
  the first armed rule that covers it: its ``iotype`` (default: all but block-status) and its
  ``sector`` (default: any offset; else the request must contain that sector's first byte); a
  rule with ``once`` is used up; ``errno`` 0 lets the request through.
"""
from __future__ import annotations

import errno as _errno

from qimg.errors import QimgError, invalid_parameter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: QEMU's BlkdebugEvent names, in QAPI order
EVENTS = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table", "l2_load", "l2_update",
    "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write", "read_aio", "read_backing_aio",
    "read_compressed", "write_aio", "write_compressed", "vmstate_load", "vmstate_save", "cow_read", "cow_write",
    "reftable_load", "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
    "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
    "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev",
    "pwritev_zero", "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
)
#: QEMU's BlkdebugIOType names
IO_TYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
READ, WRITE, WRITE_ZEROES, DISCARD, FLUSH, BLOCK_STATUS = IO_TYPES
_DEFAULT_IOTYPES = frozenset(IO_TYPES[:5])

#: the options of each section, as QEMU's QemuOptsLists type them
SECTIONS: dict[str, dict[str, str]] = {
    "inject-error": {"event": "string", "state": "number", "iotype": "string", "errno": "number",
                     "sector": "number", "once": "bool", "immediately": "bool"},
    "set-state": {"event": "string", "state": "number", "new_state": "number"},
}


class Rule:
    __slots__ = ("event", "action", "state", "iotypes", "error", "once", "offset", "new_state")

    def __init__(self, event: str, action: str, state: int) -> None:
        self.event, self.action, self.state = event, action, state
        self.iotypes: frozenset[str] = _DEFAULT_IOTYPES
        self.error, self.once, self.offset, self.new_state = _errno.EIO, False, -1, 0


# -- sections: from a config file and from options -------------------------------------------
def _word(line: str, i: int, n: int) -> tuple[str, int]:
    """scanf's ``%Ns`` from ``i``: leading blanks skipped, up to ``n`` non-blank characters."""
    while i < len(line) and line[i].isspace():
        i += 1
    j = i
    while j < len(line) and j - i < n and not line[j].isspace():
        j += 1
    return line[i:j], j


def _literal(line: str, i: int, text: str) -> int:
    """scanf's format text from ``i`` (a blank matches any run of blanks): the index after it,
    or -1 when the line does not match."""
    for ch in text:
        if ch == " ":
            while i < len(line) and line[i].isspace():
                i += 1
        elif i < len(line) and line[i] == ch:
            i += 1
        else:
            return -1
    return i


def _set(line: str, i: int, stop: str, n: int) -> str:
    """scanf's ``%N[^stop]`` from ``i``: at least one character, up to ``n``."""
    j = i
    while j < len(line) and j - i < n and line[j] not in stop:
        j += 1
    return line[i:j]


def _group_line(line: str) -> tuple[str, str | None] | None:
    """``[group "id"]`` or ``[group]`` as QEMU's two sscanf calls match them (the closing
    characters are not checked, as sscanf stops counting there)."""
    word, i = _word(line, 1, 63)
    if word:
        j = _literal(line, i, ' "')
        if j >= 0:
            ident = _set(line, j, '"', 63)
            if ident:
                return word, ident
    group = _set(line, 1, "]", 63)
    return (group, None) if group else None


def _arg_line(line: str) -> tuple[str, str] | None:
    """``name = "value"`` as QEMU's sscanf calls match it; a line with any word also matches
    the second one (``name = ""``), which does not check what follows the word."""
    word, i = _word(line, 0, 63)
    if not word:
        return None
    j = _literal(line, i, ' = "')
    if j >= 0:
        value = _set(line, j, '"', 1023)
        if value:
            return word, value
    return word, ""


def _fgets_lines(text: str) -> list[str]:
    """The lines QEMU's fgets(line, 1024) reads: with their newline, at most 1023 characters."""
    out = []
    for piece in text.split("\n"):
        out.append(piece + "\n")
    if text.endswith("\n") or not text:
        out.pop()
    else:
        out[-1] = out[-1][:-1]
    return [line[i : i + 1023] for line in out for i in range(0, max(len(line), 1), 1023)]


def parse_config(text: str) -> list[tuple[str, dict[str, str]]]:
    """The sections of a config file as QEMU's qemu_config_parse reads them: ``[group]`` or
    ``[group "id"]`` lines, ``name = "value"`` lines, ``#`` comments, empty lines. A section is
    checked (its group, its options) when the next one starts or the file ends, as QEMU does."""
    sections: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    ids: set[tuple[str, str]] = set()

    def done() -> None:
        if sections:
            group, section = sections[-1]
            if group not in SECTIONS:
                raise QimgError(f"There is no option group '{group}'")
            if "id" in section:
                if (group, section["id"]) in ids:
                    raise QimgError(f"Duplicate ID '{section['id']}' for {group}")
                ids.add((group, section["id"]))
            _typed(section, SECTIONS[group])

    for line in _fgets_lines(text):
        if line.startswith(("\n", "#")):
            continue
        if line.startswith("["):
            g = _group_line(line)
            if g is not None:
                done()
                current = {} if g[1] is None else {"id": g[1]}
                sections.append((g[0], current))
                continue
        arg = _arg_line(line)
        if arg is None:
            raise QimgError("parse error")
        if current is None:
            raise QimgError("no group defined")
        current[arg[0]] = arg[1]
    done()
    return sections


def sections_from_options(options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ``inject-error``/``set-state`` sections of open options, taken out of ``options``:
    ``inject-error.event=x`` is one section, ``inject-error.0.event=x,inject-error.1.event=y``
    several (a ``json:`` list arrives so); QEMU's errors for anything else."""
    out: list[tuple[str, dict[str, Any]]] = []
    for group, known in SECTIONS.items():
        prefix = group + "."
        sub = {k[len(prefix):]: options.pop(k) for k in list(options) if k.startswith(prefix)}
        if not sub:
            continue
        plain = {k: v for k, v in sub.items() if k in known}
        rest = {k: v for k, v in sub.items() if k not in known}
        if plain and rest:
            raise QimgError(f"Unknown option '{next(iter(rest))}' for [{group}]")
        if plain:
            out.append((group, plain))
            continue
        # enumerated sections: 0., 1., ... without gaps
        items: dict[int, dict[str, Any]] = {}
        for key, value in rest.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or str(int(index)) != index:
                raise QimgError(f"Unused option '{key}' for [{group}]")
            items.setdefault(int(index), {})[name] = value
        for i in range(len(items)):
            if i not in items:
                bad = next(f"{j}.{n}" for j in sorted(items) if j > i for n in items[j])
                raise QimgError(f"Unused option '{bad}' for [{group}]")
            section = items[i]
            if "" in section:
                raise QimgError(f"[{group}] section (index {i}) does not consist of keys")
            for name in section:
                if name not in known:
                    raise QimgError(f"[{group}] section doesn't support the option '{name}'")
            out.append((group, section))
    return out


def _typed(section: dict[str, Any], known: dict[str, str]) -> dict[str, Any]:
    from qimg.options import BOOL, Option
    from qimg.runtime import parse_number

    out: dict[str, Any] = {}
    for name, value in section.items():
        if name == "id":
            continue
        kind = known.get(name)
        if kind is None:
            raise invalid_parameter(name)
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise QimgError(f"Parameter '{name}' expects a number")
            out[name] = value if isinstance(value, int) else parse_number(name, value)
        elif kind == "bool":
            out[name] = value if isinstance(value, bool) else Option(name, BOOL, "").convert(str(value))
        else:
            if not isinstance(value, str):
                raise QimgError(f"Invalid parameter type for '{name}', expected: string")
            out[name] = value
    return out


def _signed(value: int, bits: int) -> int:
    """A number option as the C integer QEMU stores it in."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def make_rule(group: str, section: dict[str, Any]) -> Rule:
    """QEMU's add_rule for one section."""
    opts = _typed(section, SECTIONS[group])
    event = opts.get("event")
    if event is None:
        raise QimgError("Missing event name for rule")
    if event not in EVENTS:
        raise QimgError(f"invalid parameter value: {event}")
    rule = Rule(event, group, _signed(opts.get("state", 0), 32))
    if group == "inject-error":
        rule.error = _signed(opts.get("errno", _errno.EIO), 32)
        rule.once = bool(opts.get("once", False))
        sector = _signed(opts.get("sector", -1), 64)
        rule.offset = -1 if sector == -1 else (sector * 512) & ((1 << 64) - 1)
        iotype = opts.get("iotype")
        if iotype is not None:
            if iotype not in IO_TYPES:
                raise QimgError(f"invalid parameter value: {iotype}")
            rule.iotypes = frozenset((iotype,))
    else:
        rule.new_state = _signed(opts.get("new_state", 0), 32)
    return rule


# -- the engine --------------------------------------------------------------------------------
class Rules:
    """The rules of one blkdebug node and their state (QEMU's BDRVBlkdebugState)."""

    def __init__(self, sections: list[tuple[str, dict[str, Any]]]) -> None:
        self.by_event: dict[str, list[Rule]] = {}
        # all inject-error sections first, then the set-state ones (QEMU's two passes); each
        # goes to the head of its event's list
        for group in SECTIONS:
            for g, section in sections:
                if g == group:
                    rule = make_rule(group, section)
                    self.by_event.setdefault(rule.event, []).insert(0, rule)
        self.state = 1
        self.armed: list[Rule] = []

    def event(self, name: str) -> None:
        """QEMU's blkdebug_debug_event."""
        new_state = self.state
        injected = 0
        for rule in list(self.by_event.get(name, ())):
            if rule.state and rule.state != self.state:
                continue
            if rule.action == "inject-error":
                injected += 1
                if injected == 1:
                    self.armed = []
                self.armed.insert(0, rule)
            else:
                new_state = rule.new_state
        self.state = new_state

    def check(self, offset: int, length: int, iotype: str) -> int:
        """The errno a request fails with (0: it goes through): QEMU's rule_check."""
        for rule in self.armed:
            if (rule.offset == -1 or (length and offset <= rule.offset < offset + length)) and iotype in rule.iotypes:
                break
        else:
            return 0
        if not rule.error:
            return 0
        if rule.once:
            self.armed.remove(rule)
            self.by_event[rule.event].remove(rule)
        return rule.error
