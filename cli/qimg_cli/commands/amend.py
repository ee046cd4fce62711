"""``qimg amend``: -o options (``-o help``), -p progress, --force, over ops.amend."""
from __future__ import annotations

import click

from ..common import Progress, check_option_list, qemu_command


@qemu_command("amend", legacy_longs=("help", "object", "image-opts", "force"), getopt_hook=check_option_list)
@click.option("-o", "--options", "options", multiple=True)
@click.option("-f", "--format", "fmt")
@click.option("-t", "--cache", "cache")
@click.option("-p", "--progress", "progress", is_flag=True)
@click.option("-q", "--quiet", "quiet", is_flag=True)
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("--force", "force", is_flag=True)
@click.argument("args", nargs=-1)
def command(options, fmt, cache, progress, quiet, objects, image_opts, force, args) -> None:
    import sys

    from qimg.ops import amend as ops_amend
    from qimg.ops.create import valid_option_list
    from qimg.options import is_help_request

    from ..common import open_image, parse_objects, usage_exit
    from ..main import error_exit

    for o in options:
        if not valid_option_list(o):
            error_exit(f"Invalid option list: {o}")
    if not options:
        usage_exit("Must specify options (-o)")
    opts = ",".join(options)
    if quiet:
        progress = False
    parse_objects(objects)
    # qemu-img starts its progress meter here: every later exit ends it (a newline with -p)
    bar = _AmendProgress(progress, initial=False)
    try:
        if fmt and is_help_request(opts):
            sys.stdout.write(ops_amend.help_text(fmt) + "\n")
            return
        if len(args) != 1:
            error_exit("Expecting one image file name")
        if cache is not None and cache not in ("none", "off", "writeback", "writethrough", "directsync", "unsafe"):
            error_exit(f"Invalid cache option: {cache}")
        with open_image(args[0], fmt, image_opts=image_opts, writable=True) as img:
            if is_help_request(opts):
                sys.stdout.write(ops_amend.help_text(img.format) + "\n")
                return
            from qimg.ops.amend import parse_amend_options, supports_amend

            if supports_amend(type(img.driver)):
                parse_amend_options(type(img.driver), opts)
                bar.update(0, 1)  # as qemu-img, in case the driver reports no progress
            ops_amend.amend(img, opts, progress=bar.update, force=force)
            bar.update(1, 1)
    finally:
        bar.end()



class _AmendProgress(Progress):
    """qemu-img amend's meter: the driver reports ``(offset, total)``; the percentage is
    ``100.f * offset / total`` in single precision, printed on a move of more than 1 point,
    at 0 and at 100 (qemu_progress_print)."""

    def update(self, offset: float, total: float) -> None:
        from ..copyopts import _f32

        cur = 100.0 if total <= 0 else min(100.0, _f32(_f32(100.0 * _f32(offset)) / _f32(total)))
        self.current = cur
        last = self.last_printed
        if self.enabled and (last < 0 or cur > _f32(last + 1.0) or cur < _f32(last - 1.0) or cur in (0, 100)):
            self._print()
