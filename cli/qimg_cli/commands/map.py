"""``qimg map``: the ops.map entries, human or JSON."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


def _in_loop(key: str, value, state: dict) -> None:
    if key == "start_offset":
        state["start_offset"] = _offset_arg("start offset", value or "")
    elif key == "max_length":
        state["max_length"] = _offset_arg("max length", value or "")


# options as data (see qimg_cli.fast): no click import unless the click command is asked for
NAME = "map"
LEGACY_LONGS = ("help", "format", "output", "object", "image-opts", "force-share", "start-offset", "max-length")
#: (parameter name, option declarations, is a flag), in click's parameter order
OPTIONS = (
    ("fmt", ("-f", "--format"), False),
    ("output", ("--output",), False),
    ("objects", ("--object",), False),
    ("image_opts", ("--image-opts",), True),
    ("force_share", ("-U", "--force-share"), True),
    # qemu-img 7.2 also takes -s and -l for these (its man page does not list them)
    ("start_offset", ("-s", "--start-offset"), False),
    ("max_length", ("-l", "--max-length"), False),
)
GETOPT_HOOK = _in_loop


def run(fmt, output, objects, image_opts, force_share, start_offset, max_length, args, state) -> None:
    import sys

    from qimg.ops import map as ops_map

    from ..common import check_output_format, open_image, parse_objects, usage_exit

    parsed = state  # values converted while parsing, as qemu-img
    start = parsed.get("start_offset", 0) if start_offset is not None else 0
    length = parsed.get("max_length") if max_length is not None else None
    if len(args) != 1:
        usage_exit("Expecting one image file name")
    ofmt = check_output_format(output)
    parse_objects(objects)
    with open_image(args[0], fmt, image_opts=image_opts, force_share=force_share) as img:
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


def _offset_arg(what: str, text: str) -> int:
    from qimg.errors import QimgError

    from ..common import image_size_arg
    from ..main import PROG

    try:
        return image_size_arg(text)
    except QimgError:
        raise QimgError(f"Invalid {what} specified. You may use k, M, G, T, P or E suffixes for\n"
                        f"{PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") from None


def __getattr__(name: str) -> Any:
    if name == "command":
        from ..fast import lazy_command

        return lazy_command(__name__)
    raise AttributeError(name)
