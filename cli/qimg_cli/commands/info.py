"""``qimg info``: the ops.info report, human or JSON."""
from __future__ import annotations

from ..tables import FILENAME_DOC, IMAGE_OPTS_DOC, Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "info",
    usage="[-f FMT | --image-opts] [-b] [-U] [--object OBJDEF]\n        [--output human|json] FILENAME\n",
    options=(
        help_option(),
        Opt("fmt", "-f --format", True, "  -f, --format FMT\n     specify FILENAME image format explicitly", complete="format"),
        Opt("output", "--output", True, "  --output human|json\n     specify output format name (default human)",
            complete="human json"),
        Opt("backing_chain", "-b@10.0 --backing-chain", doc="  -b, --backing-chain\n     display information about "
            "backing chaing\n  (in case the image is stacked"),
        object_option(),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open image in shared mode for concurrent access"),
    ),
    layout=("fmt", "image_opts", "backing_chain", "force_share", "objects", "output", FILENAME_DOC))

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    if key == "output":
        from ..common import output_format_in_loop

        output_format_in_loop(value)


def run(p: Parsed) -> None:
    import sys

    from qimg.ops import info as ops_info

    from ..common import check_output_format, open_image, usage_exit

    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(p.output)
    infos = ops_info.collect(p.args[0], p.fmt, image_opts=p.image_opts, force_share=p.force_share,
                             backing_chain=p.backing_chain, opener=open_image)
    if ofmt == "json":
        sys.stdout.write(ops_info.format_json(infos if p.backing_chain else infos[0]))
    else:
        sys.stdout.write(ops_info.format_human(infos if p.backing_chain else infos[0]))
