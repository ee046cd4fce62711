"""A protocol named as an image's driver (``driver=nbd,server.type=unix,...``,
``json:{"driver": "nbd", ...}``, ``-f nbd``): QEMU then opens the protocol node itself as the
image, with no format layer. :func:`format_class` makes the Format that passes through to it,
one class per protocol (``info`` shows the protocol's name as the file format).
"""
from __future__ import annotations

from .blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO, Status
from .driver import Format

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Protocol


class ProtocolFormat(Format):
    """The bytes of a protocol node as the guest sees them (QEMU's protocol driver as the
    top node). Sizes count whole sectors, as QEMU's block layer does."""

    is_protocol = True
    raw_status = True
    thread_safe_reads = True
    protocol_class: type[Protocol]

    def __init__(self, file: Protocol, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        proto = cls.protocol_class.create(filename, {**opts, "size": size})
        try:
            if proto.size() < size:
                proto.truncate(size)
        finally:
            proto.close()

    @property
    def size(self) -> int:
        return -(-self.file.size() // SECTOR) * SECTOR

    def block_status(self, offset: int, length: int) -> Status:
        return protocol_status(self.file, offset, length)

    def read(self, offset: int, buf: memoryview) -> None:
        got = self.file.preadinto(offset, buf)
        if got < len(buf):
            buf[got:] = bytes(len(buf) - got)

    def write(self, offset: int, data: memoryview) -> None:
        self.file.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self.file.write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        self.file.discard(offset, length)

    def flush(self) -> None:
        self.file.flush()

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        self.file.truncate(size)

    def allocated_file_size(self) -> int | None:
        return self.file.allocated_size()

    def info_extra(self) -> dict[str, Any]:
        # most protocol nodes answer no bdrv_get_info (those that do say so: rbd, blkdebug)
        return {} if self.file.reports_dirty_flag else {"dirty-flag": None}

    @property
    def cluster_size(self) -> int | None:
        return self.file.cluster_size

    def format_specific_info(self) -> dict[str, Any] | None:
        from .compat import has
        from .protocol import FileProtocol

        if isinstance(self.file, FileProtocol) and not has("file-specific-info"):
            return None  # 7.2's file and host_device drivers report none
        return self.file.specific_info()


def protocol_status(file: Protocol, offset: int, length: int) -> Status:
    """A protocol's block status as a format over it passes it on (QEMU's raw driver):
    data, zeroes, or unknown contents (present, to be read), at the same offset."""
    size = file.size()
    if offset >= size:
        if not has_block_status(file):
            # QEMU: a protocol without block status is data up to the (sector-rounded) end
            return Status(DATA | ALLOCATED | OFFSET_VALID, length, offset, file.filename)
        return Status(ZERO | ALLOCATED, length)  # the sector rounding past the end
    n, flags = file.block_status(offset, min(length, size - offset))
    n = max(1, min(n, length))
    if not file.maps_offsets:
        return Status((flags & (DATA | ZERO)) | ALLOCATED, n)
    return Status((flags & (DATA | ZERO)) | ALLOCATED | OFFSET_VALID, n, offset, file.filename)


def has_block_status(file: Protocol) -> bool:
    """Whether a protocol answers block status (else everything is data, as QEMU assumes)."""
    from .protocol import Protocol

    cls = type(file)
    return cls.block_status is not Protocol.block_status or cls.data_extents is not Protocol.data_extents


_classes: dict[tuple[str, type], type[ProtocolFormat]] = {}


def format_class(name: str, protocol_class: type[Protocol]) -> type[ProtocolFormat]:
    """The Format class of protocol ``name`` used as a driver."""
    key = (name, protocol_class)
    cls = _classes.get(key)
    if cls is None:
        cls = type(f"{name.capitalize()}ProtocolFormat", (ProtocolFormat,), {
            "format_name": name,
            "protocol_class": protocol_class,
            "runtime_options": dict(protocol_class.runtime_options),
            "strong_runtime_options": tuple(protocol_class.strong_runtime_options),
            "create_opts": list(protocol_class.create_opts),
        })
        _classes[key] = cls
    return cls


