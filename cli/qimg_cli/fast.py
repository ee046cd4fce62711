"""Running info, map and check without click.

Importing click takes longer than ``qimg info`` of a small image needs in all. These commands
declare their options as data (``OPTIONS``, ``LEGACY_LONGS``, ``GETOPT_HOOK``) and do their
work in ``run(**options, args=, state=)``; the same getopt spec then serves both the click
command (built lazily by :func:`click_command` for ``qimg`` with global options, plugins and
tests that use the click objects) and :func:`run_fast`, so both parse identically.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

#: commands that can run without click (their modules follow the protocol above)
FAST_COMMANDS = ("info", "map", "check")
#: set to 1 to always go through click (tests compare both paths)
DISABLE_ENV = "QIMG_NO_FAST_PATH"


class Option:
    """What :func:`qimg_cli.common.getopt_spec` reads of a click Option."""

    __slots__ = ("name", "opts", "is_flag")

    def __init__(self, name: str, opts: tuple[str, ...], is_flag: bool) -> None:
        self.name, self.opts, self.is_flag = name, opts, is_flag


def run_fast(args: list[str]) -> bool:
    """Run ``args`` if they start with a fast command's name; False: use the click group."""
    if not args or args[0] not in FAST_COMMANDS or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    from qimg.untrusted import ENV, _env_true

    if _env_true(ENV):  # QIMG_UNTRUSTED=1 does what --untrusted does (as the group does)
        from qimg.untrusted import enable_cli

        enable_cli()
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
