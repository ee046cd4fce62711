"""Running info, map and check without click.

Importing click takes longer than ``qimg info`` of a small image needs in all. These commands
declare their options as data (``OPTIONS``, ``LEGACY_LONGS``, ``GETOPT_HOOK``) and do their
work in ``run(**options, args=, state=)``; the same getopt spec then serves both the click
command (built lazily by :func:`click_command` for ``qimg`` with global options, plugins and
tests that use the click objects) and :func:`run_fast` (defined in :mod:`qimg_cli.main`, so
that a fast command imports one module less), so both parse identically.
"""
from __future__ import annotations

import sys

# the click-free runner lives in qimg_cli.main (one module less to import on every start)
from .main import DISABLE_ENV, FAST_COMMANDS, Option, run_fast  # noqa: F401

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any


def click_command(mod: ModuleType) -> Any:
    """The click command for a fast command module (its ``command`` attribute)."""
    import click

    from .clickcmd import qemu_command

    def callback(args: tuple[str, ...], **kwargs: Any) -> None:
        state = click.get_current_context().meta.get("qimg.getopt_state", {})
        mod.run(args=args, state=state, **kwargs)

    f: Any = click.argument("args", nargs=-1)(callback)
    for name, decls, flag in reversed(mod.OPTIONS):
        extra: dict[str, Any] = {"is_flag": True} if flag else {}
        if name == "objects":
            extra["multiple"] = True
        f = click.option(*decls, name, **extra)(f)
    f.__doc__ = (mod.__doc__ or "").split("\n")[0]
    return qemu_command(mod.NAME, legacy_longs=mod.LEGACY_LONGS, getopt_hook=mod.GETOPT_HOOK)(f)


def lazy_command(module_name: str) -> Any:
    """For a command module's ``__getattr__("command")``: build and keep its click command."""
    mod = sys.modules[module_name]
    cmd = click_command(mod)
    mod.command = cmd  # type: ignore[attr-defined]
    return cmd
