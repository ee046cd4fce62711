"""``qimg bench``: sequential read/write benchmark with qemu-img's options and output."""
from __future__ import annotations

from ..tables import IMAGE_OPTS_DOC, Command, Opt, help_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "bench",
    usage=("[-f FMT | --image-opts] [-t CACHE] [-c COUNT] [-d DEPTH]\n"
           "        [-o OFFSET] [-s BUFFER_SIZE] [-S STEP_SIZE] [-i AIO] [-n]\n"
           "        [-w [--pattern PATTERN] [--flush-interval INTERVAL [--no-drain]]]\n"),
    options=(
        help_option(),
        Opt("fmt", "-f --format@10.0", True, "  -f, --format FMT\n     specify FILENAME format explicitly",
            complete="format"),
        Opt("image_opts", "--image-opts", doc=IMAGE_OPTS_DOC),
        Opt("cache", "-t --cache@10.0", True, "  -t, --cache CACHE\n     cache mode for FILENAME (writeback)",
            complete="cache"),
        Opt("count", "-c --count@10.0", True, "  -c, --count COUNT\n     number of I/O requests to perform"),
        Opt("depth", "-d --depth@10.0", True, "  -d, --depth DEPTH\n     number of requests to perform in parallel"),
        Opt("offset", "-o --offset@10.0", True, "  -o, --offset OFFSET\n     start first request at this OFFSET"),
        Opt("buffer_size", "-s --buffer-size@10.0", True, "  -s, --buffer-size BUFFER_SIZE\n     size of each I/O request"),
        Opt("step_size", "-S --step-size@10.0", True, "  -S, --step-size STEP_SIZE\n     each next request offset increment"),
        Opt("aio", "-i --aio@10.0", True, "  -i, --aio AIO\n     async-io backend (threads, native, io_uring)",
            complete="threads native io_uring"),
        Opt("native", "-n --native@10.0", doc="  -n, --native\n     use native AIO backend if possible"),
        Opt("write", "-w --write@10.0", doc="  -w, --write\n     perform write test (default is read)"),
        Opt("pattern", "--pattern", True, "  --pattern PATTERN\n     write this pattern byte instead of zero"),
        Opt("flush_interval", "--flush-interval", True,
            "  --flush-interval FLUSH_INTERVAL\n     issue flush after this number of requests"),
        Opt("no_drain", "--no-drain", doc="  --no-drain\n     do not wait when flushing pending requests"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open images in shared mode for concurrent access"),
        Opt("quiet", "-q", doc="  -q, --quiet\n     quiet operations"),
    ),
    layout=("quiet", "fmt", "image_opts", "cache", "count", "buffer_size", "depth", "offset", "step_size", "aio",
            "native", "write", "pattern", "flush_interval", "no_drain", "force_share"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def _strtoul(text: str) -> int | None:
    """qemu_strtoul with base 0 (``0x10``, ``010``); None when invalid."""
    t = text.lstrip()  # strtoul skips leading white space; qemu_strtoul refuses anything after
    if not t or t[-1].isspace() or "_" in t:
        return None  # (Python's int() would take trailing space and digit separators)
    try:
        if t.lower().startswith("0x"):
            return int(t, 16)
        if len(t) > 1 and t.startswith("0"):
            return int(t, 8)
        return int(t, 10)
    except ValueError:
        return None


def on_option(p: Parsed, key: str, value: str | None) -> None:
    """qemu-img bench's getopt loop: every value is checked as it is met (qemu-img 10.0 checks
    the numbers as cvtnum does sizes: ``range-checked-numbers``)."""
    from qimg.compat import has
    from qimg.errors import QimgError
    from qimg.ops.bench import BenchOptions

    from ..common import INT_MAX, cvtint, cvtnum
    from ..copyopts import CACHE_MODES

    o = p.state.setdefault("bench", BenchOptions())
    val = value or ""
    ranged = has("range-checked-numbers")

    def number(what: str, lo: int, hi: int) -> int:
        if ranged:
            return cvtint(what, val, lo, hi)
        n = _strtoul(val)
        if n is None or n < lo or n > hi:
            raise QimgError(f"Invalid {what} specified")
        return n

    if key == "count":
        o.count = number("request count", 0 if not ranged else 1, INT_MAX)
    elif key == "depth":
        # qemu-img 7.2 takes 0 (and then never ends: qimg refuses it when the run starts)
        o.depth = number("queue depth", 1 if ranged else 0, INT_MAX)
    elif key == "native":
        p.state["aio"] = "native"
    elif key == "aio":
        if val not in ("threads", "native", "io_uring"):
            raise QimgError(f"Invalid aio option: {val}")
        p.state["aio"] = val
    elif key == "offset":
        o.offset = cvtnum("offset", val)
    elif key == "buffer_size":
        o.bufsize = cvtnum("buffer size", val, 1 if ranged else 0, INT_MAX)
    elif key == "step_size":
        o.step = cvtnum("step size" if ranged else "step_size", val, 0, INT_MAX)
    elif key == "cache":
        if val not in CACHE_MODES:
            raise QimgError("Invalid cache mode")
    elif key == "write":
        o.write = True
    elif key == "flush_interval":
        o.flush_interval = number("flush interval", 0, INT_MAX)
    elif key == "pattern":
        o.pattern = number("pattern byte", 0, 0xFF)
    elif key == "no_drain":
        o.drain_on_flush = False


def run(p: Parsed) -> None:
    import sys

    from qimg.errors import QimgError
    from qimg.ops.bench import BenchOptions

    from ..copyopts import open_named
    from ..prog import usage_exit

    o = p.state.get("bench") or BenchOptions()
    fmt, aio, cache = p.fmt, p.state.get("aio"), p.cache
    force_share, image_opts = p.force_share, p.image_opts
    if len(p.args) != 1:
        usage_exit("Expecting one image file name")
    filename = p.args[0]
    if o.depth == 0:
        raise QimgError("Invalid queue depth specified")
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
