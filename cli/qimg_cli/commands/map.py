"""``qimg map``: the ops.map entries, human or JSON."""
from __future__ import annotations

from ..tables import FILENAME_DOC, IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "map",
    usage=("[-f FMT | --image-opts] [--object OBJDEF] [--output human|json]\n"
           "        [--start-offset OFFSET] [--max-length LENGTH] [-U] FILENAME\n"),
    options=(
        help_option(),
        Opt("fmt", "-f --format", True, "  -f, --format FMT\n     specify FILENAME image format explicitly", complete="format"),
        Opt("output", "--output", True, "  --output human|json\n     specify output format name (default human)",
            complete="human json"),
        object_option(),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open image in shared mode for concurrent access"),
        # qemu-img 7.2 also takes -s and -l for these (its man page does not list them)
        Opt("start_offset", "-s --start-offset", True, "  --start-offset OFFSET", metavar="OFFSET",
            about="map from OFFSET on"),
        Opt("max_length", "-l --max-length", True, "  --max-length LENGTH", metavar="LENGTH",
            about="map at most LENGTH bytes"),
    ),
    layout=("fmt", "image_opts", "start_offset", "max_length", "output", "force_share", "objects", FILENAME_DOC))

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    # qemu-img converts these values inside its getopt loop
    from ..common import cvtnum

    if key == "start_offset":
        p.state["start_offset"] = cvtnum("start offset", value or "")
    elif key == "max_length":
        p.state["max_length"] = cvtnum("max length", value or "")
    elif key == "output":
        from ..common import output_format_in_loop

        output_format_in_loop(value)


def run(p: Parsed) -> None:
    import sys

    from qimg.ops import map as ops_map

    from ..common import check_output_format, open_image, usage_exit

    start = p.state.get("start_offset", 0)
    length = p.state.get("max_length")
    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(p.output)
    with open_image(p.args[0], p.fmt, image_opts=p.image_opts, force_share=p.force_share) as img:
        try:
            entries = ops_map.map_extents(img, start, length)
        except ops_map.MapError as e:
            # as qemu-img: the header and the entries finished before the failing query
            if ofmt == "json":
                sys.stdout.write(ops_map.format_json_partial(e.entries))
            else:
                for line in ops_map.human_lines(e.entries):
                    sys.stdout.write(line + "\n")
            sys.stdout.flush()
            raise
        if ofmt == "json":
            sys.stdout.write(ops_map.format_json(entries, start))
        else:
            for line in ops_map.human_lines(entries):
                sys.stdout.write(line + "\n")
        sys.stdout.flush()
