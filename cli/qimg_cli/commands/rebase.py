"""``qimg rebase``: change the backing file (safe mode keeps the guest view; ``-u`` does not)."""
from __future__ import annotations

from ..tables import FILENAME_DOC, IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "rebase",
    usage=("[-f FMT | --image-opts] [-t CACHE] [-q] [-U] [-p]\n"
           "        [-b BACKING_FILENAME [-F BACKING_FMT] [-T BACKING_CACHE]] [-u]\n"
           "        [--object OBJDEF] [-c] FILENAME\n"
           "Rebases FILENAME on top of BACKING_FILENAME or no backing file\n"),
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operation"),
        Opt("progress", "-p --progress@10.0", doc="  -p, --progress\n     show progress indicator"),
        object_option(),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open image in shared mode for concurrent access"),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify FILENAME format explicitly", complete="format"),
        Opt("cache", "-t --cache@10.0", True, "  -t, --cache CACHE\n     cache mode for FILENAME (writeback)", complete="cache"),
        Opt("compress", "-c@10.0 --compress@10.0", doc="  -c, --compress\n     compress image (when image supports this)"),
        Opt("backing", "-b --backing@10.0", True,
            '  -b, --backing BACKING_FILENAME|""\n     rebase onto this file (or no backing file)',
            metavar="BACKING_FILENAME", complete="file"),
        Opt("backing_fmt", "-F --backing-format@10.0", True,
            "  -F, --backing-format BACKING_FMT\n     specify format for BACKING_FILENAME", complete="format"),
        Opt("src_cache", "-T --backing-cache@10.0", True,
            "  -T, --backing-cache CACHE\n     BACKING_FILENAME cache mode (writeback)", complete="cache"),
        Opt("unsafe", "-u --backing-unsafe@10.0", doc="  -u, --backing-unsafe\n     do not fail if BACKING_FILENAME can not be read"),
    ),
    layout=("quiet", "progress", "fmt", "image_opts", "cache", "backing", "backing_fmt", "src_cache", "unsafe",
            "compress", "force_share", "objects", FILENAME_DOC))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def run(p: Parsed) -> None:
    import sys

    from ..copyopts import check_cache, open_named, qemu_progress, stream_done, with_stream
    from ..prog import usage_exit

    progress = p.progress and not p.quiet
    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    if not p.unsafe and p.backing is None:
        usage_exit("Must specify backing file (-b) or use unsafe mode (-u)")
    filename = p.args[0]
    check_cache(p.cache)
    check_cache(p.src_cache, source=True)
    bar = qemu_progress(progress, 2.0)
    try:
        # -U shares the backing files only: the image itself is written
        img = open_named(filename, p.fmt, image_opts=p.image_opts, writable=True, backing=not p.unsafe)
        try:
            from qimg.ops.rebase import rebase

            rebase(img, p.backing, p.backing_fmt, unsafe=p.unsafe, force_share=p.force_share, compress=p.compress,
                   progress=with_stream(bar.update if progress else None, "rebase", "copy", scale=img.size))
            size = img.size
        finally:
            img.close()
        if progress:
            bar.end()  # the 100% line came from ops.rebase, before the name change
        stream_done("rebase", size)
    except BaseException:
        if bar.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
