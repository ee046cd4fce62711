"""The ``qimg`` entry point: a lazily loaded click group and qemu-img's error conventions.

Nothing heavy happens at import time: the plugin manager is built inside :func:`main`, and each
subcommand's module is imported only when that subcommand runs (click's LazyGroup pattern).
"""
from __future__ import annotations

import importlib
import os
import sys

import click

PROG = "qimg"

#: built-in subcommands -> "module:attribute" of their click.Command
BUILTIN_COMMANDS: dict[str, str] = {
    name: f"qimg_cli.commands.{name}:command"
    for name in ("amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create",
                 "dd", "info", "map", "measure", "snapshot", "rebase", "resize")
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it is invoked."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plugin_commands_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True
        from qimg.plugins import add_hookspecs, get_plugin_manager

        from . import hookspecs

        add_hookspecs(hookspecs)
        get_plugin_manager().hook.qimg_register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted(set(BUILTIN_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in BUILTIN_COMMANDS:
            module, _, attr = BUILTIN_COMMANDS[name].partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
                return None
        if name not in self.commands:
            self._load_plugin_commands()
        return self.commands.get(name)


def error_exit(message: str, code: int = 1) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """Print ``qimg: message`` on stderr and exit, as qemu-img's error_exit."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Turns every error into one line and an exit code."""
    from .app import cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except SystemExit:
        raise
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        raise SystemExit(1) from None
    except click.ClickException as e:
        from .app import usage_error

        usage_error(e)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback
        from qimg.errors import QimgError

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
