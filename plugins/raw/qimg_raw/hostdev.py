"""QEMU's ``host_device`` driver: the file protocol for block and character devices
(``-f host_device /dev/sdb``, ``driver=host_device``, ``host_device:/dev/sdb``, a backing format
name). A regular file is refused; creating one only opens the existing device."""
from __future__ import annotations

from qimg.errors import QimgError
from qimg.ops.create import PREALLOC_NAMES
from qimg.options import SIZE, STRING, Option
from qimg.protocol import SECTOR, FileProtocol
from qimg.runtime import FILE_TYPES, check_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class HostDeviceProtocol(FileProtocol):
    protocol_name = "host_device"
    runtime_options = {k: v for k, v in FILE_TYPES.items() if k not in ("filename", "driver")}
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
        Option("preallocation", STRING, "Preallocation mode (allowed values: off)"),
    ]

    @classmethod
    def parse_filename(cls, filename: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        # QEMU's hdev_parse_filename: the ``host_device:`` prefix is not part of the path
        prefix = f"{cls.protocol_name}:"
        return {"filename": filename[len(prefix):] if filename.startswith(prefix) else filename}

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "HostDeviceProtocol":
        check_file(options, prefix="")
        name = options.get("filename")
        if not name:
            raise QimgError(f"The '{cls.protocol_name}' block driver requires a file name")
        proto = cls(str(name), writable=writable)
        if not proto.is_device:
            proto.close()
            raise QimgError(f"'{cls.protocol_name}' driver requires '{name}' to be either a character or block device")
        return proto

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> "HostDeviceProtocol":
        """QEMU's create-by-opening fallback (bdrv_co_create_opts_simple): the existing device
        is opened; a size beyond it cannot grow it; its first sector is zeroed."""
        opts = dict(options or {})
        mode = opts.get("preallocation") or "off"
        if mode not in PREALLOC_NAMES:
            raise QimgError(f"invalid parameter value: {mode}")
        if mode != "off":
            raise QimgError(f"Unsupported preallocation mode '{mode}'")
        try:
            proto = cls.open(cls.parse_filename(filename), writable=True, filename=filename)
        except QimgError as e:
            from qimg.compat import text

            prefix = text("protocol-create-fallback").format(cls.protocol_name)
            raise QimgError(prefix + e.message, e.exit_code) from None
        try:
            size = opts.get("size") or 0
            proto.truncate(size)  # a device never grows: QEMU's 'Cannot grow device files'
            first = min(proto.size(), SECTOR)
            if first:
                proto.pwrite(0, bytes(first))  # no older image header survives
        except BaseException:
            proto.close()
            raise
        return proto
