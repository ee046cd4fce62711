"""``qimg info``: the ops.info report, human or JSON."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


# options as data (see qimg_cli.fast): no click import unless the click command is asked for
NAME = "info"
LEGACY_LONGS = ("help", "format", "output", "backing-chain", "object", "image-opts", "force-share")
#: (parameter name, option declarations, is a flag), in click's parameter order
OPTIONS = (
    ("fmt", ("-f", "--format"), False),
    ("output", ("--output",), False),
    ("backing_chain", ("--backing-chain",), True),
    ("objects", ("--object",), False),
    ("image_opts", ("--image-opts",), True),
    ("force_share", ("-U", "--force-share"), True),
)
GETOPT_HOOK = None


def run(fmt, output, backing_chain, objects, image_opts, force_share, args, state) -> None:
    import os
    import sys

    from qimg.errors import QimgError
    from qimg.ops import info as ops_info

    from ..common import check_output_format, open_image, parse_objects, usage_exit

    if len(args) != 1:
        usage_exit("Expecting one image file name")
    filename = args[0]
    ofmt = check_output_format(output)
    parse_objects(objects)
    infos = []
    seen: set[str] = set()
    name, f, iopts = filename, fmt, image_opts
    while True:
        key = os.path.realpath(name) if not iopts else name
        if key in seen:
            raise QimgError(f"Backing file '{name}' creates an infinite loop.")
        seen.add(key)
        # "_no_io": info reads metadata only; encrypted images open without their key (QEMU)
        img = open_image(name, f, image_opts=iopts, force_share=force_share, backing=False,
                         options={"_no_io": True})
        try:
            infos.append(ops_info.image_info(img))
        finally:
            img.close()
        cur = infos[-1]
        if not backing_chain or "backing-filename" not in cur:
            break
        from qimg.untrusted import check_follow

        check_follow(name, cur["backing-filename"])  # untrusted mode opens nothing an image names
        if "full-backing-filename" not in cur:  # a protocol without folders (nbd)
            raise QimgError("Could not determine absolute backing filename, but backing filename "
                            f"'{cur['backing-filename']}' present")
        name = cur["full-backing-filename"]
        f = cur.get("backing-filename-format")
        iopts = False
    if ofmt == "json":
        sys.stdout.write(ops_info.format_json(infos if backing_chain else infos[0]))
    else:
        sys.stdout.write(ops_info.format_human(infos if backing_chain else infos[0]))


def __getattr__(name: str) -> Any:
    if name == "command":
        from ..fast import lazy_command

        return lazy_command(__name__)
    raise AttributeError(name)
