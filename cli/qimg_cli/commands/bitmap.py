"""``qimg bitmap``: --add/--remove/--clear/--enable/--disable/--merge SRC, in order."""
from __future__ import annotations

from ..tables import IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "bitmap",
    usage=("( --merge SOURCE | --add | --remove | --clear |\n"
           "                --enable | --disable ).. [-f FMT | --image-opts]\n"
           "        [ -b SRC_FILENAME [-F SOURCE_FMT]] [-g SIZE[KMGTPE]] [--object OBJDEF]\n"
           "        FILENAME BITMAP\n"),
    options=(
        help_option(),
        object_option(""),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("add", "--add", doc="  --add\n     creates BITMAP, enables to record future edits"),
        Opt("remove", "--remove", doc="  --remove\n     removes BITMAP"),
        Opt("clear", "--clear", doc="  --clear\n     clears BITMAP"),
        Opt("enable", "--enable", doc="  --enable, --disable\n     starts and stops recording future edits to BITMAP"),
        Opt("disable", "--disable", about="stops recording future edits to BITMAP"),
        Opt("merge", "--merge", True, "  --merge SRC_FILENAME\n     merges contents of SRC_FILENAME bitmap into BITMAP",
            repeat=True),
        Opt("granularity", "-g --granularity", True,
            "   -g, --granularity SIZE[KMGTPE]\n     sets non-default bitmap granularity for --add to this size"),
        Opt("source_file", "-b --source-file", True,
            "   -b, --source-file SRC_FILENAME\n     select alternative source file for --merge", complete="file"),
        Opt("source_fmt", "-F --source-format", True,
            "   -F, --source-format SRC_FMT\n     specify format for SRC_FILENAME explicitly", complete="format"),
        Opt("fmt", "-f", True, "  -f, --format FMT\n     specify FILENAME format explicitly", complete="format"),
    ),
    layout=("fmt", "image_opts", "add", "granularity", "remove", "clear", "enable", "merge", "source_file",
            "source_fmt"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed

_ACTIONS = {"add", "remove", "clear", "enable", "disable", "merge"}


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "granularity":
        p.state["granularity"] = _granularity(value or "")
    elif key in _ACTIONS:
        p.state.setdefault("actions", []).append((key, value))  # in command-line order


def _granularity(text: str) -> int:
    from qimg.errors import QimgError

    from ..common import cvtnum
    from ..prog import error_exit

    try:
        return cvtnum("granularity", text)
    except QimgError as e:
        error_exit(e.message)


def run(p: Parsed) -> None:
    import os

    from qimg import compat
    from qimg.errors import QimgError
    from qimg.ops import bitmap as ops_bitmap

    from ..common import open_image
    from ..prog import error_exit, warn

    actions: list[tuple[str, str | None]] = p.state.get("actions", [])
    gran = p.state.get("granularity")
    if not actions:
        error_exit("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
    if gran and not p.add:
        error_exit("granularity only supported with --add")
    if p.source_fmt and not p.source_file:
        error_exit("-F only supported with -b")
    if p.source_file and not p.merge:
        error_exit("Merge bitmap source file only supported with --merge")
    if len(p.args) != 2:
        error_exit("Expecting filename and bitmap name")
    filename, name = p.args
    src = None
    with open_image(filename, p.fmt, image_opts=p.image_opts, writable=True, backing=False) as img:
        failure: BaseException | None = None
        try:
            if p.source_file:
                src = open_image(p.source_file, p.source_fmt, backing=False)
            for action, arg in actions:
                # QEMU hands the granularity on as a uint32 (QMP's block-dirty-bitmap-add): the
                # low 32 bits count (-g 5G adds a 1 GiB granularity, -g 4G is 0: refused)
                ops_bitmap.apply(img, action, name, granularity=gran & 0xFFFFFFFF if gran else None, source=src,
                                 source_name=arg)
        except Exception as e:  # noqa: BLE001 - reported below, after the close's own failure
            failure = e
        # 10.0 inactivates the images before closing them (QEMU 8.0): a failure there is
        # reported after the command's own, and fails the command
        err = 0
        try:
            if compat.has("inactivate-before-close"):
                err = img.inactivate()
                if src is not None and not err:
                    err = src.inactivate()
        finally:
            if src is not None:
                src.close()
        if err:
            if isinstance(failure, QimgError):
                warn(failure.message)
            elif failure is not None:
                raise failure
            error_exit(f"Error while closing the image: {os.strerror(err)}")
        if failure is not None:
            raise failure
