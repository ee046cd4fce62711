"""``qimg measure``: argument checks in qemu-img's order, then ops.measure."""
from __future__ import annotations

from ..tables import IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "measure",
    usage=("[-f FMT|--image-opts] [-o OPTIONS] [-O OUTPUT_FMT]\n"
           "       [--output OFMT] [--object OBJDEF] [-l SNAPSHOT_PARAM]\n"
           "       (--size SIZE | FILENAME)\n"),
    options=(
        help_option(),
        Opt("out_fmt", "-O --target-format@10.0", True,
            "  -O, --target-format FMT\n     desired target/output image format (default raw)", complete="format"),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format\n     specify format of FILENAME explicitly",
            metavar="FMT", complete="format"),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("options", "-o --options@10.0", True, repeat=True, metavar="OPTIONS",
            about="options of the image to measure for, name=value,... (-o help lists them)"),
        Opt("snapshot", "-l --snapshot@10.0", True, "  -l, --snapshot SNAPSHOT\n     use this snapshot in FILENAME as source"),
        object_option(""),
        Opt("output", "--output", True, "  --output human|json\n     output format", complete="human json"),
        # qemu-img 10.0's help says -s, but its option string has no s
        Opt("size", "--size", True, "  -s, --size SIZE\n     measure file size for given image size", metavar="SIZE"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open images in shared mode for concurrent access"),
    ),
    layout=("out_fmt", "size", "  FILENAME\n     measure file size required to convert from FILENAME",
            "fmt", "image_opts", "snapshot", "output", "force_share"),
    quirks={"7.2": ("glibc-then-help",), "10.0": ()})

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    from ..common import check_option_list, check_output_format, image_size_arg

    if key == "options":
        check_option_list(value)
    elif key == "output":
        check_output_format(value)
    elif key == "size":
        p.state["size"] = image_size_arg(value or "")
    elif key == "snapshot":
        from qimg.errors import QimgError

        from ..prog import NAME

        try:
            _snapshot_param(value or "")
        except QimgError as e:
            raise QimgError(f"{e.message}\n{NAME}: Failed in parsing snapshot param '{value}'") from None


def run(p: Parsed) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops import measure as ops_measure

    from ..common import check_output_format, open_image
    from ..prog import NAME, error_exit

    ofmt = check_output_format(p.output)
    img_size = p.state.get("size")
    args, fmt, snapshot = p.args, p.fmt, p.snapshot
    if len(args) > 1:
        error_exit("At most one filename argument is allowed.")
    filename = args[0] if args else None
    if filename is None and (p.image_opts or fmt or snapshot is not None):
        error_exit("--image-opts, -f, and -l require a filename argument.")
    if filename is not None and img_size is not None:
        error_exit("--size N cannot be used together with a filename.")
    if filename is None and img_size is None:
        error_exit("Either --size N or one filename must be specified.")
    img = None
    try:
        if filename is not None:
            img = open_image(filename, fmt, image_opts=p.image_opts, force_share=p.force_share)
            if snapshot is not None:
                _load_snapshot(img, snapshot)
        try:
            info = ops_measure.measure(p.out_fmt or "raw", img_size, ",".join(p.options), img)
        except QimgError as e:
            # two error_report lines in qemu-img: both carry the program name
            raise QimgError(e.message.replace("\nInvalid options", f"\n{NAME}: Invalid options"),
                            e.exit_code) from None
    finally:
        if img is not None:
            img.close()
    if ofmt == "json":
        sys.stdout.write(ops_measure.format_json(info))
    else:
        sys.stdout.write(ops_measure.format_human(info))


def _snapshot_param(param: str) -> tuple[str | None, str | None]:
    """``-l``: ``snapshot.id=ID,snapshot.name=NAME`` or a bare ID_OR_NAME."""
    from qimg.errors import invalid_parameter
    from qimg.options import split_options

    if not param.startswith("snapshot."):
        return None, param
    d: dict[str, str | None] = {}
    for k, v in split_options(param):
        if k not in ("snapshot.id", "snapshot.name"):
            raise invalid_parameter(k)
        d[k] = v
    return d.get("snapshot.id"), d.get("snapshot.name")


def _load_snapshot(img, param: str) -> None:
    from qimg.driver import Format
    from qimg.errors import QimgError

    sid, name = _snapshot_param(param)
    drv = img.driver
    if type(drv).snapshot_load_readonly is Format.snapshot_load_readonly:
        raise QimgError(f"Failed to load snapshot: Block format '{img.format}' used by device '' does not "
                        "support temporarily loading internal snapshots")
    try:
        drv.snapshot_load_readonly(sid, name)
    except QimgError as e:
        raise QimgError(f"Failed to load snapshot: {e.message}") from None
