"""``convert``: copy one or more images (concatenated) into a new or existing image.

The plan follows qemu-img: the sources' block status decides what is read. Without a target
backing file, runs unallocated through the whole chain or known zero are zero runs (free on a
fresh target); with ``-B`` only what the source's top layer allocates is copied, the rest is
left to the target's backing file. ``sparse`` (``-S``) is the granule of zero detection in data
that was read; 0 copies everything and allocates the whole target.
"""
from __future__ import annotations

import bisect
import itertools
from collections import deque

from ..blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, ZERO
from ..errors import QimgError
from ..image import zero_fill
from .copy import COPY, SKIP, Copier, Piece, parallel_safe, prepare_parallel_reads, qemu_run_length, run_length
from .copy import ZERO as ZERO_OP

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from ..blockstatus import Status
    from ..image import Image

DEFAULT_SPARSE = 4096
#: qemu's largest request (BDRV_REQUEST_MAX_BYTES): block status runs are cut there too
MAX_REQUEST = (2**31 - 1) & ~511
MAX_WORKERS = 16
#: first block-status window of the plan (see plan())
PLAN_WINDOW = 8 << 20
#: planned pieces kept between the progress walk and the copy (~100 bytes each)
PLAN_MEMO = 1 << 16


class ConvertOptions:
    """Everything ``qemu-img convert`` takes besides the images (CLI names in comments).

    A plain class (no dataclass: its import and generated code cost start-up time): the
    class attributes are the defaults, keyword arguments override them."""

    out_format: str | None = "raw"              # -O (None: probe an existing -n target)
    create_options: str | dict[str, Any] | None = None  # -o (merged)
    backing_file: str | None = None             # -B
    backing_format: str | None = None           # -F
    no_create: bool = False                     # -n
    target_is_zero: bool = False                # --target-is-zero
    compress: bool = False                      # -c
    sparse: int = DEFAULT_SPARSE                # -S
    workers: int = 8                            # -m
    ordered: bool = True                        # not -W
    copy_offload: bool = False                  # -C
    rate_limit: int = 0                         # -r
    salvage: bool = False                       # --salvage
    bitmaps: bool = False                       # --bitmaps
    skip_broken_bitmaps: bool = False           # --skip-broken-bitmaps
    target_open_options: dict[str, Any]         # --target-image-opts
    target_name: str | None = None              # the name errors give the target (its option string)
    qemu_runs: bool = False                     # -p: chunks (progress steps) where qemu-img's are
    cache: str = "unsafe"                       # -t (convert's default: no syncing)

    def __init__(self, **options: Any) -> None:
        self.target_open_options = {}
        for name, value in options.items():
            if name not in ConvertOptions.__annotations__:
                raise TypeError(f"ConvertOptions has no option {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"ConvertOptions({', '.join(f'{k}={getattr(self, k)!r}' for k in ConvertOptions.__annotations__)})"


def concat_reader(sources: list["Image"], salvage: bool = False,
                  warn: Callable[[str], None] | None = None) -> Callable[[int, memoryview], None]:
    """A reader over the sources laid end to end (what ``convert`` copies)."""
    bases = [0]
    for s in sources:
        bases.append(bases[-1] + s.size)

    def read(offset: int, view: memoryview) -> None:
        pos, n = 0, len(view)
        while pos < n:
            at = offset + pos
            i = bisect.bisect_right(bases, at) - 1
            if i >= len(sources):
                zero_fill(view[pos:])
                return
            src = sources[i]
            local = at - bases[i]
            k = min(n - pos, src.size - local)
            part = view[pos:pos + k]
            try:
                src.preadinto(local, part)
            except (OSError, QimgError) as e:
                if not salvage:
                    text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
                    raise QimgError(f"error while reading at byte {at}: {text}") from None
                _salvage(src, local, part, warn)
            pos += k

    return read


def _salvage(src: "Image", offset: int, view: memoryview, warn: Callable[[str], None] | None) -> None:
    """``--salvage``: read sector by sector, zeroes where a read fails."""
    for s in range(0, len(view), 512):
        part = view[s:s + 512]
        try:
            src.preadinto(offset + s, part)
        except (OSError, QimgError) as e:
            zero_fill(part)
            if warn is not None:
                text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
                warn(f"warning: error while reading offset {offset + s}: {text}")  # QEMU warn_report


def plan(sources: list["Image"], *, target_has_backing: bool, sparse: int,
         backing_end: int | None = None, qemu_runs: bool = False,
         compress_cluster: int = 0, salvage: bool = False,
         warn: Callable[[int, str], None] | None = None) -> Iterator[Piece]:
    """What to do with each run of the target, from the sources' block status.

    ``backing_end``: size of the target's backing file; zero runs past it are left alone
    (the target reads zeroes there anyway) and runs are cut at it, as qemu-img does.
    ``qemu_runs``: runs end where one QEMU block-status call ends (for a target whose layout
    follows the write requests, or progress in qemu-img's steps); compressing into clusters of
    ``compress_cluster`` bytes, a shorter run is then read as a whole cluster of data and a
    longer one rounded down to clusters, as qemu-img counts them.
    ``salvage`` (``--salvage``): a block-status error is asked again over a quarter of the range
    until one sector fails alone, which is then copied as data after a warning (``warn(position,
    message)``), as qemu-img does.
    """
    base = 0
    for src in sources:
        size = src.size
        # qemu-img cuts a run back to the source's cluster (or sector) boundary so the next
        # block-status query starts aligned: that decides where zero detection chunks begin
        align = max(SECTOR, src.driver.cluster_size or SECTOR)
        off = 0
        while off < size:
            want = min(size - off, MAX_REQUEST)
            pos = base + off
            if backing_end is not None and pos < backing_end:
                want = min(want, backing_end - pos)
            # ask about a short window first: drivers cost per cluster of the window (a qcow2
            # L2 scan), and most runs are short; a run filling the window is asked again in full
            short = min(want, PLAN_WINDOW)
            status = src.block_status if target_has_backing else src.chain_status
            try:
                st = status(off, short)
                if st.length >= short and short < want:
                    st = status(off, want)
            except (OSError, QimgError) as e:
                text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
                if not salvage:
                    raise QimgError(f"error while reading block status at offset {off}: {text}") from None
                st = _salvage_status(status, off, short, pos, warn)
                if st is None:  # one sector whose status cannot be read: copied as data
                    yield Piece(pos, min(SECTOR, size - off), COPY)
                    off += min(SECTOR, size - off)
                    continue
            if target_has_backing:
                if st.flags & ALLOCATED:
                    op = ZERO_OP if st.flags & ZERO else COPY
                elif src.backing is not None:
                    op = SKIP  # the target's backing file provides it
                else:
                    op = ZERO_OP
            elif st.flags & ZERO or not st.flags & (DATA | ALLOCATED):
                op = ZERO_OP
            else:
                op = COPY
            n = run_length(st, want, src)
            if qemu_runs:
                n = qemu_run_length(src, off, n, st.depth)
            tail = (off + n) % align
            if n > tail:
                n -= tail
            if qemu_runs and compress_cluster:
                if n < compress_cluster:
                    n, op = min(compress_cluster, size - off), COPY
                else:
                    n -= n % compress_cluster
            if op == ZERO_OP and backing_end is not None and pos >= backing_end:
                op = SKIP
            if sparse == 0 and op == ZERO_OP:
                op = COPY  # -S 0: no zero detection at all, zeroes are written as data
            yield Piece(pos, n, op)
            off += n
        base += size


def _salvage_status(status: Callable[[int, int], Status], off: int, length: int, pos: int,
                    warn: Callable[[int, str], None] | None) -> Status | None:
    """``--salvage``: the block status at ``off`` asked over a quarter of the range (in sectors,
    rounded up) after each error, or None (with qemu-img's warning) when one sector fails."""
    sectors = -(-length // SECTOR)
    while sectors > 1:
        sectors = -(-sectors // 4)
        try:
            return status(off, sectors * SECTOR)
        except (OSError, QimgError):
            continue
    try:
        return status(off, SECTOR)
    except (OSError, QimgError) as e:
        if warn is not None:
            text = e.message if isinstance(e, QimgError) else (e.strerror or str(e))
            warn(pos, f"warning: error while reading block status at offset {pos}: {text}")  # QEMU warn_report
        return None


def _copy_range_fn(sources: list["Image"], target: "Image") -> Callable[[int, int], bool] | None:
    """copy_file_range between host files when both ends store data plainly (``-C``)."""
    from ..protocol import FileProtocol

    plain = target.driver.plain_host_range()
    if len(sources) != 1 or plain is None or plain[1] != 0 or not isinstance(plain[0], FileProtocol):
        return None
    dst_file = plain[0]
    src = sources[0]
    chain = src.chain

    def copy_range(offset: int, length: int) -> bool:
        st = src.chain_status(offset, length)
        if st.length < length or st.flags & (OFFSET_VALID | DATA) != (OFFSET_VALID | DATA):
            return False
        if st.flags & ZERO or st.host_offset is None or st.depth >= len(chain):
            return False
        proto = chain[st.depth].driver.file
        if not isinstance(proto, FileProtocol) or proto.filename != st.file:
            return False
        return proto.copy_range_to(dst_file, st.host_offset, offset, length)

    return copy_range


def _never_sync(target: "Image") -> None:
    """cache=unsafe (convert's default): flushes, including the driver's own on close, do not
    reach the disk, as in qemu-img (an fdatasync of a fresh 1 GiB target costs ~0.5 s)."""
    for proto in target.driver.host_files():
        proto.unsafe_cache = True


def _create_target(filename: str, opts: ConvertOptions, size: int) -> None:
    from ..options import parse_options
    from .create import all_create_opts, create_node, format_class

    cls = format_class(opts.out_format)
    co = opts.create_options
    if isinstance(co, str) or co is None:
        # the file protocol's options (preallocation, nocow, ...) are accepted too
        # QEMU's second reading of the options, the size replaced by the source's
        copts = parse_options(_without_size(co or ""), all_create_opts(cls, filename),
                              quiet=not cls.create_reparses_options)
    else:
        copts = {k: v for k, v in co.items() if k != "size"}
    if opts.backing_file is not None:
        copts["backing_file"] = opts.backing_file
    if opts.backing_format is not None:
        copts["backing_fmt"] = opts.backing_format
    try:
        create_node(filename, opts.out_format, size, copts)
    except QimgError as e:
        # option syntax errors surfaced in check_options already; the driver's own checks
        # ("Parameter 'version' does not accept value", encrypt.*) are prefixed, as qemu-img
        if e.message.startswith("Invalid parameter"):
            raise
        raise QimgError(f"{filename}: error while converting {opts.out_format}: {e.message}",
                        e.exit_code) from None
    except OSError as e:
        raise QimgError(f"{filename}: error while converting {opts.out_format}: "
                        f"{e.strerror or e}") from None


def _open_target(filename: str, opts: ConvertOptions) -> "Image":
    """Open the target as qemu-img does (``--target-image-opts``: its option string)."""
    import qimg

    extra: dict[str, Any] = {}
    if not opts.no_create:
        # qemu-img opens an encrypted target with the secrets its -o named (every *key-secret)
        for k, v in _create_key_secrets(opts.create_options).items():
            if k not in opts.target_open_options:
                extra[k] = v
    if opts.target_name is not None:
        return qimg.open(opts.target_name, image_opts=True, writable=True, options=extra)
    return qimg.open(filename, opts.out_format, writable=True, options=extra)


def _option_backing(create_options: str | dict[str, Any] | None) -> bool:
    from ..options import split_options

    if isinstance(create_options, str):
        return bool(dict(split_options(create_options)).get("backing_file"))
    return bool((create_options or {}).get("backing_file"))


_CONCAT_BACKING = "Having a backing file for the target makes no sense when concatenating multiple input images"


def check_options(opts: ConvertOptions, sources: list["Image"], target_filename: str | None = None) -> None:
    """What qemu-img refuses before creating the target, in its order: the output format,
    the -o options, backing file support, compression. (--bitmaps and the cache mode are
    checked after the creation, as qemu-img does.)"""
    from ..options import parse_options, split_options
    from ..plugins import get_registry

    if opts.compress and opts.copy_offload:
        raise QimgError("Cannot enable copy offloading when -c is used")
    if opts.no_create:
        # (-n --target-is-zero -B reports its own error first, in convert())
        if opts.backing_file is not None and len(sources) > 1 and not opts.target_is_zero:
            raise QimgError(_CONCAT_BACKING)
        return
    from .create import all_create_opts, check_protocol_creates, format_class, supports_create

    cls = format_class(opts.out_format)
    if target_filename is not None:
        get_registry().find_protocol(target_filename)  # QEMU's "Unknown protocol 'x'", before the options
    if not supports_create(cls):  # dmg, bochs, cloop: read-only formats
        raise QimgError(f"Format driver '{opts.out_format}' does not support image creation")
    if target_filename is not None:
        check_protocol_creates(target_filename)
    co = opts.create_options
    if isinstance(co, str) and co:
        parse_options(co, all_create_opts(cls, target_filename))  # the size too (then ignored)
    if opts.backing_file is not None and not cls.supports_backing:
        raise QimgError(f"Backing file not supported for file format '{opts.out_format}'")
    if opts.backing_format is not None and not cls.supports_backing:
        raise QimgError(f"Backing file format not supported for file format '{opts.out_format}'")
    given = dict(split_options(co)) if isinstance(co, str) else dict(co or {})
    has_file = opts.backing_file is not None or bool(given.get("backing_file"))
    has_fmt = opts.backing_format is not None or bool(given.get("backing_fmt"))
    if has_file and len(sources) > 1:
        raise QimgError(_CONCAT_BACKING)
    if has_file and not has_fmt:
        raise QimgError("Use of backing file requires explicit backing format")
    if opts.compress and not cls.supports_compression:
        raise QimgError("Compression not supported for this file format")
    if opts.compress and (given.get("encrypt.format") is not None
                          or ("encryption" in given and given["encryption"] not in ("off", "false", "no"))):
        raise QimgError("Compression and encryption not supported at the same time")


def _create_key_secrets(create_options: str | dict[str, Any] | None) -> dict[str, Any]:
    """The create options qemu-img hands to its open of the new target: those whose name ends in
    ``key-secret`` (``key-secret`` of luks, ``encrypt.key-secret`` of qcow2)."""
    from ..options import split_options

    items = split_options(create_options) if isinstance(create_options, str) else (create_options or {}).items()
    return {k: v for k, v in items if k.endswith("key-secret") and v}


def _without_size(text: str) -> str:
    from ..options import split_options

    return ",".join(f"{k}={v.replace(',', ',,')}" if v is not None else k
                    for k, v in split_options(text) if k != "size")


def _check_cache(mode: str) -> None:
    if mode not in ("none", "off", "writeback", "writethrough", "directsync", "unsafe"):
        raise QimgError(f"Invalid cache option: {mode}")


def convert(sources: list["Image"], target_filename: str, opts: ConvertOptions,
            progress: Callable[[float, float], None] | None = None,
            warn: Callable[[str], None] | None = None) -> None:
    """Convert ``sources`` (open images, concatenated) into ``target_filename``."""

    if not 1 <= opts.workers <= MAX_WORKERS:
        raise QimgError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16")
    check_options(opts, sources, target_filename)
    if opts.bitmaps:
        _check_bitmaps(sources, opts.skip_broken_bitmaps)  # before the target is created
    if opts.no_create and opts.target_is_zero and opts.backing_file is not None:
        # qemu-img reports this one and gives up with exit status 0, before opening the target
        if warn is not None:
            warn("Cannot use --target-is-zero when the destination image has a backing file")
        return
    total = sum(s.size for s in sources)
    from ..protocol import creation_scope

    # the target is created, closed, and opened again: a protocol may keep what it created in
    # this process until the copy is over (s3 uploads the whole object once, at the end)
    with creation_scope():
        _convert(sources, target_filename, opts, total, progress, warn)


def _convert(sources: list["Image"], target_filename: str, opts: ConvertOptions, total: int,
             progress: Callable[[float, float], None] | None,
             warn: Callable[[str], None] | None) -> None:
    target: Image | None = None
    try:
        if not opts.no_create:
            _create_target(target_filename, opts, total)
        _check_cache(opts.cache)
        target = _open_target(target_filename, opts)
        if opts.cache == "unsafe":
            _never_sync(target)
        if opts.bitmaps and not target.driver.supports_persistent_bitmaps():
            raise QimgError(f"Format driver '{target.format}' does not support bitmaps")
        if opts.no_create and target.size < total:
            raise QimgError("output file is smaller than input file")
        if opts.compress and not target.driver.supports_compression:
            raise QimgError("Compression not supported for this file format")
        # a target that only takes compressed writes (vmdk streamOptimized) is copied as -c
        compress = opts.compress or target.driver.needs_compressed_writes
        # qemu-img decides from the command line (-B or -o backing_file), not from what an
        # existing -n target records
        has_backing = opts.backing_file is not None or _option_backing(opts.create_options)
        if opts.sparse == 0:
            zero_init = False  # -S 0: zero runs are written too (the target ends up allocated)
        elif opts.no_create:
            zero_init = opts.target_is_zero
        else:
            zero_init = (target.driver.zero_init and not has_backing
                         and not target.driver.file.is_block)
        total_done = [0]
        reader = concat_reader(sources, opts.salvage, warn)
        # --salvage: the copy's block-status warnings wait for the read of their sector (qemu-img
        # asks and reads in turn), and one thread reads, in order: the warnings come in order
        pending: deque[tuple[int, str]] = deque()
        if opts.salvage and warn is not None:
            read_sources = reader

            def reader(offset: int, view: memoryview) -> None:
                while pending and pending[0][0] < offset + len(view):
                    warn(pending.popleft()[1])
                read_sources(offset, view)
        copier = Copier(
            target, reader, zero_init=zero_init,
            granule=0 if opts.copy_offload else opts.sparse, workers=opts.workers, ordered=opts.ordered or compress,
            compress=compress, unmap=opts.sparse != 0,
            copy_range=_copy_range_fn(sources, target) if opts.copy_offload else None,
            progress=(lambda done: progress(done, total_done[0])) if progress else None,
            rate_limit=opts.rate_limit, serial_reads=not parallel_safe(*sources),
            readers=prepare_parallel_reads(*sources) if parallel_safe(*sources) and not opts.salvage else 1)
        backing_end = target.backing.size if has_backing and target.backing is not None else None

        def pieces(status_warn: Callable[[int, str], None] | None = None) -> Iterator[Piece]:
            return plan(sources, target_has_backing=has_backing, sparse=opts.sparse, backing_end=backing_end,
                        qemu_runs=opts.qemu_runs or type(target.driver).layout_follows_requests,
                        compress_cluster=(target.driver.cluster_size or 0) if compress else 0,
                        salvage=opts.salvage, warn=status_warn)

        todo: Iterable[Piece] = pieces()
        if opts.salvage:
            # qemu-img walks the block status once to count the sectors to copy, then again as
            # it copies: --salvage's warnings about block status come from both walks
            total_done[0] = copier.planned_total(pieces(None if warn is None else lambda pos, m: warn(m)))
            todo = pieces(lambda pos, m: pending.append((pos, m)))
        elif progress is not None:
            # qemu-img also walks the block status once for the progress total; keep that
            # walk's pieces for the copy unless there are very many (memory stays bounded)
            memo = list(itertools.islice(todo, PLAN_MEMO + 1))
            if len(memo) > PLAN_MEMO:
                total_done[0] = copier.planned_total(pieces())
                todo = pieces()
            else:
                total_done[0] = copier.planned_total(memo)
                todo = memo
        copier.run(todo)
        if compress:
            # qemu-img's end-of-stream signal: an empty compressed write (qcow2 and vmdk align
            # the file end; a driver that refuses it fails the command, the image stays)
            target.write_compressed(0, b"")
        if opts.bitmaps:
            _copy_bitmaps(sources[0], target, opts.skip_broken_bitmaps, warn)
        if opts.cache != "unsafe":
            target.flush()  # qemu-img convert's default cache mode (unsafe) never syncs
        target.close()
        target = None
    except BaseException:
        if target is not None:
            try:
                target.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        # qemu-img keeps a target it created, whatever fails later (cache mode, bitmaps, I/O)
        raise


# -- persistent bitmaps (through the driver's bitmap_* interface) ----------------------
def _check_bitmaps(sources: list["Image"], skip_broken: bool) -> None:
    if len(sources) != 1:
        raise QimgError("Copying bitmaps only possible with single source")
    if not sources[0].driver.supports_persistent_bitmaps():
        raise QimgError("Source lacks bitmap support")
    if not skip_broken:
        # QEMU walks its bitmap list, the directory's last bitmap first
        for bm in reversed(_list_bitmaps(sources[0])):
            if "in-use" in (bm.get("flags") or []):
                raise QimgError(f"Cannot copy inconsistent bitmap '{bm['name']}'\n"
                                "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it")


def _list_bitmaps(img: "Image") -> list[dict[str, Any]]:
    info = img.driver.format_specific_info() or {}
    data = info.get("data", info)
    return list(data.get("bitmaps") or [])


def _copy_bitmaps(src: "Image", dst: "Image", skip_broken: bool,
                  warn: Callable[[str], None] | None = None) -> None:
    """Copy every persistent bitmap: add with the same granularity, merge the bits, keep the
    disabled state (qemu-img's ``--bitmaps``)."""
    if not dst.driver.supports_persistent_bitmaps():
        raise QimgError(f"Format driver '{dst.format}' does not support bitmaps")
    bitmaps = _list_bitmaps(src)
    # skipped ones are reported as QEMU walks its bitmap list (the directory's last first)
    for bm in reversed(bitmaps):
        if "in-use" in (bm.get("flags") or []) and skip_broken and warn is not None:
            warn(f"warning: Skipping inconsistent bitmap '{bm['name']}'")
    for bm in bitmaps:
        name = bm["name"]
        flags = bm.get("flags") or []
        if "in-use" in flags:
            if skip_broken:
                continue
            raise QimgError(f"Cannot copy inconsistent bitmap '{name}'\n"
                            "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it")
        dst.driver.bitmap_add(name, bm.get("granularity"))
        dst.driver.bitmap_merge(name, src, name)
        if "auto" not in flags:
            dst.driver.bitmap_disable(name)
