"""The one command-line parser: a command's table (:mod:`qimg_cli.tables`) in, its options and
arguments out, with the selected profile's names, order of events and usage errors.

qemu-img acts on each option inside its getopt loop: ``-h`` prints the help there, ``--object``
defines the object there, and some values are checked there, so an invalid value is reported
before a later unknown option. :func:`parse` does the same: each option is handled as getopt
(:mod:`qimg_cli.getopt`) yields it (``help``, ``objects``, then the command module's
``on_option(p, key, value)`` when it has one), and a getopt error is reported where getopt meets
it, in the profile's words:

- qemu-img 7.2 (option strings ``:...``): ``qemu-img: unrecognized option '-z'`` and
  ``Try 'qemu-img --help' for more information``; its ``measure`` lets getopt print
  (``measure: invalid option -- 'z'``), then prints the global help and exits 0;
- qemu-img 10.0: getopt's own words after ``argv[0] COMMAND: ``, then
  ``Try 'argv[0] COMMAND --help' for more info``.
"""
from __future__ import annotations

import sys

from . import prog
from .getopt import NONOPT, GetoptError, getopt

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .tables import Command

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
        where = f"{prog.invoked_as()} {cmd.name}" if cmd.name else prog.invoked_as()
        sys.stderr.write(f"{where}: {e.glibc_message()}\n{prog.try_help()}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    prog.usage_exit(e.qemu_message())


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
            prog.usage_exit("Not enough arguments")
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
    gen = getopt(args, shorts, longs, ordering=ordering, prog=cmd.name, before=before)
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
        if e.at == 0 and not cmd.name:
            e.element = prog.invoked_as()  # looked up only when quoted (a PATH walk)
        report(e, cmd, profile)
    p.args.extend(tail)
    return p
