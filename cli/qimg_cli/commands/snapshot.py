"""``qimg snapshot``: -l (read-only), -c, -a, -d (one action) over ops.snapshot."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "snapshot",
    usage="[-f FMT | --image-opts] [-l | -a|-c|-d SNAPSHOT]\n        [-U] [--object OBJDEF] FILENAME\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n      quiet operations"),
        object_option("  --object OBJDEF\n      QEMU user-creatable object (eg encryption key)"),
        Opt("fmt", "-f@10.0 --format@10.0", True, "  -f, --format FMT\n      specify FILENAME format explicitly",
            complete="format"),
        Opt("image_opts", "--image-opts", doc="  --image-opts\n      indicates that FILENAME is a complete image "
            "specification\n   instead of a file name (incompatible with --format)"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n      open image in shared mode for concurrent access"),
        Opt("list", "-l --list@10.0", doc="    -l, --list\n       list snapshots in FILENAME (the default)"),
        Opt("apply", "-a --apply@10.0~", True, "    -a, --apply SNAPSHOT\n       apply named snapshot to the base"),
        Opt("create", "-c --create@10.0~", True, "    -c, --create SNAPSHOT\n       create named snapshot"),
        Opt("delete", "-d --delete@10.0~", True, "    -d, --delete SNAPSHOT\n       delete named snapshot"),
    ),
    layout=("quiet", "fmt", "image_opts", "force_share", "objects", "  Operation, one of:", "list", "create",
            "apply", "delete", "  FILENAME - image file name (or specification with --image-opts)"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key in ("list", "apply", "create", "delete"):
        if p.state.get("action"):
            from ..prog import usage_exit

            usage_exit("Cannot mix '-l', '-a', '-c', '-d'")
        p.state["action"] = key


def run(p: Parsed) -> None:
    import sys

    from qimg.compat import has
    from qimg.errors import QimgError
    from qimg.ops import snapshot as ops_snapshot

    from ..common import open_image, usage_exit

    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    # no action: 10.0 lists; 7.2 opens the image for writing and does nothing
    action = p.state.get("action") or ("list" if has("snapshot-lists-by-default") else None)
    fmt, filename = p.fmt, p.args[0]
    name = getattr(p, action) if action in ("apply", "create", "delete") else None
    if action == "create" and name is None:
        # qemu-img 10.0's --create takes no argument, and it crashes on the missing name
        raise QimgError("Could not create snapshot '(null)': no snapshot name given")
    with open_image(filename, fmt, image_opts=p.image_opts, writable=action != "list",
                    force_share=p.force_share) as img:
        if action == "list":
            sys.stdout.write(ops_snapshot.format_list(ops_snapshot.list_snapshots(img)))
        elif action == "create":
            ops_snapshot.create_snapshot(img, name)
        elif action == "apply":
            if fmt is None and not p.image_opts and img.format == "raw":
                # QEMU falls back to the protocol node and reopens the probed raw driver
                # on top of it, which warns about the probing a second time
                from qimg.api import RAW_PROBE_WARNING, raw_probe_name

                sys.stderr.write(RAW_PROBE_WARNING.format(raw_probe_name(img, filename)) + "\n")
            if name is None:
                # qemu-img 10.0's --apply takes no argument: no snapshot has a NULL name
                try:
                    ops_snapshot.apply_snapshot(img, "\0")
                except QimgError as e:
                    raise QimgError(e.message.replace("'\0'", "'(null)'"), e.exit_code) from None
            ops_snapshot.apply_snapshot(img, name)
        elif action == "delete":
            if name is None:
                # nor does --delete: no snapshot is found by a NULL name, unless there is one to
                # compare it with (qemu-img crashes comparing)
                if ops_snapshot.list_snapshots(img):
                    raise QimgError("Could not delete snapshot '(null)': no snapshot name given")
                raise QimgError("Could not delete snapshot '(null)': snapshot not found")
            ops_snapshot.delete_snapshot(img, name)
