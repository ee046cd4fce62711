"""QEMU's null block drivers: a node of ``size`` bytes (default 1 GiB) that drops every write and
whose reads return zeroes. QEMU's tests use it as a source or sink of any size that costs nothing.

Options, as QEMU's: ``size`` (bytes, default 1 GiB), ``read-zeroes`` (QEMU fills reads with zeroes
only when set, else leaves the buffer as it was: qimg always gives zeroes, but answers block
status as QEMU does: zeroes only when set, else nothing known, "not present" in ``map``),
``latency-ns`` (each request waits that long). The only name is ``null-co://`` (``null-aio://``);
a node with ``size`` or ``read-zeroes`` is named by its ``json:{...}`` options.
"""
from __future__ import annotations

import time

from qimg.blockstatus import ZERO
from qimg.errors import QimgError
from qimg.options import BOOL, NUMBER, SIZE, STRING
from qimg.protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SIZE = 1 << 30


class NullCoProtocol(Protocol):
    protocol_name = "null-co"
    # (size typed here: a json: name of the node shows it as it was given, "1M" or 1048576)
    runtime_options = {"size": STRING, "latency-ns": NUMBER, "read-zeroes": BOOL}
    strong_runtime_options = ("size", "read-zeroes")
    can_create = False

    @classmethod
    def parse_filename(cls, filename: str, options: Any = None) -> dict[str, Any]:
        if filename != f"{cls.protocol_name}://":
            raise QimgError(f"The only allowed filename for this driver is '{cls.protocol_name}://'")
        return {}

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "NullCoProtocol":
        proto = cls()
        proto.writable = writable
        proto.filename = filename or f"{cls.protocol_name}://"
        from qimg.runtime import convert_value

        proto._size = int(convert_value("size", SIZE, options.get("size", DEFAULT_SIZE)))
        proto.read_zeroes = bool(options.get("read-zeroes", False))
        proto.latency = int(options.get("latency-ns", 0) or 0) / 1e9
        # what a json: name of the node holds: its options that change what it is
        proto.extra = {k: options[k] for k in options if k in cls.strong_runtime_options}
        return proto

    # -- names ---------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        return None if self.extra else f"{self.protocol_name}://"

    def json_options(self) -> dict[str, Any]:
        return {"driver": self.protocol_name, **self.extra}

    # -- I/O -------------------------------------------------------------------------------------
    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        self._wait()
        n = max(0, min(len(buf), self._size - offset))
        buf[:n] = bytes(n)
        return n

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._wait()

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._wait()

    def discard(self, offset: int, length: int) -> None:
        self._wait()

    def flush(self) -> None:
        self._wait()

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        return length, (ZERO if self.read_zeroes else 0)

    def size(self) -> int:
        return self._size

    def truncate(self, size: int) -> None:
        raise QimgError("Image format driver does not support resize")

    def allocated_size(self) -> int | None:
        return 0


class NullAioProtocol(NullCoProtocol):
    protocol_name = "null-aio"
