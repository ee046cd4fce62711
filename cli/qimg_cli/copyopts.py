"""Option values shared by convert, compare, dd, commit, rebase and bench (qemu-img's texts):
cache modes, sizes, rates, snapshot parameters, ``-o help``, target image options, progress."""
from __future__ import annotations

import sys

from qimg.errors import QimgError

from . import prog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any


CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")


def check_cache(mode: str | None, source: bool = False) -> None:
    """``-t``/``-T``: only QEMU's cache mode names are accepted (they change nothing here)."""
    if mode is not None and mode not in CACHE_MODES:
        raise QimgError(f"Invalid {'source ' if source else ''}cache option: {mode}")


def parse_rate(text: str) -> int:
    from .common import cvtnum

    return cvtnum("rate limit", text)


def parse_snapshot_param(text: str) -> tuple[str | None, str | None]:
    """``-l``: ``snapshot.id=ID,snapshot.name=NAME`` or a bare ID_OR_NAME -> (id, name)."""
    if not text.startswith("snapshot."):
        return None, text
    from qimg.options import split_options

    sid = name = None
    for key, value in split_options(text):
        if key == "snapshot.id":
            sid = value or ""
        elif key == "snapshot.name":
            name = value or ""
        else:
            raise QimgError(f"Invalid parameter '{key}'\n{prog.NAME}: Failed in parsing snapshot param '{text}'")
    return sid, name


def load_snapshot(img: Any, sid: str | None, name: str | None) -> None:
    """Show an internal snapshot's data (``convert -l``), with qemu-img's error texts."""
    from qimg.driver import Format

    drv = img.driver
    if type(drv).snapshot_load_readonly is Format.snapshot_load_readonly:
        raise QimgError(f"Failed to load snapshot: Block format '{img.format}' used by device '' "
                        "does not support temporarily loading internal snapshots")
    try:
        if sid is None and name is not None:
            # a bare ID_OR_NAME: try as id first, then as name (as QEMU does)
            try:
                drv.snapshot_load_readonly(name, None)
            except QimgError:
                drv.snapshot_load_readonly(None, name)
        else:
            drv.snapshot_load_readonly(sid, name)
    except QimgError as e:
        msg = e.message
        if not msg.startswith("Failed to load snapshot"):
            msg = f"Failed to load snapshot: {msg}"
        raise QimgError(msg, e.exit_code) from None


# the file protocol's creation options, merged into the list when a target name is given
_FILE_OPTS = [
    ("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"),
    ("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)"),
    ("preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"),
    ("size", "size", "Virtual disk size"),
]


def option_help(fmt: str, filename: str | None) -> str:
    """The text of ``-o help`` for a target format (with protocol options if a file is named)."""
    from qimg.errors import QimgError
    from qimg.ops.create import supports_create
    from qimg.options import Option, options_help
    from qimg.plugins import get_registry

    cls = get_registry().format(fmt).load()
    if not supports_create(cls):  # (a read-only format: bochs, dmg, cloop)
        raise QimgError(f"Format driver '{fmt}' does not support image creation")
    declared = list(cls.create_opts)
    if filename is None:
        return options_help(fmt, declared)
    get_registry().find_protocol(filename)  # QEMU's "Unknown protocol 'x'"
    names = {o.name for o in declared}
    for name, kind, text in _FILE_OPTS:
        if name not in names:
            declared.append(Option(name, kind, text))
    lines = ["Supported options:"] + [o.help_line() for o in sorted(declared, key=lambda o: o.name)]
    return "\n".join(lines)


def image_opts_target(text: str) -> tuple[str, str | None, dict[str, Any]]:
    """``--target-image-opts`` string -> (filename, driver, open options)."""
    from qimg.targets import target_from_image_opts

    return target_from_image_opts(text)


