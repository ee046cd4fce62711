"""Questions about the option tables (:mod:`qimg_cli.tables`) that documentation generated
from them asks: which names an option has in a profile, its description, its argument's name.
(Kept out of tables.py: a command's run needs none of it, and start-up pays for every line.)
"""
from __future__ import annotations

from .tables import NAMES, Command, Opt, _name, _version, command, global_options

# -- questions about an option -----------------------------------------------------------------

def short(o: Opt, profile: str) -> str | None:
    """The option letter in ``profile`` (None: it has none there)."""
    v = _version(profile)
    for raw in o.names:
        name, since, _, _ = _name(raw)
        if name[1] != "-" and since <= v:
            return name[1]
    return None


def longs(o: Opt, profile: str) -> list[str]:
    """The long names ``profile`` knows (qimg's exact-only names included), in table order."""
    v = _version(profile)
    return [name[2:] for name, since, _, _ in map(_name, o.names) if name[1] == "-" and since <= v]


def all_names(o: Opt) -> list[str]:
    """Every spelling in any profile (``-f``, ``--format``)."""
    return [_name(raw)[0] for raw in o.names]


def names_in(o: Opt, profile: str) -> list[str]:
    """The spellings ``profile`` has, short first."""
    c = short(o, profile)
    return ([f"-{c}"] if c else []) + [f"--{n}" for n in longs(o, profile)]


def description(o: Opt) -> str:
    """The option's help text without its names, as one paragraph."""
    lines = o.doc.split("\n")
    first = lines[0].strip()
    rest = [ln.strip() for ln in lines[1:]]
    if not rest and o.metavar and f" {o.metavar} " in first:
        # an entry whose names and text share one line ("-t, --cache MODE text")
        rest = [first.split(f" {o.metavar} ", 1)[1]]
    return " ".join(r for r in rest if r)


def argname(o: Opt) -> str:
    """The name of the option's argument for generated documentation ("" without one)."""
    if not o.arg:
        return ""
    if o.metavar:
        return o.metavar
    words = o.doc.split("\n")[0].split()
    last = words[-1] if words else ""
    return last if last and not last.startswith("-") and last != "--help" else "ARG"


def commands() -> list[Command]:
    return [command(n) for n in NAMES]  # type: ignore[misc]


__all__ = ["short", "longs", "all_names", "names_in", "description", "argname", "commands", "global_options"]
