"""``qemu-img resize``: relative/absolute sizes and qemu-img's checks before truncating."""
from __future__ import annotations

from .. import trace
from ..errors import QimgError, QimgValueError

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..image import Image

PREALLOC_MODES = ("off", "metadata", "falloc", "full")

SHRINK_WARNING = ("Shrinking an image will delete all data beyond the shrunken image's end. Before performing "
                  "such an operation, make sure there is no important data there.")


def check_preallocation(mode: str) -> str:
    if mode not in PREALLOC_MODES:
        raise QimgValueError(f"Invalid preallocation mode '{mode}'")
    return mode


def parse_size_arg(text: str, warn: Callable[[str], None] | None = None) -> tuple[int, int]:
    """``+N``/``-N``/``N`` -> (relative sign or 0, N); size errors as QEMU's size option."""
    from .sizes import strtosz

    relative = 0
    if text[:1] == "+":
        relative, text = 1, text[1:]
    elif text[:1] == "-":
        relative, text = -1, text[1:]
    try:
        n = strtosz(text, warn, limit=1 << 64)
    except OverflowError:
        raise QimgValueError(f"Value '{text}' is out of range for parameter 'size'") from None
    except ValueError:
        raise QimgValueError(
            "Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.") from None
    # QemuOpts reads a uint64; qemu-img then uses it as int64 (huge values go negative)
    return relative, n - (1 << 64) if n >= 1 << 63 else n


class ShrinkRefused(QimgValueError):
    """Shrinking without --shrink: the CLI also prints qemu-img's warning."""


def new_size(current: int, relative: int, n: int, *, shrink: bool, preallocation: str = "off") -> int:
    total = current + n * relative if relative else n
    if total <= 0:
        raise QimgValueError("New image size must be positive")
    if total <= current and preallocation != "off":
        raise QimgValueError("Preallocation can only be used for growing images")
    if total < current and not shrink:
        raise ShrinkRefused("Use the --shrink option to perform a shrink operation.")
    return total


def resize(img: "Image", size: str | int, *, shrink: bool = False, preallocation: str = "off") -> int:
    """Resize ``img`` (opened writable) to ``size`` (bytes, or qemu-img's ``+N``/``-N`` text);
    return the new size."""
    check_preallocation(preallocation)
    relative, n = (0, size) if isinstance(size, int) else parse_size_arg(size)
    current = img.size
    total = new_size(current, relative, n, shrink=shrink, preallocation=preallocation)
    trace.event("resize_image", filename=img.filename, old_size=current, new_size=total, shrink=shrink,
                preallocation=preallocation)
    try:
        img.truncate(total, shrink=shrink, preallocation=preallocation)
    except OSError as e:  # the file protocol's failure, worded as QEMU's file driver
        raise QimgError(f"Could not resize file: {e.strerror or e}") from None
    return total
