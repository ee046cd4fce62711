"""The ``file`` driver: QEMU's file protocol named as the image's driver (its own module so
that opening a raw image does not load what only ``-f file`` needs)."""
from __future__ import annotations

from qimg.errors import NotSupported
from qimg.ops.create import FILE_CREATE_OPTS, check_protocol_preallocation
from qimg.runtime import FILE_TYPES, check_file

from .driver import RawFormat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FileFormat(RawFormat):
    """QEMU's file protocol named as the format (``-f file``, ``driver=file,filename=x``): the
    file's bytes as they are, the protocol's own options (``locking=off``) at the top level,
    no raw window, no size measurement."""

    format_name = "file"
    #: QEMU words refusals of a protocol's options differently ("Block protocol ... doesn't")
    is_protocol = True
    runtime_options = {k: v for k, v in FILE_TYPES.items() if k not in ("filename", "driver")}
    strong_runtime_options = ()
    create_opts = FILE_CREATE_OPTS

    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        check_file(options, prefix="")
        super().__init__(file, filename=filename, writable=writable,
                         options={k: v for k, v in options.items() if k not in ("offset", "size")})

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        # the protocol's own words for a preallocation it does not know (raw passes them on)
        check_protocol_preallocation(filename, RawFormat, opts)
        super().create(filename, size, opts)

    @classmethod
    def measure(cls, size: int | None, opts: dict[str, Any], source=None) -> dict[str, int]:
        raise NotSupported("Block driver 'file' does not support size measurement")

    def format_specific_info(self) -> dict[str, Any] | None:
        from qimg.compat import has

        # qemu-img 10.0 reports the file protocol's own info (7.2: none)
        return self.file.specific_info() if has("file-specific-info") else None
