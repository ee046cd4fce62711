"""The format driver interface: QEMU's BlockDriver, in Python, synchronous.

A driver subclasses :class:`Format`. The class carries the static facts (``format_name``,
``create_opts``, ...); an instance is one open image. The generic layer (:mod:`qimg.image`)
does bounds checks, reading past the end, falling through to the backing image and chain
walks once for every format, so a driver answers only for its own layer.

Every optional capability raises :class:`NotSupported` with qemu-img's message by default.
Drivers do all I/O through ``self.file`` (a :class:`qimg.protocol.Protocol`); reads of
unallocated ranges are never asked of them. Copy-on-write of partial clusters reads
``self.backing`` (an :class:`qimg.image.Image` or None) via :meth:`read_backing`.

Untrusted images (docs/security.md): when ``options.get("untrusted")`` is true the driver must
not open any file the image names (external data files, extents, ``json:``/protocol names):
keep the names for ``info`` (``format_specific_info``) and raise
``qimg.untrusted.refuse_named_file(filename, "data file", name)`` when data there is needed
(reads, block status). Every field read from the file is validated before use, and memory
never depends on sizes the file claims beyond fixed caps (:mod:`qimg.limits`). Locks are taken
by ``qimg.open`` on ``self.file`` (:mod:`qimg.locking`); a driver opening further files of its
own calls ``file.set_perms(*qimg.locking.wanted("raw", writable=...))`` on them. A driver
whose file is plain guest data like raw's may set ``lock_as_filter = True``.
"""
from __future__ import annotations

from .blockstatus import ALLOCATED, DATA, OFFSET_VALID, Status
from .errors import NotSupported
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up

#: the image's node in messages that name it: QEMU generates '#block<N><RR>' (a counter, 1 for
#: a qemu-img image's format node, and two random digits); qimg says '#block100'
NODE_NAME = "#block100"
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping  # noqa: F401 - Callable: the string type alias below
    from typing import Any, ClassVar

    from .image import Image
    from .options import Option
    from .protocol import Protocol

ProgressFn = "Callable[[float, float], None]"  # (done, total); a string: typing is not imported


class CheckResult(Value):
    """Result of ``check``; field names follow QEMU's ImageCheck and the JSON keys."""

    __slots__ = ("filename", "format", "check_errors", "corruptions", "leaks", "corruptions_fixed",
                 "leaks_fixed", "image_end_offset", "total_clusters", "allocated_clusters",
                 "fragmented_clusters", "compressed_clusters", "messages")
    _fields = __slots__

    def __init__(self, filename: str = "", format: str = "", check_errors: int = 0,  # noqa: A002
                 corruptions: int = 0, leaks: int = 0, corruptions_fixed: int = 0, leaks_fixed: int = 0,
                 image_end_offset: int | None = None, total_clusters: int | None = None,
                 allocated_clusters: int | None = None, fragmented_clusters: int | None = None,
                 compressed_clusters: int | None = None, messages: list[str] | None = None) -> None:
        self.filename = filename
        self.format = format
        self.check_errors = check_errors
        self.corruptions = corruptions
        self.leaks = leaks
        self.corruptions_fixed = corruptions_fixed
        self.leaks_fixed = leaks_fixed
        self.image_end_offset = image_end_offset
        self.total_clusters = total_clusters
        self.allocated_clusters = allocated_clusters
        self.fragmented_clusters = fragmented_clusters
        self.compressed_clusters = compressed_clusters
        # human-readable lines printed before the summary (``Leaked cluster 5 refcount=1 reference=0``)
        self.messages: list[str] = [] if messages is None else messages

    def copy(self, **changes: object) -> "CheckResult":
        """A copy with some fields replaced (what ``dataclasses.replace`` did)."""
        new = CheckResult(**{f: getattr(self, f) for f in self._fields})
        for name, value in changes.items():
            if name not in self._fields:
                raise TypeError(f"CheckResult has no field {name!r}")
            setattr(new, name, value)
        return new


