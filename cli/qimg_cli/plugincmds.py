"""Commands that plugins add through the ``qimg_register_commands(cli)`` hook.

This is the only module of the CLI that uses click, and it is why click is a dependency: the
hook's published contract (docs/plugins.md) hands a plugin a ``click.Group`` to add
``click.Command`` objects to, so a third-party command is written with click's decorators and
parsed by click. Built-in commands are parsed from their option tables (qimg_cli.parse) and
never import click; neither does anything here unless some installed plugin implements the hook.
"""
from __future__ import annotations

import sys

from . import prog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

HOOK = "qimg_register_commands"
_group: Any = None


def _impls() -> list:
    from qimg.plugins import hookimpls

    return hookimpls(HOOK)


def group() -> Any:
    """The click group the plugins' commands were added to (None: no plugin adds any)."""
    global _group
    if _group is None:
        impls = _impls()
        if not impls:
            return None
        import click

        g = click.Group("qimg")
        for _name, function in impls:
            function(cli=g)
        _group = g
    return _group


def reset() -> None:
    global _group
    _group = None


def plugin_command_summaries() -> list[tuple[str, str]]:
    """(name, one-line summary) of each plugin command, sorted by name."""
    g = group()
    if g is None:
        return []
    out = []
    for name in sorted(g.commands):
        cmd = g.commands[name]
        summary = cmd.short_help or (cmd.help or "").strip().split("\n")[0]
        out.append((name, summary.rstrip(".")))
    return out


def find(name: str) -> Any:
    g = group()
    return None if g is None else g.commands.get(name)


def run(cmd: Any, name: str, args: list[str]) -> None:
    """Run a plugin's click command; click's usage errors read as qemu-img's."""
    import click

    try:
        cmd.main(args=list(args), prog_name=f"{prog.NAME} {name}", standalone_mode=False)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        raise SystemExit(1) from None
    except click.ClickException as e:
        msg = e.format_message()
        if isinstance(e, click.NoSuchOption):
            msg = f"unrecognized option '{e.option_name}'"
        elif isinstance(e, click.BadOptionUsage) and "requires an argument" in msg:
            msg = f"missing argument for option '{e.option_name}'"
        sys.stderr.flush()
        prog.usage_exit(msg)
