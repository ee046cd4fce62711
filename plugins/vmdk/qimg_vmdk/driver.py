"""The VMDK format: a descriptor naming extents (flat, sparse, zero), after VMware's
"Virtual Disk Format 5.0". One driver instance maps guest offsets onto its extents.

Extent files are found relative to the descriptor's folder (absolute names as given), as
qemu-img does. In untrusted mode (``options["untrusted"]``) no file other than the image
itself is opened: such extents are still listed by ``info`` but any I/O on them is refused.
"""
from __future__ import annotations

import bisect
import errno
import os

from qimg import limits
from qimg.api import open_protocol
from qimg.blockstatus import Status
from qimg.compat import program
from qimg.driver import CheckResult, Format
from qimg.errors import NotSupported, QimgError
from qimg.options import BOOL, SIZE, STRING, Option
from qimg.overlap import MetadataMap
from qimg.protocol import FileProtocol

from . import descriptor as dsc
from .extents import U64, Extent, FlatExtent, UnopenedExtent
from .sparse import SparseExtent
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
#: QEMU reads a descriptor (or the head of a sparse file) up to 1 MiB - 1 bytes
DESC_READ = (1 << 20) - 1
#: sparse headers of capacity 0 that point at a descriptor naming further extents, at most
MAX_NESTING = 8


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
    #: QEMU's vmdk creates its extents from values it read once
    create_reparses_options = False
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
        from qimg.units import sector_round

        capacity = sector_round(size) // SECTOR
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
        if not name.startswith("json:"):  # (a json: name is a node's options, opened below)
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
    # QEMU's vmdk_open, step by step: a sparse file ("KDMV") is its own single extent (its
    # embedded descriptor only gives CID, parentCID and the parent's name); anything else is a
    # descriptor file whose extent lines name the extent files (relative to the image's folder)
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self._own: list[Any] = []
        self._by_path: dict[tuple[str, bool], Any] = {}
        self._cid_updated = False
        self._cid_checked = False
        self._maps: dict[int, MetadataMap] = {}  # per extent file (id of its protocol), built on a first write
        self.untrusted = bool(options.get("untrusted"))
        try:
            self._open()
        except BaseException:
            for f in self._own:
                f.close()
            raise

    def child_nodes(self) -> list:
        """QEMU opens each extent line's file as a child ``extents.N`` (N counts the extents
        before it), listed newest first, then the descriptor's ``file``; a sparse image that
        is its own extent has ``file`` alone."""
        out = [(f"extents.{i}", e.file) for i, e in enumerate(self.extents)
               if e.file is not None and e.file is not self.file]
        return out[::-1] + [("file", self.file)]

    def _read_desc(self, file: Any, offset: int, limit: int = DESC_READ) -> bytes:
        """QEMU's vmdk_read_desc: at most 1 MiB - 1 bytes from ``offset`` (zeroes past the end);
        ``limit`` reads less where only the magic matters (a sparse extent's head)."""
        size = file.size()
        if size < 4:
            raise QimgError("File is too small, not a valid image")
        n = min(size, DESC_READ, limit)
        if not limits.request_ok(offset, n):
            raise QimgError("Could not read from file: Input/output error")
        return file.pread(offset, n).ljust(n, b"\0")

    def _open(self) -> None:
        file = self.file
        self.extents: list[Extent] = []
        self.create_type: str | None = None
        head = self._read_desc(file, 0, SECTOR)
        self.embedded = head[:4] in (MAGIC, COWD_MAGIC)
        if not self.embedded:
            head = self._read_desc(file, 0)
        if self.embedded:
            main = self._open_sparse(file, self.filename, head, 0)
            if main is not None:
                main.type_name = ""
            self.desc_offset = 0x200
        else:
            self._open_desc_file(head, 0)
            self.desc_offset = 0
        # QEMU sums the extents' sectors in an int64 and its block layer refuses a disk whose
        # size (that sum times 512, in unsigned 64 bits) no request can reach
        sectors = 0
        for e in self.extents:
            sectors = (sectors + e.length // SECTOR) & U64
        if sectors * SECTOR & U64 > limits.MAX_IMAGE_SIZE:
            raise QimgError("Could not refresh total sector count: File too large")
        if sectors >= 1 << 63:
            # a negative sector count passes there, and qemu-img's commands then fail one by
            # one ("Can't get image size"): refused at once
            raise QimgError("Invalid capacity, image may be corrupt")
        if sectors > ((1 << 63) - 1) // SECTOR:
            # so does a size past 2^63 bytes (QEMU's getlength: EFBIG)
            raise QimgError("File too large")
        self.starts: list[int] = []
        pos = 0
        for e in self.extents:
            self.starts.append(pos)
            pos += e.length
        self._size = pos
        # parentFileNameHint, CID and parentCID come from the descriptor's first 10 KiB
        area = file.pread(self.desc_offset, dsc.DESC_SIZE).ljust(dsc.DESC_SIZE, b"\0")
        try:
            hint = dsc.parent_hint(area)
        except QimgError:
            raise limits.open_errno(self.filename, errno.EINVAL) from None
        cid, pcid = dsc.read_cid(area, False), dsc.read_cid(area, True)
        if cid is None or pcid is None:
            raise limits.open_errno(self.filename, errno.EINVAL)
        self._cid, self.parent_cid = cid, pcid
        if hint:
            self.backing_filename = hint
            self.backing_format = "vmdk"

    def _open_desc_file(self, buf: bytes, depth: int) -> None:
        ct = dsc.description(buf, "createType")
        if ct is None:
            raise QimgError("invalid VMDK image descriptor")
        if ct not in dsc.DESC_CREATE_TYPES:
            raise QimgError(f"Unsupported image type '{ct}'")
        self.create_type = ct
        for line in dsc.extent_lines(buf):
            self._open_extent(line, depth)

    def _open_sparse(self, file: Any, name: str, head: bytes, depth: int) -> SparseExtent | None:
        """A sparse extent file (QEMU's vmdk_open_sparse); a header of capacity 0 with a
        descriptor makes it a descriptor file instead."""
        if head[:4] == COWD_MAGIC:
            raise NotSupported("VMDK version 3 (COWD) sparse extents are not supported")
        if head[:4] != MAGIC:
            raise QimgError("Image not in VMDK format")
        h = SparseHeader.parse(file.pread(0, SECTOR).ljust(SECTOR, b"\0"))
        if h.capacity == 0 and h.desc_offset:
            if depth >= MAX_NESTING:
                raise QimgError("VMDK descriptors nest too deeply")
            off = (h.desc_offset << 9) & U64
            if off >= 1 << 63:  # an int64 offset below zero: the read fails
                raise QimgError("Could not read from file: Input/output error")
            self._open_desc_file(self._read_desc(file, off), depth + 1)
            return None
        if self.create_type is None:
            self.create_type = "monolithicSparse"
        ext = SparseExtent(file, name, writable=self.writable, image_file_size=self.file.size())
        if ext.compressed:
            self.create_type = "streamOptimized"
        self.extents.append(ext)
        return ext

    def _open_extent(self, line: dsc.ExtentLine, depth: int) -> None:
        name = line.filename
        folder = os.path.dirname(self.filename)
        path = name if os.path.isabs(name) else os.path.join(folder, name)
        if not os.path.isabs(name) and not isinstance(self.file, FileProtocol):
            from qimg.names import path_has_protocol

            if not path_has_protocol(name):
                try:
                    self.file.dirname()
                except QimgError as e:  # a node without a folder (quorum, nbd): QEMU's words
                    node = self.file.exact_filename()
                    if node is None:
                        from qimg.ops.qjson import dumps

                        node = "json:" + dumps(self.file.json_options(), pretty=False)
                    raise QimgError(f"Cannot use relative paths with VMDK descriptor file '{node}': "
                                    f"{e.message}") from None
        if self.untrusted and os.path.realpath(path) != os.path.realpath(self.filename):
            self.extents.append(UnopenedExtent(self.filename, path, line.sectors * SECTOR, line.type))
            return
        if line.type == "SESPARSE":
            raise NotSupported("VMDK seSparse extents are not supported")
        writable = self.writable
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
        if line.type in ("SPARSE", "VMFSSPARSE"):
            # a sparse extent is what its header says, whatever size the line gives (a header
            # of capacity 0 may make it a descriptor naming further extents)
            sparse = self._open_sparse(f, path, self._read_desc(f, 0, SECTOR), depth)
            if sparse is not None:
                sparse.type_name = line.type
            return
        # FLAT and VMFS: the line's size, at the line's offset (sectors; QEMU shifts it in 64 bits)
        base = (line.offset << 9) & U64
        ext = FlatExtent(f, path, line.sectors * SECTOR, base - (1 << 64) if base >= 1 << 63 else base)
        ext.type_name = line.type
        self.extents.append(ext)

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def cid(self) -> int:
        return self._cid

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
        if not self.extents:
            # a descriptor without an extent QEMU opens is an empty disk, but qemu-img info
            # then fails an assertion (abort): refuse it cleanly
            raise QimgError("Invalid VMDK descriptor: no extents")
        return {"dirty-flag": False}

    def format_specific_info(self) -> dict[str, Any] | None:
        return {
            "cid": self._cid,
            "parent-cid": self.parent_cid,
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

    def _each(self, offset: int, length: int):
        pos = 0
        while pos < length:
            ext, start = self._extent_at(offset + pos)
            rel = offset + pos - start
            n = min(length - pos, ext.length - rel)
            yield ext, start, rel, pos, n
            pos += n

    def _cow(self, start: int):
        """The extent's copy-on-write reader: the backing file, once its CID is checked."""
        def cow(o: int, v: memoryview) -> None:
            if self.backing is not None and not self._cid_checked:
                # QEMU reads nothing of a parent whose CID is not the parentCID recorded here
                drv = self.backing.driver
                if getattr(drv, "format_name", None) != "vmdk" or drv.cid != self.parent_cid:
                    raise limits.einval()
                self._cid_checked = True
            self.read_backing(start + o, v)

        return cow

    def read(self, offset: int, buf: memoryview) -> None:
        for ext, start, rel, pos, n in self._each(offset, len(buf)):
            ext.read(rel, buf[pos : pos + n], self._cow(start))

    def write(self, offset: int, data: memoryview) -> None:
        runs = list(self._each(offset, len(data)))
        self._guard_all()
        for ext, start, rel, pos, n in runs:
            ext.write(rel, data[pos : pos + n], n, self._cow(start))
        self._touch()

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        runs = list(self._each(offset, length))
        self._guard_all()
        for ext, start, rel, _pos, n in runs:
            cow = self._cow(start)
            if isinstance(ext, SparseExtent) and not ext.compressed:
                head, tail = ext.zero_grains(rel, n)
                if head:
                    ext.write(rel, None, head, cow)
                if tail < rel + n:
                    ext.write(tail, None, rel + n - tail, cow)
            else:
                ext.write(rel, None, n, cow)
        self._touch()

    def write_compressed(self, offset: int, data: memoryview) -> None:
        if not len(data):
            return  # qemu-img convert's end-of-stream signal: extent files end on sectors already
        ext, start = self._extent_at(offset)
        if not (isinstance(ext, SparseExtent) and ext.compressed):
            # as qemu-img: extents that store no compressed grains take a plain write
            self.write(offset, data)
            return
        self._guard_all()
        ext.write_compressed(offset - start, data)
        self._touch()

    # -- metadata a write must not touch ----------------------------------------------------------------
    def _guard_all(self) -> None:
        """Before the first write: each extent knows the metadata of its file (sparse headers,
        grain directories and tables, the descriptor), also where another extent lives in it."""
        if self._maps:
            return
        maps: dict[int, list[tuple[int, int, str]]] = {}

        def add(f: Any, ranges: list[tuple[int, int, str]]) -> None:
            maps.setdefault(id(f), []).extend(ranges)

        add(self.file, [(self.desc_offset, self._desc_area(), "the descriptor")])
        for ext in self.extents:
            if isinstance(ext, SparseExtent):
                add(ext.file, ext.metadata_ranges())
        for ext in self.extents:
            if ext.file is not None:
                ext.meta = self._maps.setdefault(id(ext.file), MetadataMap(maps.get(id(ext.file), [])))
        self._maps.setdefault(id(self.file), MetadataMap(maps.get(id(self.file), [])))

    def _desc_area(self) -> int:
        """Bytes QEMU rewrites to update the CID: 10 KiB in a sparse file, a whole descriptor
        file (its length in whole sectors, as QEMU measures files)."""
        if self.desc_offset:
            return dsc.DESC_SIZE
        return -(-self.file.size() // SECTOR) * SECTOR

    def _touch(self) -> None:
        """After the first change of a session: a new CID in the descriptor, as QEMU's
        vmdk_write_cid (the descriptor buffer rewritten whole, its length kept)."""
        if self._cid_updated:
            return
        self._cid_updated = True
        n = self._desc_area()
        if self.desc_offset == 0:
            if n > 16 << 20:
                from qimg import api

                api.warn(f"{program()}: VMDK description file too big")
                raise QimgError("File too large")
        import random  # not at start-up (random imports hashlib, math...)

        buf = self.file.pread(self.desc_offset, n).ljust(n, b"\0")
        new = dsc.rewrite_cid(buf, random.getrandbits(32))
        if new is None:
            raise limits.einval()
        self._maps[id(self.file)].guard(self.desc_offset, n, own=(self.desc_offset, self.desc_offset + n,
                                                                    "the descriptor"))
        self.file.pwrite(self.desc_offset, new)
        cid = dsc.read_cid(new, False)
        if cid is not None:
            self._cid = cid

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
        """QEMU's vmdk_co_check: every cluster's offset looked up in turn; the first that fails or
        points past its extent file ends the check with a message and a failure."""
        if fix:  # QEMU's vmdk check repairs nothing: with -r it refuses like a format without checks
            raise NotSupported("This image format does not support checks", exit_code=63)
        res = CheckResult(filename=self.filename, format="vmdk")
        for ext, start in zip(self.extents, self.starts, strict=True):
            problem = ext.check(start // SECTOR)
            if problem is not None:
                from qimg import api

                msg, code = problem
                api.warn(msg)
                raise QimgError(os.strerror(code))  # the check command adds "Check failed: "
        return res
