"""Writing an object. S3 stores whole objects: nothing is changed in place, an object appears
(or is replaced) when its upload completes. So a writable ``s3`` node is one of two writers:

- :class:`Stream`: an image written from its start to its end in order (a raw target of
  ``convert``/``dd``) goes up as a multipart upload while it is written: parts of
  :func:`part_size` bytes, several in flight; what the copy skips (zero runs) is sent as zeroes.
- :class:`Spool`: any other write pattern (a qcow2, vmdk, ... target; ``resize``, ``commit``,
  ``amend`` of an object) goes to a local spool file in ``TMPDIR`` (the object's bytes are
  downloaded into it first when it exists), uploaded as a multipart upload when the node is
  closed. The file is unlinked as soon as it is made: it never outlives the process.

``convert`` and ``dd`` create the target, close it, and open it again: inside the core's
creation scope (:func:`qimg.protocol.creation_scope`) a node closed is *parked* in this process
instead of uploaded, the next open of the same name takes it over (a created image that is
still all zeroes then becomes a :class:`Stream`), and the scope's end uploads what is parked,
or, when the command failed, uploads nothing (the multipart upload is aborted: the bucket holds
what it held before).
"""
from __future__ import annotations

import errno
import os
from collections import deque

from qimg.errors import QimgError

