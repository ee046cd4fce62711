"""The VMDK format: a descriptor naming extents (flat, sparse, zero), after VMware's
"Virtual Disk Format 5.0". One driver instance maps guest offsets onto its extents.

Extent files are found relative to the descriptor's folder (absolute names as given), as
qemu-img does. In untrusted mode (``options["untrusted"]``) no file other than the image
itself is opened: such extents are still listed by ``info`` but any I/O on them is refused.
"""
from __future__ import annotations

import bisect
import os

from qimg import limits
from qimg.api import open_protocol
from qimg.blockstatus import Status
from qimg.driver import CheckResult, Format
from qimg.errors import NotSupported, QimgError
from qimg.options import BOOL, SIZE, STRING, Option

from . import descriptor as dsc
from .extents import Extent, FlatExtent, SparseExtent, UnopenedExtent, ZeroExtent, file_read
from .structs import (
    COMPRESSION_DEFLATE,
    COWD_MAGIC,
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_NL_DETECT,
    FLAG_RGD,
    FLAG_ZERO_GRAIN,
    MAGIC,
    NL_CHECK,
    SECTOR,
    SparseHeader,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

ADAPTERS = ("ide", "lsilogic", "buslogic", "legacyESX")
SUBFORMATS = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized")
DEFAULT_TOOLS_VERSION = "2147483647"
SPLIT_SECTORS = (2 << 30) // SECTOR
GRAIN_SECTORS = 128
GTES = 512
DESC_SECTORS = 20


def _extent_names(filename: str, kind: str, count: int) -> list[str]:
    """``disk.vmdk`` -> ``disk-flat.vmdk`` / ``disk-s001.vmdk`` / ``disk-f001.vmdk``."""
    base = os.path.basename(filename)
    dot = base.rfind(".")
    prefix, postfix = (base[:dot], base[dot:]) if dot > 0 else (base, "")
    if kind == "flat":
        return [f"{prefix}-flat{postfix}"]
    return [f"{prefix}-{kind}{i:03d}{postfix}" for i in range(1, count + 1)]


def _sparse_layout(capacity: int, with_desc: bool, wrap: bool = False) -> dict[str, int]:
    """Sector layout of a new sparse extent as qemu-img makes it (RGD + GTs, GD + GTs);
    ``wrap``: qemu-img's create counts the grains in 32 bits (256 TiB and more wrap)."""
    grains = (capacity + GRAIN_SECTORS - 1) // GRAIN_SECTORS
    if wrap:
        grains &= 0xFFFFFFFF
    n_gt = (grains + GTES - 1) // GTES
    gd_sectors = (n_gt * 4 + SECTOR - 1) // SECTOR
    gt_sectors = n_gt * GTES * 4 // SECTOR
    # qemu-img reserves the descriptor area even in extents of a separate descriptor
    desc_offset, desc_size = 1, DESC_SECTORS
    rgd = desc_offset + desc_size
    rgt = rgd + gd_sectors
    gd = rgt + gt_sectors
    gt = gd + gd_sectors
    overhead = (gt + gt_sectors + GRAIN_SECTORS - 1) // GRAIN_SECTORS * GRAIN_SECTORS
    return dict(n_gt=n_gt, desc_offset=desc_offset, desc_size=desc_size, rgd=rgd, rgt=rgt, gd=gd, gt=gt,
                overhead=overhead)


def _write_sparse(file, capacity: int, desc_text: str | None, *, zeroed: bool, stream: bool) -> None:
    lay = _sparse_layout(capacity, desc_text is not None, wrap=True)
    flags = FLAG_NL_DETECT | FLAG_RGD
    version = 1
    if zeroed:
        flags |= FLAG_ZERO_GRAIN
        version = 2
    if stream:
        flags |= FLAG_COMPRESSED | FLAG_MARKERS
        version = 3
    head = SparseHeader.build(dict(
        magic=MAGIC, version=version, flags=flags, capacity=capacity, grain_size=GRAIN_SECTORS,
        desc_offset=lay["desc_offset"], desc_size=lay["desc_size"], num_gtes_per_gt=GTES,
        rgd_offset=lay["rgd"], gd_offset=lay["gd"], overhead=lay["overhead"], unclean_shutdown=0,
        nl_check=NL_CHECK, compress_algorithm=COMPRESSION_DEFLATE if stream else 0, pad=bytes(433),
    ))
    file.truncate(0)
    file.pwrite(0, head)
    if desc_text is not None:
        raw = desc_text.encode()
        if len(raw) > DESC_SECTORS * SECTOR:
            raise QimgError("VMDK descriptor is too long")
        file.pwrite(SECTOR, raw)
    import struct

    n = lay["n_gt"]
    step = GTES * 4 // SECTOR
    if n:
        file.pwrite(lay["rgd"] * SECTOR, struct.pack(f"<{n}I", *(lay["rgt"] + i * step for i in range(n))))
        file.pwrite(lay["gd"] * SECTOR, struct.pack(f"<{n}I", *(lay["gt"] + i * step for i in range(n))))
    file.truncate(lay["overhead"] * SECTOR)


class VmdkFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = frozenset()
    format_name = "vmdk"
    supports_backing = True
    supports_compression = True
    # in qemu-img's order (the "Formatting ..." line follows it); -o help sorts by name
    create_opts = [
        Option("size", SIZE, "Virtual disk size"),
        Option("adapter_type", STRING,
               "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX"),
        Option("backing_file", STRING, "File name of a base image"),
        Option("backing_fmt", STRING, "Must be 'vmdk' if present"),
        Option("compat6", BOOL, "VMDK version 6 image", False),
        Option("hwversion", STRING, "VMDK hardware version", "undefined"),
        Option("toolsversion", STRING, "VMware guest tools version"),
        Option("subformat", STRING,
               "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | "
               "twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} "),
        Option("zeroed_grain", BOOL, "Enable efficient zero writes using the zeroed-grain GTE feature"),
    ]

    # -- create -------------------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        adapter = opts.get("adapter_type") or "ide"
        if adapter not in ADAPTERS:
            raise QimgError(f"invalid parameter value: {adapter}")
        sub = opts.get("subformat") or "monolithicSparse"
        if sub not in SUBFORMATS:
            raise QimgError(f"invalid parameter value: {sub}")
        compat6 = bool(opts.get("compat6"))
        hw = opts.get("hwversion") or "undefined"
        if compat6 and hw != "undefined":
            raise QimgError("compat6 cannot be enabled with hwversion set")
        if hw == "undefined":
            hw = "6" if compat6 else "4"
        tools = opts.get("toolsversion") or DEFAULT_TOOLS_VERSION
        zeroed = bool(opts.get("zeroed_grain"))
        flat = sub in ("monolithicFlat", "twoGbMaxExtentFlat")
        backing = opts.get("backing_file")
        parent_cid = 0xFFFFFFFF
        if backing and flat:
            raise QimgError("Flat image can't have backing file")
        if zeroed and flat:
            raise QimgError("Flat image can't enable zeroed grain")
        if backing and opts.get("backing_fmt") not in (None, "vmdk"):
            raise QimgError("backing_file must be a vmdk image")
        monolithic = sub in ("monolithicSparse", "streamOptimized")
        if backing and not monolithic:
            # qemu-img first makes the descriptor file an empty sparse extent, then reads the
            # backing file's CID: a backing file that fails leaves that file behind
            f = open_protocol(filename, create=True, writable=True)
            try:
                _write_sparse(f, 0, "", zeroed=zeroed, stream=False)
            finally:
                f.close()
            parent_cid = cls._backing_cid(filename, backing, opts.get("backing_fmt"))
        capacity = (size + SECTOR - 1) // SECTOR
        heads = 16 if adapter == "ide" else 255
        cylinders = capacity // (heads * 63)  # qemu-img does not cap it at 16383
        import random  # not at start-up (random imports hashlib, math...)

        cid = random.getrandbits(32)

        def text(lines: list[str]) -> str:
            return dsc.build(cid=cid, parent_cid=parent_cid, create_type=sub, parent_hint=backing or None,
                             extents=lines, hw_version=hw, cylinders=cylinders, heads=heads, adapter=adapter,
                             tools_version=tools)

        folder = os.path.dirname(filename)
        try:
            if monolithic:
                f = open_protocol(filename, create=True, writable=True)
                try:
                    if backing:
                        # qemu-img writes the extent before it reads the backing file's CID: a
                        # backing file that fails leaves the image without its descriptor
                        _write_sparse(f, capacity, "", zeroed=zeroed, stream=sub == "streamOptimized")
                        parent_cid = cls._backing_cid(filename, backing, opts.get("backing_fmt"))
                    desc = text([f'RW {capacity} SPARSE "{os.path.basename(filename)}"'])
                    _write_sparse(f, capacity, desc, zeroed=zeroed, stream=sub == "streamOptimized")
                finally:
                    f.close()
                return
            # an empty disk has no extents at all (as qemu-img makes it)
            if sub == "monolithicFlat":
                sizes = [capacity] if capacity else []
                names = _extent_names(filename, "flat", 1)
            else:
                sizes = [min(SPLIT_SECTORS, capacity - i) for i in range(0, capacity, SPLIT_SECTORS)]
                names = _extent_names(filename, "f" if flat else "s", len(sizes))
            lines = []
            for name, secs in zip(names, sizes, strict=False):
                ef = open_protocol(os.path.join(folder, name), create=True, writable=True)
                try:
                    if flat:
                        ef.truncate(0)
                        ef.truncate(secs * SECTOR)
                        # like qemu-img's file driver, the first block is allocated
                        first = min(4096, secs * SECTOR)
                        if first:
                            ef.pwrite(0, bytes(first))
                        lines.append(f'RW {secs} FLAT "{name}" 0')
                    else:
                        _write_sparse(ef, secs, None, zeroed=zeroed, stream=False)
                        lines.append(f'RW {secs} SPARSE "{name}"')
                finally:
                    ef.close()
            f = open_protocol(filename, create=True, writable=True)
            try:
                f.truncate(0)
                f.pwrite(0, text(lines).encode())
            finally:
                f.close()
        except OSError as e:
            raise QimgError(f"Could not create '{filename}': {os.strerror(e.errno or 5)}") from None

    @staticmethod
    def _backing_cid(filename: str, backing: str, fmt: str | None) -> int:
        from qimg.api import open as qopen
        from qimg.api import resolve_backing_name

        if fmt and fmt != "vmdk":
            raise QimgError("backing_file must be a vmdk image")
        name = resolve_backing_name(filename, backing)
        open_protocol(name).close()  # a missing file is reported as such, even with -u
        try:
            img = qopen(name, "vmdk", backing=False, force_share=True)
        except QimgError:
            raise QimgError("backing_file must be a vmdk image") from None
        try:
            return img.driver.cid
        finally:
            img.close()

    # -- open -------------------------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self._own: list[Any] = []
        self._by_path: dict[tuple[str, bool], Any] = {}
        self._cid_updated = False
        self.untrusted = bool(options.get("untrusted"))
        try:
            self._open()
        except BaseException:
            for f in self._own:
                f.close()
            raise

    def _open(self) -> None:
        file = self.file
        head = file.pread(0, SECTOR)
        self.embedded = head[:4] == MAGIC
        if head[:4] == COWD_MAGIC:
            raise NotSupported("VMDK version 3 (COWD) sparse extents are not supported")
        if self.embedded:
            ext = SparseExtent(file, self.filename, None, writable=self.writable)
            ext.type_name = ""
            self.extents: list[Extent] = [ext]
            h = ext.h
            self.desc = None
            if h.desc_offset and h.desc_size:
                n = limits.table_bytes(h.desc_size, SECTOR, "descriptor", limits.MAX_HEADER_BYTES)
                limits.check_extent(h.desc_offset * SECTOR, n, ext.file_size, "descriptor")
                raw = file_read(file, h.desc_offset * SECTOR, n).split(b"\0", 1)[0]
                if raw.strip():
                    self.desc = dsc.parse(raw)
            self.create_type = self.desc.create_type if self.desc else "monolithicSparse"
        else:
            fsize = file.size()
            if fsize > limits.MAX_HEADER_BYTES:
                raise QimgError("File too large")
            self.desc = dsc.parse(file.pread(0, fsize))
            self.create_type = self.desc.create_type
            if self.create_type not in dsc.SUPPORTED_CREATE_TYPES:
                raise QimgError(f"Unsupported image type '{self.create_type}'")
            if not self.desc.extents:
                raise QimgError("Invalid VMDK descriptor: no extents")
            self.extents = [self._open_extent(e) for e in self.desc.extents]
        self.starts: list[int] = []
        pos = 0
        for e in self.extents:
            self.starts.append(pos)
            pos += e.length
        self._size = pos
        if pos > limits.MAX_IMAGE_SIZE:
            raise QimgError("Image size too large")
        if self.desc is not None and self.desc.parent_hint:
            self.backing_filename = self.desc.parent_hint
            self.backing_format = "vmdk"

    def _open_extent(self, line: dsc.ExtentLine) -> Extent:
        length = line.sectors * SECTOR
        if line.type == "ZERO":
            return ZeroExtent(None, "", length)
        name = line.filename or ""
        folder = os.path.dirname(self.filename)
        path = name if os.path.isabs(name) else os.path.join(folder, name)
        kind = "SPARSE" if line.type in ("SPARSE", "VMFSSPARSE") else "FLAT"
        if self.untrusted and os.path.realpath(path) != os.path.realpath(self.filename):
            return UnopenedExtent(self.filename, path, length, line.type)
        writable = self.writable and line.access == "RW"
        key = (os.path.realpath(path), writable)
        f = self._by_path.get(key)  # one descriptor may name a file many times: open it once
        if f is None:
            try:
                f = open_protocol(path, writable=writable)
            except QimgError as e:
                raise QimgError(f"Could not open '{self.filename}': {e.message}") from None
            self._own.append(f)
            self._by_path[key] = f
            setter = getattr(f, "set_perms", None)
            if setter is not None:
                from qimg import locking

                setter(*locking.wanted("raw", writable=writable))
        ext: Extent
        if kind == "SPARSE":
            if f.pread(0, 4) == COWD_MAGIC:
                raise NotSupported("VMDK version 3 (COWD) sparse extents are not supported")
            ext = SparseExtent(f, path, length, writable=writable)
        else:
            ext = FlatExtent(f, path, length, line.offset * SECTOR)
            ext.type_name = line.type
        ext.read_only = self.writable and not writable
        return ext

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cid(self) -> int:
        return self.desc.cid if self.desc else 0xFFFFFFFF

    @property
    def cluster_size(self) -> int | None:
        return self.extents[0].cluster_size if self.extents else None

    @property
    def needs_compressed_writes(self) -> bool:
        """A stream-optimized first extent takes whole compressed grains only: convert then
        copies as with ``-c`` (grains in order, zero grains skipped), as qemu-img does."""
        ext = self.extents[0] if self.extents else None
        return isinstance(ext, SparseExtent) and ext.compressed

    def info_extra(self) -> dict[str, Any]:
        return {"dirty-flag": False}

    def format_specific_info(self) -> dict[str, Any] | None:
        return {
            "cid": self.cid,
            "parent-cid": self.desc.parent_cid if self.desc else 0xFFFFFFFF,
            "create-type": self.create_type,
            "extents": [e.info() for e in self.extents],
        }

    def allocated_file_size(self) -> int | None:
        total = self.file.allocated_size() or 0
        for f in self._own:
            total += f.allocated_size() or 0
        return total

    # -- I/O ---------------------------------------------------------------------------------------------
    def _extent_at(self, offset: int) -> tuple[Extent, int]:
        i = bisect.bisect_right(self.starts, offset) - 1
        while i + 1 < len(self.extents) and self.extents[i].length == 0:
            i += 1
        return self.extents[i], self.starts[i]

    def qemu_status_end(self, offset: int) -> int:
        """End of the run one QEMU block-status call reports (``compare -s`` sees it): one
        grain of a sparse extent, else the extent."""
        ext, start = self._extent_at(offset)
        if isinstance(ext, SparseExtent):
            return start + ((offset - start) // ext.grain + 1) * ext.grain
        return start + ext.length

    def block_status(self, offset: int, length: int) -> Status:
        ext, start = self._extent_at(offset)
        rel = offset - start
        flags, n, host = ext.status(rel, min(length, ext.length - rel))
        return Status(flags, n, host, ext.file.filename if host is not None and ext.file is not None else None)

    def _each(self, offset: int, length: int, writing: bool = False):
        pos = 0
        while pos < length:
            ext, start = self._extent_at(offset + pos)
            if writing and ext.read_only:
                raise QimgError(f"Could not write to '{ext.name}': the descriptor marks the extent read-only")
            rel = offset + pos - start
            n = min(length - pos, ext.length - rel)
            yield ext, start, rel, pos, n
            pos += n

    def read(self, offset: int, buf: memoryview) -> None:
        for ext, start, rel, pos, n in self._each(offset, len(buf)):
            ext.read(rel, buf[pos : pos + n], lambda o, v, s=start: self.read_backing(s + o, v))

    def write(self, offset: int, data: memoryview) -> None:
        runs = list(self._each(offset, len(data), writing=True))
        self._touch()
        for ext, start, rel, pos, n in runs:
            ext.write(rel, data[pos : pos + n], n, lambda o, v, s=start: self.read_backing(s + o, v))

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        runs = list(self._each(offset, length, writing=True))
        self._touch()
        for ext, start, rel, _pos, n in runs:
            def cow(o, v, s=start):
                self.read_backing(s + o, v)

            if isinstance(ext, SparseExtent) and not ext.compressed:
                head, tail = ext.zero_grains(rel, n)
                if head:
                    ext.write(rel, None, head, cow)
                if tail < rel + n:
                    ext.write(tail, None, rel + n - tail, cow)
            else:
                ext.write(rel, None, n, cow)

    def write_compressed(self, offset: int, data: memoryview) -> None:
        if not len(data):
            return  # qemu-img convert's end-of-stream signal: extent files end on sectors already
        ext, start = self._extent_at(offset)
        list(self._each(offset, len(data), writing=True))  # refuses read-only extents
        if not (isinstance(ext, SparseExtent) and ext.compressed):
            # as qemu-img: extents that store no compressed grains take a plain write
            self.write(offset, data)
            return
        self._touch()
        ext.write_compressed(offset - start, data)

    def _touch(self) -> None:
        """Before the first change of a session: a new CID in the descriptor, as qemu-img."""
        if self._cid_updated or self.desc is None:
            return
        self._cid_updated = True
        import random  # not at start-up (random imports hashlib, math...)

        cid = random.getrandbits(32)
        text = dsc.with_cid(self.desc.text, cid).encode()
        if self.embedded:
            h = self.extents[0].h  # type: ignore[attr-defined]
            area = h.desc_size * SECTOR
            if len(text) > area:
                return
            self.file.pwrite(h.desc_offset * SECTOR, text + bytes(area - len(text)))
        else:
            padded = text + bytes(-len(text) % SECTOR)
            self.file.pwrite(0, padded)
            self.file.truncate(len(padded))
        self.desc = dsc.parse(text)

    def flush(self) -> None:
        for ext in self.extents:
            if isinstance(ext, SparseExtent) and (ext.pending or (ext.compressed and ext.dirty)):
                ext.flush()
        for f in self._own:
            f.flush()
        self.file.flush()

    def close(self) -> None:
        try:
            if self.writable:
                self.flush()
        finally:
            for f in self._own:
                f.close()
            self._own = []
            self.file.close()

    def check(self, fix: set[str]) -> CheckResult:
        if fix:  # QEMU's vmdk check repairs nothing: with -r it refuses like a format without checks
            raise NotSupported("This image format does not support checks", exit_code=63)
        res = CheckResult(filename=self.filename, format="vmdk")
        for ext in self.extents:
            if isinstance(ext, SparseExtent):
                n, msgs = ext.check()
                if n:
                    # qemu-img stops at the first bad grain: the message, then a failed check
                    from qimg import api

                    api.warn(msgs[0])
                    raise QimgError("Invalid argument")  # the check command adds "Check failed: "
        return res
