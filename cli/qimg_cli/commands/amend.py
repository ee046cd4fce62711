"""``qimg amend``: -o options (``-o help``), -p progress, --force, over ops.amend."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "amend",
    usage="[-f FMT | --image-opts] [t CACHE] [--force] [-p] [-q]\n        [--object OBJDEF -o OPTIONS FILENAME\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operation"),
        Opt("progress", "-p --progress@10.0", doc="  -p, --progres\n     show progress"),
        object_option(),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify FILENAME format explicitly",
            complete="format"),
        Opt("cache", "-t --cache@10.0", True, "  -t, --cache CACHE\n     cache mode for FILENAME (writeback)",
            complete="cache"),
        Opt("options", "-o --options@10.0", True, repeat=True, metavar="OPTIONS",
            about="format-specific options to change, name=value,... (-o help lists them)"),
        Opt("image_opts", "--image-opts", doc="  --image-opts\n     indicates that FILENAME is a complete image "
            "specification\n   instead of a file name (incompatible with --format)"),
        Opt("force", "--force", doc="  --force\n     allow certain unsafe operations"),
    ),
    layout=("quiet", "progress", "fmt", "image_opts", "cache", "force"))


TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "options":
        from ..common import check_option_list

        check_option_list(value)


def run(p: Parsed) -> None:
    import sys

    from qimg.ops import amend as ops_amend
    from qimg.options import is_help_request

    from ..common import open_image
    from ..copyopts import AmendProgress
    from ..prog import error_exit, usage_exit

    if not p.options:
        usage_exit("Must specify options (-o)")
    opts = ",".join(p.options)
    fmt, cache = p.fmt, p.cache
    progress = p.progress and not p.quiet
    # qemu-img starts its progress meter here: every later exit ends it (a newline with -p)
    bar = AmendProgress(progress, initial=False)
    try:
        if fmt and is_help_request(opts):
            sys.stdout.write(ops_amend.help_text(fmt) + "\n")
            return
        if len(p.args) != 1:
            error_exit("Expecting one image file name")
        if cache is not None and cache not in ("none", "off", "writeback", "writethrough", "directsync", "unsafe"):
            error_exit(f"Invalid cache option: {cache}")
        with open_image(p.args[0], fmt, image_opts=p.image_opts, writable=True) as img:
            if is_help_request(opts):
                sys.stdout.write(ops_amend.help_text(img.format) + "\n")
                return
            from qimg.ops.amend import parse_amend_options, supports_amend

            if not supports_amend(type(img.driver)):
                ops_amend.amend(img, opts, progress=bar.update, force=p.force)  # (its refusal)
            parse_amend_options(type(img.driver), opts)
            bar.update(0, 1)  # as qemu-img, in case the driver reports no progress
            try:
                ops_amend.amend(img, opts, progress=bar.update, force=p.force, quiet=True)  # read above
            finally:
                bar.update(1, 1)  # qemu-img shows 100% whether the amendment worked or not
    finally:
        bar.end()

