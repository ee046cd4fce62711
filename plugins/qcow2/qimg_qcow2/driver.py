"""The qcow2 format driver (QEMU's block/qcow2.c): open and close, the in-memory model, block
status, read, and the entry points of writes, whose work is allocate.py's. Which module owns
what: docs/architecture.md; how they use each other: INTERFACE.md."""
from __future__ import annotations

import errno
import struct
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

from . import structs as S
from .cluster import COMPRESSED, NORMAL, UNALLOC, ZEROES, ClusterMap
from .header import check_table_requests, encode_header, parse_extensions, read_header
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

    from .allocate import ClusterAllocator

#: metadata cache budget in bytes (QEMU's default l2-cache-size is 1 MiB; more helps big runs)
CACHE_BYTES = 32 << 20
#: overlap.py's bit for the active L1 table (write_l1 may touch it)
_OL_ACTIVE_L1 = 1 << 1


class sibling:  # (lower case: it reads as a declaration in the class body)
    """A driver method whose code is ``function`` of the sibling module ``module`` (its first
    argument the driver, or the class with ``kind=classmethod``). The module is imported when
    the method is first used, so that ``info`` or ``map`` never load what only ``snapshot``,
    ``bitmap`` or ``resize`` need; the function then replaces this declaration in the class.
    Seen on the class before that (the core's ``type(drv).truncate is Format.truncate``), it is
    this declaration, which loads the function when called."""

    def __init__(self, module: str, function: str, kind: type | None = None) -> None:
        self.module, self.function, self.kind = module, function, kind

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name

    def load(self, owner: type) -> Any:
        module = __import__(f"{__package__}.{self.module}", fromlist=[self.function])
        fn = getattr(module, self.function)
        member = self.kind(fn) if self.kind is not None else fn
        setattr(owner, self.name, member)
        return member

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        owner = owner if owner is not None else type(obj)
        if obj is None and self.kind is None:
            return self
        return self.load(owner).__get__(obj, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load(self.owner)(*args, **kwargs)


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
        #: the L2 tables and the lookup through them (cluster.py), made by the open
        self.clusters: ClusterMap | None = None
        #: where writes go: clusters, zeroes, discards (allocate.py), made by a read-write open
        self.allocator: ClusterAllocator | None = None
        #: the last compressed cluster read: (L2 entry, data)
        self.ccache: tuple[int, bytes] | None = None
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
        self.allow_corrupt = bool(options.get("check") or options.get("_check"))
        h, cluster0, ext_end = read_header(self.file, self.writable and not self.allow_corrupt)
        self.header = h
        cs = 1 << h.cluster_bits
        self._setup_geometry()
        # sizes and tables
        # QEMU's size_to_l1 in uint64: a size within an L2 table's reach of 2^64 wraps to a
        # small index, passes, and the open fails later on the size itself
        shift = self.cluster_bits + self.l2_bits
        l1_vm_state_index = ((h.size + (1 << shift) - 1) & ((1 << 64) - 1)) >> shift
        if l1_vm_state_index > 0x7FFFFFFF:
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
        if h.l1_size < l1_vm_state_index:
            raise QimgError("L1 table is too small")
        if h.l1_size and not self._valid_table(h.l1_table_offset, h.l1_size * 8):
            raise QimgError("Active L1 table offset invalid")
        check_runtime_options(options, cs, h.version)
        if self.writable:
            from .overlap import OverlapState, mask_from_options

            self.overlap = OverlapState(mask_from_options(options), h.cluster_bits)
        # QEMU's order from here: the tables, the header extensions (and the LUKS header they
        # name), the external data file, the legacy cipher, the backing file name, snapshots
        check_table_requests(h, cs)
        self.l1 = self.read_table(h.l1_table_offset, h.l1_size) if h.l1_size else array("Q")
        ncache = max(16, CACHE_BYTES // cs)
        self.refcounts = Refcounts(self, self.read_table(h.refcount_table_offset, h.refcount_table_clusters * cs // 8),
                                   max(8, ncache // 4))
        self.clusters = ClusterMap(self, ncache)
        if self.writable:
            from .allocate import ClusterAllocator

            self.allocator = ClusterAllocator(self)
        parse_extensions(h, cluster0, ext_end)
        if h.crypt_method == 2:
            self._open_crypto(options)
        if h.incompatible_features & S.INCOMPAT_DATA_FILE or any(k.startswith("data-file") for k in options):
            from .datafile import open_data_file  # (most images have none: not loaded for them)

            self.data_file = open_data_file(self, options)
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
        if h.size >= 1 << 63:  # the wrapped size of above: the block layer's sector count refuses it
            raise QimgError("Could not refresh total sector count: File too large")
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
            from .check import repair_dirty

            repair_dirty(self)
            h.incompatible_features &= ~S.INCOMPAT_DIRTY
            changed = True
        elif h.incompatible_features & S.INCOMPAT_DIRTY:
            # check -r: QEMU's close marks the image clean once its caches flush, even after
            # a check that failed (``-r leaks`` on refcounts that need a rebuild)
            self.dirty_set = True
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
        self.ccache = None

    def _check_alive(self) -> None:
        if self.stopped:
            raise QimgError("No medium found")

    def flush_caches(self) -> None:
        if self.stopped:
            return
        self.refcounts.cache.flush()
        self.clusters.cache.flush()
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

    # ------------------------------------------------------------------ block status
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
        kind, n, host = self.clusters.extent(offset, length)
        if kind == UNALLOC:
            # an unallocated subcluster of an allocated cluster keeps its host offset (see at_zero)
            if self.extended_l2 and (host > 0 or self.clusters.at_zero(offset, host)) and not self._encrypted():
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
            kind, n, host = self.clusters.extent(off, total - pos, merge_compressed=False)
            view = buf[pos : pos + n]
            if kind == NORMAL:
                self.file.debug_event("read_aio")  # (QEMU's blkdebug events: on the image file)
            if kind == NORMAL and self.crypt is not None:
                self.read_stored(dfile, host, off, view)
            elif kind == NORMAL:
                got = dfile.preadinto(host, view)
                if got < n:
                    zero_fill(view[got:])
            elif kind == COMPRESSED:
                s = off & (self._cs - 1)
                from .compress import read_compressed, read_compressed_run

                if s == 0 and total - pos >= 4 * self._cs:
                    n = read_compressed_run(self, off, buf[pos:])
                else:
                    view[:] = read_compressed(self, host)[s : s + n]
            elif kind == ZEROES:
                zero_fill(view)
            else:
                if self.backing is not None:
                    self.file.debug_event("read_backing_aio")
                self.read_backing(off, view)
            pos += n

    # ------------------------------------------------------------------ stored data I/O
    def read_stored(self, dfile, host: int, guest: int, view: memoryview) -> None:
        """Read data stored at ``host`` (guest offset ``guest``), decrypted when encrypted."""
        if self.crypt is not None:
            self.crypt.read_into(dfile, host, guest, view)
            return
        got = dfile.preadinto(host, view)
        if got < len(view):
            zero_fill(view[got:])

    def write_stored(self, dfile, host: int, guest: int, data) -> None:
        """Write guest data at ``host``, encrypted when the image is."""
        if self.crypt is not None:
            self.crypt.write(dfile, host, guest, data)
            return
        dfile.pwrite(host, data)

    def read_layer(self, offset: int, buf: memoryview) -> None:
        """Guest view of this layer including backing (for copy-on-write). As QEMU's COW reads,
        it is not bounded by the image's size: past it, what the backing file holds (up to its
        own end) goes into the new clusters."""
        pos, total = 0, len(buf)
        while pos < total:
            off = offset + pos
            kind, n, host = self.clusters.extent(off, total - pos, merge_compressed=False)
            if kind == UNALLOC:
                self.read_backing(off, buf[pos : pos + n])
            else:
                self.read(off, buf[pos : pos + n])
            pos += n

    # ------------------------------------------------------------------ write helpers
    def mark_dirty(self) -> None:
        if self.header.compatible_features & S.COMPAT_LAZY_REFCOUNTS and not self.dirty_set:
            self.header.incompatible_features |= S.INCOMPAT_DIRTY
            self.file.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
            self.file.flush()
            self.dirty_set = True

    # ------------------------------------------------------------------ write
    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self.bitmaps_dirty(offset, len(data))
        self.allocator.write(offset, data)

    def check_writable(self) -> None:
        if self.stopped:
            self._check_alive()
        if self._encrypted() and self.crypt is None:
            raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
        if self.header.incompatible_features & S.INCOMPAT_CORRUPT and not self.allow_corrupt:
            raise QimgError("Input/output error")

    # ------------------------------------------------------------------ zeroes / discard
    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self.check_writable()
        self.bitmaps_dirty(offset, length)
        self.allocator.write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        self.check_writable()
        self.bitmaps_dirty(offset, length)
        self.allocator.discard(offset, length)

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
        if self.writable and self.clusters is not None:
            err = self._inactivate()
        # a node whose inactivation failed stays active: its close tries again
        self.inactive = not err or self.stopped
        return err

    def close(self) -> None:
        try:
            if self.writable and self.clusters is not None and not self.stopped \
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
            from .bitmap import NODE_NUMBER
            from .bitmapops import bitmaps_store

            try:
                bitmaps_store(self)
            except (QimgError, OSError) as e:
                # reported, the close goes on (QEMU's qcow2_inactivate)
                reason = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
                api.warn(f"{program()}: Lost persistent bitmaps during inactivation of node '#block{NODE_NUMBER}': {reason}")
                failed = errno.EINVAL
        for cache, what in ((self.clusters.cache, "L2 table"), (self.refcounts.cache, "refcount block")):
            try:
                if cache is self.clusters.cache and cache.dirty:
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
        try:
            self.file.flush()
        except OSError:
            pass  # as the flush of QEMU's bdrv_close: a failure there is not the close's
        return 0

    # ------------------------------------------------------------------ metadata
    def allocated_file_size(self) -> int | None:
        # as qemu-img: the qcow2 file only, an external data file is not counted
        return self.file.allocated_size()

    # ------------------------------------------------------------------ operations of sibling modules
    # (as QEMU's BlockDriver table names functions of qcow2-snapshot.c, qcow2-bitmap.c, ...):
    # each is a function of its module whose first argument is the driver, loaded on first use
    snapshot_create = sibling("snapshot", "snapshot_create")
    snapshot_goto = sibling("snapshot", "snapshot_goto")
    snapshot_delete = sibling("snapshot", "snapshot_delete")
    snapshot_load_readonly = sibling("snapshot", "snapshot_load_readonly")
    truncate = sibling("resize", "truncate")
    make_empty = sibling("resize", "make_empty")
    create = sibling("create", "create_image", classmethod)
    measure = sibling("create", "measure", staticmethod)
    bitmap_add = sibling("bitmapops", "bitmap_add")
    bitmap_remove = sibling("bitmapops", "bitmap_remove")
    bitmap_clear = sibling("bitmapops", "bitmap_clear")
    bitmap_enable = sibling("bitmapops", "bitmap_enable")
    bitmap_disable = sibling("bitmapops", "bitmap_disable")
    bitmap_merge = sibling("bitmapops", "bitmap_merge_image")
    #: ``convert --bitmaps``: the source's bitmaps, for ``bitmap_import`` of a qcow2 target
    bitmap_export = sibling("bitmapops", "bitmap_export")
    bitmap_import = sibling("bitmapops", "bitmap_import")
    write_compressed = sibling("compress", "write_compressed")
    #: thread-safe: ``convert -c`` compresses clusters in pool threads
    compress_cluster = sibling("compress", "compress_cluster")
    write_compressed_cluster = sibling("compress", "write_compressed_cluster")
    format_specific_info = sibling("info", "format_specific_info")
    info_extra = sibling("info", "info_extra")

    def check(self, fix: set[str]) -> CheckResult:
        self._check_alive()
        from .check import check_image

        return check_image(self, fix)

    def snapshot_list(self) -> list[SnapshotInfo]:
        if not self.header.nb_snapshots:
            return []
        from .snapshot import snapshot_list

        return snapshot_list(self)

    # ------------------------------------------------------------------ whole-image operations
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

    def change_backing_file(self, filename: str | None, fmt: str | None) -> None:
        h = self.header
        if filename and (len(filename.encode()) > 1023 or self.data_raw) or fmt and not filename:
            raise QimgError("Invalid argument")
        h.backing_file = filename or None
        h.backing_format = fmt if filename else None
        self.update_header()

    # ------------------------------------------------------------------ persistent bitmaps (bitmap.py)
    def bitmaps_dirty(self, offset: int, length: int) -> None:
        """Record a guest write in enabled persistent bitmaps (False: nothing to track)."""
        if self.bitmap_tracker is False:
            return
        if self.header.bitmaps_ext is None:
            self.bitmap_tracker = False
            return
        from .bitmapops import bitmaps_mark_dirty

        bitmaps_mark_dirty(self, offset, length)

    def supports_persistent_bitmaps(self) -> bool:
        return self.header.version >= 3  # a v2 image (compat=0.10) cannot hold them

    def host_files(self) -> list[Protocol]:
        return [self.file] + ([self.data_file] if isinstance(self.data_file, Protocol) else [])
