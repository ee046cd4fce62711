"""``qimg create``: ops.create with qemu-img's argument handling and messages."""
from __future__ import annotations

import click

from ..common import check_option_list, qemu_command


@qemu_command("create", legacy_longs=("help", "object"), getopt_hook=check_option_list)
@click.option("-f", "--format", "fmt")
@click.option("-o", "--options", "options", multiple=True)
@click.option("-b", "--backing", "backing")
@click.option("-F", "--backing-format", "backing_fmt")
@click.option("-u", "--backing-unsafe", "unsafe", is_flag=True)
@click.option("-q", "--quiet", "quiet", is_flag=True)
@click.option("--object", "objects", multiple=True)
@click.argument("args", nargs=-1)
def command(fmt, options, backing, backing_fmt, unsafe, quiet, objects, args) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import create as ops_create
    from qimg.options import is_help_request

    from ..common import image_size_arg, parse_objects, usage_exit
    from ..main import PROG, error_exit

    for o in options:
        if not ops_create.valid_option_list(o):
            error_exit(f"Invalid option list: {o}")
    opts = ",".join(options)
    fmt = fmt or "raw"
    parse_objects(objects)
    filename = args[0] if args else None
    if opts and is_help_request(opts):
        sys.stdout.write(ops_create.help_text(fmt, filename) + "\n")
        raise SystemExit(0)
    if filename is None:
        usage_exit("Expecting image file name")
    size = None
    if len(args) > 1:
        size = image_size_arg(args[1])
    if len(args) > 2:
        usage_exit(f"Unexpected argument: {args[2]}")

    def echo(line: str) -> None:
        if not quiet:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        ops_create.create_image(filename, fmt, size, opts, backing_file=backing, backing_fmt=backing_fmt,
                                unsafe=unsafe, echo=echo)
    except QimgError as e:
        msg = f"{PROG}: {filename}: {e.message}"
        # qemu-img's "Detected format" hint has no final newline
        end = "" if e.message.startswith("Backing file specified without backing format\n") else "\n"
        sys.stderr.write(msg + end)
        sys.stderr.flush()
        raise SystemExit(1) from None
