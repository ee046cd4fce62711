"""The raw format: guest bytes are the file's bytes (optionally a window: offset/size)."""
from __future__ import annotations

import errno
import os

from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO, Status
from qimg.driver import Format
from qimg.errors import QimgError, bad_value
from qimg.options import SIZE, Option
from qimg.plugins import get_registry
from qimg.protocol import PREALLOC_MODES, FileProtocol, Protocol, preallocate
from qimg.protofmt import protocol_status

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: what QEMU writes at the start of a newly created raw file
FIRST_BLOCK = 4096


class RawFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = {"offset": SIZE, "size": SIZE}
    strong_runtime_options = ("offset", "size")
    format_name = "raw"
    raw_status = True
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
    ]

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        mode = opts.get("preallocation") or "off"
        entry = get_registry().protocol_for(filename)
        if entry is not None and entry.name != "file":
            # QEMU's raw creates through the protocol: a remote one (nbd) opens its existing
            # target, checks the size and zeroes the first sector, and that is all
            popts = {k: v for k, v in opts.items() if v is not None}
            popts["size"] = size
            popts["preallocation"] = opts.get("preallocation")
            open_protocol(filename, create=True, writable=True, options=popts).close()
            return
        if mode not in PREALLOC_MODES:
            raise bad_value("preallocation", mode)
        file = open_protocol(filename, create=True, writable=True)
        try:
            if getattr(file, "is_device", False):
                file.truncate(size)  # a device is not resized: growing it is an error
                return
            # QEMU's file creation rounds the size up to whole sectors and writes the first
            # block (up to 4 KiB) so that alignment probing finds allocated data there
            from qimg.units import sector_round

            size = sector_round(size)
            if size >= 1 << 63:  # QEMU's int64: ftruncate refuses a negative length
                raise OSError(22, "Could not resize file: Invalid argument")
            file.truncate(0)
            try:
                preallocate(file, 0, size, mode)
            except OSError as e:  # QEMU's file driver words it so (the errno stays for the caller)
                import os

                raise OSError(e.errno, f"Could not resize file: {os.strerror(e.errno or 5)}") from None
            if size and mode != "full":
                file.pwrite(0, bytes(min(size, FIRST_BLOCK)))
        finally:
            file.close()

    @classmethod
    def measure(cls, size: int | None, opts: dict[str, Any], source=None) -> dict[str, int]:
        # QEMU counts whole 512-byte sectors, allocated or not: raw has no metadata
        n = source.size if source is not None else (size or 0)
        n = -(-n // 512) * 512
        return {"required": n, "fully-allocated": n}

    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self.offset = int(options.get("offset", 0) or 0)
        # cache.direct=on: QEMU's requests (block status too) are aligned to O_DIRECT's request
        # size, so the part of the last sector past the file's end joins the data before it
        self._direct = options.get("cache.direct") is True
        fsize = file.size()
        if self.offset > fsize:
            raise QimgError(f"Offset ({self.offset}) cannot be greater than size of the containing file ({fsize})")
        if "size" in options and options["size"] is not None:
            self._size = int(options["size"])
            if self._size > fsize - self.offset:
                raise QimgError(f"The sum of offset ({self.offset}) and size ({self._size}) has to be smaller or "
                                f"equal to the  actual size of the containing file ({fsize})")  # QEMU's two spaces
            if self._size % 512:
                # a partial last sector would be rounded up and leak past the window
                raise QimgError("Specified size is not multiple of 512")
            self._fixed = True
        else:
            self._size = max(0, fsize - self.offset)
            self._fixed = False

    def plain_host_range(self) -> tuple[Protocol, int]:
        return self.file, self.offset

    @property
    def size(self) -> int:
        if not self._fixed:
            # QEMU's block layer counts whole 512-byte sectors: a 1000-byte file is 1024 bytes
            # of guest disk (the tail reads as zeroes)
            return -(-max(0, self.file.size() - self.offset) // 512) * 512
        return self._size

    def block_status(self, offset: int, length: int) -> Status:
        if not isinstance(self.file, FileProtocol):
            # a remote protocol's status as it is: data, zeroes, both, or unknown (read it)
            return protocol_status(self.file, self.offset + offset, length)
        for start, n, is_data in self.file.data_extents(self.offset + offset, length):
            host = start
            if is_data:
                if self._direct and not self._fixed and start + n == self.file.size():
                    n = min(length, self.size - offset)  # (through the end of the last sector)
                return Status(DATA | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)
            return Status(ZERO | ALLOCATED | OFFSET_VALID, n, host, self.file.filename)
        return Status(ZERO | ALLOCATED, length)

    def info_extra(self) -> dict[str, Any]:
        # QEMU asks the protocol, and only some answer (file, rbd; no dirty-flag over nbd): a
        # protocol that answers says so (reports_dirty_flag)
        return {} if self.file.reports_dirty_flag else {"dirty-flag": None}

    @property
    def cluster_size(self) -> int | None:
        return self.file.cluster_size  # QEMU's raw passes bdrv_get_info on (rbd's object size)

    def read(self, offset: int, buf: memoryview) -> None:
        got = self.file.preadinto(self.offset + offset, buf)
        if got < len(buf):
            buf[got:] = bytes(len(buf) - got)

    def write(self, offset: int, data: memoryview) -> None:
        if self.probed and offset < SECTOR and len(data):
            self._check_probe(offset, data)
        self.file.pwrite(self.offset + offset, data)

    def _check_probe(self, offset: int, data: memoryview) -> None:
        """A probed raw image refuses a write that would make its first sector probe as another
        format (QEMU's raw driver: EPERM), so that a guest cannot turn it into an image."""
        head = bytearray(self.file.pread(self.offset, SECTOR).ljust(SECTOR, b"\0"))
        n = min(len(data), SECTOR - offset)
        head[offset:offset + n] = data[:n]
        entry = get_registry().probe(bytes(head), self.filename)
        if entry is not None and entry.name != "raw":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self.file.write_zeroes(self.offset + offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        self.file.discard(self.offset + offset, length)

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        if self._fixed or self.offset:
            raise QimgError("Cannot resize a raw image with an offset or a fixed size")
        self.file.check_resize(size)  # NBD: "Cannot resize NBD nodes"
        old = self.file.size()
        if getattr(self.file, "is_device", False) and size != old:
            raise QimgError("Cannot resize device files")  # QEMU's exact resize of a device
        if size < old:
            self.file.truncate(size)
        else:
            if preallocation not in PREALLOC_MODES and self.file.preallocation_modes == PREALLOC_MODES:
                raise QimgError(f"Unsupported preallocation mode: {preallocation}")  # (file-posix's words)
            preallocate(self.file, old, size, preallocation)  # (a protocol's own refusal: rbd's)

