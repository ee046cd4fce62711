"""``qemu-img measure``: the generic part (option parsing, output); the numbers come from the
output format's driver classmethod ``measure(size, opts, source)``."""
from __future__ import annotations

from .. import trace
from ..errors import NotSupported, QimgError
from ..options import parse_options

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from typing import Any

    from ..image import Image


def measure(out_fmt: str = "raw", size: int | None = None, options: str = "",
            source: "Image | None" = None) -> dict[str, int]:
    """``{"required": n, "fully-allocated": m[, "bitmaps": b]}`` for a new image of
    ``out_fmt`` holding ``source`` (or ``size`` bytes of nothing)."""
    from .create import FILE_CREATE_OPTS, format_class, merged_opts, supports_create

    cls = format_class(out_fmt)
    if not supports_create(cls):
        raise QimgError(f"Format driver '{out_fmt}' does not support image creation")
    declared = merged_opts(list(cls.create_opts), FILE_CREATE_OPTS)
    try:
        opts: dict[str, Any] = parse_options(options, declared) if options else {}
    except QimgError as e:
        raise QimgError(f"{e.message}\nInvalid options for file format '{out_fmt}'") from None
    if size is not None:
        opts["size"] = size
    elif "size" in opts:
        size = opts["size"]
    try:
        result = cls.measure(size if source is None else None, opts, source)
    except NotSupported:
        raise
    trace.event("measure_result", format=out_fmt, required=result.get("required"),
                fully_allocated=result.get("fully-allocated"))
    return result


def format_human(info: dict[str, int]) -> str:
    text = f"required size: {info['required']}\nfully allocated size: {info['fully-allocated']}\n"
    if "bitmaps" in info:
        text += f"bitmaps size: {info['bitmaps']}\n"
    return text


def format_json(info: dict[str, int]) -> str:
    from .qjson import dumps

    d = {"required": info["required"], "fully-allocated": info["fully-allocated"]}
    if "bitmaps" in info:
        d["bitmaps"] = info["bitmaps"]
    return dumps(d) + "\n"
