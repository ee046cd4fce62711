"""``bench``: a simple sequential I/O benchmark (qemu-img's request pattern and texts).

Requests go to ``offset``, ``offset+step``, ... wrapping modulo the image size; a request
reaching past the end fails as in QEMU ("Input/output error"). ``depth`` is reported and
bounds nothing here: requests are issued one after the other from one reused buffer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import QimgError

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..image import Image


@dataclass
class BenchOptions:
    count: int = 75000
    depth: int = 64
    bufsize: int = 4096
    step: int = 0            # 0: bufsize
    offset: int = 0
    write: bool = False
    pattern: int = 0
    flush_interval: int = 0
    drain_on_flush: bool = True


def header_lines(o: BenchOptions) -> list[str]:
    step = o.step or o.bufsize
    lines = [f"Sending {o.count} {'write' if o.write else 'read'} requests, {o.bufsize} bytes each, "
             f"{o.depth} in parallel (starting at offset {o.offset}, step size {step})"]
    if o.flush_interval:
        lines.append(f"Sending flush every {o.flush_interval} requests")
    return lines


def bench(img: "Image", o: BenchOptions, say: Callable[[str], None] = print) -> float:
    """Run the benchmark; print the header lines with ``say``; return the elapsed seconds."""
    for line in header_lines(o):
        say(line)
    size = img.size
    step = o.step or o.bufsize
    buf = bytearray([o.pattern]) * o.bufsize if o.write else bytearray(o.bufsize)
    view = memoryview(buf)
    off = o.offset
    start = time.monotonic()
    for i in range(o.count):
        if off + o.bufsize > size or off < 0:
            raise QimgError("Failed request: Input/output error")
        try:
            if o.write:
                img.pwrite(off, view)
            else:
                img.preadinto(off, view)
        except OSError as e:
            raise QimgError(f"Failed request: {e.strerror or e}") from None
        if o.write and o.flush_interval and (o.count - i - 1) % o.flush_interval == 0:
            img.flush()
        off = (off + step) % size if size else 0
    elapsed = time.monotonic() - start
    say(f"Run completed in {elapsed:.3f} seconds.")
    return elapsed
