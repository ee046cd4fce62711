"""``qimg measure``: argument checks in qemu-img's order, then ops.measure."""
from __future__ import annotations

import click

from ..common import qemu_command


def _in_loop(key: str, value, state: dict) -> None:
    from ..common import check_option_list, check_output_format, image_size_arg

    if key == "options":
        check_option_list(key, value, state)
    elif key == "output":
        check_output_format(value)
    elif key == "size":
        state["size"] = image_size_arg(value or "")
    elif key == "snapshot":
        from qimg.errors import QimgError

        try:
            _snapshot_param(value or "")
        except QimgError as e:
            from ..main import PROG

            raise QimgError(f"{e.message}\n{PROG}: Failed in parsing snapshot param '{value}'") from None


@qemu_command("measure", legacy_longs=("help", "image-opts", "object", "output", "size", "force-share"),
              glibc_errors=True, getopt_hook=_in_loop)
@click.option("-f", "--format", "fmt")
@click.option("-O", "--target-format", "out_fmt")
@click.option("-o", "--options", "options", multiple=True)
@click.option("-l", "--snapshot", "snapshot")
@click.option("-U", "--force-share", "force_share", is_flag=True)
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("--output", "output")
@click.option("--size", "size")
@click.argument("args", nargs=-1)
@click.pass_context
def command(ctx, fmt, out_fmt, options, snapshot, force_share, objects, image_opts, output, size, args) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import measure as ops_measure
    from qimg.ops.create import valid_option_list

    from ..common import check_output_format, open_image, parse_objects
    from ..main import PROG, error_exit

    for o in options:
        if not valid_option_list(o):
            error_exit(f"Invalid option list: {o}")
    ofmt = check_output_format(output)
    img_size = ctx.meta.get("qimg.getopt_state", {}).get("size") if size is not None else None
    parse_objects(objects)
    if len(args) > 1:
        error_exit("At most one filename argument is allowed.")
    filename = args[0] if args else None
    if filename is None and (image_opts or fmt or snapshot is not None):
        error_exit("--image-opts, -f, and -l require a filename argument.")
    if filename is not None and img_size is not None:
        error_exit("--size N cannot be used together with a filename.")
    if filename is None and img_size is None:
        error_exit("Either --size N or one filename must be specified.")
    img = None
    try:
        if filename is not None:
            img = open_image(filename, fmt, image_opts=image_opts, force_share=force_share)
            if snapshot is not None:
                _load_snapshot(img, snapshot)
        try:
            info = ops_measure.measure(out_fmt or "raw", img_size, ",".join(options), img)
        except QimgError as e:
            # two error_report lines in qemu-img: both carry the program name
            raise QimgError(e.message.replace("\nInvalid options", f"\n{PROG}: Invalid options"),
                            e.exit_code) from None
    finally:
        if img is not None:
            img.close()
    if ofmt == "json":
        sys.stdout.write(ops_measure.format_json(info))
    else:
        sys.stdout.write(ops_measure.format_human(info))


def _snapshot_param(param: str) -> tuple[str | None, str | None]:
    """``-l``: ``snapshot.id=ID,snapshot.name=NAME`` or a bare ID_OR_NAME."""
    from qimg.errors import QimgError
    from qimg.options import split_options

    if not param.startswith("snapshot."):
        return None, param
    d: dict[str, str | None] = {}
    for k, v in split_options(param):
        if k not in ("snapshot.id", "snapshot.name"):
            raise QimgError(f"Invalid parameter '{k}'")
        d[k] = v
    return d.get("snapshot.id"), d.get("snapshot.name")


def _load_snapshot(img, param: str) -> None:
    from qimg.driver import Format
    from qimg.errors import QimgError

    sid, name = _snapshot_param(param)
    drv = img.driver
    if type(drv).snapshot_load_readonly is Format.snapshot_load_readonly:
        raise QimgError(f"Failed to load snapshot: Block format '{img.format}' used by device '' does not "
                        "support temporarily loading internal snapshots")
    try:
        drv.snapshot_load_readonly(sid, name)
    except QimgError as e:
        raise QimgError(f"Failed to load snapshot: {e.message}") from None
