"""``qimg snapshot``: -l (read-only), -c, -a, -d (one action) over ops.snapshot."""
from __future__ import annotations

import click

from ..common import qemu_command


def _one_action(key: str, value, state: dict) -> None:
    if key in ("list_", "apply_", "create", "delete"):
        if state.get("action"):
            from ..common import usage_exit

            usage_exit("Cannot mix '-l', '-a', '-c', '-d'")
        state["action"] = key


@qemu_command("snapshot", legacy_longs=("help", "object", "image-opts", "force-share"), getopt_hook=_one_action)
@click.option("-l", "--list", "list_", is_flag=True)
@click.option("-a", "--apply", "apply_")
@click.option("-c", "--create", "create")
@click.option("-d", "--delete", "delete")
@click.option("-q", "--quiet", "quiet", is_flag=True)
@click.option("-U", "--force-share", "force_share", is_flag=True)
@click.option("--format", "fmt")
@click.option("--object", "objects", multiple=True)
@click.option("--image-opts", "image_opts", is_flag=True)
@click.argument("args", nargs=-1)
def command(list_, apply_, create, delete, quiet, force_share, fmt, objects, image_opts, args) -> None:
    import sys

    from qimg.ops import snapshot as ops_snapshot

    from ..common import open_image, parse_objects, usage_exit

    if len(args) != 1:
        usage_exit("Expecting one image file name")
    parse_objects(objects)
    writable = not list_
    with open_image(args[0], fmt, image_opts=image_opts, writable=writable, force_share=force_share) as img:
        if list_:
            sys.stdout.write(ops_snapshot.format_list(ops_snapshot.list_snapshots(img)))
        elif create is not None:
            ops_snapshot.create_snapshot(img, create)
        elif apply_ is not None:
            if fmt is None and not image_opts and img.format == "raw":
                # QEMU falls back to the protocol node and reopens the probed raw driver
                # on top of it, which warns about the probing a second time
                from qimg.api import RAW_PROBE_WARNING

                sys.stderr.write(RAW_PROBE_WARNING.format(args[0]) + "\n")
            ops_snapshot.apply_snapshot(img, apply_)
        elif delete is not None:
            ops_snapshot.delete_snapshot(img, delete)
    del quiet
