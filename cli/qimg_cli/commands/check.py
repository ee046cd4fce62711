"""``qimg check``: ops.check's report and exit codes (0, 1, 2, 3, 63)."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


def _in_loop(key: str, value, state: dict) -> None:
    from qimg.errors import QimgError
    from qimg.ops.check import parse_repair

    from ..common import usage_exit

    if key == "repair":
        try:
            parse_repair(value or "")
        except QimgError as e:
            usage_exit(e.message)


# options as data (see qimg_cli.fast): no click import unless the click command is asked for
NAME = "check"
LEGACY_LONGS = ("help", "format", "repair", "output", "object", "image-opts", "force-share")
#: (parameter name, option declarations, is a flag), in click's parameter order
OPTIONS = (
    ("fmt", ("-f", "--format"), False),
    ("repair", ("-r", "--repair"), False),
    ("output", ("--output",), False),
    ("objects", ("--object",), False),
    ("image_opts", ("--image-opts",), True),
    ("force_share", ("-U", "--force-share"), True),
    ("src_cache", ("-T",), False),
    ("quiet", ("-q", "--quiet"), True),
)
GETOPT_HOOK = _in_loop


def run(fmt, repair, output, objects, image_opts, force_share, src_cache, quiet, args, state) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import check as ops_check

    from ..common import check_output_format, open_image, parse_objects, usage_exit
    from ..main import error_exit

    fix: set[str] = set()
    if repair is not None:
        try:
            fix = ops_check.parse_repair(repair)
        except QimgError as e:
            usage_exit(e.message)
    if len(args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(output)
    _check_cache(src_cache)
    parse_objects(objects)

    def out(text: str) -> None:
        if not quiet:
            sys.stdout.write(text)
            sys.stdout.flush()

    def on_repaired(result) -> None:
        if ofmt == "human":
            out(ops_check.repaired_text(result))

    # "check": the driver opens as for a check (QEMU's BDRV_O_CHECK: no repair on open)
    with open_image(args[0], fmt, image_opts=image_opts, force_share=force_share,
                    writable=bool(fix), options={"check": True}) as img:
        result = ops_check.check_image(img, fix, on_repaired=on_repaired)
        result.filename = args[0]  # as given (an --image-opts string, a json: name)
        out(ops_check.format_report(result, ofmt))
    code = ops_check.exit_code(result)
    if code == 1:
        error_exit("Check failed")
    raise SystemExit(code)


def _check_cache(mode: str | None) -> None:
    from qimg.errors import QimgError

    if mode is not None and mode not in ("none", "off", "writeback", "writethrough", "directsync", "unsafe"):
        raise QimgError(f"Invalid source cache option: {mode}")


def __getattr__(name: str) -> Any:
    if name == "command":
        from ..fast import lazy_command

        return lazy_command(__name__)
    raise AttributeError(name)
