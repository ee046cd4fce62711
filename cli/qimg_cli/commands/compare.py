"""``qimg compare``: exit 0 identical, 1 different, 2 open errors, 3/4 status/read errors."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "compare",
    usage="[--image-opts | [-f FMT] [-F FMT]] [-s]\n        [-T CACHE] [-U] [--object OBJDEF] FILENAME1 FILENAME2\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operation"),
        object_option(),
        Opt("cache", "-T --cache@10.0", True, "  -T, --cache CACHE_MODE\n     images caching mode (writeback)",
            complete="cache"),
        Opt("image_opts", "--image-opts", doc="  --image-opts\n     indicates that FILENAMEs are complete image "
            "specifications\n     instead of file names (incompatible with --a-format and --b-format)"),
        Opt("fmt1", "-f --a-format@10.0 --left-format@10.0", True,
            "  -f, --a-format FMT\n     specify FILENAME1 image format explicitly", complete="format"),
        Opt("fmt2", "-F --b-format@10.0 --right-format@10.0", True,
            "  -F, --b-format FMT\n     specify FILENAME2 image format explicitly", complete="format"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open images in shared mode for concurrent access"),
        Opt("strict", "-s --strict@10.0", doc="  -s, --strict\n     strict mode, also check if sizes are equal"),
        Opt("progress", "-p --progress@10.0", doc="  -p, --progress\n     show operation progress"),
    ),
    layout=("quiet", "progress", "fmt1", "fmt2", "image_opts", "strict", "cache", "force_share", "objects",
            "  FILENAME1, FILENAME2\n     image files (or specifications) to compare"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed

#: qemu-img compare exits 2 on errors (1 means "different"), --object's included
ERROR_EXIT = 2


def run(p: Parsed) -> None:
    import sys

    from qimg.errors import QimgError

    from ..copyopts import check_cache, open_named, qemu_progress, stream_done, with_stream
    from ..prog import usage_exit

    progress = p.progress and not p.quiet
    files = p.args
    if len(files) != 2:
        usage_exit("Expecting two image file names")
    bar = qemu_progress(False)
    images = []
    try:
        try:
            check_cache(p.cache, source=True)
        except QimgError as e:
            raise QimgError(e.message, 2) from None
        for name, fmt in ((files[0], p.fmt1), (files[1], p.fmt2)):
            try:
                images.append(open_named(name, fmt, image_opts=p.image_opts, force_share=p.force_share))
            except QimgError as e:
                raise QimgError(e.message, 2) from None
        bar = qemu_progress(progress, 2.0)  # qemu-img starts it once both images are open
        from qimg.ops.compare import compare

        def say(text: str) -> None:
            if not p.quiet:
                sys.stdout.write(text + "\n")

        rc = compare(images[0], images[1], strict=p.strict, say=say,
                     progress=with_stream(bar.update if progress else None, "compare", "compare"),
                     name1=files[0], name2=files[1], qemu_runs=bar.enabled)
        if rc == 0:
            stream_done("compare", max(images[0].size, images[1].size))
    finally:
        for img in images:
            try:
                img.close()
            except QimgError:
                pass
        if progress:
            sys.stdout.write("\n")
            sys.stdout.flush()
    raise SystemExit(rc)