from . import client as s3client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: smallest part (S3's minimum is 5 MiB, the last part excepted)
PART_MIN = 8 << 20
#: S3 allows 10000 parts in one upload
MAX_PARTS = 10000
#: parts uploading at once
PARTS_IN_FLIGHT = 6
#: bytes written beyond the part being filled that a stream keeps (writes finished out of order: -W)
AHEAD_MAX = 48 << 20
ZERO_PART = b""  # made on first use, one part long


def part_size(size: int) -> int:
    """Parts of at least :data:`PART_MIN`, whole MiB, at most :data:`MAX_PARTS` of them."""
    need = -(-size // (MAX_PARTS - 1))
    return max(PART_MIN, -(-need // (1 << 20)) * (1 << 20))


def _zeroes(n: int) -> bytes:
    global ZERO_PART
    if len(ZERO_PART) < n:
        ZERO_PART = bytes(n)
    return ZERO_PART if len(ZERO_PART) == n else ZERO_PART[:n]


class Multipart:
    """One multipart upload: parts sent by a small pool, at most :data:`PARTS_IN_FLIGHT`
    unfinished; :meth:`complete` makes the object, :meth:`abort` forgets it."""

    def __init__(self, c: Any, bucket: str, key: str) -> None:
        self.c, self.bucket, self.key = c, bucket, key
        try:
            self.upload_id = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        except s3client.failures() as e:
            raise s3client.error(e, "PutObject", bucket, key) from None
        self.etags: dict[int, str] = {}
        self._futures: deque = deque()
        self._pool = None

    def _send(self, number: int, data: bytes | bytearray | memoryview) -> None:
        try:
            r = self.c.upload_part(Bucket=self.bucket, Key=self.key, PartNumber=number, UploadId=self.upload_id,
                                   Body=bytes(data) if isinstance(data, memoryview) else data)
        except s3client.failures() as e:
            raise s3client.error(e, "UploadPart", self.bucket, self.key) from None
        self.etags[number] = r["ETag"]

    def put(self, number: int, data: bytes | bytearray) -> None:
        """Send part ``number`` (waits while too many are in flight; raises an earlier part's error)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="qimg-s3-up")
        while len(self._futures) >= PARTS_IN_FLIGHT:
            self._futures.popleft().result()
        self._futures.append(self._pool.submit(self._send, number, data))

    def complete(self) -> None:
        try:
            while self._futures:
                self._futures.popleft().result()
            if not self.etags:
                self._send(1, b"")  # an empty object: one empty part
            parts = [{"PartNumber": n, "ETag": t} for n, t in sorted(self.etags.items())]
            try:
                self.c.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                 MultipartUpload={"Parts": parts})
            except s3client.failures() as e:
                raise s3client.error(e, "CompleteMultipartUpload", self.bucket, self.key) from None
        except BaseException:
            self.abort()
            raise
        self._shutdown()

    def conclude(self, ok: bool, send_rest: Callable[[], None]) -> None:
        """The end of a writer's upload: when ``ok``, send what is left (``send_rest``) and
        complete it; otherwise, or when sending fails, abort it."""
        try:
            if ok:
                send_rest()
                self.complete()
            else:
                self.abort()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        self._futures.clear()
        self._shutdown()
        try:
            self.c.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except s3client.failures():
            pass  # the store expires it (a lifecycle rule); nothing was made

    def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class Spool:
    """The object's bytes in a local file (TMPDIR), uploaded by :meth:`finish`."""

    def __init__(self, upload: Multipart) -> None:
        import tempfile

        from qimg.protocol import FileProtocol

        self.upload = upload
        fd, path = tempfile.mkstemp(prefix="qimg-s3-spool-")
        os.close(fd)
        try:
            self.file = FileProtocol(path, writable=True)
        finally:
            os.unlink(path)  # nothing stays behind, whatever happens to this process
        self.file.unsafe_cache = True
        #: nothing but zeroes written so far (a created image that can still become a Stream)
        self.all_zero = True
        self.done = False

    def fill(self, remote: Any) -> None:
        """Copy the object's bytes (a :class:`qimg_s3.remote.Remote`) into the spool."""
        from concurrent.futures import ThreadPoolExecutor

        from .remote import PIECE

        size = remote.size

        def piece(off: int) -> None:
            buf = bytearray(min(PIECE, size - off))
            remote.get_into(off, memoryview(buf))
            self.file.pwrite(off, buf)

        self.file.truncate(size)
        with ThreadPoolExecutor(max_workers=s3client.CONNECTIONS // 2, thread_name_prefix="qimg-s3-get") as pool:
            for f in [pool.submit(piece, off) for off in range(0, size, PIECE)]:
                f.result()
        self.all_zero = False

    # I/O: the spool file's
    def preadinto(self, offset: int, buf: memoryview) -> int:
        return self.file.preadinto(offset, buf)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if self.all_zero and bytes(data).count(0) != len(data):
            self.all_zero = False
        self.file.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self.file.write_zeroes(offset, length, unmap)

    def size(self) -> int:
        return self.file.size()

    def truncate(self, size: int) -> None:
        self.file.truncate(size)

    def data_extents(self, offset: int, length: int):
        return self.file.data_extents(offset, length)

    def finish(self, ok: bool) -> None:
        """Upload the spool (``ok``) or forget it; the spool file is closed either way."""
        self.done = True

        def send_rest() -> None:
            size = self.size()
            psize = part_size(size)
            for number, off in enumerate(range(0, size, psize), 1):
                self.upload.put(number, self.file.pread(off, min(psize, size - off)))

        try:
            self.upload.conclude(ok, send_rest)
        finally:
            self.file.close()


class Stream:
    """A multipart upload written in order. ``size`` is fixed: at the end what was not written
    is sent as zeroes. Writes may arrive out of order within :data:`AHEAD_MAX` bytes beyond the
    part being filled; a write before it (into a part already sent) is an error."""

    def __init__(self, upload: Multipart, size: int) -> None:
        self.upload = upload
        self._size = size
        self.psize = part_size(size)
        self.number = 1  # the part being filled
        self.start = 0  # its offset
        self.buf = bytearray(min(self.psize, size))
        self.ahead: dict[int, bytes] = {}  # offset -> bytes, beyond the part being filled
        self.ahead_bytes = 0
        self.done = False

    def size(self) -> int:
        return self._size

    def _end(self) -> int:
        return min(self.start + self.psize, self._size)

    def _behind(self, offset: int) -> OSError:
        return OSError(errno.ESPIPE, f"S3 upload of s3://{self.upload.bucket}/{self.upload.key}: "
                                     f"a write at byte {offset}, into a part already sent")

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if offset < self.start:
            raise self._behind(offset)
        end = self._end()
        if offset < end:
            k = min(len(view), end - offset)
            self.buf[offset - self.start:offset - self.start + k] = view[:k]
            view = view[k:]
            offset += k
        if len(view):
            self.ahead[offset] = bytes(view)
            self.ahead_bytes += len(view)
            while self.ahead_bytes > AHEAD_MAX:
                self._next_part()

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        if offset < self.start:
            raise self._behind(offset)
        end = self._end()
        stop = offset + length
        if offset < end:
            k = min(stop, end) - offset
            self.buf[offset - self.start:offset - self.start + k] = _zeroes(k)
        for at, data in list(self.ahead.items()):  # zeroes over bytes kept ahead
            lo, hi = max(at, offset), min(at + len(data), stop)
            if lo < hi:
                b = bytearray(data)
                b[lo - at:hi - at] = _zeroes(hi - lo)
                self.ahead[at] = bytes(b)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), self._size - offset)
        if n <= 0:
            return 0
        if offset < self.start:
            raise OSError(errno.EIO, f"S3 upload of s3://{self.upload.bucket}/{self.upload.key}: "
                                     "the bytes already sent cannot be read back before the upload completes")
        view = buf[:n]
        view[:] = _zeroes(n)
        end = self._end()
        if offset < end:
            k = min(n, end - offset)
            view[:k] = self.buf[offset - self.start:offset - self.start + k]
        for at, data in self.ahead.items():
            lo, hi = max(at, offset), min(at + len(data), offset + n)
            if lo < hi:
                view[lo - offset:hi - offset] = data[lo - at:hi - at]
        return n

    def _next_part(self) -> None:
        """Send the part being filled and start the next (taking what was kept ahead for it)."""
        end = self._end()
        buf = self.buf  # sized to the part: handed over whole, no copy (a new one is made below)
        self.upload.put(self.number, buf if len(buf) == end - self.start else bytes(buf[:end - self.start]))
        self.number += 1
        self.start = end
        end = self._end()
        self.buf = bytearray(end - self.start)
        for at in sorted(self.ahead):
            if at >= end:
                continue
            data = self.ahead.pop(at)
            self.ahead_bytes -= len(data)
            k = min(len(data), end - at)
            self.buf[at - self.start:at - self.start + k] = data[:k]
            if k < len(data):
                self.ahead[end] = data[k:]
                self.ahead_bytes += len(data) - k

    def finish(self, ok: bool) -> None:
        self.done = True

        def send_rest() -> None:
            while self.start < self._size:
                self._next_part()

        try:
            self.upload.conclude(ok, send_rest)
        finally:
            self.buf = bytearray()
            self.ahead.clear()


# -- parking (inside the core's creation scope) -----------------------------------------------
_parked: dict[tuple, Any] = {}


class _ScopeWriters:
    """The writers made or taken over inside one creation scope; at its end, those parked are
    uploaded (or aborted if the command failed), and any still open when it failed aborted."""

    def __init__(self) -> None:
        self.writers: list[tuple[tuple, Any]] = []

    def __call__(self, ok: bool) -> None:
        first: BaseException | None = None
        for name, w in self.writers:
            parked = _parked.get(name) is w
            if parked:
                del _parked[name]
            if w.done or not (parked or not ok):
                continue
            try:
                w.finish(ok)
            except BaseException as e:  # noqa: BLE001 - every writer is finished
                first = first or e
        if first is not None:
            raise first


def track(name: tuple, writer: Any) -> None:
    """A writer made inside a creation scope is finished when it ends (if not before)."""
    from qimg.protocol import current_creation_scope

    scope = current_creation_scope()
    if scope is None:
        return
    mine = getattr(scope, "s3_writers", None)
    if mine is None:
        mine = scope.s3_writers = _ScopeWriters()
        scope.finishers.append(mine)
    mine.writers.append((name, writer))


def park(name: tuple, writer: Any) -> bool:
    """Keep ``writer`` for the next open of ``name`` until the creation scope ends (then it is
    uploaded, or aborted if the command failed); False when no scope is open."""
    from qimg.protocol import current_creation_scope

    if current_creation_scope() is None:
        return False
    _parked[name] = writer
    return True


def adopt(name: tuple) -> Any:
    """The writer parked for ``name`` (taken out), or None."""
    return _parked.pop(name, None)


def as_stream(writer: Any) -> Any:
    """A created image still all zeroes becomes a :class:`Stream` (its spool dropped)."""
    if isinstance(writer, Spool) and writer.all_zero:
        size = writer.size()
        writer.file.close()
        writer.done = True  # its upload goes on as the stream's
        return Stream(writer.upload, size)
    return writer


def emptied(writer: Any) -> Any:
    """A parked writer made empty for a new creation (its upload kept)."""
    if isinstance(writer, Spool):
        writer.truncate(0)
        writer.all_zero = True
        return writer
    upload = writer.upload
    writer.done = True
    writer.buf = bytearray()
    writer.ahead.clear()
    return Spool(upload) if writer.number == 1 else _restart(upload)


def _restart(upload: Multipart) -> Spool:
    upload.abort()  # parts were sent: start over
    return Spool(Multipart(upload.c, upload.bucket, upload.key))


def check_part_count(size: int) -> None:
    if size > part_size(size) * MAX_PARTS:
        raise QimgError("S3: an object this large cannot be uploaded (more than 10000 parts)")
