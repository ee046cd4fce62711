"""``qimg compare``: exit 0 identical, 1 different, 2 open errors, 3/4 status/read errors."""
from __future__ import annotations

from ..copyopts import Getopt, UsageError, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":hf:F:T:pqsU"
LONG = {"help": False, "object": True, "image-opts": False, "force-share": False}


def run(argv: list[str]) -> None:
    import sys

    from qimg.errors import QimgError

    from ..common import parse_objects
    from ..copyopts import check_cache, open_named, qemu_progress

    fmt1 = fmt2 = cache = None
    progress = quiet = strict = force_share = image_opts = False
    objects: list[str] = []
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        if opt in ("h", "help"):
            show_help()
        elif opt == "f":
            fmt1 = val
        elif opt == "F":
            fmt2 = val
        elif opt == "T":
            cache = val
        elif opt == "p":
            progress = True
        elif opt == "q":
            quiet = True
        elif opt == "s":
            strict = True
        elif opt in ("U", "force-share"):
            force_share = True
        elif opt == "object":
            objects.append(val or "")
        elif opt == "image-opts":
            image_opts = True
    if quiet:
        progress = False
    files = g.positionals
    if len(files) != 2:
        raise UsageError("Expecting two image file names")
    bar = qemu_progress(False)
    images = []
    try:
        try:
            parse_objects(objects)
            check_cache(cache, source=True)
        except QimgError as e:
            raise QimgError(e.message, 2) from None
        for name, fmt in ((files[0], fmt1), (files[1], fmt2)):
            try:
                images.append(open_named(name, fmt, image_opts=image_opts, force_share=force_share))
            except QimgError as e:
                raise QimgError(e.message, 2) from None
        bar = qemu_progress(progress, 2.0)  # qemu-img starts it once both images are open
        from qimg.ops.compare import compare

        def say(text: str) -> None:
            if not quiet:
                sys.stdout.write(text + "\n")

        rc = compare(images[0], images[1], strict=strict, say=say,
                     progress=bar.update if progress else None,
                     name1=files[0], name2=files[1], qemu_runs=bar.enabled)
    finally:
        for img in images:
            try:
                img.close()
            except QimgError:
                pass
        if progress:
            sys.stdout.write("\n")
            sys.stdout.flush()
    raise SystemExit(rc)


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "compare", run, "Check if two images have the same content")
    raise AttributeError(attr)


__all__ = ["run"]
