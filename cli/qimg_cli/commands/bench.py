"""``qimg bench``: sequential read/write benchmark with qemu-img's options and output."""
from __future__ import annotations

from ..copyopts import Getopt, UsageError, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":hc:d:f:ni:o:qs:S:t:wU"
LONG = {"help": False, "flush-interval": True, "image-opts": False, "pattern": True,
        "no-drain": False, "force-share": False}
INT_MAX = 2147483647


def _strtoul(text: str) -> int | None:
    """qemu_strtoul with base 0 (``0x10``, ``010``); None when invalid."""
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            return int(t, 16)
        if len(t) > 1 and t.startswith("0"):
            return int(t, 8)
        return int(t, 10)
    except ValueError:
        return None


def run(argv: list[str]) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops.bench import BenchOptions

    from ..copyopts import CACHE_MODES, cvtnum, open_named

    o = BenchOptions()
    fmt = None
    aio = None
    cache = None
    force_share = image_opts = False
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        val = val or ""
        if opt in ("h", "help"):
            show_help()
        elif opt == "c":
            n = _strtoul(val)
            if n is None or n < 0 or n > INT_MAX:
                raise QimgError("Invalid request count specified")
            o.count = n
        elif opt == "d":
            n = _strtoul(val)
            if n is None or n <= 0 or n > INT_MAX:
                raise QimgError("Invalid queue depth specified")
            o.depth = n
        elif opt == "f":
            fmt = val
        elif opt == "n":
            aio = "native"
        elif opt == "i":
            if val not in ("threads", "native", "io_uring"):
                raise QimgError(f"Invalid aio option: {val}")
            aio = val
        elif opt == "o":
            o.offset = cvtnum("offset", val)
        elif opt == "q":
            pass  # qemu-img bench prints its lines even with -q
        elif opt == "s":
            n = cvtnum("buffer size", val)
            if n > INT_MAX:
                raise QimgError("Invalid buffer size specified")
            o.bufsize = n
        elif opt == "S":
            n = cvtnum("step_size", val)
            if n > INT_MAX:
                raise QimgError("Invalid step_size specified")
            o.step = n
        elif opt == "t":
            if val not in CACHE_MODES:
                raise QimgError("Invalid cache mode")
            cache = val
        elif opt == "w":
            o.write = True
        elif opt in ("U", "force-share"):
            force_share = True
        elif opt == "flush-interval":
            n = _strtoul(val)
            if n is None or n < 0 or n > INT_MAX:
                raise QimgError("Invalid flush interval specified")
            o.flush_interval = n
        elif opt == "image-opts":
            image_opts = True
        elif opt == "pattern":
            n = _strtoul(val)
            if n is None or n < 0 or n > 0xFF:
                raise QimgError("Invalid pattern byte specified")
            o.pattern = n
        elif opt == "no-drain":
            o.drain_on_flush = False
    if len(g.positionals) != 1:
        raise UsageError("Expecting one image file name")
    filename = g.positionals[0]
    if o.flush_interval and not o.write:
        raise QimgError("--flush-interval is only available in write tests")
    if o.flush_interval and o.flush_interval < o.depth:
        raise QimgError("Flush interval can't be smaller than depth")
    if force_share and o.write:
        raise QimgError(f"Could not open '{filename}': force-share=on can only be used with read-only images")
    if aio == "native" and cache not in ("none", "off", "directsync") and not image_opts:
        # qemu's file driver refuses this once the file itself is open (before the format)
        import os

        from qimg.plugins import get_registry

        if fmt and fmt not in get_registry().format_names():
            raise QimgError(f"Could not open '{filename}': Unknown driver '{fmt}'")
        try:
            os.close(os.open(filename, os.O_RDONLY))
        except OSError as e:
            text = os.strerror(e.errno) if e.errno else str(e)
            raise QimgError(f"Could not open '{filename}': Could not open '{filename}': {text}") from None
        raise QimgError(f"Could not open '{filename}': aio=native was specified, but it requires "
                        "cache.direct=on, which was not specified.")
    img = open_named(filename, fmt, image_opts=image_opts, writable=o.write, force_share=force_share)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        from qimg.ops.bench import bench

        bench(img, o, say)
    finally:
        img.close()


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "bench", run, "Run a simple sequential I/O benchmark")
    raise AttributeError(attr)


__all__ = ["run"]
