"""The qcow2 format driver: open/validate, read, write, metadata (QEMU 7.2 compatible)."""
from __future__ import annotations

import errno
import struct
import sys
from array import array

from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO, Status
from qimg.blockstatus import COMPRESSED as STORED_COMPRESSED
from qimg.compat import program
from qimg.driver import CheckResult, Format, ProgressFn, SnapshotInfo
from qimg.errors import CorruptImage, QimgError
from qimg.image import zero_fill
from qimg.protocol import Protocol
from qimg.tables import be64_bytes as _to_be
from qimg.tables import be64_table as _be_array
from qimg.tables import same_run, zero_run

from . import structs as S
from .cache import TableCache
from .header import encode_header, parse_extensions, parse_fixed
from .options import (
    AMEND_OPTS,
    CREATE_OPTS,
    FORMAT_LINE_DEFAULTS,
    FORMAT_LINE_ORDER,
    RUNTIME_OPTIONS,
    check_runtime_options,
)
from .refcount import Refcounts, meta_pwrite

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

# extent kinds returned by _extent
UNALLOC, ZEROES, NORMAL, COMPRESSED = 0, 1, 2, 3
#: metadata cache budget in bytes (QEMU's default l2-cache-size is 1 MiB; more helps big runs)
CACHE_BYTES = 32 << 20
ALL_ALLOC = 0xFFFFFFFF
ALL_ZERO = 0xFFFFFFFF << 32
#: overlap.py's bits for the structures a call site's own write may legitimately touch
_OL_ACTIVE_L1, _OL_ACTIVE_L2 = 1 << 1, 1 << 2


# runs in L1/L2 tables: whole-range C comparisons (qimg.tables), never entry by entry
_zero_run = zero_run
_same_run = same_run


class _RefusedFile:
    """Stands for an external data file that untrusted mode does not open: any I/O fails."""

    def __init__(self, image: str, name: str) -> None:
        self.filename = name
        self._image = image

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        from qimg.untrusted import refuse_named_file

        raise refuse_named_file(self._image, "data file", self.filename)

    pread = preadinto = pwrite = pwritev = size = truncate = flush = allocate = data_extents = _refuse
    allocated_size = _refuse

    def close(self) -> None:
        pass


