"""``qimg create``: ops.create with qemu-img's argument handling and messages."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "create",
    usage="[-f FMT] [-o FMT_OPTS] [-b BACKING_FILENAME [-F BACKING_FMT]]\n        [--object OBJDEF] [-u] FILENAME [SIZE[bkKMGTPE]]\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operations"),
        object_option(),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specifies format of the new image, default is raw",
            complete="format"),
        Opt("backing", "-b --backing@10.0", True, "  -b, --backing BACKING_FILENAME\n     stack new image on top of "
            "BACKING_FILENAME\n     (for formats which support stacking)", complete="file"),
        Opt("backing_fmt", "-F --backing-format@10.0", True,
            "  -F, --backing-format BACKING_FMT\n     specify format of BACKING_FILENAME", complete="format"),
        Opt("unsafe", "-u --backing-unsafe@10.0", doc="  -u, --backing-unsafe\n     do not fail if BACKING_FMT can not be read"),
        Opt("options", "-o --options@10.0", True, "  -o, --options FMT_OPTS\n     format-specific options ('-o list' for list)",
            repeat=True),
    ),
    layout=("quiet", "fmt", "options", "backing", "backing_fmt", "unsafe", "objects",
            "  FILENAME\n     image file to create.  It will be overridden if exists",
            "  SIZE\n     image size with optional suffix (multiplies in 1024)\n     SIZE is required unless BACKING_IMG "
            "is specified,\n     in which case it will be the same as size of BACKING_IMG"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "options":
        from ..common import check_option_list

        check_option_list(value)


def run(p: Parsed) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import create as ops_create
    from qimg.options import is_help_request

    from ..common import image_size_arg
    from ..prog import NAME, usage_exit

    args = p.args
    opts = ",".join(p.options)
    fmt = p.fmt or "raw"
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
        if not p.quiet:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        ops_create.create_image(filename, fmt, size, opts, backing_file=p.backing, backing_fmt=p.backing_fmt,
                                unsafe=p.unsafe, echo=echo)
    except QimgError as e:
        msg = f"{NAME}: {filename}: {e.message}"
        # qemu-img 7.2's "Detected format" hint has no final newline
        from qimg.compat import has

        hint = e.message.startswith("Backing file specified without backing format\n")
        end = "" if hint and not has("detected-format-newline") else "\n"
        sys.stderr.write(msg + end)
        sys.stderr.flush()
        raise SystemExit(1) from None
