"""``qimg info``: the ops.info report, human or JSON."""
from __future__ import annotations

import click

from ..common import qemu_command


@qemu_command("info", legacy_longs=("help", "format", "output", "backing-chain", "object", "image-opts",
                                    "force-share"))
@click.option("-f", "--format", "fmt")
@click.option("--output", "output")
@click.option("--backing-chain", "backing_chain", is_flag=True)
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.option("-U", "--force-share", "force_share", is_flag=True)
@click.argument("args", nargs=-1)
def command(fmt, output, backing_chain, objects, image_opts, force_share, args) -> None:
    import os
    import sys

    from qimg.errors import QimgError
    from qimg.ops import info as ops_info

    from ..common import check_output_format, open_image, parse_objects, usage_exit

    if len(args) != 1:
        usage_exit("Expecting one image file name")
    filename = args[0]
    ofmt = check_output_format(output)
    parse_objects(objects)
    infos = []
    seen: set[str] = set()
    name, f, iopts = filename, fmt, image_opts
    while True:
        key = os.path.realpath(name) if not iopts else name
        if key in seen:
            raise QimgError(f"Backing file '{name}' creates an infinite loop.")
        seen.add(key)
        img = open_image(name, f, image_opts=iopts, force_share=force_share, backing=False)
        try:
            infos.append(ops_info.image_info(img))
        finally:
            img.close()
        cur = infos[-1]
        if not backing_chain or "backing-filename" not in cur:
            break
        from qimg.untrusted import check_follow

        check_follow(name, cur["backing-filename"])  # untrusted mode opens nothing an image names
        name = cur.get("full-backing-filename") or cur["backing-filename"]
        f = cur.get("backing-filename-format")
        iopts = False
    if ofmt == "json":
        sys.stdout.write(ops_info.format_json(infos if backing_chain else infos[0]))
    else:
        sys.stdout.write(ops_info.format_human(infos if backing_chain else infos[0]))
