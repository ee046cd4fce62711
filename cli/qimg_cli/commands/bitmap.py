"""``qimg bitmap``: --add/--remove/--clear/--enable/--disable/--merge SRC, in order."""
from __future__ import annotations

import click

from ..common import qemu_command

_ACTIONS = {"add", "remove", "clear", "enable", "disable", "merge"}


def _in_loop(key: str, value, state: dict) -> None:
    if key == "granularity":
        state["granularity"] = _granularity(value or "")
    elif key in _ACTIONS:
        # kept in command-line order (click would group them by option)
        state.setdefault("actions", []).append((key, value))


def _granularity(text: str) -> int:
    from qimg.errors import QimgError

    from ..common import image_size_arg
    from ..main import PROG, error_exit

    try:
        return image_size_arg(text)
    except QimgError:
        error_exit("Invalid granularity specified. You may use k, M, G, T, P or E suffixes for\n"
                   f"{PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")


@qemu_command("bitmap", getopt_hook=_in_loop, legacy_longs=("help", "object", "image-opts", "add", "remove", "clear", "enable",
                                      "disable", "merge", "granularity", "source-file", "source-format"))
@click.option("--add", "add", is_flag=True)
@click.option("--remove", "remove", is_flag=True)
@click.option("--clear", "clear", is_flag=True)
@click.option("--enable", "enable", is_flag=True)
@click.option("--disable", "disable", is_flag=True)
@click.option("--merge", "merge", multiple=True)
@click.option("-g", "--granularity", "granularity")
@click.option("-b", "--source-file", "source_file")
@click.option("-F", "--source-format", "source_fmt")
@click.option("-f", "--format", "fmt")
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.argument("args", nargs=-1)
@click.pass_context
def command(ctx, add, remove, clear, enable, disable, merge, granularity, source_file, source_fmt, fmt,
            objects, image_opts, args) -> None:
    from qimg.ops import bitmap as ops_bitmap

    from ..common import open_image, parse_objects
    from ..main import error_exit

    actions: list[tuple[str, str | None]] = ctx.meta.get("qimg.getopt_state", {}).get("actions", [])
    gran = ctx.meta.get("qimg.getopt_state", {}).get("granularity") if granularity is not None else None
    parse_objects(objects)
    if not actions:
        error_exit("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
    if gran and not add:
        error_exit("granularity only supported with --add")
    if source_fmt and not source_file:
        error_exit("-F only supported with -b")
    if source_file and not merge:
        error_exit("Merge bitmap source file only supported with --merge")
    if len(args) != 2:
        error_exit("Expecting filename and bitmap name")
    filename, name = args
    src = None
    with open_image(filename, fmt, image_opts=image_opts, writable=True, backing=False) as img:
        try:
            if source_file:
                src = open_image(source_file, source_fmt, backing=False)
            for action, arg in actions:
                ops_bitmap.apply(img, action, name, granularity=gran or None, source=src, source_name=arg)
        finally:
            if src is not None:
                src.close()
