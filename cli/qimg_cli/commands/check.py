"""``qimg check``: ops.check's report and exit codes (0, 1, 2, 3, 63)."""
from __future__ import annotations

import click

from ..common import qemu_command


def _in_loop(key: str, value, state: dict) -> None:
    from qimg.errors import QimgError
    from qimg.ops.check import parse_repair

    from ..common import usage_exit

    if key == "repair":
        try:
            parse_repair(value or "")
        except QimgError as e:
            usage_exit(e.message)


@qemu_command("check", legacy_longs=("help", "format", "repair", "output", "object", "image-opts",
                                     "force-share"), getopt_hook=_in_loop)
@click.option("-f", "--format", "fmt")
@click.option("-r", "--repair", "repair")
@click.option("--output", "output")
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("-U", "--force-share", "force_share", is_flag=True)
@click.option("-T", "src_cache")
@click.option("-q", "--quiet", "quiet", is_flag=True)
@click.argument("args", nargs=-1)
def command(fmt, repair, output, objects, image_opts, force_share, src_cache, quiet, args) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import check as ops_check

    from ..common import check_output_format, open_image, parse_objects, usage_exit
    from ..main import error_exit

    fix: set[str] = set()
    if repair is not None:
        try:
            fix = ops_check.parse_repair(repair)
        except QimgError as e:
            usage_exit(e.message)
    if len(args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(output)
    _check_cache(src_cache)
    parse_objects(objects)

    def out(text: str) -> None:
        if not quiet:
            sys.stdout.write(text)
            sys.stdout.flush()

    def on_repaired(result) -> None:
        if ofmt == "human":
            out(ops_check.repaired_text(result))

    # "check": the driver opens as for a check (QEMU's BDRV_O_CHECK: no repair on open)
    with open_image(args[0], fmt, image_opts=image_opts, force_share=force_share,
                    writable=bool(fix), options={"check": True}) as img:
        result = ops_check.check_image(img, fix, on_repaired=on_repaired)
        out(ops_check.format_report(result, ofmt))
    code = ops_check.exit_code(result)
    if code == 1:
        error_exit("Check failed")
    raise SystemExit(code)


def _check_cache(mode: str | None) -> None:
    from qimg.errors import QimgError

    if mode is not None and mode not in ("none", "off", "writeback", "writethrough", "directsync", "unsafe"):
        raise QimgError(f"Invalid source cache option: {mode}")
