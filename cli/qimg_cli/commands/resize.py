"""``qimg resize``: a negative size is no option. qemu-img 7.2 takes the size off the end of the
arguments before parsing them; 10.0 reads the arguments in order and takes ``-<digit>...``
after the file name as the size (the ``size-last`` and ``size-inline`` quirks of its table)."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "resize",
    usage=("[-f FMT | --image-opts] [--preallocation PREALLOC] [--shrink]\n"
           "        [--object OBJECTDEF] [-q] FILENAME [+-]SIZE[bkKMGTPE]\n"),
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operation"),
        object_option(),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify FILENAME format explicitly", complete="format"),
        Opt("image_opts", "--image-opts", doc="  --image-opts\n     indicates that FILENAME is a complete image "
            "specification\n   instead of a file name (incompatible with --format)"),
        Opt("preallocation", "--preallocation", True,
            "  --preallocation PREALLOC\n     specify preallocation type for the new areas",
            complete="off metadata falloc full"),
        Opt("shrink", "--shrink", doc="  --shrink\n     allow operation when new size is smaller than original"),
    ),
    layout=("quiet", "fmt", "image_opts", "shrink", "preallocation", "objects",
            "  FILENAME\n     image file (specification) to resize",
            "  [+-]SIZE[bkKMGTPE]\n     new image size or amount by which to shrink/grow,\n"
            "     with optional suffix (1024-based multiplies)"),
    quirks={"7.2": ("size-last",), "10.0": ("size-inline",)})

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "preallocation":
        from qimg.ops.resize import check_preallocation

        check_preallocation(value or "")
    elif key == "" and len(p.args) > 2:
        from ..prog import usage_exit

        usage_exit("Extra argument(s) in command line")


def run(p: Parsed) -> None:
    import sys

    from qimg.ops import resize as ops_resize

    from ..common import open_image, say, usage_exit, warn

    preallocation = p.preallocation
    if preallocation is not None:
        ops_resize.check_preallocation(preallocation)
    if len(p.args) != 2:
        usage_exit("Expecting image file name and size")
    filename, size = p.args
    relative, n = ops_resize.parse_size_arg(size, warn)
    with open_image(filename, p.fmt, image_opts=p.image_opts, writable=True, resize=True) as img:
        try:
            total = ops_resize.new_size(img.size, relative, n, shrink=p.shrink,
                                        preallocation=preallocation or "off")
        except ops_resize.ShrinkRefused as e:
            sys.stderr.flush()
            warn(e.message)
            warn("warning: " + ops_resize.SHRINK_WARNING)
            raise SystemExit(1) from None
        ops_resize.resize(img, total, shrink=p.shrink, preallocation=preallocation or "off")
    say("Image resized.", p.quiet)
