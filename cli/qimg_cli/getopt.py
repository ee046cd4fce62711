"""glibc's ``getopt_long``, re-implemented from its documented behaviour (qemu-img parses
every command line with it, and its messages and argument order show through):

- short option clusters (``-qp``), attached values (``-fraw``), values in the next argument;
- long options ``--name=value`` / ``--name value`` and unambiguous prefixes (``--out=json``); a
  prefix is ambiguous when the options it matches differ (another value, or one takes an
  argument and the other not): options that are the same option under two names are not;
- argument permutation (non-options are moved behind the options as scanning proceeds, which
  decides what ``argv[optind - 1]`` is when an error is met), ``--`` ends the options, ``-`` is
  a non-option;
- the option string's ``+`` (stop at the first non-option) and ``-`` (hand each non-option back
  in order, as an option of its own, :data:`NONOPT`).

:func:`getopt` only finds; it prints nothing. An error is a :class:`GetoptError` that holds
what glibc knows at that point (the kind, the option letter or name, ``argv[optind - 1]``), and
:func:`qimg_cli.parse.report` words it as the selected qemu-img does. This module imports nothing.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: the key of a non-option handed back in order (``-`` ordering): C getopt's value 1
NONOPT = 1

#: error kinds
UNKNOWN_SHORT = "unknown-short"      # invalid option -- 'z'
UNKNOWN_LONG = "unknown-long"        # unrecognized option '--zz'
AMBIGUOUS = "ambiguous"              # option '--f' is ambiguous; possibilities: ...
MISSING_SHORT = "missing-short"      # option requires an argument -- 'f'
MISSING_LONG = "missing-long"        # option '--format' requires an argument
UNEXPECTED_ARG = "unexpected-arg"    # option '--force' doesn't allow an argument


class GetoptError(Exception):
    """A usage error as getopt finds it.

    ``kind`` is one of the module's error kinds; ``char`` the option letter (short errors);
    ``text`` what followed ``--`` (long errors: name and ``=value`` as given); ``name`` the
    full long name matched (missing or unexpected argument); ``candidates`` the long names an
    ambiguous prefix matches, in table order; ``element`` is ``argv[optind - 1]`` at the
    error (what qemu-img 7.2 quotes), ``at`` its index in ``argv`` (0: ``prog``).
    """

    def __init__(self, kind: str, element: str, *, at: int = -1, char: str = "", text: str = "", name: str = "",
                 candidates: tuple[str, ...] = ()) -> None:
        super().__init__(kind)
        self.kind, self.element, self.at, self.char, self.text = kind, element, at, char, text
        self.name, self.candidates = name, candidates

    def glibc_message(self) -> str:
        """What glibc's getopt prints after ``argv[0]: `` when the option string does not
        start with ``:``."""
        k = self.kind
        if k == UNKNOWN_SHORT:
            return f"invalid option -- '{self.char}'"
        if k == MISSING_SHORT:
            return f"option requires an argument -- '{self.char}'"
        if k == UNKNOWN_LONG:
            return f"unrecognized option '--{self.text}'"
        if k == AMBIGUOUS:
            return f"option '--{self.text}' is ambiguous; possibilities:" + "".join(f" '--{n}'" for n in self.candidates)
        if k == MISSING_LONG:
            return f"option '--{self.name}' requires an argument"
        return f"option '--{self.name}' doesn't allow an argument"

    def qemu_message(self) -> str:
        """qemu-img 7.2's own words (option string ``:...``: getopt silent, ``?`` and ``:``
        reported as unrecognized or missing, quoting ``argv[optind - 1]``)."""
        if self.kind in (MISSING_SHORT, MISSING_LONG):
            return f"missing argument for option '{self.element}'"
        return f"unrecognized option '{self.element}'"


def _is_nonopt(arg: str) -> bool:
    return arg[:1] != "-" or arg == "-"


def getopt(args: Sequence[str], shorts: dict[str, tuple[object, bool]],
           longs: Sequence[tuple[str, object, bool]], *, ordering: str = "", prog: str = "",
           before: object = None) -> Iterator[tuple[object, str | None]]:
    """Yield ``(key, value)`` for each option of ``args`` (without the program name) in order,
    then return; raise :class:`GetoptError` where getopt would report one.

    ``shorts``: letter -> (key, takes an argument); ``longs``: (name, key, takes an argument)
    in table order (order decides ambiguity lists), with a fourth item True for a name that
    matches only when spelled out (no abbreviation of it, no part in ambiguity lists). ``ordering`` is the option string's first
    character: ``""`` permute, ``"+"`` stop at the first non-option, ``"-"`` yield each
    non-option as ``(NONOPT, arg)``. ``prog`` is ``argv[0]`` (quoted when an unknown option
    starts a cluster, as getopt has not stepped past it). After the last option the generator's
    return value (``StopIteration.value``, or :func:`parse`) is the list of remaining
    non-options. ``before(argv, optind)`` (``-`` ordering only) is asked before each new
    element whether to take it as a non-option: qemu-img 10.0's resize takes ``-1G`` so.
    """
    argv = [prog, *args]
    argc = len(argv)
    optind = 1
    first_nonopt = last_nonopt = 1
    nextchar = ""

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
            if ordering == "":
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
                return argv[optind:]
            if ordering == "-" and before is not None and before(argv, optind):  # type: ignore[operator]
                optind += 1
                yield NONOPT, argv[optind - 1]
                continue
            if _is_nonopt(argv[optind]):
                if ordering == "+":
                    return argv[optind:]
                optind += 1  # "-" ordering: each non-option in its place
                yield NONOPT, argv[optind - 1]
                continue
            arg = argv[optind]
            if arg.startswith("--"):
                body = arg[2:]
                name, eq, value = body.partition("=")
                optind += 1
                found = _match_long(name, longs)
                if isinstance(found, list):
                    raise GetoptError(AMBIGUOUS, argv[optind - 1], at=optind - 1, text=body, candidates=tuple(found))
                if found is None:
                    raise GetoptError(UNKNOWN_LONG, argv[optind - 1], at=optind - 1, text=body)
                full, key, takes = found
                if takes:
                    if eq:
                        yield key, value
                    elif optind < argc:
                        optind += 1
                        yield key, argv[optind - 1]
                    else:
                        raise GetoptError(MISSING_LONG, argv[optind - 1], at=optind - 1, text=body, name=full)
                elif eq:
                    raise GetoptError(UNEXPECTED_ARG, argv[optind - 1], at=optind - 1, text=body, name=full)
                else:
                    yield key, None
                continue
            nextchar = arg[1:]
        c, nextchar = nextchar[0], nextchar[1:]
        if not nextchar:
            optind += 1
        entry = shorts.get(c) if c != ":" else None
        if entry is None:
            nextchar = ""
            raise GetoptError(UNKNOWN_SHORT, argv[optind - 1], at=optind - 1, char=c)
        key, takes = entry
        if not takes:
            yield key, None
            continue
        if nextchar:
            value = nextchar
            optind += 1
        elif optind == argc:
            raise GetoptError(MISSING_SHORT, argv[optind - 1], at=optind - 1, char=c)
        else:
            value = argv[optind]
            optind += 1
        nextchar = ""
        yield key, value


def _match_long(name: str, longs: Sequence[tuple[str, object, bool]]) -> tuple[str, object, bool] | list[str] | None:
    """The long option ``name`` abbreviates (glibc's rules), None, or the list of names an
    ambiguous abbreviation matches."""
    first = None
    ambiguous: list[str] = []
    for entry in longs:
        full = entry[0]
        if not full.startswith(name):
            continue
        if len(full) == len(name):
            return entry[:3]
        if len(entry) > 3 and entry[3]:
            continue  # exact only
        if first is None:
            first = entry
        elif (entry[1], entry[2]) != (first[1], first[2]):
            if not ambiguous:
                ambiguous.append(first[0])
            ambiguous.append(full)
    if ambiguous:
        # glibc lists the first match and every later one that differs from it
        return ambiguous
    return first


def getopt_all(args: Sequence[str], shorts: dict[str, tuple[object, bool]], longs: Sequence[tuple[str, object, bool]],
          **kw: object) -> tuple[list[tuple[object, str | None]], list[str], GetoptError | None]:
    """Run :func:`getopt` to the end: ``(options in order, non-options, the error or None)``.
    The options before an error are kept (qemu-img acts on each as it meets it)."""
    found: list[tuple[object, str | None]] = []
    gen = getopt(args, shorts, longs, **kw)  # type: ignore[arg-type]
    try:
        while True:
            found.append(next(gen))
    except StopIteration as stop:
        return found, list(stop.value or ()), None
    except GetoptError as e:
        return found, [], e
