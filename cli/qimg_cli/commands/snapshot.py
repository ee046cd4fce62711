"""``qimg snapshot``: -l (read-only), -c, -a, -d (one action) over ops.snapshot."""
from __future__ import annotations

import click

from ..common import qemu_command


@qemu_command("snapshot", legacy_longs=("help", "object", "image-opts", "force-share"))
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
@click.pass_context
def command(ctx, list_, apply_, create, delete, quiet, force_share, fmt, objects, image_opts, args) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import snapshot as ops_snapshot

    from ..common import open_image, parse_objects, usage_exit

    actions = ctx.meta.get("qimg.snapshot.actions", 0)
    if actions > 1:
        usage_exit("Cannot mix '-l', '-a', '-c', '-d'")
    if len(args) != 1:
        usage_exit("Expecting one image file name")
    parse_objects(objects)
    writable = not list_
    if force_share and writable:
        raise QimgError(f"Could not open '{args[0]}': force-share=on can only be used with read-only images")
    with open_image(args[0], fmt, image_opts=image_opts, writable=writable, force_share=force_share) as img:
        if list_:
            sys.stdout.write(ops_snapshot.format_list(ops_snapshot.list_snapshots(img)))
        elif create is not None:
            ops_snapshot.create_snapshot(img, create)
        elif apply_ is not None:
            ops_snapshot.apply_snapshot(img, apply_)
        elif delete is not None:
            ops_snapshot.delete_snapshot(img, delete)
    del quiet


def _count_actions(cmd: click.Command) -> None:
    """Count -l/-a/-c/-d occurrences while parsing (qemu-img refuses a second one, even a
    repeated ``-l``)."""
    original = cmd.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        from ..common import normalize_args

        tokens = normalize_args(cmd, list(args))
        n = 0
        for t in tokens:
            if t == "--":
                break
            if t in ("-l", "-a", "-c", "-d"):
                n += 1
        ctx.meta["qimg.snapshot.actions"] = n
        return original(ctx, args)

    cmd.parse_args = parse_args  # type: ignore[method-assign]


_count_actions(command)
