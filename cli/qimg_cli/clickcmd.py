"""The click side of qemu-img's option parsing: :class:`QemuCommand` (kept apart from
``common`` so that commands run by the click-free fast path never import click)."""
from __future__ import annotations

import importlib

import click

from .common import normalize_args, usage_exit
from .main import BUILTIN_COMMANDS

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


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


class QemuCommand(click.Command):
    """A click command whose arguments are parsed with qemu-img's getopt semantics.

    ``legacy_longs``: the long option names qemu-img 7.2 knew for this command, in its table
    order (others are 10.x additions, lower priority for abbreviations). ``glibc_errors``: usage
    errors print glibc's message and the help, exit 0 (7.2's measure). ``getopt_hook(key,
    value, state)`` runs for each option as it is parsed: qemu-img validates some values inside
    its getopt loop, so their errors come before later usage errors. ``size_last``: take the last argument
    out before parsing (qemu-img resize does this so that ``-1G`` is not an option).
    """

    def __init__(self, *args: Any, legacy_longs: Iterable[str] | None = None, size_last: bool = False,
                 glibc_errors: bool = False, getopt_hook: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("add_help_option", False)
        super().__init__(*args, **kwargs)
        self.getopt_hook = getopt_hook
        self.legacy_longs = list(legacy_longs) if legacy_longs is not None else None
        self.size_last = size_last
        self.glibc_errors = glibc_errors

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        extra: list[str] = []
        if self.size_last:
            if len(args) < 2:
                usage_exit("Not enough arguments")
            args, extra = list(args[:-1]), [args[-1]]
        state: dict[str, Any] = {}
        tokens = normalize_args(self, list(args), state)
        ctx.meta["qimg.getopt_state"] = state  # what getopt_hook recorded, for the callback
        return super().parse_args(ctx, tokens + extra)


def qemu_command(name: str, **kwargs: Any) -> Any:
    """``@qemu_command("info", legacy_longs=...)``: a click command parsed as qemu-img parses."""
    kwargs.setdefault("cls", QemuCommand)
    kwargs.setdefault("context_settings", {"ignore_unknown_options": True})
    return click.command(name, **kwargs)
