"""``qimg resize``: as qemu-img, the size is taken off the end of the arguments before option
parsing, so that ``-1G`` is a size and not an option."""
from __future__ import annotations

import click

from ..common import qemu_command


def _in_loop(key: str, value, state: dict) -> None:
    if key == "preallocation":
        from qimg.ops.resize import check_preallocation

        check_preallocation(value or "")


@qemu_command("resize", size_last=True, getopt_hook=_in_loop,
              legacy_longs=("help", "object", "image-opts", "preallocation", "shrink"))
@click.option("-f", "--format", "fmt")
@click.option("-q", "--quiet", "quiet", is_flag=True)
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("--preallocation", "preallocation")
@click.option("--shrink", "shrink", is_flag=True)
@click.argument("args", nargs=-1)
def command(fmt, quiet, objects, image_opts, preallocation, shrink, args) -> None:
    import sys

    from qimg.ops import resize as ops_resize

    from ..common import open_image, parse_objects, say, usage_exit, warn

    if preallocation is not None:
        ops_resize.check_preallocation(preallocation)
    if len(args) != 2:
        usage_exit("Expecting image file name and size")
    filename, size = args
    parse_objects(objects)
    relative, n = ops_resize.parse_size_arg(size, warn)
    with open_image(filename, fmt, image_opts=image_opts, writable=True, resize=True) as img:
        try:
            total = ops_resize.new_size(img.size, relative, n, shrink=shrink,
                                        preallocation=preallocation or "off")
        except ops_resize.ShrinkRefused as e:
            sys.stderr.flush()
            warn(e.message)
            warn("warning: " + ops_resize.SHRINK_WARNING)
            raise SystemExit(1) from None
        ops_resize.resize(img, total, shrink=shrink, preallocation=preallocation or "off")
    say("Image resized.", quiet)
