"""``qimg dd``: ``bs= count= skip= if= of=`` operands as qemu-img dd."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "dd",
    usage="[-f FMT|--image-opts] [-O OUTPUT_FMT] [-U]\n        [bs=BLOCK_SIZE] [count=BLOCKS] if=INPUT of=OUTPUT\n",
    options=(
        help_option(),
        object_option(""),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify format for INPUT explicitly", complete="format"),
        Opt("out_fmt", "-O --output-format@10.0", True, "  -O, --output-format OUTPUT_FMT\n     format of the OUTPUT "
            "(default raw)", complete="format"),
        Opt("image_opts", "--image-opts", doc="  --image-opts\n     indicates that INPUT is a complete image "
            "specification\n     instead of a file name (incompatible with --format)"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open images in shared mode for concurrent access"),
    ),
    layout=("fmt", "image_opts", "out_fmt", "force_share",
            "  bs=BLOCK_SIZE[kKMGTP]\n     size of I/O block (default 512)",
            "  count=COUNT\n     number of blocks to convert (default whole INPUT)",
            "  if=INPUT\n     input file name (or image specification with --image-opts)",
            "  of=OUTPUT\n     output file name to create"),
    positionals="dd")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def run(p: Parsed) -> None:
    from qimg.compat import has
    from qimg.errors import QimgError

    from ..common import INT64_MAX, INT_MAX, cvtint, cvtnum, warn
    from ..copyopts import open_named

    out_fmt = p.out_fmt if p.out_fmt is not None else "raw"
    bs = 512
    count = skip = None
    # qemu-img 10.0 reads count= and skip= as integers (C notation, no suffixes), 7.2 as sizes
    blocks = (lambda what, v: cvtint(what, v, 0, INT64_MAX)) if has("range-checked-numbers") else cvtnum
    in_name = out_name = None
    for arg in p.args:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("bs", "count", "if", "of", "skip"):
            raise QimgError(f"unrecognized operand {key}")
        if key == "bs":
            bs = cvtnum("bs", value, 1, INT_MAX)
        elif key == "count":
            count = blocks("count", value)
        elif key == "skip":
            skip = blocks("skip", value)
        elif key == "if":
            in_name = value
        else:
            out_name = value
    if in_name is None or out_name is None:
        raise QimgError("Must specify both input and output files")
    src = open_named(in_name, p.fmt, image_opts=p.image_opts, force_share=p.force_share)
    try:
        from qimg.plugins import get_registry

        try:
            get_registry().format(out_fmt)
        except QimgError:
            raise QimgError("Unknown file format") from None
        from qimg.ops.dd import dd

        dd(src, out_name, out_fmt, bs=bs, count=count, skip=skip, in_name=in_name, warn=warn)
    finally:
        src.close()
