"""``qimg check``: ops.check's report and exit codes (0, 1, 2, 3, 63)."""
from __future__ import annotations

from ..tables import IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "check",
    usage="[-f FMT | --image-opts] [-T CACHE_MODE] [-r] [-u]\n        [--output human|json] [--object OBJDEF] FILENAME\n",
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operations"),
        Opt("fmt", "-f --format", True, "  -f, --format FMT\n     specifies format of the image explicitly",
            complete="format"),
        Opt("cache", "-T --cache@10.0", True, "  -T, --cache CACHE_MODE\n     image cache mode (writeback)",
            complete="cache"),
        Opt("repair", "-r --repair", True, "  -r, --repair leaks|all\n     repair particular aspect of the image\n"
            "     (image will be open in read-write mode, incompatible with --force-share)", complete="leaks all"),
        Opt("output", "--output", True, "  --output human|json\n     output format", complete="human json"),
        object_option(),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open image in shared mode for concurrent access"),
    ),
    layout=("quiet", "fmt", "image_opts", "cache", "force_share", "output", "repair", "objects",
            "  FILENAME\n     the image file (or image specification) to operate on"))

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "repair":
        from qimg.errors import QimgError
        from qimg.ops.check import parse_repair

        from ..prog import fail

        try:
            p.state["repair"] = parse_repair(value or "")
        except QimgError:
            fail("bad-repair", value=value)
    elif key == "output":
        from ..common import output_format_in_loop

        output_format_in_loop(value)


def run(p: Parsed) -> None:
    import sys

    from qimg.ops import check as ops_check

    from ..common import check_output_format, open_image, usage_exit
    from ..copyopts import check_cache
    from ..prog import error_exit

    fix: set[str] = p.state.get("repair", set())
    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(p.output)
    check_cache(p.cache, source=True)

    def out(text: str) -> None:
        if not p.quiet:
            # no flush: as qemu-img's stdio, the report waits in a pipe's buffer while the
            # second pass's messages go to stderr (the order of a "2>&1" output)
            sys.stdout.write(text)

    def on_repaired(result) -> None:
        if ofmt == "human":
            out(ops_check.repaired_text(result))

    # "check": the driver opens as for a check (QEMU's BDRV_O_CHECK: no repair on open)
    with open_image(p.args[0], p.fmt, image_opts=p.image_opts, force_share=p.force_share,
                    writable=bool(fix), options={"check": True}) as img:
        result = ops_check.check_image(img, fix, on_repaired=on_repaired)
        result.filename = p.args[0]  # as given (an --image-opts string, a json: name)
        out(ops_check.format_report(result, ofmt))
    code = ops_check.exit_code(result)
    if code == 1:
        error_exit("Check failed")
    raise SystemExit(code)
