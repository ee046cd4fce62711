"""Machine-readable progress: JSON lines on the file descriptor ``QIMG_PROGRESS_FD`` names.

Opt-in and separate from everything qemu-img prints: set ``QIMG_PROGRESS_FD`` to an open file
descriptor (a pipe the caller reads, usually) and every long operation (convert, compare,
commit, rebase; on the command line and through the library) writes one JSON object a line::

    {"operation": "convert", "phase": "copy", "bytes_done": 1048576, "bytes_total": 10485760}

ending with ``"phase": "done"`` (``bytes_done`` = ``bytes_total``) when it succeeds. Lines are
written whole with one ``write(2)`` each (atomic on a pipe), at most one per percent of the
total, plus the first and the last. A descriptor that cannot be written is ignored: progress
never changes what the command prints or its exit status. docs/progress.md describes it.

The stdout/stderr output of the commands (``-p`` included) is qemu-img's, whatever this does.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from .results import Progress

#: the environment variable naming the descriptor (no qemu-img option can collide with it)
ENV = "QIMG_PROGRESS_FD"


def requested() -> bool:
    """Whether the stream is asked for (cheap: no import, no descriptor check)."""
    return bool(os.environ.get(ENV))


def line(operation: str, phase: str, done: int, total: int) -> bytes:
    """One JSON line (operation and phase names are ASCII identifiers: no escaping needed)."""
    return (f'{{"operation": "{operation}", "phase": "{phase}", "bytes_done": {int(done)}, '
            f'"bytes_total": {int(total)}}}\n').encode()


class Stream:
    """Writes progress lines to one descriptor, one per percent moved (and every phase change)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.last: tuple[str, str, int, int] | None = None
        self.broken = False

    def emit(self, operation: str, phase: str, done: int, total: int) -> None:
        if self.broken:
            return
        last = self.last
        if last is not None and last[:2] == (operation, phase) and done < total:
            step = max(1, total // 100)
            if done // step == last[2] // step and total == last[3]:
                return  # less than a percent since the last line
        self.last = (operation, phase, done, total)
        try:
            os.write(self.fd, line(operation, phase, done, total))
        except OSError:
            self.broken = True  # a closed or bad descriptor: stop, never fail the operation

    def __call__(self, p: Progress) -> None:
        self.emit(p.operation, p.phase, p.done, p.total)


_stream: Stream | None = None
_stream_fd: int | None = None


def stream() -> Stream | None:
    """The process's stream when ``QIMG_PROGRESS_FD`` names a descriptor (a number), else None."""
    global _stream, _stream_fd
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        fd = int(text, 10)
    except ValueError:
        return None
    if fd < 0:
        return None
    if _stream is None or _stream_fd != fd:
        _stream, _stream_fd = Stream(fd), fd
    return _stream


def sink() -> Callable[[Progress], None] | None:
    """What the library's progress reports also go to (None: the stream is not asked for)."""
    return stream()


def reporter(operation: str, phase: str, scale: int | None = None) -> Callable[[float, float], None] | None:
    """An ``ops`` progress function (``done, total``; a percentage when ``scale`` is given:
    bytes are that share of ``scale``) writing to the stream, or None when it is not asked for."""
    s = stream()
    if s is None:
        return None

    def report(done: float, total: float) -> None:
        if scale is not None:
            done, total = scale * done / (total or 100.0), scale
        s.emit(operation, phase, int(done), int(total))

    return report


def done(operation: str, total: int | None = None) -> None:
    """The last line of a successful operation (``total`` None: the last one reported, else 0)."""
    s = stream()
    if s is not None:
        if total is None:
            last = s.last
            total = last[3] if last is not None and last[0] == operation else 0
        s.emit(operation, "done", total, total)
