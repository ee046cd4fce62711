"""Reading an object: ranged GETs, several in flight, and a small cache of recent blocks.

A read of a block or more asks for exactly what it needs (split into pieces fetched at once
when it is large); a smaller read (a format's header, tables, metadata) fetches the aligned
:data:`BLOCK` around it and keeps it in a cache of :data:`CACHED` blocks, so that the next
metadata reads cost no request. Small reads that walk forward block after block (formats whose
reads are serialised) start fetching the next blocks before they are asked for. Every GET
names the object's ETag (``If-Match``): an object replaced while it is read is an error, never
a mix of two versions.
"""
from __future__ import annotations

import errno
import threading
from collections import OrderedDict

from . import client as s3client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the unit of small reads and of the cache
BLOCK = 1 << 20
#: blocks kept
CACHED = 32
#: a large read is split into GETs of this size, fetched at once
PIECE = 8 << 20
#: blocks fetched ahead of a forward walk of small reads
READAHEAD = 4


class Remote:
    """Ranged reads of ``bucket/key`` (``size`` bytes, version ``etag``) through client ``c``."""

    def __init__(self, c: Any, bucket: str, key: str, size: int, etag: str | None) -> None:
        self.c, self.bucket, self.key, self.size, self.etag = c, bucket, key, size, etag
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._pending: dict[int, threading.Event] = {}
        self._errors: dict[int, OSError] = {}
        self._pool = None
        self._last_block = -2

    # -- one request --------------------------------------------------------------------------
    def get_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the object's bytes at ``offset`` (one GET), or OSError."""
        n = len(view)
        if n <= 0:
            return
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "Range": f"bytes={offset}-{offset + n - 1}"}
        if self.etag:
            kw["IfMatch"] = self.etag
        try:
            resp = self.c.get_object(**kw)
            body = resp["Body"]
            try:
                raw = getattr(body, "_raw_stream", None)  # urllib3's response: readinto, no copies
                got = 0
                while got < n:
                    if raw is not None:
                        k = raw.readinto(view[got:])
                    else:
                        piece = body.read(n - got)
                        k = len(piece)
                        view[got:got + k] = piece
                    if not k:
                        break
                    got += k
            finally:
                body.close()
        except s3client.failures() as e:
            raise s3client.io_error(e, "GetObject", self.bucket, self.key) from None
        if got != n:
            raise OSError(errno.EIO, f"S3 GetObject s3://{self.bucket}/{self.key}: {n - got} bytes of the range "
                                     f"{offset}-{offset + n - 1} missing from the answer")

    # -- reads ---------------------------------------------------------------------------------
    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), self.size - offset)
        if n <= 0:
            return 0
        view = buf[:n]
        if n >= BLOCK:
            self._large(offset, view)
            return n
        pos = 0
        while pos < n:
            b = (offset + pos) // BLOCK
            data = self._block(b)
            start = offset + pos - b * BLOCK
            k = min(n - pos, len(data) - start)
            if k <= 0:  # the object is shorter than its HEAD said (it cannot be, with If-Match)
                raise OSError(errno.EIO, f"S3 object s3://{self.bucket}/{self.key} ended early")
            view[pos:pos + k] = memoryview(data)[start:start + k]
            pos += k
        return n

    def _large(self, offset: int, view: memoryview) -> None:
        n = len(view)
        if n <= PIECE:
            self.get_into(offset, view)
            return
        pool = self._executor()
        futures = [pool.submit(self.get_into, offset + s, view[s:s + PIECE]) for s in range(0, n, PIECE)]
        first: BaseException | None = None
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - every piece is waited for, the first error raised
                first = first or e
        if first is not None:
            raise first

    def _executor(self):
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=s3client.CONNECTIONS // 2, thread_name_prefix="qimg-s3")
            return self._pool

    def _block(self, b: int) -> bytes:
        """Block ``b`` from the cache, a fetch under way, or a new GET."""
        while True:
            with self._lock:
                data = self._cache.get(b)
                if data is not None:
                    self._cache.move_to_end(b)
                    self._ahead(b)
                    return data
                err = self._errors.pop(b, None)
                if err is not None:
                    raise OSError(err.errno, err.strerror)
                ev = self._pending.get(b)
                if ev is None:
                    ev = self._pending[b] = threading.Event()
                    mine = True
                else:
                    mine = False
                self._ahead(b)
            if not mine:
                ev.wait()
                continue
            self._fetch(b, ev)

    def _fetch(self, b: int, ev: threading.Event) -> None:
        start = b * BLOCK
        data = bytearray(min(BLOCK, self.size - start))
        try:
            self.get_into(start, memoryview(data))
        except OSError as e:
            with self._lock:
                self._errors[b] = e
                del self._pending[b]
            ev.set()
            return
        with self._lock:
            self._cache[b] = bytes(data)
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
            del self._pending[b]
        ev.set()

    def _ahead(self, b: int) -> None:
        """(Under the lock.) A forward walk block after block: fetch the next ones early."""
        if b != self._last_block + 1:
            self._last_block = b
            return
        self._last_block = b
        nblocks = -(-self.size // BLOCK)
        for nb in range(b + 1, min(b + 1 + READAHEAD, nblocks)):
            if nb in self._cache or nb in self._pending:
                continue
            ev = self._pending[nb] = threading.Event()
            pool = self._pool
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor

                pool = self._pool = ThreadPoolExecutor(max_workers=s3client.CONNECTIONS // 2,
                                                       thread_name_prefix="qimg-s3")
            pool.submit(self._fetch, nb, ev)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._cache.clear()