def _f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def qemu_progress(enabled: bool, min_skip: float = 1.0) -> Any:
    """A progress line that prints exactly when qemu's does (qemu_progress_print): on a move
    of more than ``min_skip`` points (convert 1, compare and rebase 2), at 0 and at 100, with
    qemu's single-precision arithmetic."""
    class QemuProgress(Progress):
        def update(self, done: float, total: float) -> None:
            cur = _f32(100.0 if total <= 0 else min(100.0, done * 100.0 / total))
            self.current = cur
            last = self.last_printed
            if not self.enabled:
                return
            if (cur > _f32(last + min_skip) or cur < _f32(last - min_skip) or cur == 0 or cur == 100):
                self._print()

    bar = QemuProgress(enabled)
    if bar.last_printed < 0:
        bar.last_printed = 0.0
    return bar


def with_stream(update: Any, operation: str, phase: str, scale: int | None = None) -> Any:
    """``update`` (qemu-img's ``-p`` meter, or None) that also writes the JSON lines of
    ``QIMG_PROGRESS_FD`` when the caller asked for them (docs/progress.md); the meter's output
    is the same either way."""
    import os

    if not os.environ.get("QIMG_PROGRESS_FD"):
        return update
    from qimg.progress import reporter

    rep = reporter(operation, phase, scale)
    if rep is None or update is None:
        return rep or update

    def both(done: float, total: float) -> None:
        update(done, total)
        rep(done, total)

    return both


def stream_done(operation: str, total: int | None = None) -> None:
    """The ``done`` line of ``QIMG_PROGRESS_FD`` after a successful operation."""
    import os

    if os.environ.get("QIMG_PROGRESS_FD"):
        from qimg.progress import done

        done(operation, total)


def open_named(filename: str, fmt: str | None = None, **kw: Any) -> Any:
    """common.open_image (an empty name or format fails as qemu-img's)."""
    from .common import open_image

    return open_image(filename, fmt, **kw)


class Progress:
    """qemu-img's progress line ``    (12.34/100%)\\r``; also printed once on SIGUSR1."""

    def __init__(self, enabled: bool, initial: bool = True) -> None:
        """``initial`` False: print nothing until the first update (qemu's amend)."""
        self.enabled = enabled
        self.current = 0.0
        self.last_printed = -1.0
        # the C module: signal.py wraps it in enums (and imports enum), start-up for nothing
        import _signal

        try:
            _signal.signal(_signal.SIGUSR1, self._on_signal)
        except (ValueError, OSError, AttributeError):
            pass
        if enabled and initial:
            self._print()

    def end(self) -> None:
        """qemu_progress_end: only the final newline (after a failure, no 100%)."""
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _on_signal(self, *_: Any) -> None:
        self._print(force=True)

    def _print(self, force: bool = False) -> None:
        sys.stdout.write(f"    ({self.current:.2f}/100%)\r")
        sys.stdout.flush()
        self.last_printed = self.current

    def update(self, done: float, total: float) -> None:
        pct = 100.0 if total <= 0 else min(100.0, done * 100.0 / total)
        self.current = pct
        # qemu-img prints when progress moved by at least 1 percent
        if self.enabled and pct - self.last_printed >= 1.0:
            self._print()

    def finish(self) -> None:
        if self.enabled:
            self.current = 100.0
            self._print()
            sys.stdout.write("\n")
            sys.stdout.flush()


class AmendProgress(Progress):
    """qemu-img amend's meter: the driver reports ``(offset, total)``; the percentage is
    ``100.f * offset / total`` in single precision, printed on a move of more than 1 point,
    at 0 and at 100 (qemu_progress_print)."""

    def update(self, offset: float, total: float) -> None:
        cur = 100.0 if total <= 0 else min(100.0, _f32(_f32(100.0 * _f32(offset)) / _f32(total)))
        self.current = cur
        last = self.last_printed
        if self.enabled and (last < 0 or cur > _f32(last + 1.0) or cur < _f32(last - 1.0) or cur in (0, 100)):
            self._print()
