"""The ``qimg`` entry point: a lazily loaded click group and qemu-img's error conventions.

Nothing heavy happens at import time: the plugin manager is built inside :func:`main`, and each
subcommand's module is imported only when that subcommand runs (click's LazyGroup pattern).
The most common read-only commands (info, map, check) run without click at all when no global
option precedes them (:mod:`qimg_cli.fast`): importing click costs more than such a command.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

PROG = "qimg"

#: built-in subcommands -> "module:attribute" of their click.Command
BUILTIN_COMMANDS: dict[str, str] = {
    name: f"qimg_cli.commands.{name}:command"
    for name in ("amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create",
                 "dd", "info", "map", "measure", "snapshot", "rebase", "resize")
}


def __getattr__(name: str) -> Any:
    if name == "LazyGroup":  # a click.Group: defined where click is imported
        from .clickcmd import LazyGroup

        return LazyGroup
    raise AttributeError(name)


#: commands that can run without click (their modules follow the protocol of qimg_cli.fast)
FAST_COMMANDS = ("info", "map", "check")
#: commands whose module parses its own arguments (``run([name, *args])``, see copyopts)
GETOPT_COMMANDS = ("bench", "commit", "compare", "convert", "dd", "rebase")
#: set to 1 to always go through click (tests compare both paths)
DISABLE_ENV = "QIMG_NO_FAST_PATH"


class Option:
    """What :func:`qimg_cli.common.getopt_spec` reads of a click Option."""

    __slots__ = ("name", "opts", "is_flag")

    def __init__(self, name: str, opts: tuple[str, ...], is_flag: bool) -> None:
        self.name, self.opts, self.is_flag = name, opts, is_flag


def run_fast(args: list[str]) -> bool:
    """Run ``args`` if they start with a fast command's name; False: use the click group."""
    if (not args or (args[0] not in FAST_COMMANDS and args[0] not in GETOPT_COMMANDS)
            or os.environ.get(DISABLE_ENV, "") not in ("", "0")):
        return False
    from qimg.untrusted import ENV, _env_true

    if _env_true(ENV):  # QIMG_UNTRUSTED=1 does what --untrusted does (as the group does)
        from qimg.untrusted import enable_cli

        enable_cli()
    if args[0] in GETOPT_COMMANDS:
        from .copyopts import run_direct

        run_direct(args)  # commands that parse their own arguments with getopt
        return True
    from qimg.registry import import_module

    from .common import getopt_spec, qemu_getopt

    mod = import_module(f"qimg_cli.commands.{args[0]}")
    opts, _ = getopt_spec([Option(*o) for o in mod.OPTIONS], mod.LEGACY_LONGS)
    state: dict[str, Any] = {}
    found, positionals = qemu_getopt(args[0], opts, args[1:], mod.GETOPT_HOOK, state)
    kwargs: dict[str, Any] = {name: (False if flag else None) for name, _, flag in mod.OPTIONS}
    kwargs["objects"] = ()  # defined while parsing, as the click path passes none on
    flags = {name for name, _, flag in mod.OPTIONS if flag}
    for o, value in found:
        if o.key == "objects":
            continue
        kwargs[o.key] = True if o.key in flags else (value if value is not None else "")
    mod.run(args=tuple(positionals), state=state, **kwargs)
    return True


def error_exit(message: str, code: int = 1) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """Print ``qimg: message`` on stderr and exit, as qemu-img's error_exit."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Turns every error into one line and an exit code."""
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        if argv is None:
            # the process ends here: spare the interpreter's final garbage collection, which
            # walks every object of every loaded module (~3 ms of a ~25 ms ``qimg info``) to
            # free what exit frees anyway (callers passing argv, like tests, keep their GC)
            import gc

            gc.freeze()


def _main(args: list[str]) -> None:
    try:
        from qimg.plugins import add_hookspecs

        # the CLI's hook is known before any plugin is read (qimg_register_commands is no
        # unknown hook to the plugin checks, whichever command reads the registry first);
        # its module is imported only when a plugin implements a hook the core does not know
        add_hookspecs("qimg_cli.hookspecs")
        if not run_fast(args):
            from .app import cli

            cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback
        click = sys.modules.get("click")  # click errors can only come from a loaded click
        if click is not None:
            if isinstance(e, click.exceptions.Exit):
                raise SystemExit(e.exit_code) from None
            if isinstance(e, click.exceptions.Abort):
                raise SystemExit(1) from None
            if isinstance(e, click.ClickException):
                from .app import usage_error

                usage_error(e)
        from qimg.errors import QimgError, SilentFailure

        if isinstance(e, SilentFailure):
            raise SystemExit(e.exit_code) from None
        if isinstance(e, QimgError):
            error_exit(e.message, e.exit_code)
        if isinstance(e, OSError):
            error_exit(e.strerror or str(e))
        if os.environ.get("QIMG_DEBUG"):
            raise
        error_exit(f"internal error: {type(e).__name__}: {e} (set QIMG_DEBUG=1 for a traceback)")
    raise SystemExit(0)


if __name__ == "__main__":
    main()
