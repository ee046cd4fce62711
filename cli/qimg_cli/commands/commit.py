"""``qimg commit``: commit an image's changes into its backing file (or ``-b base``)."""
from __future__ import annotations

from ..tables import IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "commit",
    usage="[-f FMT | --image-opts] [-t CACHE_MODE] [-b BASE_IMG] [-d]\n        [-r RATE] [--object OBJDEF] FILENAME\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operations"),
        object_option(),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify FILENAME image format explicitly",
            complete="format"),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("cache", "-t --cache@10.0", True, "  -t, --cache CACHE_MODE image cache mode (writeback)",
            metavar="CACHE_MODE", complete="cache"),
        Opt("drop", "-d --drop@10.0", doc="  -d, --drop\n     skip emptying FILENAME on completion"),
        Opt("base", "-b --base@10.0", True, "  -b, --base BASE_IMG\n     image in the backing chain to which to commit "
            "changes\n     instead of the previous one (implies --drop)", complete="file"),
        Opt("progress", "-p --progress@10.0", doc="  -p, --progress\n     show operation progress"),
        Opt("rate", "-r --rate@10.0", True, "  -r, --rate RATE\n     I/O rate limit"),
    ),
    layout=("quiet", "progress", "fmt", "image_opts", "cache", "drop", "base", "rate", "objects",
            "  FILENAME\n     name of the image file to operate on"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "rate":
        from ..copyopts import parse_rate

        p.state["rate"] = parse_rate(value or "")


def _close(img) -> int:
    """Close the image and its chain; 10.0 inactivates them first and returns the errno of a
    failure there (QEMU 8.0's qemu-img commit: blk_unref() does not tell)."""
    from qimg import compat

    err = 0
    try:
        if compat.has("inactivate-before-close"):
            err = img.inactivate()
    finally:
        img.close()
    return err


def run(p: Parsed) -> None:
    import os
    import sys

    from ..copyopts import Progress, check_cache, open_named, stream_done, with_stream
    from ..prog import usage_exit

    base_name = p.base
    drop = p.drop or base_name is not None  # -b implies -d: the images above the base stay valid
    progress = p.progress and not p.quiet
    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    filename = p.args[0]
    check_cache(p.cache)
    img = open_named(filename, p.fmt, image_opts=p.image_opts, writable=True)
    bar = Progress(progress)
    try:
        from qimg.ops.commit import base_named, commit

        base = base_named(img, base_name, filename) if base_name is not None else None
        # qemu-img polls its commit job: 0% again while it starts, then 100% once done
        commit(img, base, drop=drop, rate_limit=p.state.get("rate", 0), progress=with_stream(None, "commit", "commit"))
        stream_done("commit", img.size)
        if progress:
            sys.stdout.write("    (0.00/100%)\r    (100.00/100%)\r\n")
            sys.stdout.flush()
    except BaseException:
        if bar.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
        _close(img)
        raise
    err = _close(img)
    if err:
        from ..prog import error_exit

        error_exit(f"Error while closing the image: {os.strerror(err)}")
    if not p.quiet:
        sys.stdout.write("Image committed.\n")
