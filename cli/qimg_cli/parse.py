"""The one command-line parser: a command's table (:mod:`qimg_cli.tables`) in, its options and
arguments out, with the selected profile's names, order of events and usage errors.

qemu-img acts on each option inside its getopt loop: ``-h`` prints the help there, ``--object``
defines the object there, and some values are checked there, so an invalid value is reported
before a later unknown option. :func:`parse` does the same: each option is handled as getopt
yields it (``help``, ``objects``, then the command module's ``on_option(p, key, value)`` when it
has one), and a getopt error is reported where getopt meets it, in the profile's words:

- qemu-img 7.2 (option strings ``:...``): ``qemu-img: unrecognized option '-z'`` and
  ``Try 'qemu-img --help' for more information``; its ``measure`` lets getopt print
  (``measure: invalid option -- 'z'``), then prints the global help and exits 0;
- qemu-img 10.0: getopt's own words after ``argv[0] COMMAND: ``, then
  ``Try 'argv[0] COMMAND --help' for more info``.

The program as invoked: qemu-img names itself so, every error line starts with ``argv[0]``'s last
component (:data:`NAME`, ``qemu-img: ...``) and qemu-img 10.0's hints quote ``argv[0]`` itself and
the command (``Try '/usr/bin/qemu-img info --help' for more info``); :func:`set_argv0` records
both at start (and tells the core, :func:`qimg.compat.set_program`). The ways qemu-img ends with
an error are here too: :func:`error_exit`, :func:`usage_exit` (the hint follows), :func:`fail`
(the profile's wording of a message).

The scanning is glibc's ``getopt_long``, re-implemented from its documented behaviour (qemu-img
parses every command line with it, and its messages and argument order show through):

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
:func:`report` words it as the selected qemu-img does.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any, NoReturn

    from .tables import Command


# -- the program as invoked, and qemu-img's ways of ending with an error --------------------------
#: ``argv[0]``'s last component: the prefix of every error line
NAME = "qimg"
#: ``argv[0]`` as given (qemu-img 10.0 quotes it in its usage hints)
ARGV0 = "qimg"
#: the command being run ("" before it is known)
COMMAND = ""


def set_argv0(argv0: str) -> None:
    global NAME, ARGV0, COMMAND
    ARGV0 = argv0 or "qimg"
    NAME = ARGV0.rstrip("/").rpartition("/")[2] or "qimg"
    COMMAND = ""
    from qimg.compat import set_program

    set_program(NAME)


def set_command(name: str) -> None:
    global COMMAND
    COMMAND = name


def text(key: str, **fields: object) -> str:
    """The selected profile's wording of ``key`` (:data:`qimg.compat.TEXTS`), with ``{prog}``
    (the program's name), ``{argv0}`` (as invoked, with the command) and ``fields`` filled in."""
    from qimg.compat import text as wording

    argv0 = f"{ARGV0} {COMMAND}" if COMMAND else ARGV0
    return wording(key).format(prog=NAME, argv0=argv0, **fields)


def try_help() -> str:
    """The hint a usage error ends with (``Try 'qemu-img --help' for more information``)."""
    return text("try-help")


def error_exit(message: str, code: int = 1) -> NoReturn:
    """Print ``prog: message`` on stderr and exit (qemu-img's error_report and exit)."""
    sys.stderr.write(f"{NAME}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def usage_exit(message: str) -> NoReturn:
    """qemu-img's ``error_exit``: the message, then the ``--help`` hint; exit 1."""
    error_exit(f"{message}\n{try_help()}")


def fail(key: str, **fields: object) -> NoReturn:
    """Exit with the profile's message ``key``; a wording ending in ``{try}`` is a usage error
    in that profile (the hint follows), any other a plain error."""
    msg = text(key, **fields, **{"try": "\x00"})
    if msg.endswith("\n\x00"):
        usage_exit(msg[:-2])
    error_exit(msg)


def warn(message: str) -> None:
    """A ``prog: message`` line on stderr that does not end the program."""
    sys.stderr.write(f"{NAME}: {message}\n")


# -- glibc's getopt_long -------------------------------------------------------------------------

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
    error (what qemu-img 7.2 quotes).
    """

    def __init__(self, kind: str, element: str, *, char: str = "", text: str = "", name: str = "",
                 candidates: tuple[str, ...] = ()) -> None:
        super().__init__(kind)
        self.kind, self.element, self.char, self.text = kind, element, char, text
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
                    raise GetoptError(AMBIGUOUS, argv[optind - 1], text=body, candidates=tuple(found))
                if found is None:
                    raise GetoptError(UNKNOWN_LONG, argv[optind - 1], text=body)
                full, key, takes = found
                if takes:
                    if eq:
                        yield key, value
                    elif optind < argc:
                        optind += 1
                        yield key, argv[optind - 1]
                    else:
                        raise GetoptError(MISSING_LONG, argv[optind - 1], text=body, name=full)
                elif eq:
                    raise GetoptError(UNEXPECTED_ARG, argv[optind - 1], text=body, name=full)
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
            raise GetoptError(UNKNOWN_SHORT, argv[optind - 1], char=c)
        key, takes = entry
        if not takes:
            yield key, None
            continue
        if nextchar:
            value = nextchar
            optind += 1
        elif optind == argc:
            raise GetoptError(MISSING_SHORT, argv[optind - 1], char=c)
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


# -- the parser ---------------------------------------------------------------------------------

class Parsed:
    """A parsed command line: ``p.<key>`` is an option's value (flags: True/False; with an
    argument: the last value or None; repeatable: the list of values), ``p.items`` every
    option in order, ``p.args`` the non-option arguments, ``p.state`` what ``on_option`` hooks
    keep (values converted while parsing)."""

    def __init__(self, cmd: Command, profile: str) -> None:
        self.cmd, self.profile = cmd, profile
        self.items: list[tuple[str, str | None]] = []
        self.args: list[str] = []
        self.state: dict[str, Any] = {}
        self._flags = set()
        for o in cmd.options:
            setattr(self, o.key, [] if o.repeat else (None if o.arg else False))
            if not o.arg:
                self._flags.add(o.key)

    def take(self, key: str, value: str | None) -> None:
        """Record an option as met (an option that takes an argument but came without one, as
        a name declared without argument gives it, keeps None: see p.given())."""
        self.items.append((key, value))
        cur = getattr(self, key, None)
        if isinstance(cur, list):
            cur.append(value if value is not None else "")
        elif key in self._flags:
            setattr(self, key, True)
        else:
            setattr(self, key, value)

    def given(self, key: str) -> bool:
        return any(k == key for k, _ in self.items)


def profile_name() -> str:
    from qimg.compat import name

    return name()


def report(e: GetoptError, cmd: Command, profile: str) -> NoReturn:
    """A getopt error, in the profile's words (see the module's docstring)."""
    from qimg.compat import has

    if "glibc-then-help" in cmd.quirk(profile):
        sys.stderr.write(f"{cmd.name}: {e.glibc_message()}\n")
        sys.stderr.flush()
        from .help import print_global_help

        print_global_help()
        raise SystemExit(0)
    if has("getopt-messages"):
        where = f"{ARGV0} {cmd.name}" if cmd.name else ARGV0
        sys.stderr.write(f"{where}: {e.glibc_message()}\n{try_help()}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    usage_exit(e.qemu_message())


def parse(cmd: Command, args: list[str], hooks: Any = None, profile: str | None = None) -> Parsed:
    """Parse ``args`` (after the command name) for ``cmd`` in ``profile`` (default: the
    selected one). ``hooks`` is the command's module: its ``on_option(p, key, value)`` sees
    each option (and, in the ``size-inline`` quirk, each non-option as key ``""``)."""
    profile = profile or profile_name()
    p = Parsed(cmd, profile)
    quirks = cmd.quirk(profile)
    shorts, longs = cmd.getopt_tables(profile)
    tail: list[str] = []
    if "size-last" in quirks:
        # qemu-img 7.2's resize takes the size off the end first, so that -1G is no option
        if len(args) < 2:
            usage_exit("Not enough arguments")
        args, tail = list(args[:-1]), [args[-1]]
    ordering, before = "", None
    if "require-order" in quirks:
        ordering = "+"
    elif "size-inline" in quirks:
        # qemu-img 10.0's resize: non-options in order; after the file name, -<digit>... is the size
        ordering = "-"

        def before(argv: list[str], optind: int) -> bool:
            a = argv[optind]
            return len(p.args) == 1 and a[:1] == "-" and a[1:2].isdigit()

    on_option = getattr(hooks, "on_option", None)
    gen = getopt(args, shorts, longs, ordering=ordering, prog=cmd.name or ARGV0, before=before)
    try:
        while True:
            key, value = next(gen)
            if key is NONOPT:
                p.args.append(value or "")
                if on_option is not None:
                    on_option(p, "", value)
                continue
            p.take(key, value)  # type: ignore[arg-type]
            if key == "help":
                from .help import print_command_help

                print_command_help(cmd)
                raise SystemExit(0)
            if key == "objects":
                # qemu-img defines each object as it meets it, before later usage errors
                from qimg.errors import QimgError

                from .common import parse_objects

                try:
                    parse_objects([value or ""])
                except QimgError as e:  # compare's errors all exit 2
                    raise QimgError(e.message, getattr(hooks, "ERROR_EXIT", e.exit_code)) from None
            if on_option is not None:
                on_option(p, key, value)
    except StopIteration as stop:
        p.args.extend(stop.value or ())
    except GetoptError as e:
        report(e, cmd, profile)
    p.args.extend(tail)
    return p
