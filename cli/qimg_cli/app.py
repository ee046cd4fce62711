"""The top-level click group: qemu-img's standard options (-h, -V, -T) parsed with getopt's
``+`` (stop at the command name), command lookup, and usage errors as qemu-img prints them."""
from __future__ import annotations

import sys

import click

from .main import PROG, LazyGroup, error_exit


def usage_error(e: click.ClickException) -> None:
    """Errors click itself finds (commands not built on QemuCommand): qemu-img's style."""
    msg = e.format_message()
    if isinstance(e, click.NoSuchOption):
        msg = f"unrecognized option '{e.option_name}'"
    elif isinstance(e, click.BadOptionUsage) and "requires an argument" in msg:
        msg = f"missing argument for option '{e.option_name}'"
    sys.stderr.write(f"{PROG}: {msg}\nTry '{PROG} --help' for more information\n")
    raise SystemExit(1)


def print_help() -> None:
    from .help import full_help

    sys.stdout.write(full_help())
    sys.stdout.flush()


def print_version() -> None:
    from .help import version_text

    sys.stdout.write(version_text())
    sys.stdout.flush()


class QemuGroup(LazyGroup):
    """The ``qimg`` group: ``qimg [-h] [-V] [-T spec] command [command options]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from .common import QemuCommand, usage_exit
        from .getopt import GetoptError, Opt, getopt

        spec = [Opt("help", "h", ("help",)), Opt("version", "V", ("version",)),
                Opt("trace", "T", ("trace",), True),
                Opt("untrusted", None, ("untrusted",), new_longs=("untrusted",))]

        def on_option(o: Opt, value: str | None) -> None:
            if o.key == "untrusted":
                # docs/security.md: follow no names found in images, cap memory and CPU time
                from qimg.untrusted import enable_cli

                enable_cli()
                return
            if o.key == "help":
                print_help()
                raise SystemExit(0)
            if o.key == "version":
                print_version()
                raise SystemExit(0)
            from .trace import configure_one

            configure_one(value or "")

        try:
            _, rest = getopt(list(args), spec, require_order=True, on_option=on_option, prog=sys.argv[0])
        except GetoptError as e:
            usage_exit(str(e))
        if not rest:
            usage_exit("Not enough arguments")
        from qimg.untrusted import ENV, _env_true

        if _env_true(ENV):  # QIMG_UNTRUSTED=1 does what --untrusted does
            from qimg.untrusted import enable_cli

            enable_cli()
        name = rest[0]
        cmd = self.get_command(ctx, name) if not name.startswith("-") else None
        if cmd is None:
            usage_exit(f"Command not found: {name}")
        sub_args = list(rest[1:])
        # plain click commands get qemu-img's parsing too; commands with their own
        # parse_args (QemuCommand, other getopt-based ones) receive the raw arguments
        if not isinstance(cmd, QemuCommand) and type(cmd).parse_args is click.Command.parse_args:
            from .common import normalize_args

            sub_args = normalize_args(cmd, sub_args)
        ctx._protected_args = [name]  # type: ignore[attr-defined]
        ctx.args = sub_args
        ctx.meta["qimg_command"] = (name, cmd)
        return ctx.args

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        name, cmd = ctx.meta["qimg_command"]
        return name, cmd, args[1:] if args and args[0] == name else args


@click.group(cls=QemuGroup, invoke_without_command=True, add_help_option=False,
             context_settings={"help_option_names": []})
def cli() -> None:
    """qimg: QEMU disk image utility, in Python."""


__all__ = ["cli", "usage_error", "print_help", "print_version", "error_exit"]
