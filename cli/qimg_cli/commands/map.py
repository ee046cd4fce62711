"""``qimg map``: the ops.map entries, human or JSON."""
from __future__ import annotations

import click

from ..common import qemu_command


def _in_loop(key: str, value, state: dict) -> None:
    if key == "start_offset":
        state["start_offset"] = _offset_arg("start offset", value or "")
    elif key == "max_length":
        state["max_length"] = _offset_arg("max length", value or "")


@qemu_command("map", getopt_hook=_in_loop, legacy_longs=("help", "format", "output", "object", "image-opts", "force-share",
                                   "start-offset", "max-length"))
@click.option("-f", "--format", "fmt")
@click.option("--output", "output")
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("-U", "--force-share", "force_share", is_flag=True)
@click.option("--start-offset", "start_offset")
@click.option("--max-length", "max_length")
@click.argument("args", nargs=-1)
@click.pass_context
def command(ctx, fmt, output, objects, image_opts, force_share, start_offset, max_length, args) -> None:
    import sys

    from qimg.ops import map as ops_map

    from ..common import check_output_format, open_image, parse_objects, usage_exit

    parsed = ctx.meta.get("qimg.getopt_state", {})  # values converted while parsing, as qemu-img
    start = parsed.get("start_offset", 0) if start_offset is not None else 0
    length = parsed.get("max_length") if max_length is not None else None
    if len(args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(output)
    parse_objects(objects)
    with open_image(args[0], fmt, image_opts=image_opts, force_share=force_share) as img:
        entries = ops_map.map_extents(img, start, length)
        if ofmt == "json":
            sys.stdout.write(ops_map.format_json(entries, start))
        else:
            for line in ops_map.human_lines(entries):
                sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _offset_arg(what: str, text: str) -> int:
    from qimg.errors import QimgError

    from ..common import image_size_arg
    from ..main import PROG

    try:
        return image_size_arg(text)
    except QimgError:
        raise QimgError(f"Invalid {what} specified. You may use k, M, G, T, P or E suffixes for\n"
                        f"{PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") from None
