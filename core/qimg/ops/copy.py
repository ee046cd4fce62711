"""Bulk copy machinery shared by convert, commit, rebase and dd.

A copy is planned as a sequence of :class:`Piece` (target offset, length, what to do) that
covers the target range in order. The :class:`Copier` reads COPY pieces in chunks of at most
:data:`CHUNK` bytes with a small thread pool (reads and compression release the GIL), detects
zero granules in what it read, and writes from the calling thread in order (or as completed
with ``ordered=False``, qemu-img's ``-W``). Memory is a fixed pool of chunk buffers.
"""
from __future__ import annotations

# the C halves of queue, collections and threading: their Python modules (with functools,
# enum...) cost every copy command a few milliseconds of start-up for nothing used here
from _collections import deque
from _queue import Empty, SimpleQueue
from _thread import allocate_lock, start_new_thread

from ..blockstatus import SECTOR
from ..errors import QimgError
from ..protocol import ZERO_CHUNK
from ..values import Value

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from _thread import LockType
    from collections.abc import Callable, Iterable, Iterator

    from ..blockstatus import Status
    from ..image import Image

#: largest single read/write of a bulk copy (qemu-img convert uses 2 MiB buffers too)
CHUNK = 2 << 20
ZERO_VIEW = memoryview(ZERO_CHUNK)
#: bytes of whole clusters one compression task reads (then compressed cluster by cluster)
COMPRESS_BATCH = 1 << 20

COPY, ZERO, SKIP = "copy", "zero", "skip"
#: reader threads of a plain (uncompressed) copy, beside the writing thread
PLAIN_READERS = 1

Reader = "Callable[[int, memoryview], None]"


class Piece(Value):
    """One planned run of the target: COPY (read then write), ZERO (must read as zeroes) or
    SKIP (leave the target as it is, e.g. backing data shows through)."""

    __slots__ = ("offset", "length", "op")
    _fields = __slots__

    def __init__(self, offset: int, length: int, op: str) -> None:
        self.offset, self.length, self.op = offset, length, op

    def __hash__(self) -> int:  # pieces are never changed (the frozen dataclass they were)
        return hash(self._values())


def run_length(st: "Status", limit: int, img: "Image") -> int:
    """A status run's usable length; an empty run (a broken driver or image) is an error
    rather than an endless loop."""
    n = min(st.length, limit)
    if n <= 0:
        raise QimgError(f"'{img.filename}': driver returned an empty block status run")
    return n


def qemu_run_length(img: "Image", offset: int, n: int, depth: int) -> int:
    """Clip a chain-status run to what one QEMU block-status call reports: QEMU's drivers
    answer at most one block/cluster/L2 table per call (a driver's ``qemu_status_end``), for
    each of the ``depth + 1`` layers the query went through."""
    layer: Image | None = img
    for _ in range(depth + 1):
        if layer is None:
            break
        if offset < layer.size:
            end = layer.driver.qemu_status_end(offset)
            if end is not None:
                n = max(1, min(n, end - offset))
        layer = layer.backing
    return n


def parallel_safe(*images: "Image") -> bool:
    """Whether pool threads may read these images (and their chains) at the same time.

    Drivers keep caches that are not made for concurrent use; a driver class that is safe
    says so with ``thread_safe_reads = True``. Raw is: it only calls ``os.preadv``.
    """
    for img in images:
        for layer in img.chain:
            if layer.format != "raw" and not type(layer.driver).thread_safe_reads:
                return False
    return True


def prepare_parallel_reads(*images: "Image") -> int:
    """Reader threads a plain bulk copy of these images should use: one beside the writer for
    host files (page-cache copies); the ``parallel_reads`` of a latency-bound protocol under
    them (nbd), which is told (``start_parallel``) so that it can open more connections."""
    n = PLAIN_READERS
    protos = []
    for img in images:
        for layer in img.chain:
            proto = layer.driver.file
            want = proto.parallel_reads
            if want > 1:
                protos.append(proto)
                n = max(n, want)
    for proto in protos:
        proto.start_parallel(n)
    return n


def region_is_zero(buf: bytearray, start: int, end: int) -> bool:
    """``buf[start:end]`` holds only zeroes (memcmp against the zero page, no copies)."""
    pos = start
    while pos < end:
        n = min(len(ZERO_CHUNK), end - pos)
        if not buf.startswith(ZERO_VIEW[:n], pos):
            return False
        pos += n
    return True


