"""Helpers every subcommand shares: opening images the qemu-img way, -o merging, --output,
progress (-p and SIGUSR1), quiet printing, --object secrets."""
from __future__ import annotations

import signal
import sys
from typing import Any, Iterable

import click

from .main import PROG, error_exit


def say(text: str, quiet: bool = False) -> None:
    """Print a line on stdout unless -q."""
    if not quiet:
        click.echo(text)


def warn(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def check_output_format(value: str | None) -> str:
    """``--output`` accepts human or json; anything else is qemu-img's error."""
    if value is None or value == "human":
        return "human"
    if value == "json":
        return "json"
    error_exit("--output must be used with human or json as argument.")


def merge_o(values: Iterable[str]) -> str:
    """Repeated ``-o`` options merge into one comma-separated string."""
    from qimg.options import merge_option_strings

    return merge_option_strings(values)


def parse_objects(objects: Iterable[str]) -> None:
    """Register ``--object secret,id=...,data=...|file=...`` definitions with the core."""
    if not objects:
        return
    from qimg import secrets

    for text in objects:
        secrets.add_object(text)


def open_image(filename: str, fmt: str | None = None, *, image_opts: bool = False,
               writable: bool = False, force_share: bool = False, backing: bool = True,
               quiet_probe_warning: bool = True) -> Any:
    """Open an image for a command, returning a :class:`qimg.image.Image`.

    With ``image_opts`` the filename is a ``driver=...,file.filename=...`` option string.
    Errors become QimgError with qemu-img's ``Could not open`` wording.
    """
    import qimg
    from qimg.errors import QimgError

    options: dict[str, Any] = {}
    if image_opts:
        if fmt:
            raise QimgError("--image-opts and --format are mutually exclusive")
        from qimg.options import parse_dotted

        opts = parse_dotted(filename)
        fmt = opts.pop("driver", None)
        fname = opts.pop("file.filename", None) or opts.pop("filename", None)
        opts.pop("file.driver", None)
        if fname is None:
            raise QimgError("Could not open '" + filename + "': A block device must be specified for \"file\"")
        filename = fname
        options = opts
    return qimg.open(filename, fmt, writable=writable, force_share=force_share, backing=backing,
                     options=options)


class Progress:
    """qemu-img's progress line ``    (12.34/100%)\\r``; also printed once on SIGUSR1."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.current = 0.0
        self.last_printed = -1.0
        try:
            signal.signal(signal.SIGUSR1, self._on_signal)
        except (ValueError, OSError, AttributeError):
            pass
        if enabled:
            self._print()

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
