"""``qimg commit``: commit an image's changes into its backing file (or ``-b base``)."""
from __future__ import annotations

from ..copyopts import Getopt, UsageError, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":f:ht:b:dpqr:"
LONG = {"help": False, "object": True, "image-opts": False}


def run(argv: list[str]) -> None:
    import sys

    from qimg.errors import QimgError

    from ..common import Progress, parse_objects
    from ..copyopts import check_cache, open_named, parse_rate

    fmt = cache = base_name = None
    drop = progress = quiet = image_opts = False
    rate = 0
    objects: list[str] = []
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        if opt in ("h", "help"):
            show_help()
        elif opt == "f":
            fmt = val
        elif opt == "t":
            cache = val
        elif opt == "b":
            base_name = val
            drop = True  # -b implies -d: the images above the base stay valid
        elif opt == "d":
            drop = True
        elif opt == "p":
            progress = True
        elif opt == "q":
            quiet = True
        elif opt == "r":
            rate = parse_rate(val or "")
        elif opt == "object":
            objects.append(val or "")
        elif opt == "image-opts":
            image_opts = True
    if quiet:
        progress = False
    if len(g.positionals) != 1:
        raise UsageError("Expecting one image file name")
    filename = g.positionals[0]
    parse_objects(objects)
    check_cache(cache)
    img = open_named(filename, fmt, image_opts=image_opts, writable=True)
    bar = Progress(progress)
    try:
        from qimg.ops.commit import commit, find_in_chain

        base = None
        if base_name is not None:
            base = find_in_chain(img, base_name)
            if base is None:
                raise QimgError(f"Did not find '{base_name}' in the backing chain of '{filename}'")
        # qemu-img polls its commit job: 0% again while it starts, then 100% once done
        commit(img, base, drop=drop, rate_limit=rate)
        if progress:
            sys.stdout.write("    (0.00/100%)\r    (100.00/100%)\r\n")
            sys.stdout.flush()
    except BaseException:
        if bar.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    finally:
        img.close()
    if not quiet:
        sys.stdout.write("Image committed.\n")


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "commit", run, "Commit an image into its backing file")
    raise AttributeError(attr)


__all__ = ["run"]
