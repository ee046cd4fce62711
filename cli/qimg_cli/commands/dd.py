"""``qimg dd``: ``bs= count= skip= if= of=`` operands as qemu-img dd."""
from __future__ import annotations

from ..copyopts import Getopt, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":hf:O:U"
LONG = {"help": False, "object": True, "image-opts": False, "force-share": False}
MAX_BS = 2147483647


def run(argv: list[str]) -> None:
    import sys

    from qimg.errors import QimgError

    from ..common import parse_objects
    from ..copyopts import cvtnum, open_named

    fmt = None
    out_fmt = "raw"
    force_share = image_opts = False
    objects: list[str] = []
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        if opt in ("h", "help"):
            show_help()
        elif opt == "f":
            fmt = val
        elif opt == "O":
            out_fmt = val or ""
        elif opt in ("U", "force-share"):
            force_share = True
        elif opt == "object":
            objects.append(val or "")
        elif opt == "image-opts":
            image_opts = True
    bs = 512
    count = skip = None
    in_name = out_name = None
    for arg in g.positionals:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("bs", "count", "if", "of", "skip"):
            raise QimgError(f"unrecognized operand {key}")
        if key == "bs":
            bs = cvtnum("bs", value)
            if not 1 <= bs <= MAX_BS:
                raise QimgError(f"Invalid bs specified. Must be between 1 and {MAX_BS}.")
        elif key == "count":
            count = cvtnum("count", value)
        elif key == "skip":
            skip = cvtnum("skip", value)
        elif key == "if":
            in_name = value
        else:
            out_name = value
    if in_name is None or out_name is None:
        raise QimgError("Must specify both input and output files")
    parse_objects(objects)
    src = open_named(in_name, fmt, image_opts=image_opts, force_share=force_share)
    try:
        from qimg.plugins import get_registry

        try:
            get_registry().format(out_fmt)
        except QimgError:
            raise QimgError("Unknown file format") from None
        from qimg.ops.dd import dd

        dd(src, out_name, out_fmt, bs=bs, count=count, skip=skip, in_name=in_name,
           warn=lambda m: sys.stderr.write(f"qimg: {m}\n"))
    finally:
        src.close()


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "dd", run, "Copy from input to output converting formats")
    raise AttributeError(attr)


__all__ = ["run"]
