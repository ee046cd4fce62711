"""The top-level click group: standard options (-h, -V, -T) and usage errors as qemu-img."""
from __future__ import annotations

import sys

import click

from .main import PROG, LazyGroup, error_exit


def usage_error(e: click.ClickException) -> None:
    """qemu-img reports option errors as ``qemu-img: <text>`` plus a hint, exit 1."""
    msg = e.format_message()
    if isinstance(e, click.NoSuchOption):
        opt = e.option_name
        if opt.startswith("--"):
            msg = f"unrecognized option '{opt}'"
        else:
            msg = f"invalid option -- '{opt.lstrip('-')}'"
    elif isinstance(e, click.BadOptionUsage) and "requires an argument" in msg:
        opt = e.option_name
        msg = (f"option requires an argument -- '{opt.lstrip('-')}'" if not opt.startswith("--")
               else f"option '{opt}' requires an argument")
    sys.stderr.write(f"{PROG}: {msg}\nTry '{PROG} --help' for more information\n")
    raise SystemExit(1)


def print_help() -> None:
    from .help import full_help

    click.echo(full_help())


def print_version() -> None:
    from qimg import QEMU_COMPAT_VERSION, __version__

    click.echo(f"{PROG} version {QEMU_COMPAT_VERSION} (qimg {__version__})\n"
               "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers")


@click.group(cls=LazyGroup, invoke_without_command=True, add_help_option=False,
             context_settings={"help_option_names": []})
@click.option("-h", "--help", "show_help", is_flag=True)
@click.option("-V", "--version", "show_version", is_flag=True)
@click.option("-T", "--trace", "trace", multiple=True)
@click.option("--untrusted", "untrusted", is_flag=True)
@click.pass_context
def cli(ctx: click.Context, show_help: bool, show_version: bool, trace: tuple[str, ...],
        untrusted: bool = False) -> None:
    import os

    if untrusted or os.environ.get("QIMG_UNTRUSTED", "").strip().lower() in ("1", "yes", "on", "true"):
        # docs/security.md: follow no names found in images, cap memory and CPU time
        from qimg.untrusted import enable_cli

        enable_cli()
    if trace:
        from .trace import configure

        configure(trace)
    if show_help:
        print_help()
        raise SystemExit(0)
    if show_version:
        print_version()
        raise SystemExit(0)
    if ctx.invoked_subcommand is None:
        error_exit(f"Not enough arguments\nTry '{PROG} --help' for more information")
