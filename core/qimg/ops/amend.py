"""``qemu-img amend``: validate options against the driver's ``amend_opts`` and call
``driver.amend``; ``-o help`` text."""
from __future__ import annotations

from .. import trace
from ..driver import Format, ProgressFn
from ..errors import QimgError
from ..options import parse_options

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from typing import Any

    from ..image import Image


def supports_amend(cls: "type[Format]") -> bool:
    return cls.amend is not Format.amend and bool(cls.amend_opts)


def help_text(fmt: str) -> str:
    from .create import format_class

    cls = format_class(fmt)
    if not supports_amend(cls):
        raise QimgError(f"Format driver '{fmt}' does not support option amendment")
    lines = [f"Amend options for '{fmt}':"] + [o.help_line() for o in sorted(cls.amend_opts, key=lambda o: o.name)]
    return "\n".join(lines)


def parse_amend_options(cls: "type[Format]", options: str, *, quiet: bool = False) -> dict[str, Any]:
    """The amend options, checked; ``quiet``: without 7.2's hex-size warnings (QEMU reads the
    string once: a caller that checked it first passes quiet to :func:`amend`)."""
    try:
        return parse_options(options, list(cls.amend_opts), quiet=quiet)
    except QimgError as e:
        from .create import merged_opts

        try:
            parse_options(options, merged_opts(list(cls.amend_opts), list(cls.create_opts)), quiet=quiet)
        except QimgError:
            raise e from None
        raise QimgError(f"{e.message}\nThis option is only supported for image creation") from None


def amend(img: "Image", options: str, *, progress: ProgressFn | None = None, force: bool = False,
          quiet: bool = False) -> None:
    cls = type(img.driver)
    if not supports_amend(cls):
        raise QimgError(f"Format driver '{img.format}' does not support option amendment")
    opts = parse_amend_options(cls, options, quiet=quiet)
    trace.event("amend_image", filename=img.filename, options=options)
    img.driver.amend(opts, progress, force)