class SnapshotInfo(Value):
    """One internal snapshot, as ``qemu-img snapshot -l`` and ``info`` show it."""

    __slots__ = ("id", "name", "vm_state_size", "date_sec", "date_nsec", "vm_clock_nsec", "icount")
    _fields = __slots__

    def __init__(self, id: str, name: str, vm_state_size: int = 0, date_sec: int = 0,  # noqa: A002
                 date_nsec: int = 0, vm_clock_nsec: int = 0, icount: int | None = None) -> None:
        self.id = id
        self.name = name
        self.vm_state_size = vm_state_size
        self.date_sec = date_sec
        self.date_nsec = date_nsec
        self.vm_clock_nsec = vm_clock_nsec
        self.icount = icount


class Format:
    """Base class of format drivers. Override what the format supports."""

    #: name given to ``-f``/``-O``
    format_name: ClassVar[str] = ""
    #: options accepted by ``create -o`` (also printed by ``-o help``)
    create_opts: ClassVar[list[Option]] = []
    #: options accepted by ``amend -o``; empty means amend is not supported
    amend_opts: ClassVar[list[Option]] = []
    #: the format can record a backing file
    supports_backing: ClassVar[bool] = False
    #: block status is the protocol's, passed on (QEMU's BDRV_BLOCK_RAW: raw, a protocol as the
    #: image): a run that is neither data nor zeroes (an NBD hole that need not read as zeroes,
    #: an ``x-dirty-bitmap``'s dirty run) is read as data, and ``map`` shows it as nothing at
    #: all (not present, no offset), where a format's unallocated run reads as zeroes
    raw_status: ClassVar[bool] = False
    #: the format stores compressed clusters (``convert -c``)
    supports_compression: ClassVar[bool] = False
    #: this image takes whole compressed clusters only (vmdk streamOptimized): convert then
    #: copies as with ``-c`` (a driver may make it a property of the open image)
    needs_compressed_writes: bool = False
    #: open options (``--image-opts``/``json:`` keys) the driver takes besides the block
    #: layer's common ones; a name ending in "." takes every key under it. A dict maps each
    #: name to its option type (``qimg.options.SIZE``/``BOOL``/``NUMBER``/``STRING``): the
    #: core converts string values and refuses bad ones with QEMU's messages before the
    #: driver opens (a set passes strings). None: not declared, every key is passed on
    #: (QEMU refuses undeclared ones: "does not support the option")
    runtime_options: ClassVar[Mapping[str, str] | frozenset[str] | None] = None
    #: the open options that change what the image is (QEMU's ``strong_runtime_opts``): an
    #: image opened with one of them is named ``json:{...}`` (its options) instead of its file
    strong_runtime_options: ClassVar[tuple[str, ...]] = ()
    #: the driver is a protocol used as the format (``-f file``): QEMU words refusals of its
    #: options "Block protocol 'x' doesn't support the option"
    is_protocol: ClassVar[bool] = False
    #: with ``is_protocol``: the protocol class this format node stands for (:mod:`qimg.protofmt`)
    protocol_class: ClassVar[type[Protocol] | None] = None
    #: where the image puts its clusters depends on how writes are split (qed allocates a
    #: table after the data of the first write into it): ``convert`` then splits its writes
    #: where QEMU's would be (each source driver's ``qemu_status_end``), costlier but the same layout
    layout_follows_requests: ClassVar[bool] = False
    #: a new image reads as zeroes without writing them (``convert`` may skip zero runs); a
    #: driver whose answer depends on the image makes it a property (qcow2: preallocated and
    #: encrypted is not), so it is read from the driver, not its class
    zero_init: ClassVar[bool] = True
    #: ``truncate`` zeroes a grown area that the backing file would otherwise show (it is
    #: longer than the old size; QEMU's BDRV_REQ_ZERO_WRITE). A driver without it is refused
    #: such a resize by the block layer, as QEMU refuses it ("does not support requested flags")
    truncate_zeroes_backing_area: ClassVar[bool] = False
    #: ``create`` takes the protocol's ``preallocation`` option itself (off, metadata, falloc,
    #: full) though its option list does not show it (QEMU's luks): the core then refuses only
    #: names QEMU does not know and leaves ``metadata`` to the driver
    takes_preallocation: ClassVar[bool] = False
    #: optional: the option order of create's ``Formatting 'f', fmt=x ...`` line, as QEMU's
    #: option list declares it (qemu-img prints every option that is set or has a printed
    #: default, in this order). None: size, backing_file, backing_fmt, then ``create_opts`` order.
    create_print_order: ClassVar[tuple[str, ...] | list[str] | None] = None
    #: optional: defaults that line shows for options not given (``{"cluster_size": "65536"}``).
    #: None: each ``Option.default`` that is not None (booleans as on/off).
    create_print_defaults: ClassVar[dict[str, str] | None] = None
    #: what a refused ``create`` leaves, as QEMU's driver leaves it: "empty" (QEMU created the
    #: file empty before checking the options: the core creates it first), "delete" (QEMU
    #: removes what it made), None (the file is left as it was; the driver made nothing)
    create_failure: ClassVar[str | None] = None
    #: QEMU reads the ``-o`` option strings a second time when this format creates its image
    #: (its create goes through the option strings again: qemu-img 7.2 then repeats the
    #: warning for a hex size with a suffix). False: only once (QEMU's vmdk and luks)
    create_reparses_options: ClassVar[bool] = True
    #: one open image may serve reads from several threads at once (``convert``'s and
    #: ``compare``'s reader pool): its caches are safe for concurrent use. Default False: the
    #: core then reads it from one thread (raw is always read in parallel: plain ``preadv``)
    thread_safe_reads: ClassVar[bool] = False
    #: the image's file is plain guest data, as raw's: other users may share it as QEMU lets
    #: them share a raw node's child (:mod:`qimg.locking`). None: only the ``raw`` format is
    lock_as_filter: ClassVar[bool | None] = None
    #: ``create`` needs a passphrase (``key-secret``) for every image (luks): the conformance
    #: suite (:mod:`qimg.testing`) leaves such formats out of its keyless cases
    needs_secret: ClassVar[bool] = False
    #: compressed writes can be prepared in worker threads (:meth:`compress_cluster`) and
    #: placed in order (:meth:`write_compressed_cluster`): ``convert -c`` then compresses in
    #: parallel. Default False: ``convert -c`` calls :meth:`write_compressed` cluster by cluster
    parallel_compression: ClassVar[bool] = False

    # -- set by open --------------------------------------------------------
    #: the protocol node all I/O goes through
    file: "Protocol"
    #: the image's name as given
    filename: str
    #: opened for writing
    writable: bool
    #: the open options given (``--image-opts``/``json:`` keys, ``locking``, ``untrusted``...)
    options: dict[str, Any]
    #: the opened backing image (set by the core after open), or None
    backing: "Image | None" = None
    #: backing file name as recorded in the image (not resolved), or None
    backing_filename: str | None = None
    #: backing format as recorded, or None
    backing_format: str | None = None
    #: the unit a partial write allocates when smaller than the cluster (qcow2's extended L2
    #: subcluster): qemu-img 10.0's ``rebase`` aligns its copies to it. None: the cluster
    subcluster_size: int | None = None
    #: set by :meth:`inactivate`: nothing more is written back at close
    inactive: bool = False
    #: set by the core when the format was probed, not named (QEMU's ``bs->probed``): raw then
    #: refuses a write that would make its first sector probe as another format (EPERM)
    probed: bool = False
    #: QEMU's driver can reopen a node read-write (bdrv_reopen_prepare): commit into it needs that
    reopenable: ClassVar[bool] = True

    # -- static -------------------------------------------------------------
    @classmethod
    def probe(cls, head: bytes, filename: str) -> int:
        """Score 0..100 that ``head`` (first 512 bytes) is this format."""
        return 0

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        """Create a new image at ``filename`` of ``size`` bytes.

        ``opts`` holds validated create options by name (``backing_file``, ``backing_fmt``,
        ``preallocation``, ...). Use :meth:`qimg.protocol.FileProtocol.create` (or the
        registry's protocol for prefixed names) to make the file.
        """
        raise NotSupported(f"Format driver '{cls.format_name}' does not support image creation")

    @classmethod
    def create_check(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        """Refuse create options before anything is made (QEMU's driver checks that come before
        its file is created: the file is then left as it was, whatever ``create_failure``
        says). Default: nothing to check."""

    @classmethod
    def measure(cls, size: int | None, opts: dict[str, Any], source: "Image | None") -> dict[str, int]:
        """Return ``{"required": n, "fully-allocated": m}`` (and ``"bitmaps"`` if any)."""
        raise NotSupported(f"Block driver '{cls.format_name}' does not support size measurement")

    # -- open ---------------------------------------------------------------
    def __init__(self, file: "Protocol", *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        """Parse and validate the header; raise QimgError/CorruptImage on bad input."""
        self.file = file
        self.filename = filename
        self.writable = writable
        self.options = options

    @property
    def size(self) -> int:
        """Virtual (guest) size in bytes."""
        raise NotImplementedError

    def qemu_status_end(self, offset: int) -> int | None:
        """Where one QEMU block-status call starting at ``offset`` ends at the latest (one
        cluster, block, grain or L2 table's range, as the QEMU driver answers): ``compare -s``
        and ``convert`` of layouts that follow requests split their runs there. None (the
        default): the driver's own runs are QEMU's."""
        return None

    def host_files(self) -> list[Protocol]:
        """Every protocol node this open image writes through: its file, and a data file the
        image names (qcow2 ``data_file``). ``convert``'s cache=unsafe applies to each. Default:
        the image's file."""
        return [self.file]

    def plain_host_range(self) -> tuple[Protocol, int] | None:
        """``(file, offset)`` when the whole image is stored plainly in ``file`` from
        ``offset`` on (raw): ``convert -C`` may then copy host ranges into it. Default None."""
        return None

    def supports_persistent_bitmaps(self) -> bool:
        """This open image can hold persistent dirty bitmaps (``convert --bitmaps``, ``bitmap``):
        by default whether the driver implements :meth:`bitmap_add`. A driver whose images
        differ by version says so here (a qcow2 v2 image cannot hold bitmaps)."""
        return type(self).bitmap_add is not Format.bitmap_add

    # -- I/O of this layer ----------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        """Status of the run starting at ``offset`` (``0 < result.length <= length``).

        ``ALLOCATED`` means this layer answers; ``ZERO`` means it reads as zeroes;
        ``DATA|OFFSET_VALID`` with ``host_offset``/``file`` for data stored plainly.
        Compressed or encrypted data is ``DATA|ALLOCATED`` without OFFSET_VALID.
        """
        return Status(DATA | ALLOCATED | OFFSET_VALID, length, offset, self.file.filename)

    def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with guest data at ``offset``; only called on allocated data runs."""
        raise NotImplementedError

    def write(self, offset: int, data: memoryview) -> None:
        """Write guest data (within ``size``); do copy-on-write from the backing image."""
        raise NotSupported("Operation not supported")

    def write_compressed(self, offset: int, data: memoryview) -> None:
        """Write one whole cluster compressed (``convert -c``)."""
        raise NotSupported("Compression is not supported for this image format")

    def compress_cluster(self, data: memoryview) -> object:
        """With ``parallel_compression``: compress one whole cluster of guest data, in any
        thread (no state is touched). The result goes to :meth:`write_compressed_cluster`."""
        raise NotSupported(f"Format driver '{self.format_name}' does not support compressed writes")

    def write_compressed_cluster(self, offset: int, prepared: object) -> None:
        """With ``parallel_compression``: store what :meth:`compress_cluster` made for the cluster
        at guest ``offset`` (called in cluster order, from one thread)."""
        raise NotSupported(f"Format driver '{self.format_name}' does not support compressed writes")

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Make a range read as zeroes (in this layer, hiding the backing image)."""
        from .protocol import ZERO_CHUNK

        end = offset + length
        while offset < end:
            n = min(len(ZERO_CHUNK), end - offset)
            self.write(offset, memoryview(ZERO_CHUNK)[:n])
            offset += n

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range if the format can; reads may then fall through to backing."""

    def flush(self) -> None:
        """Make written data and metadata stable (the file's flush by default)."""
        self.file.flush()

    def inactivate(self) -> int:
        """QEMU's bdrv_inactivate (qemu-img 10.0's ``bitmap`` and ``commit`` call it on every
        node before closing, to learn of errors): write back what :meth:`close` would, return 0
        or the errno of the failure (the caller words it). Afterwards :meth:`close` only releases
        the file; a driver whose QEMU counterpart writes at close only when the node is active
        (parallels' ``inuse``) checks :attr:`inactive` there. By default: a flush."""
        self.inactive = True
        if self.writable:
            self.flush()
        return 0

    def close(self) -> None:
        """Write back metadata and release the file."""
        self.file.close()

    def read_backing(self, offset: int, buf: memoryview) -> None:
        """Helper for copy-on-write: backing image data, zeroes where there is none."""
        if self.backing is None:
            buf[:] = bytes(len(buf))
        else:
            self.backing.preadinto(offset, buf)

    # -- metadata -----------------------------------------------------------
    def allocated_file_size(self) -> int | None:
        """``disk size``: host bytes used by this image's files."""
        return self.file.allocated_size()

    def format_specific_info(self) -> dict[str, Any] | None:
        """``format-specific`` data of ``info`` (JSON keys; the human form is derived)."""
        return None

    def child_nodes(self) -> list[tuple[str, "Protocol"]]:
        """This image's children in QEMU's block graph, as ``info`` lists them (qemu-img 10.0):
        ``(child name, protocol)`` in QEMU's order. Default: the image's file, ``file``. A
        driver with more files lists them (vmdk: its extents, newest child first, then
        ``file``). A qcow2 data file is not listed: qemu-img info does not open it. A protocol
        named as the format (``-f file``, ``-f nbd``) is the node itself: its own children."""
        return self.file.child_nodes() if self.is_protocol else [("file", self.file)]

    def info_extra(self) -> dict[str, Any]:
        """Extra top-level ``info`` keys (``cluster-size``, ``encrypted``, ``dirty-flag``...).

        ``"dirty-flag": None`` leaves the key out, as QEMU does for formats whose driver has
        no ``bdrv_get_info`` (dmg, bochs, cloop)."""
        return {}

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        """Change the virtual size (``resize``); ``shrink`` allows a smaller one, ``preallocation``
        applies to the grown area. Default: qemu-img's refusal."""
        raise NotSupported("Image format driver does not support resize")

    def check(self, fix: set[str]) -> CheckResult:
        """Check (``fix`` is a subset of ``{"leaks", "errors"}``)."""
        raise NotSupported("This image format does not support checks", exit_code=63)

    def amend(self, opts: dict[str, Any], progress: ProgressFn | None = None, force: bool = False) -> None:
        """Change create options of this image in place (``amend -o``; only ``amend_opts``)."""
        raise NotSupported(f"Format driver '{self.format_name}' does not support option amendment")

    def make_empty(self) -> None:
        """Drop all data of this layer (``commit`` without ``-d``)."""
        raise NotSupported("Operation not supported")

    def change_backing_file(self, filename: str | None, fmt: str | None) -> None:
        """Rewrite the recorded backing name/format (rebase)."""
        raise NotSupported("Operation not supported")

    # -- snapshots ----------------------------------------------------------
    # A format without internal snapshots of its own (raw) passes these to its file's
    # protocol, as QEMU falls back to the primary child: an rbd image's snapshots show through
    # a raw image over it. Protocols without snapshots (a host file) answer as such a format.
    def snapshot_list(self) -> list[SnapshotInfo]:
        """The internal snapshots, in the image's order (``snapshot -l``, ``info``). Default: the
        file protocol's (none for a host file)."""
        file = getattr(self, "file", None)
        return file.snapshot_list() if hasattr(file, "snapshot_list") else []

    def snapshot_create(self, name: str) -> None:
        """Take an internal snapshot of the current state named ``name`` (``snapshot -c``)."""
        self._snapshot_file().snapshot_create(name)

    def snapshot_goto(self, id_or_name: str) -> None:
        """Make a snapshot's state the current one (``snapshot -a``)."""
        self._snapshot_file().snapshot_goto(id_or_name)

    def snapshot_delete(self, id_or_name: str | None, name: str | None = None) -> None:
        """Delete a snapshot by id or name (``snapshot -d``)."""
        self._snapshot_file().snapshot_delete(id_or_name, name)

    def _snapshot_file(self) -> Protocol:
        file = getattr(self, "file", None)
        if not hasattr(file, "snapshot_create"):
            raise NotSupported("Operation not supported")
        return file

    def snapshots_fall_back(self, op: str) -> bool:
        """Whether snapshot operation ``op`` (``snapshot_create``...) is one this driver does:
        its own, or its file protocol's (the fallback above)."""
        from .protocol import Protocol

        if getattr(type(self), op) is not getattr(Format, op):
            return True
        file = getattr(self, "file", None)
        return isinstance(file, Protocol) and getattr(type(file), op) is not getattr(Protocol, op)

    def snapshot_load_readonly(self, snapshot_id: str | None, name: str | None) -> None:
        """Switch this (read-only) instance to show a snapshot's data (``convert -l``)."""
        raise NotSupported("Operation not supported")

    # -- persistent dirty bitmaps (``qemu-img bitmap``; optional) ---------------------------
    # Each raises NotSupported by default with qemu-img's message for a format without
    # persistent bitmaps. ``granularity`` None means the driver's default.
    def bitmap_add(self, name: str, granularity: int | None = None) -> None:
        """Add an empty persistent dirty bitmap (``bitmap --add``). Implementing it makes
        :meth:`supports_persistent_bitmaps` true by default."""
        raise NotSupported(f"Can't store persistent bitmaps to {NODE_NAME}: Operation not supported")

    def bitmap_remove(self, name: str) -> None:
        """Remove a persistent bitmap (``bitmap --remove``)."""
        raise NotSupported(f"Dirty bitmap '{name}' not found")

    def bitmap_clear(self, name: str) -> None:
        """Clear every bit of a persistent bitmap (``bitmap --clear``)."""
        raise NotSupported(f"Dirty bitmap '{name}' not found")

    def bitmap_enable(self, name: str) -> None:
        """Mark a bitmap as recording writes (``bitmap --enable``)."""
        raise NotSupported(f"Dirty bitmap '{name}' not found")

    def bitmap_disable(self, name: str) -> None:
        """Mark a bitmap as not recording writes (``bitmap --disable``)."""
        raise NotSupported(f"Dirty bitmap '{name}' not found")

    def bitmap_merge(self, name: str, source_image: "Image", source_name: str) -> None:
        """Merge bitmap ``source_name`` of ``source_image`` (maybe this image) into ``name``."""
        raise NotSupported(f"Dirty bitmap '{name}' not found")

    # -- cluster geometry (convert, measure, map use it for alignment) --------
    @property
    def cluster_size(self) -> int | None:
        """The allocation unit (``info``'s cluster_size, ``convert -c``'s unit), or None."""
        return None


def plain_data_status(length: int, offset: int, filename: str) -> Status:
    """Convenience for formats whose data is stored as-is at a known offset."""
    return Status(DATA | ALLOCATED | OFFSET_VALID, length, offset, filename)


class ReadOnlyFormat(Format):
    """Base of the formats QEMU only reads (dmg, bochs, cloop).

    Opening for writing fails with QEMU's ``Image is read-only`` before the file is read (as
    ``bdrv_apply_auto_read_only``); block status is QEMU's default for a format driver without
    one: everything is allocated data at no host offset (``map`` prints one data run, ``convert``
    reads it all). :meth:`read_file` reads the image file as QEMU's block layer does: zeroes past
    its end, ``Input/output error`` for a request beyond the largest offset QEMU addresses.
    """

    def __init__(self, file: "Protocol", *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        if writable:
            from .errors import QimgError

            raise QimgError("Image is read-only")
        super().__init__(file, filename=filename, writable=writable, options=options)

    def block_status(self, offset: int, length: int) -> Status:
        return Status(DATA | ALLOCATED, length)

    def info_extra(self) -> dict[str, Any]:
        return {"dirty-flag": None}  # these QEMU drivers have no bdrv_get_info

    def read_file(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from the image file at ``offset`` (zeroes past the end of the file)."""
        from .limits import MAX_IMAGE_SIZE

        if offset < 0 or offset > MAX_IMAGE_SIZE or len(view) > MAX_IMAGE_SIZE - offset:
            from .errors import QimgError

            raise QimgError("Input/output error")
        got = self.file.preadinto(offset, view) if len(view) else 0
        if got < len(view):
            from .image import zero_fill

            zero_fill(view[got:])
