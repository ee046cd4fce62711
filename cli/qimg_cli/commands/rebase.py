"""``qimg rebase``: change the backing file (safe mode keeps the guest view; ``-u`` does not)."""
from __future__ import annotations

from ..copyopts import Getopt, UsageError, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":hf:F:b:upt:T:qU"
LONG = {"help": False, "object": True, "image-opts": False, "force-share": False}


def run(argv: list[str]) -> None:
    import sys

    from ..common import parse_objects
    from ..copyopts import check_cache, open_named, qemu_progress

    fmt = backing_fmt = backing = cache = src_cache = None
    unsafe = progress = quiet = force_share = image_opts = False
    objects: list[str] = []
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        if opt in ("h", "help"):
            show_help()
        elif opt == "f":
            fmt = val
        elif opt == "F":
            backing_fmt = val
        elif opt == "b":
            backing = val
        elif opt == "u":
            unsafe = True
        elif opt == "p":
            progress = True
        elif opt == "t":
            cache = val
        elif opt == "T":
            src_cache = val
        elif opt == "q":
            quiet = True
        elif opt in ("U", "force-share"):
            force_share = True
        elif opt == "object":
            objects.append(val or "")
        elif opt == "image-opts":
            image_opts = True
    if quiet:
        progress = False
    if len(g.positionals) != 1:
        raise UsageError("Expecting one image file name")
    if not unsafe and backing is None:
        raise UsageError("Must specify backing file (-b) or use unsafe mode (-u)")
    filename = g.positionals[0]
    parse_objects(objects)
    check_cache(cache)
    check_cache(src_cache, source=True)
    bar = qemu_progress(progress, 2.0)
    try:
        # -U shares the backing files only: the image itself is written
        img = open_named(filename, fmt, image_opts=image_opts, writable=True, backing=not unsafe)
        try:
            from qimg.ops.rebase import rebase

            rebase(img, backing, backing_fmt, unsafe=unsafe, force_share=force_share,
                   progress=bar.update if progress else None)
        finally:
            img.close()
        if progress:
            bar.end()  # the 100% line came from ops.rebase, before the name change
    except BaseException:
        if bar.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "rebase", run, "Change the backing file of an image")
    raise AttributeError(attr)


__all__ = ["run"]
