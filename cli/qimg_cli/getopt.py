"""Command-line parsing with glibc ``getopt_long`` semantics, as qemu-img uses it.

qemu-img calls ``getopt_long`` with an option string starting with ``:`` (so getopt itself
prints nothing) and reports ``unrecognized option 'ARG'`` / ``missing argument for option
'ARG'`` where ARG is ``argv[optind - 1]``: the element getopt last stepped past. Reproducing
those messages exactly requires following glibc's argument permutation (non-options are moved
behind the options as scanning proceeds), so this module re-implements that algorithm from
its documented behaviour rather than leaning on click's parser:

- short option clusters (``-qp``), attached values (``-fraw``), values in the next argument;
- long options ``--name=value`` / ``--name value`` and unique prefixes (``--out=json``);
  a prefix matching several different options is an error (getopt's "ambiguous", which
  qemu-img reports as unrecognized);
- options after positionals (permutation), ``--`` ends options, ``-`` is a positional;
- ``require_order`` (the ``+`` of the top-level option string) stops at the first positional.

Long names that qemu-img 7.2 did not know (added by qemu-img 10.x) are "new": an abbreviation
that was unique among 7.2's names keeps its 7.2 meaning even if a new name shares the prefix.
"""
from __future__ import annotations

from qimg.values import FrozenValue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable


class GetoptError(Exception):
    """A usage error with qemu-img's text (``unrecognized option '-z'``).

    ``glibc`` holds the message glibc's getopt itself prints (without the program name) for
    commands whose option string lacks the leading ``:`` (qemu-img 7.2's ``measure``):
    ``invalid option -- 'Z'``, ``option '--size' requires an argument``...
    """

    def __init__(self, message: str, glibc: str = "") -> None:
        super().__init__(message)
        self.glibc = glibc or message


class Opt(FrozenValue):
    """One option: ``key`` identifies it in results; ``short`` is one letter or None.

    ``new_longs``: long names unknown to qemu-img 7.2 (lower priority when abbreviated).
    Immutable and compared by value, as the frozen dataclass it was (a plain class: importing
    dataclasses costs more than parsing a command line)."""

    __slots__ = ("key", "short", "longs", "has_arg", "new_longs")
    _fields = __slots__

    key: str
    short: str | None
    longs: tuple[str, ...]
    has_arg: bool
    new_longs: tuple[str, ...]

    def __init__(self, key: str, short: str | None = None, longs: tuple[str, ...] = (), has_arg: bool = False,
                 new_longs: tuple[str, ...] = ()) -> None:
        self._set(key=key, short=short, longs=longs, has_arg=has_arg, new_longs=new_longs)


def _is_nonopt(arg: str) -> bool:
    return not arg.startswith("-") or arg == "-"


def getopt(args: list[str], opts: list[Opt], *, require_order: bool = False, prog: str = "",
           on_option: Callable[[Opt, str | None], None] | None = None) -> tuple[list[tuple[Opt, str | None]], list[str]]:
    """Parse ``args`` (without the program/command name).

    ``prog`` is ``argv[0]`` (qemu-img passes the command name), which appears in messages
    when an unknown option starts a cluster (``-zU``: getopt has not moved past it yet).
    Returns ``(options in order, positionals)``. ``on_option`` is called for each option as
    it is recognised (before later errors are found), as qemu-img's switch statement acts.
    Raises :class:`GetoptError` with qemu-img's message.
    """
    shorts = {o.short: o for o in opts if o.short}
    longs: dict[str, tuple[Opt, bool]] = {}
    for o in opts:
        for name in o.longs:
            longs[name] = (o, False)
        for name in o.new_longs:
            longs.setdefault(name, (o, True))
    argv = [prog, *args]
    argc = len(argv)
    optind = 1
    first_nonopt = last_nonopt = 1
    nextchar = ""
    results: list[tuple[Opt, str | None]] = []

    def emit(o: Opt, value: str | None) -> None:
        results.append((o, value))
        if on_option is not None:
            on_option(o, value)

    def exchange() -> None:
        nonlocal first_nonopt, last_nonopt
        a = argv[first_nonopt:last_nonopt]
        b = argv[last_nonopt:optind]
        argv[first_nonopt:optind] = b + a
        first_nonopt += len(b)
        last_nonopt = optind

    while True:
        if not nextchar:
            if last_nonopt > optind:
                last_nonopt = optind
            if first_nonopt > optind:
                first_nonopt = optind
            if not require_order:
                if first_nonopt != last_nonopt and last_nonopt != optind:
                    exchange()
                elif last_nonopt != optind:
                    first_nonopt = optind
                while optind < argc and _is_nonopt(argv[optind]):
                    optind += 1
                last_nonopt = optind
            if optind != argc and argv[optind] == "--":
                optind += 1
                if first_nonopt != last_nonopt and last_nonopt != optind:
                    exchange()
                elif first_nonopt == last_nonopt:
                    first_nonopt = optind
                last_nonopt = argc
                optind = argc
            if optind == argc:
                if first_nonopt != last_nonopt:
                    optind = first_nonopt
                break
            if _is_nonopt(argv[optind]):
                break  # only reached with require_order
            arg = argv[optind]
            if arg.startswith("--"):
                body = arg[2:]
                name, eq, value = body.partition("=")
                optind += 1
                opt, full, ambiguous = _match_long(name, longs)
                if opt is None:
                    glibc = (f"option '--{body}' is ambiguous; possibilities:" + "".join(f" '--{n}'" for n in ambiguous)
                             if ambiguous else f"unrecognized option '--{body}'")
                    raise GetoptError(f"unrecognized option '{argv[optind - 1]}'", glibc)
                if opt.has_arg:
                    if eq:
                        emit(opt, value)
                    elif optind < argc:
                        optind += 1
                        emit(opt, argv[optind - 1])
                    else:
                        raise GetoptError(f"missing argument for option '{argv[optind - 1]}'",
                                          f"option '--{full}' requires an argument")
                else:
                    if eq:
                        raise GetoptError(f"unrecognized option '{argv[optind - 1]}'",
                                          f"option '--{full}' doesn't allow an argument")
                    emit(opt, None)
                continue
            nextchar = arg[1:]
        c, nextchar = nextchar[0], nextchar[1:]
        if not nextchar:
            optind += 1
        opt = shorts.get(c)
        if opt is None or c == ":":
            nextchar = ""
            raise GetoptError(f"unrecognized option '{argv[optind - 1]}'", f"invalid option -- '{c}'")
        if opt.has_arg:
            if nextchar:
                value = nextchar
                optind += 1
            elif optind == argc:
                raise GetoptError(f"missing argument for option '{argv[optind - 1]}'",
                                  f"option requires an argument -- '{c}'")
            else:
                value = argv[optind]
                optind += 1
            nextchar = ""
            emit(opt, value)
        else:
            emit(opt, None)
    return results, argv[optind:]


def _match_long(name: str, longs: dict[str, tuple[Opt, bool]]) -> tuple[Opt | None, str, list[str]]:
    """(option, its full name, []) or (None, "", ambiguous candidates in table order)."""
    if name in longs:
        return longs[name][0], name, []
    if not name:
        return None, "", []
    cands = {n: v for n, v in longs.items() if n.startswith(name)}
    distinct = {o for o, _ in cands.values()}
    if len(distinct) == 1:
        return distinct.pop(), next(iter(cands)), []
    old = {n: o for n, (o, new) in cands.items() if not new}
    if len(set(old.values())) == 1:
        n, o = next(iter(old.items()))
        return o, n, []
    return None, "", list(old) if old else list(cands)
