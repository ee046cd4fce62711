"""The ``qimg`` entry point: standard options, command dispatch, qemu-img's error conventions.

``main()`` parses the standard options (``-h``, ``-V``, ``-T``, ``--untrusted``) with the global
table, then the command's arguments with its table (:mod:`qimg_cli.parse`), and calls
``run(p)`` of ``qimg_cli.commands.<name>``. Nothing heavy is imported before the command runs:
a command module imports what it needs inside ``run``. Commands that plugins add go through
click (:mod:`qimg_cli.plugincmds`). Every error ends as one ``prog: message`` line and an exit
code; the program's name is ``argv[0]``'s (:mod:`qimg_cli.prog`).
"""
from __future__ import annotations

import os
import sys

from . import prog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


def __getattr__(name: str) -> Any:
    if name == "BUILTIN_COMMANDS":  # the built-in commands' names (docs and tests read them)
        from .tables import NAMES

        return NAMES
    if name == "PROG":  # the program's name as invoked (formerly a constant)
        return prog.NAME
    raise AttributeError(name)


def error_exit(message: str, code: int = 1) -> Any:
    """Print ``prog: message`` on stderr and exit (kept for plugins; qimg_cli.prog.error_exit)."""
    prog.error_exit(message, code)


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Console-script entry point: ``argv`` defaults to ``sys.argv[1:]`` and the program's name
    to ``sys.argv[0]``'s (``prog_name`` when given; ``qimg`` when ``argv`` is given without
    one). Turns every error into one line and an exit code."""
    if argv is None:
        # a short-lived process: what the interpreter and the imports so far allocated stays
        # until exit, so the collector need not walk it again (collections during start-up
        # otherwise revisit every module's objects)
        import gc

        gc.freeze()
    for stream in (sys.stdout, sys.stderr):
        # bytes from an image (a name, a createType) print as they are, as qemu-img prints them,
        # not as escapes; nor does a text that is not UTF-8 end the command with an error
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError, OSError):
            pass
    # the script's own argv[0] may be a PATH lookup's result (prog.invoked_as); a name given is as given
    script = prog_name is None and argv is None
    if prog_name is None:
        prog_name = sys.argv[0] if argv is None else "qimg"
    prog.set_argv0(prog_name, script=script)
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        if argv is None:
            # the process ends here: spare the interpreter's final garbage collection, which
            # walks every object of every loaded module (~3 ms of a ~25 ms ``qimg info``) to
            # free what exit frees anyway (callers passing argv, like tests, keep their GC)
            import gc

            gc.freeze()


def on_option(p: Any, key: str, value: str | None) -> None:
    """The standard options as qemu-img's main loop meets them (this module is the global
    table's hooks for :func:`qimg_cli.parse.parse`)."""
    if key == "untrusted":
        # docs/security.md: follow no names found in images, cap memory and CPU time
        from qimg.untrusted import enable_cli

        enable_cli()
    elif key == "version":
        from .help import print_version

        print_version()
        raise SystemExit(0)
    elif key == "trace":
        from .trace import configure_one

        configure_one(value or "")


def _main(args: list[str]) -> None:
    try:
        from qimg.plugins import add_hookspecs

        # the CLI's hook is known before any plugin is read (qimg_register_commands is no
        # unknown hook to the plugin checks, whichever command reads the registry first);
        # its module is imported only when a plugin implements a hook the core does not know
        add_hookspecs("qimg_cli.hookspecs")
        from .parse import parse, profile_name
        from .tables import command, global_options

        profile_name()  # an unknown QIMG_COMPAT is an error before anything runs
        p = parse(global_options(), args, sys.modules[__name__])
        if not p.args:
            from qimg.compat import has

            if args and not has("no-command-is-an-error"):
                raise SystemExit(0)  # qemu-img 7.2: options and no command do nothing
            prog.usage_exit("Not enough arguments")
        from qimg.untrusted import ENV, _env_true

        if _env_true(ENV):  # QIMG_UNTRUSTED=1 does what --untrusted does
            from qimg.untrusted import enable_cli

            enable_cli()
        from qimg import api

        api.report = prog.warn  # QEMU's warn_report lines carry the program name
        name, rest = p.args[0], p.args[1:]
        cmd = command(name)
        if cmd is None:
            from . import plugincmds

            found = plugincmds.find(name) if name[:1] != "-" else None
            if found is None:
                prog.usage_exit(f"Command not found: {name}")
            prog.set_command(name)
            plugincmds.run(found, name, rest)
            raise SystemExit(0)
        prog.set_command(name)
        from qimg.registry import import_module

        module = import_module(cmd.module)
        module.run(parse(cmd, rest, module))
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback
        from qimg.compat import UnknownProfile
        from qimg.errors import QimgError, SilentFailure

        if isinstance(e, SilentFailure):
            raise SystemExit(e.exit_code) from None
        if isinstance(e, QimgError):
            prog.error_exit(e.message, e.exit_code)
        if isinstance(e, UnknownProfile):
            prog.error_exit(str(e))
        if isinstance(e, OSError):
            prog.error_exit(e.strerror or str(e))
        if os.environ.get("QIMG_DEBUG"):
            raise
        prog.error_exit(f"internal error: {type(e).__name__}: {e} (set QIMG_DEBUG=1 for a traceback)")
    raise SystemExit(0)


if __name__ == "__main__":
    main()
