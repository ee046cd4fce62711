"""``qemu-img bitmap``: persistent dirty bitmap actions, applied in command-line order through
the driver's optional ``bitmap_*`` methods (see :class:`qimg.driver.Format`)."""
from __future__ import annotations

from .. import trace
from ..errors import QimgError

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from ..image import Image

ACTIONS = ("add", "remove", "clear", "enable", "disable", "merge")


def check_granularity(granularity: int | None) -> None:
    if granularity is not None and (granularity < 512 or granularity & (granularity - 1)):
        raise QimgError("Granularity must be power of 2 and at least 512")


def apply(img: "Image", action: str, name: str, *, granularity: int | None = None,
          source: "Image | None" = None, source_name: str | None = None) -> None:
    """One action on bitmap ``name``; errors read ``Operation add on bitmap b0 failed: ...``."""
    trace.event("bitmap_op", filename=img.filename, op=action, name=name)
    drv = img.driver
    try:
        if action == "add":
            check_granularity(granularity)
            if not name:
                raise QimgError("Bitmap name cannot be empty")
            # a name over 1023 bytes is refused by the format driver, with its own message
            drv.bitmap_add(name, granularity)
        elif action == "merge":
            drv.bitmap_merge(name, source if source is not None else img, source_name or "")
        elif action in ACTIONS:
            getattr(drv, f"bitmap_{action}")(name)
        else:
            raise QimgError(f"Unknown bitmap action '{action}'")
    except QimgError as e:
        raise QimgError(f"Operation {action} on bitmap {name} failed: {e.message}", e.exit_code) from None
    except OSError as e:
        raise QimgError(f"Operation {action} on bitmap {name} failed: {e.strerror or e}") from None
