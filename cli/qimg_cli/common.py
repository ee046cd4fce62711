"""Helpers every subcommand shares: opening images the qemu-img way, -o merging, --output,
quiet printing, --object secrets, size arguments."""
from __future__ import annotations

import sys

from . import prog
from .prog import error_exit, usage_exit, warn  # noqa: F401 - the commands' helpers, re-exported

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


def say(text: str, quiet: bool = False) -> None:
    """Print a line on stdout unless -q."""
    if not quiet:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def check_output_format(value: str | None) -> str:
    """``--output`` accepts human or json; anything else is qemu-img's error."""
    if value is None or value == "human":
        return "human"
    if value == "json":
        return "json"
    prog.fail("bad-output", value=value)


def output_format_in_loop(value: str | None) -> None:
    """qemu-img 10.0 checks ``--output`` as it meets it (7.2 after parsing)."""
    from qimg.compat import has

    if has("output-checked-in-loop"):
        check_output_format(value)


def merge_o(values: Iterable[str]) -> str:
    """Repeated ``-o`` options merge into one comma-separated string."""
    from qimg.options import merge_option_strings

    return merge_option_strings(values)


def parse_objects(objects: Iterable[str]) -> None:
    """Register ``--object secret,id=...,data=...|file=...`` definitions with the core."""
    if not objects:
        return
    from qimg import secrets

    from .objects import help_text

    for text in objects:
        if "help" in text or "?" in text:
            answer = help_text(text)
            if answer is not None:
                sys.stdout.write(answer)
                raise SystemExit(0)
        secrets.add_object(text)


def strtosz(text: str) -> int:
    """QEMU's ``qemu_strtosz`` (see :func:`qimg.ops.sizes.strtosz`), warnings on stderr."""
    from qimg.ops.sizes import strtosz as _strtosz

    return _strtosz(text, warn)


INT64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1


def cvtnum(what: str, text: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """qemu-img's ``cvtnum_full``: a size with suffixes (``qemu_strtosz``) in ``[lo, hi]``, or
    QimgError with its message (``Invalid <what> specified...``, worded by profile)."""
    from qimg.errors import QimgError

    out_of_range = f"Invalid {what} specified. Must be between {lo} and {hi}."
    try:
        value = strtosz(text)
    except OverflowError:
        raise QimgError(out_of_range) from None
    except ValueError:
        raise QimgError(prog.text("cvtnum-invalid", what=what, value=text)) from None
    if not lo <= value <= hi:
        raise QimgError(out_of_range)
    return value


def cvtint(what: str, text: str, lo: int, hi: int) -> int:
    """qemu-img 10.0's number arguments (bench's counts, convert -m): an integer in C's notation
    (``0x10``, ``010``) in ``[lo, hi]``, or its ``Invalid <what> specified`` messages."""
    from qimg.errors import QimgError

    t = text.lstrip()
    body = t[1:] if t[:1] in "+-" else t
    try:
        if body[:2].lower() == "0x":
            value = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            value = int(body[1:], 8)
        else:
            value = int(body, 10) if body.isdigit() else int("x")
    except ValueError:
        raise QimgError(prog.text("cvtnum-invalid", what=what, value=text)) from None
    if t[:1] == "-":
        value = -value
    if not lo <= value <= hi:
        raise QimgError(f"Invalid {what} specified. Must be between {lo} and {hi}.")
    return value


def image_size_arg(text: str) -> int:
    """A size argument of create/measure, with qemu-img's messages (qemu's ``cvtnum``)."""
    return cvtnum("image size", text)


def check_option_list(value: str | None) -> None:
    """``-o``: qemu-img's ``Invalid option list`` while parsing."""
    from qimg.ops.create import valid_option_list

    if not valid_option_list(value or ""):
        error_exit(f"Invalid option list: {value}")


# -- opening images ---------------------------------------------------------------------------------

def open_image(filename: str, fmt: str | None = None, *, image_opts: bool = False,
               writable: bool = False, force_share: bool = False, backing: bool = True,
               quiet_probe_warning: bool = True, options: dict[str, Any] | None = None,
               resize: bool = False) -> Any:
    """Open an image for a command: :func:`qimg.open`, which parses the name (a path, a
    protocol URL, ``json:{...}``, or with ``image_opts`` an option string) and words every
    error as qemu-img (``Could not open 'x': ...``). ``quiet_probe_warning`` is kept for
    compatibility and ignored (a writable open of a probed raw image prints qemu's warning)."""
    import qimg
    from qimg import api

    api.report = warn  # QEMU's warn_report lines carry the program name
    return qimg.open(filename, fmt, image_opts=image_opts, writable=writable, force_share=force_share,
                     backing=backing, options=options, resize=resize)