def zero_runs(buf: bytearray, n: int, base: int, granule: int) -> list[tuple[int, int, bool]]:
    """Split ``buf[:n]`` (target offset ``base``) into coalesced ``(start, length, is_zero)``.

    Zero runs are made of whole granules aligned to target offsets (qemu-img's ``-S``), and,
    as qemu-img treats the edges of what it read: a buffer entirely of zeroes is one zero run,
    so are leading zeroes that reach the first aligned offset and the zeroes after the last
    data (that ends at the next aligned offset). ``granule`` 0 disables detection.
    """
    if n <= 0:
        return []
    if granule <= 0:
        return [(0, n, False)]
    if region_is_zero(buf, 0, n):
        return [(0, n, True)]
    runs = _granule_runs(buf, n, base, granule)
    first = (-base) % granule
    if 0 < first < n and region_is_zero(buf, 0, first):
        start, length, _ = runs[0]  # a data run from 0 (the granules start at ``first``)
        runs[0:1] = [(0, first, True)] + ([(first, length - first, False)] if length > first else [])
    start, length, is_zero = runs[-1]
    if not is_zero and not buf[n - 1]:
        data_end = _data_end(buf, start, n)
        cut = min(n, data_end + (-(base + data_end)) % granule)
        if cut < n:
            runs[-1:] = ([(start, cut - start, False)] if cut > start else []) + [(cut, n - cut, True)]
    merged: list[tuple[int, int, bool]] = []
    for run in runs:
        if merged and merged[-1][2] == run[2]:
            merged[-1] = (merged[-1][0], merged[-1][1] + run[1], run[2])
        else:
            merged.append(run)
    return merged


def _data_end(buf: bytearray, start: int, n: int) -> int:
    """The end of the last 512-byte sector (counted from ``start``) of ``buf[start:n]`` that
    holds data: zeroes are searched backwards in doubling steps, then by halves."""
    sector = SECTOR
    hi = n - (n - start) % sector if (n - start) % sector else n - sector  # last sector start
    hi = max(start, hi)
    if not region_is_zero(buf, hi, n):
        return n
    lo_ok = hi  # buf[lo_ok:n] is zero
    step = sector
    while lo_ok - step >= start and region_is_zero(buf, lo_ok - step, lo_ok):
        lo_ok -= step
        step *= 2
    step //= 2
    while step >= sector:
        if lo_ok - step >= start and region_is_zero(buf, lo_ok - step, lo_ok):
            lo_ok -= step
        step //= 2
    return lo_ok