class _NoIOFile(_RefusedFile):
    """Stands for an external data file a metadata-only open (info) does not open."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise QimgError(f"'{self._image}': the data file is not opened for metadata only")

    pread = preadinto = pwrite = pwritev = size = truncate = flush = allocate = data_extents = _refuse
    allocated_size = _refuse


class Qcow2Format(Format):
    format_name = "qcow2"
    #: QEMU creates the file before checking the options and deletes it when the create fails
    create_failure = "delete"
    create_opts = CREATE_OPTS
    amend_opts = AMEND_OPTS
    create_print_order = FORMAT_LINE_ORDER
    create_print_defaults = FORMAT_LINE_DEFAULTS
    supports_backing = True
    supports_compression = True
    truncate_zeroes_backing_area = True
    #: read/block_status may run in several threads at once (the copy engine's readers): the
    #: table caches are locked, everything else on the read path is a local or a pread
    thread_safe_reads = True
    #: ``convert -c`` compresses clusters in worker threads (compress_cluster) and places them
    #: in order (write_compressed_cluster)
    parallel_compression = True
    #: QEMU 7.2's qcow2 open options (``--image-opts``/``json:``); others are refused as QEMU does
    runtime_options = RUNTIME_OPTIONS
    strong_runtime_options = ("encrypt.key-secret",)

    # ------------------------------------------------------------------ open
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        self.data_file = None
        #: a failed operation left the image unusable (QEMU ejects the node): close writes nothing
        self.dirty_set = False
        #: the refcount table and blocks, and the allocator (refcount.py), made by the open
        self.refcounts: Refcounts | None = None
        self._ccache: tuple[int, bytes] | None = None
        #: the unlocked cipher of an encrypted image (None: not encrypted, or opened for info)
        self.crypt = None
        #: the overlap checks (overlap.py) of a writable image; None when opened read-only
        self.overlap = None
        #: QEMU's ``bs->drv = NULL``: a fatal corruption stopped the driver (see :meth:`stop`)
        self.stopped = False
        #: bumped by every write of the L1 or refcount table (the overlap checks' indexes follow)
        self.meta_gen = 0
        #: the persistent bitmaps' write tracker (bitmap.py; False: nothing to track, None: not
        #: looked at yet)
        self.bitmap_tracker = None
        #: a corruption was reported (overlap.signal_corruption reports it once)
        self.corruption_signaled = False
        self._open(options)

    def _open(self, options: dict[str, Any]) -> None:
        f = self.file
        head = f.pread(0, S.V3_HEADER_SIZE)
        if len(head) < S.V2_HEADER_SIZE or head[:4] != b"QFI\xfb":
            raise QimgError("Image is not in qcow2 format")
        h = parse_fixed(head)
        if h.version < 2 or h.version > 3:
            raise QimgError(f"Unsupported qcow2 version {h.version}")
        if h.cluster_bits < S.MIN_CLUSTER_BITS or h.cluster_bits > S.MAX_CLUSTER_BITS:
            raise QimgError(f"Unsupported cluster size: 2^{h.cluster_bits}")
        cs = 1 << h.cluster_bits
        if h.version == 3:
            if len(head) < S.V3_MIN_HEADER_SIZE or h.header_length < S.V3_MIN_HEADER_SIZE:
                raise QimgError("qcow2 header too short")
            if h.header_length > cs:
                raise QimgError("qcow2 header exceeds cluster size")
            if h.header_length <= S.V3_MIN_HEADER_SIZE:
                h.compression_type = 0
        if h.backing_file_offset > cs:
            raise QimgError("Invalid backing file offset")
        # the first cluster and 8 bytes more (an extension header may start in its last bytes)
        cluster0 = f.pread(0, cs + 8)
        ext_end = h.backing_file_offset if h.backing_file_offset else cs
        self.header = h
        unknown = h.incompatible_features & ~S.INCOMPAT_KNOWN
        if unknown:
            # as QEMU, the extensions are read for the feature names only, errors ignored
            parse_extensions(h, cluster0, ext_end, strict=False)
            parts = []
            # the feature name table's order: each incompatible bit by the first entry naming it
            for (kind, bit), name in h.feature_names.items():
                mask = 1 << (bit & 63)  # QEMU's 1ULL << bit, whose count x86 takes modulo 64
                if kind == 0 and unknown & mask:
                    parts.append(name)
                    unknown &= ~mask
            if unknown:
                parts.append(f"Unknown incompatible feature: {unknown:x}")
            raise QimgError("Unsupported qcow2 feature(s): " + ", ".join(parts), 1)
        self.allow_corrupt = bool(options.get("check") or options.get("_check"))
        if h.incompatible_features & S.INCOMPAT_CORRUPT and self.writable and not self.allow_corrupt:
            raise QimgError("qcow2: Image is corrupt; cannot be opened read/write")
        if h.incompatible_features & S.INCOMPAT_EXTL2 and cs // 32 < 512:
            raise QimgError(f"Unsupported subcluster size: {cs // 32}")
        if h.refcount_order > 6:
            raise QimgError("Reference count entry width too large; may not exceed 64 bits")
        if h.crypt_method > 2:
            raise QimgError(f"Unsupported encryption method {h.crypt_method}")
        if h.compression_type > 1:
            raise QimgError(f"qcow2: unknown compression type: {h.compression_type}")
        if h.compression_type != 0 and not h.incompatible_features & S.INCOMPAT_COMPRESSION:
            raise QimgError("qcow2: Compression type incompatible feature bit must be set")
        if h.compression_type == 0 and h.incompatible_features & S.INCOMPAT_COMPRESSION:
            raise QimgError("qcow2: Compression type incompatible feature bit must not be set")
        self._setup_geometry()
        # sizes and tables
        if self.size_to_l1(h.size) > 0x7FFFFFFF:
            raise QimgError("Image is too big")
        if h.refcount_table_clusters == 0 and not self.allow_corrupt:  # check opens it (BDRV_O_CHECK)
            raise QimgError("Image does not contain a reference count table")
        if h.refcount_table_clusters * cs > S.MAX_REFTABLE_SIZE:
            raise QimgError("Reference count table too large")
        if not self._valid_table(h.refcount_table_offset, h.refcount_table_clusters * cs):
            raise QimgError("Reference count table offset invalid")
        # an open for checking reads the snapshot table only in the check (which reports it)
        if not self.allow_corrupt:
            if h.nb_snapshots > S.MAX_SNAPSHOTS:
                raise QimgError("Snapshot table too large")
            if not self._valid_table(h.snapshots_offset, h.nb_snapshots * 40):
                raise QimgError("Snapshot table offset invalid")
        if h.l1_size > S.MAX_L1_SIZE // 8:
            raise QimgError("Active L1 table too large")
        if h.l1_size < self.size_to_l1(h.size):
            raise QimgError("L1 table is too small")
        if h.l1_size and not self._valid_table(h.l1_table_offset, h.l1_size * 8):
            raise QimgError("Active L1 table offset invalid")
        check_runtime_options(options, cs, h.version)
        if self.writable:
            from .overlap import OverlapState, mask_from_options

            self.overlap = OverlapState(mask_from_options(options), h.cluster_bits)
        # QEMU's order from here: the tables, the header extensions (and the LUKS header they
        # name), the external data file, the legacy cipher, the backing file name, snapshots
        self.l1 = self.read_table(h.l1_table_offset, h.l1_size) if h.l1_size else array("Q")
        ncache = max(16, CACHE_BYTES // cs)
        self.refcounts = Refcounts(self, self.read_table(h.refcount_table_offset, h.refcount_table_clusters * cs // 8),
                                   max(8, ncache // 4))
        # the L2 tables depend on their refcounts: dirty refcount blocks go out first
        self.l2_cache = TableCache(ncache, self._l2_load, self._l2_store, self.refcounts.cache.flush)
        parse_extensions(h, cluster0, ext_end)
        if h.crypt_method == 2:
            self._open_crypto(options)
        self._open_data_file(options)
        if h.crypt_method == 1:
            self._open_crypto(options)
        elif not h.crypt_method and options.get("encrypt.format") is not None:
            from .luks import check_plain_options

            check_plain_options(options)
        # backing file name
        if h.backing_file_offset:
            if h.backing_file_size > 1023 or h.backing_file_size > cs - h.backing_file_offset:
                raise QimgError("Backing file name too long")
            # a C string in QEMU: it ends at the first NUL (an empty name is no backing file)
            raw = cluster0[h.backing_file_offset : h.backing_file_offset + h.backing_file_size].split(b"\0", 1)[0]
            h.backing_file = raw.decode("utf-8", "replace") or None
            self.backing_filename = h.backing_file
            self.backing_format = h.backing_format
        if h.nb_snapshots and not self.allow_corrupt:
            self._validate_snapshots()
        if h.bitmaps_ext is not None:
            # QEMU loads (and so validates) persistent bitmaps on every open
            from .bitmap import validate_on_open

            validate_on_open(self)
        if self.writable:
            self._writable_open_fixups()

    def _open_crypto(self, options: dict[str, Any]) -> None:
        self.encrypted = True
        if not options.get("_no_io"):
            # as QEMU: every open but info's unlocks the key (and fails without it)
            from .luks import open_crypto

            self.crypt = open_crypto(self, options)
        elif self.header.crypt_method == 2:
            # info: no key, but the LUKS header is read and checked all the same
            from .luks import read_luks_header

            read_luks_header(self)

    def _validate_snapshots(self) -> None:
        """QEMU reads the snapshot table on open and refuses an unreadable one."""
        from .snapshot import read_snapshots

        try:
            read_snapshots(self)
        except QimgError as e:
            hint = getattr(e, "hint", None)
            raise QimgError(e.message + (f"\n{hint}" if hint else ""), e.exit_code) from None

    def _setup_geometry(self) -> None:
        h = self.header
        self.cluster_bits = h.cluster_bits
        self._cs = 1 << h.cluster_bits
        self.extended_l2 = bool(h.incompatible_features & S.INCOMPAT_EXTL2)
        self.l2_entry_size = 16 if self.extended_l2 else 8
        self.l2_entries = self._cs // self.l2_entry_size
        self.l2_bits = self.l2_entries.bit_length() - 1
        self.subcluster_size = self._cs // 32 if self.extended_l2 else self._cs
        # compressed cluster descriptors
        self.csize_shift = 62 - (h.cluster_bits - 8)
        self.csize_mask = (1 << (h.cluster_bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1

    def size_to_l1(self, size: int) -> int:
        shift = self.cluster_bits + self.l2_bits
        return (size + (1 << shift) - 1) >> shift

    def _valid_table(self, offset: int, nbytes: int) -> bool:
        return not (offset & (self._cs - 1)) and offset + nbytes <= (1 << 63) - 1

    def _open_data_file(self, options: dict[str, Any]) -> None:
        h = self.header
        # the data file as a node's options (data-file.filename=..., data-file.driver=...)
        node = {k[10:]: v for k, v in options.items() if k.startswith("data-file.")}
        if not h.incompatible_features & S.INCOMPAT_DATA_FILE:
            if options.get("data-file") or node:
                raise QimgError("'data-file' can only be set for images that use an external data file")
            return
        from qimg.api import open_child, open_protocol

        if options.get("_no_io"):
            # metadata only (info): QEMU does not open the data file then (BDRV_O_NO_IO)
            self.data_file = _NoIOFile(self.filename, str(node.get("filename") or options.get("data-file")
                                                          or h.data_file or ""))
            return
        if node and not options.get("data-file"):
            self.data_file = open_child(None, node, writable=self.writable)
            return
        name = options.get("data-file") or h.data_file
        if not name:
            raise QimgError("'data-file' is required for this image")

        # as QEMU opens it: the name as it is (a relative one from the working folder, not from
        # the image's as a backing file name)
        path = name
        if options.get("untrusted") and not options.get("data-file"):
            # CVE-2024-32498: never follow a data file name found in an untrusted image
            self.data_file = _RefusedFile(self.filename, path)
            return
        self.data_file = open_protocol(path, writable=self.writable)

    @property
    def data_raw(self) -> bool:
        return bool(self.data_file is not None and self.header.autoclear_features & S.AUTOCLEAR_DATA_FILE_RAW)

    def _writable_open_fixups(self) -> None:
        h = self.header
        self.refcounts.free_cluster_index = 0
        changed = False
        if h.autoclear_features & ~S.AUTOCLEAR_KNOWN:
            h.autoclear_features &= S.AUTOCLEAR_KNOWN
            changed = True
        if h.bitmaps_ext is not None and not h.autoclear_features & S.AUTOCLEAR_BITMAPS:
            # a program without bitmap support changed the image: the bitmaps are stale
            h.bitmaps_ext = None
            changed = True
        if h.incompatible_features & S.INCOMPAT_DIRTY and not self.allow_corrupt:
            # opened for ``check`` (option "check"): the check itself reports and repairs
            self.repair_dirty()
            h.incompatible_features &= ~S.INCOMPAT_DIRTY
            changed = True
        if changed:
            self.update_header()

    # ------------------------------------------------------------------ tables
    def read_table(self, offset: int, n: int) -> array:
        data = self.file.pread(offset, n * 8)
        if len(data) < n * 8:
            data += bytes(n * 8 - len(data))
        return _be_array(data)

    def write_table(self, offset: int, arr: array, ign: int | None = 0) -> None:
        """Write a big-endian u64 table; ``ign``: the overlap checks (overlap.py bits) this write
        skips, as QEMU's call site does (None: QEMU checks nothing there)."""
        if ign is not None:
            self.pre_write(ign, offset, len(arr) * 8)
        self.file.pwrite(offset, _to_be(arr))

    def write_l1(self, start: int = 0, count: int | None = None, checked: bool = True) -> None:
        """Write (part of) the active L1 table; ``checked=False`` where QEMU writes it with no
        overlap check (qcow2_update_snapshot_refcount's write of the COPIED flags)."""
        if count is None:
            count = len(self.l1) - start
        offset = self.header.l1_table_offset + start * 8
        self.meta_gen += 1
        if checked:
            self.pre_write(_OL_ACTIVE_L1, offset, count * 8)
        meta_pwrite(self.file, offset, _to_be(self.l1[start : start + count]), "L1 table")

    def pre_write(self, ign: int, offset: int, size: int, data_file: bool = False) -> None:
        """The overlap check before writing [offset, offset+size) of the image file (QEMU's
        ``qcow2_pre_write_overlap_check``): a write that would touch protected metadata marks
        the image corrupt, stops the driver and raises. ``data_file``: guest data, which goes
        to the external data file when there is one (never checked then)."""
        ol = self.overlap
        if ol is None or not ol.mask & ~ign or (data_file and self.data_file is not None):
            return
        ol.pre_write(self, ign, offset, size)

    def stop(self) -> None:
        """After a fatal corruption (QEMU's ``bs->drv = NULL``): further requests fail, metadata
        still in the caches is never flushed (not even at close: only a close already under way
        goes on, as QEMU's does) and the dirty bit stays."""
        self.stopped = True
        self.bitmap_tracker = False
        self.dirty_set = False
        self._ccache = None

    def _check_alive(self) -> None:
        if self.stopped:
            raise QimgError("No medium found")

    def _l2_load(self, off: int) -> array:
        return self.read_table(off, self._cs // 8)

    def _l2_store(self, off: int, arr: array) -> None:
        self.write_table(off, arr, _OL_ACTIVE_L2)

    def get_l2(self, off: int, l1_index: int | None = None) -> array:
        """The L2 table at ``off``; ``l1_index``: the L1 entry it came from, for QEMU's
        corruption report of an unaligned offset (the image is then marked corrupt)."""
        if off & (self._cs - 1):
            if l1_index is not None:
                self.corrupt(f"L2 table offset {S.chex(off)} unaligned (L1 index: {S.chex(l1_index)})")
            raise CorruptImage(f"L2 table offset {S.chex(off)} unaligned")
        return self.l2_cache.get(off)

    def new_l2(self, off: int, arr: array) -> None:
        self.l2_cache.put(off, arr, dirty=True)

    def flush_caches(self) -> None:
        if self.stopped:
            return
        self.refcounts.cache.flush()
        self.l2_cache.flush()
        self.refcounts.cache.flush()

    def update_header(self) -> None:
        self.file.pwrite(0, encode_header(self.header, self._cs))
        self.backing_filename = self.header.backing_file
        self.backing_format = self.header.backing_format

    # ------------------------------------------------------------------ facts
    @property
    def size(self) -> int:
        # QEMU counts whole sectors (bs->total_sectors): a size field of 2 is an empty disk
        return self.header.size // 512 * 512

    def qemu_status_end(self, offset: int) -> int:
        """End of the run one QEMU block-status call reports (``compare -s`` sees it): the
        range one L2 table maps, and at most INT_MAX bytes."""
        span = self._cs * self.l2_entries
        return min((offset // span + 1) * span, offset + 0x7FFFFFFF)

    @property
    def cluster_size(self) -> int:
        return self._cs

    def compressed_info(self, e: int) -> tuple[int, int]:
        off = e & self.coffset_mask
        nsec = ((e >> self.csize_shift) & self.csize_mask) + 1
        return off, nsec * 512 - (off & 511)

    def compressed_clusters(self, e: int) -> tuple[int, int]:
        off, n = self.compressed_info(e)
        first = off & ~(self._cs - 1)
        last = (off + n - 1) & ~(self._cs - 1)
        return first, (last - first) // self._cs + 1

    # ------------------------------------------------------------------ mapping
    def _extent(self, offset: int, length: int, merge_compressed: bool = True) -> tuple[int, int, int]:
        """(kind, run length, host offset or L2 entry) for the run at guest ``offset``."""
        cb, cs = self.cluster_bits, self._cs
        gci = offset >> cb
        l1i = gci >> self.l2_bits
        table_end = (l1i + 1) << (self.l2_bits + cb)
        end = min(offset + length, table_end)
        if l1i >= len(self.l1):
            return UNALLOC, offset + length - offset, 0
        l2off = self.l1[l1i] & S.L1E_OFFSET_MASK
        if not l2off:
            # skip all following empty L1 entries at once
            n_l1 = len(self.l1) - l1i
            z = _zero_run(self.l1, l1i, n_l1) if self.l1[l1i] == 0 else 1
            run_end = min(offset + length, (l1i + z) << (self.l2_bits + cb))
            return UNALLOC, run_end - offset, 0
        tbl = self.get_l2(l2off, l1i)
        i = gci & (self.l2_entries - 1)
        n = ((end - 1) >> cb) - gci + 1  # clusters touched
        in_cl = offset & (cs - 1)
        if not self.extended_l2:
            e = tbl[i]
            kind, host = self._classify(e, l2off, i, gci << cb)
            if kind == ZEROES and self.header.version < 3:
                self.corrupt(f"Zero cluster entry found in pre-v3 image (L2 offset: {S.chex(l2off)}, "
                              f"L2 index: {S.chex(i)})")
            elif kind == COMPRESSED and self.data_file is not None:
                self._compressed_with_data_file(l2off, i)
            if kind == UNALLOC:
                k = max(_zero_run(tbl, i, n), 1) if e == 0 else self._class_run(tbl, i, n, UNALLOC, l2off)
                if k == n and end == table_end and offset + length > end:
                    # the rest of this table is empty: go on over empty L1 entries
                    z = _zero_run(self.l1, l1i + 1, len(self.l1) - l1i - 1)
                    return UNALLOC, min(offset + length, (l1i + 1 + z) << (self.l2_bits + cb)) - offset, 0
            elif kind == NORMAL:
                k = _same_run(tbl, e, cs, i, n)
            elif kind == COMPRESSED:
                k = self._class_run(tbl, i, n, COMPRESSED, l2off) if merge_compressed else 1
                host = e
            else:
                k = self._zero_cluster_run(tbl, i, n, host)
            run_end = min(end, (gci + k) << cb)
            if kind == NORMAL or (kind == ZEROES and host):
                host += in_cl
            return kind, run_end - offset, host
        return self._extent_ext(tbl, l2off, i, n, offset, end, merge_compressed)

    def _classify(self, e: int, l2off: int, i: int, guest: int | None = None,
                  validate: bool = True) -> tuple[int, int]:
        """(kind, host) of a standard L2 entry; ``validate``: the cluster is the one a request
        starts in, whose host offset QEMU checks (the following ones are only counted)."""
        if e & S.OFLAG_COMPRESSED:
            return COMPRESSED, e
        host = e & S.L2E_OFFSET_MASK
        if e & S.OFLAG_ZERO and not self.extended_l2:
            if validate and host & (self._cs - 1):
                self._unaligned(host, l2off, i)
            return ZEROES, host
        if host:
            if validate:
                if host & (self._cs - 1):
                    self._unaligned(host, l2off, i)
                if guest is not None and self.data_file is not None and host != guest:
                    self._data_file_mismatch(host, guest, i)
            return NORMAL, host
        if self.data_file is not None and e & S.OFLAG_COPIED:
            return NORMAL, 0
        return UNALLOC, 0

    def _unaligned(self, host: int, l2off: int, i: int) -> None:
        self.corrupt(f"Cluster allocation offset {S.chex(host)} unaligned (L2 offset: {S.chex(l2off)}, "
                      f"L2 index: {S.chex(i)})")

    def _data_file_mismatch(self, host: int, guest: int, i: int) -> None:
        self.corrupt(f"External data file host cluster offset {S.chex(host)} does not match guest cluster "
                      f"offset: {S.chex(guest)}, L2 index: {S.chex(i)})")

    def _compressed_with_data_file(self, l2off: int, i: int) -> None:
        self.corrupt(f"Compressed cluster entry found in image with external data file (L2 offset: "
                      f"{S.chex(l2off)}, L2 index: {S.chex(i)})")

    def _class_run(self, tbl: array, i: int, n: int, kind: int, l2off: int) -> int:
        k = 1
        while k < n:
            if self._classify(tbl[i + k], l2off, i + k, validate=False)[0] != kind:
                break
            k += 1
        return k

    def _zero_cluster_run(self, tbl: array, i: int, n: int, host: int) -> int:
        """Zero clusters from ``tbl[i]`` of one kind, as QEMU counts a run: without a host
        offset (ZERO_PLAIN), or with offsets that follow each other (ZERO_ALLOC), so that
        ``map`` shows each kind as its own extent."""
        cs, k = self._cs, 1
        while k < n:
            e = tbl[i + k]
            if e & S.OFLAG_COMPRESSED or not e & S.OFLAG_ZERO:
                break
            if (e & S.L2E_OFFSET_MASK) != (host + k * cs if host else 0):
                break
            k += 1
        return k

    def _ext_invalid(self, e: int, bm: int) -> bool:
        """QEMU's QCOW2_SUBCLUSTER_INVALID: an allocated cluster with subclusters both allocated
        and zero, or an unallocated one with allocated subclusters."""
        if e & S.OFLAG_COMPRESSED:
            return False
        if e & S.L2E_OFFSET_MASK or (self.data_file is not None and e & S.OFLAG_COPIED):
            return bool((bm >> 32) & bm & ALL_ALLOC)
        return bool(bm & ALL_ALLOC)

    def _invalid_entry(self, l2off: int, i: int) -> None:
        self.corrupt(f"Invalid cluster entry found  (L2 offset: {S.chex(l2off)}, L2 index: {S.chex(i)})")

    def _extent_ext(self, tbl: array, l2off: int, i: int, n: int, offset: int, end: int,
                    merge_compressed: bool = True) -> tuple[int, int, int]:
        cb, cs, scs = self.cluster_bits, self._cs, self.subcluster_size
        e, bm = tbl[2 * i], tbl[2 * i + 1]
        in_cl = offset & (cs - 1)
        if e & S.OFLAG_COMPRESSED:
            if self.data_file is not None:
                self._compressed_with_data_file(l2off, i)
            # one cluster per run when the caller reads the data (each is decompressed alone)
            k = 1
            while merge_compressed and k < n and tbl[2 * (i + k)] & S.OFLAG_COMPRESSED:
                k += 1
            return COMPRESSED, min(end, ((offset >> cb) + k) << cb) - offset, e
        if self._ext_invalid(e, bm):
            self._invalid_entry(l2off, i)
        host = e & S.L2E_OFFSET_MASK
        alloc_ok = bool(host) or (self.data_file is not None and bool(e & S.OFLAG_COPIED))
        if alloc_ok:
            if host & (cs - 1):
                self._unaligned(host, l2off, i)
            if self.data_file is not None and host != (offset >> cb) << cb:
                self._data_file_mismatch(host, (offset >> cb) << cb, i)
        sc = in_cl // scs

        def sc_kind(bmv: int, j: int) -> int:
            if (bmv >> (32 + j)) & 1:
                return ZEROES
            if (bmv >> j) & 1:
                return NORMAL if alloc_ok else UNALLOC
            return UNALLOC

        kind = sc_kind(bm, sc)
        j = sc + 1
        while j < 32 and sc_kind(bm, j) == kind:
            j += 1
        run_end = min(end, ((offset >> cb) << cb) + j * scs)
        if j == 32 and run_end < end:
            # whole rest of this cluster matches: extend over following identical clusters
            if kind == NORMAL and bm & ALL_ALLOC == ALL_ALLOC and not bm >> 32:
                rest = n - 1
                if rest:
                    ents = tbl[2 * (i + 1) : 2 * (i + n) : 2]
                    bms = tbl[2 * (i + 1) + 1 : 2 * (i + n) + 1 : 2]
                    k = min(_same_run(ents, e + cs, cs), _same_run(bms, bm, 0))
                    run_end = min(end, (((offset >> cb) + 1 + k) << cb))
            elif kind == UNALLOC and e == 0 and bm == 0:
                z = _zero_run(tbl, 2 * i, n, 2)
                zb = _zero_run(tbl, 2 * i + 1, n, 2)
                run_end = min(end, ((offset >> cb) + max(1, min(z, zb))) << cb)
            elif host and n > 1 and (kind == ZEROES and bm >> 32 == ALL_ALLOC and not bm & ALL_ALLOC
                                     or kind == UNALLOC and not bm):
                # preallocated clusters whose subclusters all read as zeroes or are all
                # unallocated (extended L2 preallocation=metadata): contiguous hosts with the
                # same bitmap are one run, as for normal clusters
                ents = tbl[2 * (i + 1) : 2 * (i + n) : 2]
                bms = tbl[2 * (i + 1) + 1 : 2 * (i + n) + 1 : 2]
                k = min(_same_run(ents, e + cs, cs), _same_run(bms, bm, 0))
                run_end = min(end, (((offset >> cb) + 1 + k) << cb))
            elif kind == ZEROES and bm >> 32 == ALL_ALLOC and not host:
                bms = tbl[2 * i + 1 : 2 * (i + n) + 1 : 2]
                ents = tbl[2 * i : 2 * (i + n) : 2]
                k = min(_same_run(bms, bm, 0), _zero_run(ents, 0, len(ents)))
                run_end = min(end, ((offset >> cb) + max(1, k)) << cb)
        if run_end < end and not (run_end & (cs - 1)):
            # QEMU counts on into the next cluster of the request and checks it before anything
            # else: an invalid one fails the request that reaches it
            nxt = i + ((run_end >> cb) - (offset >> cb))
            if self._ext_invalid(tbl[2 * nxt], tbl[2 * nxt + 1]):
                self._invalid_entry(l2off, nxt)
        if kind in (NORMAL, ZEROES):
            hoff = host + in_cl if alloc_ok else 0
        else:
            hoff = host + in_cl if alloc_ok else -1
        return kind, run_end - offset, hoff

    def corrupt(self, msg: str) -> None:
        """Report corruption once; a writable image is marked corrupt and the driver stops
        (QEMU's qcow2_signal_corruption); the request fails with EIO."""
        from .overlap import FatalCorruption, signal_corruption

        signal_corruption(self, msg)
        if self.writable:
            raise FatalCorruption()
        raise CorruptImage("Input/output error")

    def block_status(self, offset: int, length: int) -> Status:
        if self.stopped:
            self._check_alive()
        kind, n, host = self._extent(offset, length)
        if kind == UNALLOC:
            if self.extended_l2 and host >= 0 and not self._encrypted():
                # an unallocated subcluster of an allocated cluster keeps its host offset
                return Status(OFFSET_VALID, n, host, self._data_name())
            return Status(0, n)
        if kind == ZEROES:
            if host and not self._encrypted():
                return Status(ZERO | ALLOCATED | OFFSET_VALID, n, host, self._data_name())
            return Status(ZERO | ALLOCATED, n)
        if kind == COMPRESSED:
            return Status(DATA | ALLOCATED | STORED_COMPRESSED, n)
        if self._encrypted():
            return Status(DATA | ALLOCATED, n)
        flags = DATA | ALLOCATED | OFFSET_VALID
        if self.data_file is None and self._metadata_preallocated():
            # as QEMU: ask the host file whether preallocated clusters are holes (read as zeroes)
            for _start, k, is_data in (self.data_file or self.file).data_extents(host, n):
                n = min(n, k)
                if not is_data:
                    flags |= ZERO
                break
        return Status(flags, n, host, self._data_name())

    def _metadata_preallocated(self) -> bool:
        """QEMU's heuristic: far more clusters are refcounted than the host file really stores."""
        cached = getattr(self, "_prealloc_detected", None)
        if cached is not None:
            return cached
        cs = self._cs
        try:
            flen = self.file.size()
            real = (self.file.allocated_size() or 0) // cs
        except OSError:
            self._prealloc_detected = False
            return False
        self._prealloc_detected = False  # as QEMU: a refcount that cannot be read says "no"
        threshold = max(real * 10 // 9, real + 2)
        try:
            count = self.refcounts.count_used(-(-flen // cs), threshold)
        except (QimgError, OSError):
            return False
        self._prealloc_detected = count >= threshold
        return self._prealloc_detected

    def _data_name(self) -> str:
        return (self.data_file or self.file).filename

    def _encrypted(self) -> bool:
        return bool(self.header.crypt_method)

    @property
    def zero_init(self) -> bool:  # type: ignore[override]
        """QEMU's qcow2_has_zero_init: an image with metadata preallocated (its first L2 table
        is there) reads its file's bytes, which an encrypted image decrypts into noise."""
        if not (len(self.l1) and self.l1[0]):
            return True
        return not self._encrypted() and not (self.data_file or self.file).is_block

    # ------------------------------------------------------------------ read
    def read(self, offset: int, buf: memoryview) -> None:
        if self.stopped:
            self._check_alive()
        if self._encrypted() and self.crypt is None:
            raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
        pos, total = 0, len(buf)
        dfile = self.data_file or self.file
        while pos < total:
            off = offset + pos
            kind, n, host = self._extent(off, total - pos, merge_compressed=False)
            view = buf[pos : pos + n]
            if kind == NORMAL:
                self.file.debug_event("read_aio")  # (QEMU's blkdebug events: on the image file)
            if kind == NORMAL and self.crypt is not None:
                self._dpreadinto(dfile, host, off, view)
            elif kind == NORMAL:
                got = dfile.preadinto(host, view)
                if got < n:
                    zero_fill(view[got:])
            elif kind == COMPRESSED:
                s = off & (self._cs - 1)
                if s == 0 and total - pos >= 4 * self._cs:
                    n = self._read_compressed_batch(off, buf[pos:])
                else:
                    data = self._read_compressed(host)
                    view[:] = data[s : s + n]
            elif kind == ZEROES:
                zero_fill(view)
            else:
                if self.backing is not None:
                    self.file.debug_event("read_backing_aio")
                self.read_backing(off, view)
            pos += n

    # ------------------------------------------------------------------ encrypted data I/O
    # Encryption works on whole 512-byte sectors; host and guest offsets share their position
    # within a sector, so both widen alike. Writes of partial sectors read, patch and rewrite.
    def _dpreadinto(self, dfile, host: int, guest: int, view: memoryview) -> None:
        """Read data stored at ``host`` (guest offset ``guest``), decrypted when encrypted."""
        if self.crypt is None:
            got = dfile.preadinto(host, view)
            if got < len(view):
                zero_fill(view[got:])
            return
        head = host % 512
        n = len(view)
        span = -(-(head + n) // 512) * 512
        raw = dfile.pread(host - head, span)
        if len(raw) < span:
            raw += bytes(span - len(raw))
        view[:] = memoryview(self.crypt.decrypt(host - head, guest - head, raw))[head : head + n]

    def _dpwrite(self, dfile, host: int, guest: int, data) -> None:
        """Write guest data at ``host``, encrypted when the image is."""
        if self.crypt is None:
            dfile.pwrite(host, data)
            return
        n = len(data)
        head = host % 512
        tail = -(host + n) % 512
        if head or tail:
            buf = bytearray(head + n + tail)
            mv = memoryview(buf)
            if head:
                self._dpreadinto(dfile, host - head, guest - head, mv[:512])
            if tail:
                self._dpreadinto(dfile, host + n + tail - 512, guest + n + tail - 512, mv[-512:])
            mv[head : head + n] = data
            data = buf
        dfile.pwrite(host - head, self.crypt.encrypt(host - head, guest - head, data))

    def _read_compressed_batch(self, offset: int, buf: memoryview) -> int:
        """Decompress the run of compressed clusters at ``offset`` (cluster aligned) into ``buf``
        with a thread pool (zlib and zstd release the GIL); return the bytes filled."""
        from .compress import decompress, pool

        cs = self._cs
        entries: list[int] = []
        pos = 0
        while pos + cs <= len(buf) and len(entries) < 256:
            kind, n, e = self._extent(offset + pos, cs, merge_compressed=False)
            if kind != COMPRESSED:
                break
            entries.append(e)
            pos += cs
        raws = []
        for e in entries:
            coff, csize = self.compressed_info(e)
            raws.append(self.file.pread(coff, csize))
        ctype = self.header.compression_type
        for j, data in enumerate(pool().map(lambda r: decompress(r, ctype, cs), raws)):
            buf[j * cs : (j + 1) * cs] = data
        return pos

    def _read_compressed(self, e: int) -> bytes:
        cached = self._ccache  # one read: reader threads may replace it meanwhile
        if cached is not None and cached[0] == e:
            return cached[1]
        from .compress import decompress

        coff, csize = self.compressed_info(e)
        raw = self.file.pread(coff, csize)
        data = decompress(raw, self.header.compression_type, self._cs)
        self._ccache = (e, data)
        return data

    def _read_layer(self, offset: int, buf: memoryview) -> None:
        """Guest view of this layer including backing (for copy-on-write). As QEMU's COW reads,
        it is not bounded by the image's size: past it, what the backing file holds (up to its
        own end) goes into the new clusters."""
        pos, total = 0, len(buf)
        while pos < total:
            off = offset + pos
            kind, n, host = self._extent(off, total - pos, merge_compressed=False)
            if kind == UNALLOC:
                self.read_backing(off, buf[pos : pos + n])
            else:
                self.read(off, buf[pos : pos + n])
            pos += n

    # ------------------------------------------------------------------ write helpers
    def _mark_dirty_lazy(self) -> None:
        if self.header.compatible_features & S.COMPAT_LAZY_REFCOUNTS and not self.dirty_set:
            self.header.incompatible_features |= S.INCOMPAT_DIRTY
            self.file.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
            self.file.flush()
            self.dirty_set = True

    def _l2_for_write(self, l1i: int) -> tuple[int, array]:
        """The L2 table for L1 index ``l1i``, allocated or made private (COPIED) if needed."""
        e = self.l1[l1i]
        off = e & S.L1E_OFFSET_MASK
        if off and e & S.OFLAG_COPIED:
            return off, self.get_l2(off, l1i)
        new_off = self.refcounts.alloc(1)
        if new_off == 0:
            self.corrupt("Preventing invalid allocation of L2 table at offset 0")
        try:
            tbl = array("Q", self.get_l2(off, l1i)) if off else array("Q", bytes(self._cs))
            self.refcounts.cache.flush()
            # QEMU writes a new L2 table through its cache: checked as every L2 flush is
            self.write_table(new_off, tbl, _OL_ACTIVE_L2)
            self.l2_cache.put(new_off, tbl)
            self.l1[l1i] = new_off | S.OFLAG_COPIED
            self.write_l1(l1i, 1)
        except (QimgError, OSError):
            # as QEMU's l2_allocate: the L1 entry goes back and the new table is freed
            self.l1[l1i] = e
            self.l2_cache.drop(new_off)
            self.refcounts.free(new_off, self._cs, discard=True)
            raise
        if off:
            # as QEMU: the old table loses its reference once the new one is in place
            self.refcounts.update(off, self._cs, -1)
        return new_off, tbl

    def _free_entry(self, e: int, punch: bool = False) -> None:
        """Drop one reference held by an L2 entry (normal, zero-allocated or compressed).

        ``punch``: a guest discard; clusters no longer used are discarded in the host file too,
        as QEMU passes discard requests down."""
        if e & S.OFLAG_COMPRESSED:
            self._ccache = None
            first, n = self.compressed_clusters(e)
            self.refcounts.free(first, n * self._cs, punch)
        else:
            host = e & S.L2E_OFFSET_MASK
            if not host or self.data_file is not None:
                return
            if host & (self._cs - 1):
                from .overlap import signal_corruption

                signal_corruption(self, f"Cannot free unaligned cluster {S.chex(host)}", fatal=False)
                return
            self.refcounts.free(host, self._cs, punch)

    def _can_write_in_place(self, e: int) -> bool:
        if e & S.OFLAG_COMPRESSED or not e & S.OFLAG_COPIED:
            return False
        if self.data_file is not None:
            return True
        return bool(e & S.L2E_OFFSET_MASK)

    # ------------------------------------------------------------------ write
    def write(self, offset: int, data: memoryview) -> None:
        self._check_io_writable()
        self._bitmaps_dirty(offset, len(data))
        self._write(offset, data)

    def _write(self, offset: int, data: memoryview) -> None:
        """:meth:`write` below the block layer (no bitmap tracking): the driver's own writes."""
        self._mark_dirty_lazy()
        cb = self.cluster_bits
        pos, total = 0, len(data)
        # where the host range of this request goes on: clusters to allocate right after
        # clusters written in place go there if free (QEMU's qcow2_alloc_clusters_at)
        follow = 0
        while pos < total:
            off = offset + pos
            gci = off >> cb
            l1i = gci >> self.l2_bits
            table_end = (l1i + 1) << (self.l2_bits + cb)
            end = min(offset + total, table_end)
            l2off, tbl = self._l2_for_write(l1i)
            i0 = gci & (self.l2_entries - 1)
            n = ((end - 1) >> cb) - gci + 1
            st = self.l2_entry_size // 8
            if st == 1 and tbl[i0 : i0 + n].count(0) == n:
                # nothing allocated yet (the copy case): one run of new clusters
                self._write_alloc(tbl, l2off, i0, n, off, data[pos : end - offset], follow)
                pos = end - offset
                follow = 0
                continue
            k = 0
            while k < n:
                ent = tbl[(i0 + k) * st]
                inplace = self._can_write_in_place(ent)
                # group a run of clusters of the same kind
                j = k + 1
                while j < n and self._can_write_in_place(tbl[(i0 + j) * st]) == inplace:
                    j += 1
                rs = max(off, (gci + k) << cb)
                re = min(end, (gci + j) << cb)
                dv = data[rs - offset : re - offset]
                if inplace:
                    self._write_in_place(tbl, l2off, i0 + k, rs, dv)
                    last = tbl[(i0 + j - 1) * st] & S.L2E_OFFSET_MASK
                    follow = last + self._cs if last and self.data_file is None else 0
                else:
                    self._write_alloc(tbl, l2off, i0 + k, j - k, rs, dv, follow)
                    follow = 0
                k = j
            pos = end - offset

    def _check_io_writable(self) -> None:
        if self.stopped:
            self._check_alive()
        if self._encrypted() and self.crypt is None:
            raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
        if self.header.incompatible_features & S.INCOMPAT_CORRUPT and not self.allow_corrupt:
            raise QimgError("Input/output error")

    def _write_in_place(self, tbl: array, l2off: int, i: int, goff: int, data: memoryview) -> None:
        """Write over clusters this image owns (COPIED, uncompressed); host runs coalesced."""
        cb, cs = self.cluster_bits, self._cs
        dfile = self.data_file or self.file
        st = self.l2_entry_size // 8
        pos, total = 0, len(data)
        while pos < total:
            g = goff + pos
            ci = i + ((g >> cb) - (goff >> cb))
            e = tbl[ci * st]
            host = e & S.L2E_OFFSET_MASK
            if host & (cs - 1):
                kind = "Preallocated zero" if e & S.OFLAG_ZERO and not self.extended_l2 else "Data"
                self.corrupt(f"{kind} cluster offset {S.chex(host)} unaligned (guest offset: {S.chex(g)})")
            # contiguous host clusters
            k = 1
            maxk = ((goff + total - 1) >> cb) - (g >> cb) + 1
            if maxk > 1:
                k = _same_run(tbl[ci * st : (ci + maxk) * st : st], e, cs)
            n = min(total - pos, ((g >> cb) + k << cb) - g)
            chunk = data[pos : pos + n]
            self.pre_write(0, host + (g & (cs - 1)), n, data_file=True)
            self.file.debug_event("write_aio")
            if self.extended_l2:
                # whole clusters in the middle go out in one write; partial ends need subcluster COW
                a = -(-g // cs) * cs
                b = ((g + n) // cs) * cs
                if b - a >= cs:
                    if a > g:
                        self._ext_fill_partial(tbl, ci, g, chunk[: a - g], host, dfile)
                    c0 = ci + ((a >> cb) - (g >> cb))
                    self._dpwrite(dfile, host + (a - ((g >> cb) << cb)), a, chunk[a - g : b - g])
                    for c in range(c0, c0 + ((b - a) >> cb)):
                        tbl[2 * c + 1] = ALL_ALLOC
                    if g + n > b:
                        self._ext_fill_partial(tbl, ci + ((b >> cb) - (g >> cb)), b, chunk[b - g :], host, dfile)
                else:
                    self._ext_fill_partial(tbl, ci, g, chunk, host, dfile)
            else:
                self._dpwrite(dfile, host + (g & (cs - 1)), g, chunk)
                if e & S.OFLAG_ZERO:
                    # a preallocated zero cluster becomes data: fill the rest with zeroes
                    for c in range(k):
                        ce = tbl[(ci + c) * st]
                        if ce & S.OFLAG_ZERO:
                            self._zero_rest_of_cluster(dfile, ce & S.L2E_OFFSET_MASK, (g >> cb) + c, g, g + n)
                            tbl[(ci + c) * st] = ce & ~S.OFLAG_ZERO
                    self.l2_cache.mark_dirty(l2off)
            if self.extended_l2:
                self.l2_cache.mark_dirty(l2off)
            pos += n

    def _zero_rest_of_cluster(self, dfile, host: int, gci: int, ws: int, we: int) -> None:
        cs = self._cs
        cstart = gci << self.cluster_bits
        a, b = max(ws, cstart), min(we, cstart + cs)
        if a > cstart:
            self._dpwrite(dfile, host, cstart, bytes(a - cstart))
        if b < cstart + cs:
            self._dpwrite(dfile, host + (b - cstart), b, bytes(cstart + cs - b))

    def _ext_fill_partial(self, tbl: array, ci: int, g: int, chunk: memoryview, host: int, dfile) -> None:
        """Extended L2 in-place write: COW partially written subclusters that are not data yet."""
        cb, cs, scs = self.cluster_bits, self._cs, self.subcluster_size
        pos, total = 0, len(chunk)
        while pos < total:
            gg = g + pos
            c = ci + ((gg >> cb) - (g >> cb))
            cstart = (gg >> cb) << cb
            n = min(total - pos, cstart + cs - gg)
            e = tbl[2 * c]
            h = e & S.L2E_OFFSET_MASK if (e & S.L2E_OFFSET_MASK or self.data_file is None) else 0
            bm = tbl[2 * c + 1]
            s0 = (gg - cstart) // scs
            s1 = (gg - cstart + n - 1) // scs
            ws, we = gg, gg + n
            # widen to whole subclusters, filling from the current guest view where needed
            a = cstart + s0 * scs
            b = cstart + (s1 + 1) * scs
            buf = bytearray(b - a)
            mv = memoryview(buf)
            if a < ws and not ((bm >> s0) & 1 and not (bm >> (32 + s0)) & 1):
                self._read_layer(a, mv[: ws - a])
            elif a < ws:
                self._dpreadinto(dfile, h + (a - cstart), a, mv[: ws - a])
            if we < b and not ((bm >> s1) & 1 and not (bm >> (32 + s1)) & 1):
                self._read_layer(we, mv[we - a :])
            elif we < b:
                self._dpreadinto(dfile, h + (we - cstart), we, mv[we - a :])
            mv[ws - a : we - a] = chunk[pos : pos + n]
            self._dpwrite(dfile, h + (a - cstart), a, mv)
            mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
            tbl[2 * c + 1] = (bm | mask) & ~(mask << 32)
            pos += n
        del host

    def _cow_reads_zero(self, old: array, first_g: int, regions: tuple[tuple[int, int], ...]) -> bool:
        """QEMU's is_zero_cow: each part of the new clusters that is not written reads as zero
        in one block-status answer (a zero cluster here, or a run the backing chain reports as
        zero; a part that crosses the backing file's or the image's end does not count)."""
        cb = self.cluster_bits
        for start, length in regions:
            if not length:
                continue
            if start + length > self.size:
                return False  # QEMU's status stops at the image's end: not one zero answer
            e = old[((start >> cb) - (first_g >> cb))]
            if e & S.OFLAG_COMPRESSED:
                return False  # (its low bits are part of the compressed descriptor, not flags)
            if e & S.OFLAG_ZERO:
                continue
            if e & S.L2E_OFFSET_MASK:
                return False
            b = self.backing
            if b is None or start >= b.size:
                continue
            if start + length > b.size:
                return False
            st = b.chain_status(start, length)
            if not st.flags & ZERO or st.length < length:
                return False
        return True

    def _write_alloc(self, tbl: array, l2off: int, i: int, n: int, goff: int, data: memoryview,
                     follow: int = 0) -> None:
        """Allocate ``n`` new contiguous clusters for L2 indexes i..i+n-1 and write them whole;
        ``follow``: the host offset where the request's host range goes on, tried first."""
        cb = self.cluster_bits
        if follow and self.data_file is None:
            got = self.refcounts.alloc_at(follow, n)
            if got:
                if got < n:
                    # the rest is a new host range, allocated where the allocator finds room
                    cut = ((goff >> cb) + got) << cb
                    self._write_alloc_at(tbl, l2off, i, got, goff, data[: cut - goff], follow)
                    self._write_alloc(tbl, l2off, i + got, n - got, cut, data[cut - goff :])
                else:
                    self._write_alloc_at(tbl, l2off, i, n, goff, data, follow)
                return
        self._write_alloc_at(tbl, l2off, i, n, goff, data, None)

    def _write_alloc_at(self, tbl: array, l2off: int, i: int, n: int, goff: int, data: memoryview,
                        host: int | None) -> None:
        """:meth:`_write_alloc` once the host clusters are known (``host``) or to be found (None)."""
        cb, cs = self.cluster_bits, self._cs
        st = self.l2_entry_size // 8
        first_g = (goff >> cb) << cb
        last_end = first_g + n * cs
        head = goff - first_g
        tail = last_end - (goff + len(data))
        old = tbl[i * st : (i + n) * st : st]
        if self.data_file is not None:
            host = first_g  # external data files map guest offsets 1:1
        elif host is None:
            host = self.refcounts.alloc(n)
        sub = self.extended_l2 and not any(e & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK) for e in old)
        if sub:
            # as QEMU: only the touched subclusters get allocated; the others keep their state
            scs = self.subcluster_size
            head = (goff - first_g) % scs
            tail = (-(goff + len(data) - first_g)) % scs
            host_w = host + (goff - head - first_g)
            first_g = goff - head
        else:
            host_w = host
        dfile = self.data_file or self.file
        self.pre_write(0, host_w, head + len(data) + tail, data_file=True)
        if ((head or tail) and not sub and self.crypt is None
                and self._cow_reads_zero(old, first_g, ((first_g, head), (goff + len(data), tail)))):
            # as QEMU (handle_alloc_space): when nothing below shows through the parts not
            # written, the new clusters are zeroed in the file (no zero data is written) and
            # only the data goes out, so the file is as sparse as qemu-img leaves it
            self.file.debug_event("cluster_alloc_space")
            dfile.write_zeroes(host_w, n * cs)
            self.file.debug_event("write_aio")
            dfile.pwrite(host_w + head, data)
        else:
            self.file.debug_event("write_aio")
            bufs: list = []
            if head:
                hb = bytearray(head)
                self._read_layer(first_g, memoryview(hb))
                bufs.append(hb)
            bufs.append(data)
            if tail:
                tb = bytearray(tail)
                self._read_layer(goff + len(data), memoryview(tb))
                bufs.append(tb)
            if self.crypt is not None:
                whole = b"".join(bufs) if len(bufs) > 1 else data
                self._dpwrite(dfile, host_w, first_g, whole)
            elif hasattr(dfile, "pwritev") and len(bufs) > 1:
                dfile.pwritev(host_w, bufs)
            else:
                p = host_w
                for b in bufs:
                    dfile.pwrite(p, b)
                    p += len(b)
        c0 = goff >> cb
        if st == 1:
            first = host | S.OFLAG_COPIED
            tbl[i : i + n] = array("Q", range(first, first + n * cs, cs))
        for k in range(n if st != 1 else 0):
            tbl[(i + k) * st] = (host + k * cs) | S.OFLAG_COPIED
            if sub:
                cstart = (c0 + k) << cb
                a = max(goff, cstart) - cstart
                b = min(goff + len(data), cstart + cs) - cstart
                s0, s1 = a // self.subcluster_size, (b - 1) // self.subcluster_size
                mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
                bm = tbl[(i + k) * st + 1]
                tbl[(i + k) * st + 1] = (bm | mask) & ~(mask << 32)
            elif self.extended_l2:
                tbl[(i + k) * st + 1] = ALL_ALLOC
        self.l2_cache.mark_dirty(l2off)
        if old.count(0) == len(old):
            return
        for e in old:
            if e & S.OFLAG_COMPRESSED or e & S.L2E_OFFSET_MASK:
                self._free_entry(e)

    # ------------------------------------------------------------------ zeroes / discard
    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """As QEMU: whole (sub)clusters become zero clusters (v3) or are dropped (v2 without a
        backing file); a partial one is zeroed whole when the rest of it already reads as zeroes
        and nothing is allocated there, else zero bytes are written."""
        self._check_io_writable()
        self._bitmaps_dirty(offset, length)
        unit = self.subcluster_size if self.extended_l2 else self._cs
        end = offset + length
        a = -(-offset // unit) * unit
        b = end // unit * unit
        if end == self.size and b < end:
            b = end  # the image tail may be partial
        if self.header.version < 3 and self.backing is not None:
            self._write_zero_bytes(offset, length)
            return
        if a > b:  # inside one unit
            self._zero_partial(offset, length, unmap)
            return
        if a > offset:
            self._zero_partial(offset, a - offset, unmap)
        if a < b:
            self._zero_units(a, b, unmap)
        if b < end:
            self._zero_partial(b, end - b, unmap)

    def _zero_units(self, a: int, b: int, unmap: bool) -> None:
        if self.header.version < 3:
            self._discard_range(a, b, full=False)
        else:
            self._mark_dirty_lazy()
            self._zeroize(a, b, unmap)

    def _zero_partial(self, offset: int, length: int, unmap: bool) -> None:
        unit = self.subcluster_size if self.extended_l2 else self._cs
        u0 = offset - offset % unit
        u1 = min(u0 + unit, self.size)
        end = offset + length
        if self._reads_zero(u0, offset - u0) and self._reads_zero(end, u1 - end):
            kind = self._extent(u0, u1 - u0, merge_compressed=False)[0]
            if kind in (UNALLOC, ZEROES):
                self._zero_units(u0, u1, unmap)
                return
        self._write_zero_bytes(offset, length)

    def _reads_zero(self, offset: int, length: int) -> bool:
        """Block status says zero (zero clusters, or unallocated down the whole chain)."""
        end = offset + length
        while offset < end:
            kind, n, _h = self._extent(offset, end - offset)
            if kind == UNALLOC:
                if self.backing is not None:
                    st = self.backing.chain_status(offset, n)
                    n = st.length
                    if st.flags & ALLOCATED and not st.flags & ZERO:
                        return False
            elif kind != ZEROES:
                return False
            offset += n
        return True

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        from qimg.protocol import ZERO_CHUNK

        end = offset + length
        while offset < end:
            n = min(len(ZERO_CHUNK), end - offset)
            self.write(offset, memoryview(ZERO_CHUNK)[:n])
            offset += n

    def _zeroize(self, a: int, b: int, unmap: bool) -> None:
        cb, cs = self.cluster_bits, self._cs
        pos = a
        while pos < b:
            gci = pos >> cb
            l1i = gci >> self.l2_bits
            tend = min(b, (l1i + 1) << (self.l2_bits + cb))
            l2off, tbl = self._l2_for_write(l1i)
            while pos < tend:
                gci = pos >> cb
                i = gci & (self.l2_entries - 1)
                cend = min(tend, (gci + 1) << cb)
                if self.extended_l2:
                    e, bm = tbl[2 * i], tbl[2 * i + 1]
                    if cend - pos == cs or (cend == self.size and pos & (cs - 1) == 0):
                        do_unmap = bool(e & S.OFLAG_COMPRESSED) or (unmap and bool(e & S.L2E_OFFSET_MASK))
                        ne = 0 if do_unmap else e
                        nb = ALL_ZERO
                        if e & S.OFLAG_COMPRESSED:
                            ne = 0
                        if (ne, nb) != (e, bm):
                            tbl[2 * i], tbl[2 * i + 1] = ne, nb
                            if do_unmap:
                                self._free_entry(e, punch=True)
                    else:
                        if e & S.OFLAG_COMPRESSED:
                            # cannot zero part of a compressed cluster: write zero bytes instead
                            self.l2_cache.mark_dirty(l2off)
                            self._write_zero_bytes(pos, cend - pos)
                            tbl = self.get_l2(self.l1[l1i] & S.L1E_OFFSET_MASK)
                            pos = cend
                            continue
                        scs = self.subcluster_size
                        s0 = (pos & (cs - 1)) // scs
                        s1 = ((cend - 1) & (cs - 1)) // scs
                        mask = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
                        tbl[2 * i + 1] = (bm & ~mask) | (mask << 32)
                else:
                    e = tbl[i]
                    do_unmap = bool(e & S.OFLAG_COMPRESSED) or (
                        unmap and bool(e & S.L2E_OFFSET_MASK or (self.data_file and e & S.OFLAG_COPIED)))
                    ne = (0 if do_unmap else e) | S.OFLAG_ZERO
                    if ne != e:
                        tbl[i] = ne
                        if do_unmap:
                            self._free_entry(e, punch=True)
                pos = cend
            self.l2_cache.mark_dirty(l2off)

    def discard(self, offset: int, length: int) -> None:
        self._check_io_writable()
        self._bitmaps_dirty(offset, length)
        cs = self._cs
        a = (offset + cs - 1) // cs * cs
        b = (offset + length) // cs * cs
        if offset + length == self.size:
            b = offset + length
        if self.header.version < 3 and self.backing is not None:
            return  # v2 cannot hide the backing file: QEMU ignores the request
        if a < b:
            self._mark_dirty_lazy()
            self._discard_range(a, b, full=False)

    def _discard_range(self, a: int, b: int, full: bool) -> None:
        cb = self.cluster_bits
        pos = a
        while pos < b:
            gci = pos >> cb
            l1i = gci >> self.l2_bits
            tend = min(b, (l1i + 1) << (self.l2_bits + cb))
            # as QEMU, the L2 table is allocated (or made private) even if nothing changes in it
            l2off, tbl = self._l2_for_write(l1i)
            st = self.l2_entry_size // 8
            changed = False
            while pos < tend:
                gci = pos >> cb
                i = gci & (self.l2_entries - 1)
                e = tbl[i * st]
                allocated = bool(e & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK)) or (
                    self.data_file is not None and bool(e & S.OFLAG_COPIED))
                if full:
                    ne, nb = 0, 0
                elif self.backing is not None or allocated:
                    if self.extended_l2:
                        ne, nb = 0, ALL_ZERO
                    else:
                        ne, nb = (S.OFLAG_ZERO if self.header.version >= 3 else 0), 0
                else:
                    pos = (gci + 1) << cb
                    continue
                pos = (gci + 1) << cb
                if e == ne and (not self.extended_l2 or tbl[i * st + 1] == nb):
                    continue  # (an entry left as it was does not dirty the table)
                changed = True
                tbl[i * st] = ne
                if self.extended_l2:
                    tbl[i * st + 1] = nb
                if allocated:
                    self._free_entry(e, punch=True)
            if changed:
                self.l2_cache.mark_dirty(l2off)

    # ------------------------------------------------------------------ compressed write
    def write_compressed(self, offset: int, data: memoryview) -> None:
        self._check_io_writable()
        if self._encrypted():
            raise QimgError("Compression and encryption not supported at the same time")
        self._bitmaps_dirty(offset, len(data))
        cs = self._cs
        if self.data_file is not None:
            raise _no_compression_with_data_file()
        if not len(data):
            # QEMU's end-of-stream signal: align the file end to a sector
            fsize = self.file.size()
            if fsize % 512:
                self.file.truncate(fsize + (-fsize) % 512)
            return
        if offset & (cs - 1):
            raise QimgError("Compressed writes must be cluster aligned")
        if len(data) > cs:
            # several clusters: each one is compressed on its own, as QEMU splits the request
            for k in range(0, len(data), cs):
                self.write_compressed(offset + k, data[k : k + cs])
            return
        if len(data) != cs:
            if offset + len(data) != self.size:
                raise QimgError("Compressed writes must cover a whole cluster")
            buf = bytearray(cs)
            buf[: len(data)] = data
            data = memoryview(buf)
        from .compress import compress

        self.write_compressed_cluster(offset, (data, compress(data, self.header.compression_type)))

    def compress_cluster(self, data: memoryview) -> tuple[memoryview, bytes]:
        """Compress one cluster without touching the image (thread-safe: convert -c runs
        it in pool threads); hand the result to :meth:`write_compressed_cluster`."""
        from .compress import compress

        cs = self._cs
        if len(data) != cs:
            buf = bytearray(cs)
            buf[: len(data)] = data
            data = memoryview(buf)
        return data, compress(data, self.header.compression_type)

    def write_compressed_cluster(self, offset: int, prepared: tuple[memoryview, bytes]) -> None:
        """Store a cluster prepared by :meth:`compress_cluster` (same checks as write_compressed)."""
        self._check_io_writable()
        if self._encrypted():
            raise QimgError("Compression and encryption not supported at the same time")
        cs = self._cs
        data, out = prepared
        if self.data_file is not None:
            raise _no_compression_with_data_file()
        if offset & (cs - 1):
            raise QimgError("Compressed writes must be cluster aligned")
        self._bitmaps_dirty(offset, min(cs, self.size - offset))
        if len(out) >= cs:
            self.write(offset, data[: min(cs, self.size - offset)])
            return
        self._mark_dirty_lazy()
        gci = offset >> self.cluster_bits
        l1i = gci >> self.l2_bits
        l2off, tbl = self._l2_for_write(l1i)
        i = gci & (self.l2_entries - 1)
        st = self.l2_entry_size // 8
        old = tbl[i * st]
        self._ccache = None
        host = self.refcounts.alloc_bytes(len(out))
        end = host + len(out)
        pad = (-end) % 512
        if pad and end >= self.file.size():
            # QEMU's block layer writes whole sectors: the file grows to a 512-byte multiple
            out = bytes(out) + bytes(pad)
        self.pre_write(0, host, len(out), data_file=True)
        self.file.pwrite(host, out)
        nsec = ((host + len(out) - 1) >> 9) - (host >> 9)
        tbl[i * st] = host | S.OFLAG_COMPRESSED | (nsec << self.csize_shift)
        if self.extended_l2:
            tbl[i * st + 1] = 0
        self.l2_cache.mark_dirty(l2off)
        if old & (S.OFLAG_COMPRESSED | S.L2E_OFFSET_MASK):
            self._free_entry(old)

    # ------------------------------------------------------------------ life cycle
    def flush(self) -> None:
        if self.writable and not self.stopped:
            self.flush_caches()
            if self.data_file is not None:
                self.data_file.flush()
            self.file.flush()

    def inactivate(self) -> int:
        """QEMU's qcow2_inactivate as bdrv_inactivate_all calls it: no flush first; the errno
        of the last failure (-EINVAL for lost bitmaps), ENOMEDIUM once a corruption stopped
        the driver."""
        if self.inactive:
            return 0
        if self.stopped:
            self.inactive = True
            return errno.ENOMEDIUM
        err = 0
        if self.writable and getattr(self, "l2_cache", None) is not None:
            err = self._inactivate()
        # a node whose inactivation failed stays active: its close tries again
        self.inactive = not err or self.stopped
        return err

    def close(self) -> None:
        try:
            if self.writable and getattr(self, "l2_cache", None) is not None and not self.stopped \
                    and not self.inactive:
                # QEMU's bdrv_close flushes first, quietly: a corruption found there stops the
                # driver, whose own close then never runs
                try:
                    self.flush_caches()
                except (QimgError, OSError):
                    if not self.stopped:
                        raise
                if not self.stopped:
                    self._inactivate()
        finally:
            if self.data_file is not None:
                self.data_file.close()
            self.file.close()

    def _inactivate(self) -> int:
        """QEMU's qcow2_inactivate: store the bitmaps, flush the L2 and refcount caches (each
        failure reported, the close goes on), and clear the dirty bit only if all went well.
        The errno of the last failure, or 0."""
        from qimg import api

        failed = 0
        if self.bitmap_tracker or self.header.bitmaps_ext is not None:
            # QEMU stores every loaded bitmap when a read-write image closes
            from .bitmap import NODE_NUMBER, bitmaps_store

            try:
                bitmaps_store(self)
            except (QimgError, OSError) as e:
                # reported, the close goes on (QEMU's qcow2_inactivate)
                reason = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
                api.warn(f"{program()}: Lost persistent bitmaps during inactivation of node '#block{NODE_NUMBER}': {reason}")
                failed = errno.EINVAL
        for cache, what in ((self.l2_cache, "L2 table"), (self.refcounts.cache, "refcount block")):
            try:
                if cache is self.l2_cache and cache.dirty:
                    self.refcounts.cache.flush()  # the L2 tables depend on their refcounts
                cache.flush()
            except (QimgError, OSError) as e:
                if not self.stopped:
                    raise
                failed = (e.errno if isinstance(e, OSError) else 0) or errno.EIO
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                api.warn(f"{program()}: Failed to flush the {what} cache: {reason}")
        if failed or self.stopped:
            return failed or errno.EIO
        if self.dirty_set:
            self.file.flush()
            self.header.incompatible_features &= ~S.INCOMPAT_DIRTY
            self.file.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
            self.dirty_set = False
        self.file.flush()
        return 0

    # ------------------------------------------------------------------ metadata
    def allocated_file_size(self) -> int | None:
        # as qemu-img: the qcow2 file only, an external data file is not counted
        return self.file.allocated_size()

    def format_specific_info(self) -> dict[str, Any] | None:
        h = self.header
        d: dict[str, Any] = {}
        if h.version == 2:
            d["compat"] = "0.10"
            d["compression-type"] = "zlib" if h.compression_type == 0 else "zstd"
            d["refcount-bits"] = self.refcounts.bits
            self._encrypt_info(d)
            return d
        d["compat"] = "1.1"
        if h.data_file is not None:
            d["data-file"] = h.data_file
        if h.incompatible_features & S.INCOMPAT_DATA_FILE:  # (with or without a name in the header)
            d["data-file-raw"] = bool(h.autoclear_features & S.AUTOCLEAR_DATA_FILE_RAW)
        d["compression-type"] = "zlib" if h.compression_type == 0 else "zstd"
        d["lazy-refcounts"] = bool(h.compatible_features & S.COMPAT_LAZY_REFCOUNTS)
        if h.bitmaps_ext is not None and h.autoclear_features & S.AUTOCLEAR_BITMAPS:
            try:
                from .bitmap import bitmap_info
            except ImportError:
                pass
            else:
                bm = bitmap_info(self)
                if bm is not None:
                    d["bitmaps"] = bm
        d["refcount-bits"] = self.refcounts.bits
        self._encrypt_info(d)
        d["corrupt"] = bool(h.incompatible_features & S.INCOMPAT_CORRUPT)
        d["extended-l2"] = self.extended_l2
        return d

    def _encrypt_info(self, d: dict[str, Any]) -> None:
        """The ``encrypt`` block (both versions, as QEMU)."""
        if self.header.crypt_method == 2:
            from .luks import luks_info

            d["encrypt"] = luks_info(self) or {"format": "luks"}
        elif self.header.crypt_method:
            d["encrypt"] = {"format": "aes"}

    def info_extra(self) -> dict[str, Any]:
        h = self.header
        d: dict[str, Any] = {"cluster-size": self._cs}
        if h.crypt_method:
            d["encrypted"] = True
        if h.incompatible_features & S.INCOMPAT_DIRTY:
            d["dirty-flag"] = True
        else:
            d["dirty-flag"] = False
        if h.backing_format:
            d["backing-filename-format"] = h.backing_format
        return d

    # ------------------------------------------------------------------ delegation to sibling modules
    def check(self, fix: set[str]) -> CheckResult:
        self._check_alive()
        from .check import check_image

        return check_image(self, fix)

    def snapshot_list(self) -> list[SnapshotInfo]:
        if not self.header.nb_snapshots:
            return []
        from .snapshot import snapshot_list

        return snapshot_list(self)

    def snapshot_create(self, name: str) -> None:
        from .snapshot import snapshot_create

        snapshot_create(self, name)

    def snapshot_goto(self, id_or_name: str) -> None:
        from .snapshot import snapshot_goto

        snapshot_goto(self, id_or_name)

    def snapshot_delete(self, id_or_name: str | None, name: str | None = None) -> None:
        from .snapshot import snapshot_delete

        snapshot_delete(self, id_or_name, name)

    def snapshot_load_readonly(self, snapshot_id: str | None, name: str | None) -> None:
        from .snapshot import snapshot_load_readonly

        snapshot_load_readonly(self, snapshot_id, name)

    # ------------------------------------------------------------------ whole-image operations
    def repair_dirty(self) -> None:
        """Repair refcounts after an unclean shutdown with lazy refcounts (QEMU repairs on open)."""

        from .check import CheckFailed, check_image

        # QEMU's repair on open prints the check's lines on stderr; a repair with internal
        # errors fails the open (the dirty bit stays)
        try:
            res = check_image(self, {"leaks", "errors"})
        except CheckFailed as e:
            sys.stderr.write("".join(line + "\n" for line in e.messages))
            raise QimgError(f"Could not repair dirty image: {e.message}") from None
        sys.stderr.write("".join(line + "\n" for line in res.messages))
        if res.check_errors:
            raise QimgError("Could not repair dirty image: Input/output error")

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        from .resize import truncate

        truncate(self, size, shrink=shrink, preallocation=preallocation)

    def amend(self, opts: dict[str, Any], progress: ProgressFn | None = None, force: bool = False) -> None:
        from .amend import amend

        if self.header.crypt_method and any(k.startswith("encrypt.") for k in opts):
            # LUKS key slots (the rest of the options go to the format's amend first)
            from .luks import amend_encryption

            rest = {k: v for k, v in opts.items() if not k.startswith("encrypt.")}
            if rest:
                amend(self, rest, progress, force)
            amend_encryption(self, opts, force)
            return
        amend(self, opts, progress, force)

    def make_empty(self) -> None:
        from .resize import make_empty

        make_empty(self)

    def change_backing_file(self, filename: str | None, fmt: str | None) -> None:
        h = self.header
        if filename and (len(filename.encode()) > 1023 or self.data_raw) or fmt and not filename:
            raise QimgError("Invalid argument")
        h.backing_file = filename or None
        h.backing_format = fmt if filename else None
        self.update_header()

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        from .create import create_image

        create_image(filename, size, opts)

    @classmethod
    def measure(cls, size: int | None, opts: dict[str, Any], source=None) -> dict[str, int]:
        from .create import measure

        return measure(size, opts, source)

    def _drop_caches(self) -> None:
        self.l2_cache.clear()
        self.refcounts.cache.clear()

    # ------------------------------------------------------------------ persistent bitmaps (bitmap.py)
    def _bitmaps_dirty(self, offset: int, length: int) -> None:
        """Record a guest write in enabled persistent bitmaps (False: nothing to track)."""
        if self.bitmap_tracker is False:
            return
        if self.header.bitmaps_ext is None:
            self.bitmap_tracker = False
            return
        from .bitmap import bitmaps_mark_dirty

        bitmaps_mark_dirty(self, offset, length)

    def supports_persistent_bitmaps(self) -> bool:
        return self.header.version >= 3  # a v2 image (compat=0.10) cannot hold them

    def host_files(self) -> list[Protocol]:
        return [self.file] + ([self.data_file] if isinstance(self.data_file, Protocol) else [])

    def bitmap_add(self, name: str, granularity: int | None = None, disabled: bool = False) -> None:
        from .bitmap import bitmap_add

        bitmap_add(self, name, granularity, disabled)

    def bitmap_remove(self, name: str) -> None:
        from .bitmap import bitmap_remove

        bitmap_remove(self, name)

    def bitmap_clear(self, name: str) -> None:
        from .bitmap import bitmap_clear

        bitmap_clear(self, name)

    def bitmap_enable(self, name: str) -> None:
        from .bitmap import bitmap_enable

        bitmap_enable(self, name)

    def bitmap_disable(self, name: str) -> None:
        from .bitmap import bitmap_disable

        bitmap_disable(self, name)

    def bitmap_merge(self, name: str, source_image, source_name: str) -> None:
        from .bitmap import bitmap_merge_image

        bitmap_merge_image(self, name, source_image, source_name)

    def bitmap_export(self, skip_broken: bool = False) -> list:
        """``convert --bitmaps``: the source's bitmaps, for ``bitmap_import`` of a qcow2 target."""
        from .bitmap import bitmap_export

        return bitmap_export(self, skip_broken)

    def bitmap_import(self, exported) -> None:
        from .bitmap import bitmap_import

        bitmap_import(self, exported)


def _no_compression_with_data_file() -> Exception:
    """QEMU refuses a compressed write to an image with an external data file with ENOTSUP
    (convert: "error while writing at byte N: Operation not supported")."""
    import errno

    from qimg.errors import os_error

    return os_error("Operation not supported", errno.ENOTSUP)
