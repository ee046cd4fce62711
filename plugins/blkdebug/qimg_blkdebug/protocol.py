"""The ``blkdebug`` protocol: QEMU's error injection filter. It passes every request to its
child node (``image``) unless an armed rule (:mod:`qimg_blkdebug.rules`) fails it with an errno.

Forms, as QEMU takes them:

- ``blkdebug:CONFIG:IMAGE`` (``CONFIG`` may be empty: ``blkdebug::image.qcow2``), the format
  probed over it;
- options: ``file.driver=blkdebug,file.config=...,file.image.filename=...`` under a format,
  ``driver=blkdebug,...`` at the top, ``json:{"driver": "blkdebug", "inject-error": [...], "image":
  {...}}`` (the rules given as ``inject-error.N.*`` / ``set-state.N.*``).
"""
from __future__ import annotations

import os

from qimg.errors import QimgError
from qimg.options import SIZE, STRING
from qimg.protocol import Protocol

from .rules import BLOCK_STATUS, DISCARD, FLUSH, READ, WRITE, WRITE_ZEROES, Rules, parse_config, sections_from_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_LIMITS = ("align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard")
_PERMISSIONS = ("consistent-read", "write", "write-unchanged", "resize", "graph-mod")
_INT_MAX = (1 << 31) - 1


def _check_limits(opts: dict[str, Any], child_align: int = 1) -> None:
    """QEMU's checks of the alignment overrides, in its order and words."""
    def get(name: str) -> int:
        return int(opts.get(name) or 0)

    align = get("align")
    if align and (align >= _INT_MAX or align & (align - 1)):
        raise QimgError(f"Cannot meet constraints with align {align}")
    align = max(align, child_align)
    for name, base in (("max-transfer", align), ("opt-write-zero", align),
                       ("max-write-zero", max(get("opt-write-zero"), align)), ("opt-discard", align),
                       ("max-discard", max(get("opt-discard"), align))):
        value = get(name)
        if value and (value >= _INT_MAX or value % base):
            raise QimgError(f"Cannot meet constraints with {name} {value}")


class BlkdebugProtocol(Protocol):
    protocol_name = "blkdebug"
    reports_dirty_flag = True  # blkdebug_co_get_info passes its child's (a file's: false)
    runtime_options = {"config": STRING, "x-image": STRING, "image": STRING, "image.": STRING,
                       # (the limits typed in open(): a json: name shows them as given, "4k")
                       **{name: STRING for name in _LIMITS}, "inject-error.": STRING, "set-state.": STRING,
                       "take-child-perms.": STRING, "unshare-child-perms.": STRING}
    strong_runtime_options = ("config", "inject-error.", "set-state.", *_LIMITS)

    @classmethod
    def parse_filename(cls, filename: str, options: Any = None) -> dict[str, Any]:
        """``blkdebug:CONFIG:IMAGE`` (QEMU's blkdebug_parse_filename)."""
        if not filename.startswith("blkdebug:"):
            return {"x-image": filename}
        rest = filename[len("blkdebug:"):]
        config, sep, image = rest.partition(":")
        if not sep:
            raise QimgError("blkdebug requires both config file and image path")
        out: dict[str, Any] = {"x-image": image}
        if config:
            out["config"] = config
        return out

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "BlkdebugProtocol":
        opts = dict(options)
        sections: list = []
        config = opts.get("config")
        if config is not None:
            try:
                with open(str(config), encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read()
            except OSError as e:
                raise QimgError(f"Could not read blkdebug config file: {os.strerror(e.errno or 0)}") from None
            sections = parse_config(text)
        sections += sections_from_options(opts)
        rules = Rules(sections)
        for prefix in ("take-child-perms.", "unshare-child-perms."):
            for key in [k for k in opts if k.startswith(prefix)]:
                value = opts.pop(key)
                if value not in _PERMISSIONS:
                    raise QimgError(f"Parameter '{key[:-1] if key.endswith('.') else key}' does not accept value "
                                    f"'{value}'")
        image_opts = {k[len("image."):]: v for k, v in opts.items() if k.startswith("image.")}
        image = opts.get("x-image")
        if isinstance(opts.get("image"), str):
            raise QimgError(f"Cannot find device='{opts['image']}' nor node-name='{opts['image']}'")
        if image is None and not image_opts:
            raise QimgError('A block device must be specified for "image"')
        from qimg.api import open_child

        child = open_child(None if image is None else str(image), image_opts, writable=writable)
        try:
            from qimg.runtime import convert_value

            _check_limits({name: convert_value(name, SIZE, opts[name]) for name in _LIMITS if name in opts})
        except QimgError:
            child.close()
            raise
        proto = cls()
        proto.child, proto.rules, proto.config = child, rules, config
        proto.writable = writable
        proto.filename = filename or child.filename
        proto.cluster_size = child.cluster_size  # blkdebug_co_get_info asks its child
        # what makes the node more than "blkdebug:CONFIG:IMAGE" (its json: name then)
        proto.extra = {k: v for k, v in options.items()
                       if k not in ("config", "x-image", "driver", "filename") and not k.startswith("image.")}
        proto.image_opts = image_opts
        rules.event("none")
        return proto

    # -- names ---------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        inner = self.child.exact_filename()
        if not inner or self.extra:
            return None
        return f"blkdebug:{self.config or ''}:{inner}"

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "blkdebug"}
        if self.config is not None:
            out["config"] = self.config
        out.update(self.extra)
        out["image"] = self.child.json_options()
        return out

    def child_nodes(self) -> list[tuple[str, Protocol]]:
        return [("image", self.child)]

    def dirname(self) -> str:
        # only the image's name matters (QEMU's blkdebug_dirname)
        return self.child.dirname()

    # -- I/O -------------------------------------------------------------------------------------
    def _check(self, offset: int, length: int, iotype: str) -> None:
        err = self.rules.check(offset, length, iotype)
        if err:
            raise OSError(err, os.strerror(err) if err > 0 else f"Unknown error {err}")

    def debug_event(self, event: str) -> None:
        self.rules.event(event)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        self._check(offset, len(buf), READ)
        return self.child.preadinto(offset, buf)

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length, READ)
        return self.child.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._check(offset, len(data), WRITE)
        self.child.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._check(offset, length, WRITE_ZEROES)
        self.child.write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length, DISCARD)
        self.child.discard(offset, length)

    def flush(self) -> None:
        self._check(0, 0, FLUSH)
        self.child.flush()

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        self._check(offset, length, BLOCK_STATUS)
        return self.child.block_status(offset, length)

    def data_extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        self._check(offset, length, BLOCK_STATUS)
        yield from self.child.data_extents(offset, length)

    def size(self) -> int:
        return self.child.size()

    def truncate(self, size: int) -> None:
        self.child.truncate(size)

    def check_resize(self, size: int) -> None:
        self.child.check_resize(size)

    def allocate(self, offset: int, length: int) -> None:
        self.child.allocate(offset, length)

    def allocated_size(self) -> int | None:
        return None  # QEMU asks no child for a filter's size on disk: "unavailable"

    def set_perms(self, perm: int, shared: int) -> None:
        self.child.set_perms(perm, shared)

    def close(self) -> None:
        self.child.close()