def _granule_runs(buf: bytearray, n: int, base: int, granule: int) -> list[tuple[int, int, bool]]:
    """Whole zero granules aligned to target offsets, the rest data (coalesced)."""
    first = (-base) % granule
    whole = (n - first) // granule
    if whole > 0 and not granule % 8 and not first % 8:
        # a zero granule starts with a zero word: when no granule does (data, the common case),
        # there is none, and the search below (a scan of the whole buffer) is spared
        heads = memoryview(buf)[first:first + whole * granule].cast("Q")[::granule // 8].tolist()
        if 0 not in heads:
            return [(0, n, False)]
    zg = ZERO_VIEW[:granule] if granule <= len(ZERO_CHUNK) else bytes(granule)
    out: list[tuple[int, int, bool]] = []
    pos = 0
    search = first
    while search < n:
        p = buf.find(zg, search, n)
        if p < 0:
            break
        a = first + -(-(p - first) // granule) * granule
        if a + granule > n:
            break
        if not buf.startswith(zg, a):
            search = a + granule
            continue
        e = a + granule
        step = granule
        while e + granule <= n:
            k = min(step, (n - e) // granule * granule)
            if region_is_zero(buf, e, e + k):
                e += k
                step = min(step * 2, len(ZERO_CHUNK))
            elif step > granule:
                step = granule
            else:
                break
        if a > pos:
            out.append((pos, a - pos, False))
        out.append((a, e - a, True))
        pos = search = e
    if pos < n:
        out.append((pos, n - pos, False))
    return out


def copy_total(pieces: Iterable[Piece], count_zero: bool = False) -> int:
    """Bytes the COPY (and with ``count_zero`` ZERO) pieces cover: a progress display's 100%."""
    return sum(p.length for p in pieces if p.op == COPY or (count_zero and p.op == ZERO))


def _merge_non_copy(pieces: Iterable[Piece]) -> Iterator[Piece]:
    """Merge adjacent ZERO (or SKIP) pieces; COPY pieces keep their run boundaries, which
    decide the chunking (and so qemu-img's progress steps)."""
    cur: Piece | None = None
    for p in pieces:
        if p.length <= 0:
            continue
        if (cur is not None and cur.op == p.op and p.op != COPY
                and cur.offset + cur.length == p.offset):
            cur = Piece(cur.offset, cur.length + p.length, cur.op)
            continue
        if cur is not None:
            yield cur
        cur = p
    if cur is not None:
        yield cur


class WriteError(QimgError):
    """A write to the target failed: ``error while writing at byte N: <reason>`` as convert
    says it; ``reason`` alone for commands that word it their own way (commit)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"error while writing at byte {offset}: {reason}")
        self.reason = reason


class _Result:
    """A task's outcome: ``runs`` are (start in buf, length, "data"|"zero"|"comp"), and
    ``compressed`` the prepared payloads of the "comp" runs, in order."""

    __slots__ = ("offset", "length", "buf", "runs", "compressed")

    def __init__(self, offset: int, length: int, buf: bytearray | None, runs: list[tuple[int, int, str]],
                 compressed: list[object] | None = None) -> None:
        self.offset, self.length, self.buf, self.runs, self.compressed = offset, length, buf, runs, compressed


class Copier:
    """Writes planned pieces to ``target`` reading COPY data with ``reader(offset, view)``.

    ``zero_init``: the target already reads as zeroes where nothing is written (fresh image
    without backing, or ``--target-is-zero``); zero runs then cost nothing. ``granule`` is the
    ``-S`` sparse size (0: write everything read). ``compress`` writes whole clusters through
    ``Image.write_compressed``. ``copy_range(offset, length) -> bool`` may copy a COPY chunk
    without reading it (copy offloading); False falls back to reading. ``chunk`` sets the
    request size (default :data:`CHUNK`); a format's allocation order follows its requests.
    """

    def __init__(self, target: "Image", reader: Reader, *, zero_init: bool, granule: int = 4096,
                 workers: int = 8, ordered: bool = True, compress: bool = False,
                 unmap: bool = True, copy_range: Callable[[int, int], bool] | None = None,
                 progress: Callable[[int], None] | None = None,
                 rate_limit: int = 0, serial_reads: bool = False, progress_all: bool = False,
                 count_zero: bool = False, chunk: int | None = None, readers: int = PLAIN_READERS) -> None:
        self.target = target
        self.progress_all = progress_all
        self.count_zero = count_zero
        if serial_reads:
            lock = allocate_lock()

            def locked(offset: int, view: memoryview, _read: Reader = reader) -> None:
                with lock:
                    _read(offset, view)

            reader = locked
        self.reader = reader
        self.zero_init = zero_init
        self.granule = granule
        self.workers = max(1, workers)
        #: reader threads of a plain copy (more for a latency-bound source: prepare_parallel_reads)
        self.readers = max(1, readers)
        self.ordered = ordered
        self.compress = compress
        self.unmap = unmap
        self.copy_range = copy_range
        self.progress = progress
        self.rate_limit = rate_limit
        self.cluster = target.driver.cluster_size or 65536 if compress else 0
        # qemu-img convert compresses one cluster per request; a task here reads a batch of
        # whole clusters (fewer thread hand-offs) and still compresses and counts progress
        # cluster by cluster, so the output and the progress steps are the same
        self.chunk = max(self.cluster, COMPRESS_BATCH // self.cluster * self.cluster) if compress else CHUNK
        if chunk is not None and not compress:
            self.chunk = max(1, chunk)  # the caller's request size (dd's bs)
        self._bufs: SimpleQueue[bytearray] = SimpleQueue()
        self._nbufs = 0
        self._pending_zero: list[int] | None = None
        # the target's size is fixed during a copy: check bounds once here, then write through
        # the driver directly (Image.pwrite would re-query the size, an fstat, per write)
        self._tsize = target.size
        self._twrite = target.driver.write if target.writable else target.pwrite
        self._done = 0
        self._started = 0.0
        drv = target.driver
        parallel = compress and type(drv).parallel_compression
        self._prep = drv.compress_cluster if parallel else None
        self._write_prep = drv.write_compressed_cluster if parallel else None

    # -- buffers --------------------------------------------------------------------
    def _get_buf(self) -> bytearray:
        try:
            return self._bufs.get_nowait()
        except Empty:
            self._nbufs += 1
            return bytearray(self.chunk)

    def _put_buf(self, buf: bytearray | None) -> None:
        if buf is not None:
            self._bufs.put(buf)

    # -- planning -------------------------------------------------------------------
    def _tasks(self, pieces: Iterable[Piece]) -> Iterator[tuple[str, int, int]]:
        """Split pieces into tasks as qemu-img convert iterates: chunks of at most
        :data:`CHUNK` from each run's start (whole clusters when compressing). Zero runs are
        one task unless ``count_zero`` (then they are chunked too and count as progress)."""
        size = self.target.size
        covered = 0
        cs = self.cluster
        for p in _merge_non_copy(pieces):
            start, end = p.offset, p.offset + p.length
            if p.op == COPY and cs:
                start = max(covered, start - start % cs)
                end = min(size, -(-end // cs) * cs)
                covered = max(covered, end)
            elif cs and p.op != COPY:
                start = max(start, covered)
            if start >= end:
                continue
            if p.op != COPY and not (p.op == ZERO and self.count_zero):
                yield p.op, start, end - start
                continue
            pos = start
            while pos < end:
                nxt = min(end, pos + self.chunk)
                yield p.op, pos, nxt - pos
                pos = nxt

    def planned_total(self, pieces: Iterable[Piece]) -> int:
        """Bytes :meth:`run` will count as progress for these pieces (its 100%)."""
        return sum(n for op, _, n in self._tasks(pieces)
                   if op == COPY or self.progress_all or (op == ZERO and self.count_zero))

    # -- work (in pool threads) -------------------------------------------------------
    def _work(self, offset: int, length: int) -> _Result:
        if self.copy_range is not None and self.copy_range(offset, length):
            return _Result(offset, length, None, [])
        buf = self._get_buf()
        view = memoryview(buf)[:length]
        try:
            self.reader(offset, view)
        except BaseException:
            self._put_buf(buf)
            raise
        if self.compress:
            runs: list[tuple[int, int, str]] = []
            payloads: list[object] = []
            cs = self.cluster
            for s in range(0, length, cs):
                k = min(cs, length - s)
                if self.granule and region_is_zero(buf, s, s + k):  # -S 0: zeroes are compressed too
                    runs.append((s, k, "zero"))
                else:
                    runs.append((s, k, "comp"))
                    if self._prep is not None:
                        payloads.append(self._prep(view[s:s + k]))
            return _Result(offset, length, buf, runs, payloads if self._prep else None)
        runs = [(s, k, "zero" if z else "data") for s, k, z in zero_runs(buf, length, offset, self.granule)]
        return _Result(offset, length, buf, runs)

    # -- writes (calling thread) --------------------------------------------------------
    def _zero(self, offset: int, length: int) -> None:
        if self.zero_init and self.unmap:
            return
        pz = self._pending_zero
        if pz is not None and pz[1] == offset:
            pz[1] = offset + length
            return
        self._flush_zero()
        self._pending_zero = [offset, offset + length]

    def _flush_zero(self) -> None:
        pz = self._pending_zero
        if pz is not None:
            self._pending_zero = None
            try:
                self.target.write_zeroes(pz[0], pz[1] - pz[0], unmap=self.unmap)
            except OSError as e:  # qemu-img reports a failed zero write as any other write
                raise WriteError(pz[0], e.strerror or str(e)) from None

    def _advance(self, n: int, copied: bool = True) -> None:
        if not copied and not self.progress_all:
            return  # progress counts copied bytes, as qemu-img counts allocated sectors
        self._done += n
        if self.progress is not None:
            self.progress(self._done)
        if self.rate_limit:
            self._throttle()

    def _throttle(self) -> None:
        import time

        if not self._started:
            self._started = time.monotonic()
        due = self._started + self._done / self.rate_limit
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 5.0))

    def _write(self, res: _Result) -> None:
        try:
            if res.buf is not None:
                view = memoryview(res.buf)
                comp = iter(res.compressed or ())
                for s, k, kind in res.runs:
                    off = res.offset + s
                    if kind == "zero":
                        self._zero(off, k)
                        if self.compress:
                            self._advance(k)  # per cluster, as qemu-img's one-cluster requests
                        continue
                    self._flush_zero()
                    try:
                        if kind == "data":
                            if off + k > self._tsize:
                                self.target.pwrite(off, view[s:s + k])  # its bounds error
                            else:
                                self._twrite(off, view[s:s + k])
                        elif self._write_prep is not None:
                            self._write_prep(off, next(comp))
                        else:
                            self.target.write_compressed(off, view[s:s + k])
                    except OSError as e:
                        raise WriteError(off, e.strerror or str(e)) from None
                    if self.compress:
                        self._advance(k)
                if self.compress:
                    return
        finally:
            self._put_buf(res.buf)
        self._advance(res.length)

    # -- driver ---------------------------------------------------------------------
    def run(self, pieces: Iterable[Piece]) -> int:
        """Copy everything; return the number of bytes read and written (COPY pieces)."""
        tasks = self._tasks(pieces)
        if self.workers == 1:
            for op, off, n in tasks:
                self._do_inline(op, off, n)
        else:
            self._run_pool(tasks)
        self._flush_zero()
        return self._done

    def _do_inline(self, op: str, off: int, n: int) -> None:
        if op == COPY:
            self._write(self._work(off, n))
        elif op == ZERO:
            self._zero(off, n)
            self._advance(n, self.count_zero)
        else:
            self._advance(n, False)

    def _threads(self) -> int:
        """Pool threads: compression is CPU-bound (zlib/zstd release the GIL), so one thread per
        core; a plain copy moves page-cache bytes, where one reader beside the writing thread
        keeps both syscalls busy and more threads only trade the GIL back and forth."""
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        want = cores if self.compress else self.readers
        return max(1, min(self.workers, want))

    def _run_pool(self, tasks: Iterator[tuple[str, int, int]]) -> None:
        """Reader threads take COPY tasks in order from ``todo`` and hand results to ``done``;
        the calling thread writes them, in task order unless ``ordered`` is False. At most
        ``depth`` tasks (and so buffers) are in flight."""
        nthreads = self._threads()
        depth = max(self.workers, 2 * nthreads)
        todo: SimpleQueue = SimpleQueue()
        done: SimpleQueue = SimpleQueue()
        stop = [False]  # set on an error: workers skip what is left

        def worker(finished: LockType) -> None:  # ``finished`` is held until the worker returns
            try:
                while True:
                    item = todo.get()
                    if item is None:
                        return
                    seq, off, n = item
                    if stop[0]:
                        done.put((seq, None))
                        continue
                    try:
                        done.put((seq, self._work(off, n)))
                    except BaseException as e:  # noqa: BLE001 - handed to the writing thread
                        done.put((seq, e))
            finally:
                finished.release()

        exits = []
        for _ in range(nthreads):
            finished = allocate_lock()
            finished.acquire()
            exits.append(finished)
            start_new_thread(worker, (finished,))
        # ordered: COPY tasks by sequence number, with the ZERO/SKIP tasks that follow each
        order: deque = deque()
        ready: dict[int, object] = {}  # finished out of order, waiting for their turn
        inflight = 0  # COPY tasks handed out and not yet written

        def take(seq_wanted: int | None) -> None:
            """Write one finished task: the next in order, or (unordered) any."""
            nonlocal inflight
            while True:
                if seq_wanted is not None and seq_wanted in ready:
                    res = ready.pop(seq_wanted)
                    break
                seq, res = done.get()
                if seq_wanted is None or seq == seq_wanted:
                    break
                ready[seq] = res
            inflight -= 1
            if isinstance(res, BaseException):
                raise res
            self._write(res)

        def drain_one() -> None:
            if not self.ordered:
                take(None)
                return
            item = order.popleft()
            if isinstance(item, int):
                take(item)
            else:
                self._do_inline(*item)

        seq = 0
        try:
            for op, off, n in tasks:
                if op != COPY:
                    if self.ordered and order:
                        order.append((op, off, n))
                    else:
                        self._do_inline(op, off, n)
                    continue
                todo.put((seq, off, n))
                if self.ordered:
                    order.append(seq)
                seq += 1
                inflight += 1
                while inflight >= depth:
                    drain_one()
            while inflight or order:
                drain_one()
        except BaseException:
            stop[0] = True
            raise
        finally:
            for _ in exits:
                todo.put(None)
            for finished in exits:
                finished.acquire()  # the worker has returned
