"""Compressed clusters: the codecs (zlib raw deflate, window 2^12, and zstd, as QEMU's qcow2),
reading them (runs decompressed in a thread pool) and writing them (the driver's
``write_compressed``, ``compress_cluster`` and ``write_compressed_cluster``)."""
from __future__ import annotations

import threading
import zlib

from qimg.errors import QimgError

from .cluster import COMPRESSED
from .structs import COMPRESSION_ZLIB

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .driver import Qcow2Format

_pool = None


_pool_lock = threading.Lock()


def pool():
    """A shared thread pool for (de)compression, created on first use (reader threads may
    ask at the same time)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            import os
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        return _pool


def compress(data: bytes | memoryview, ctype: int) -> bytes:
    if ctype == COMPRESSION_ZLIB:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
        return c.compress(data) + c.flush()
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(bytes(data))


def decompress(data: bytes, ctype: int, out_len: int) -> bytes:
    """Decompress one cluster; trailing bytes after the stream (sector padding) are ignored."""
    try:
        if ctype == COMPRESSION_ZLIB:
            d = zlib.decompressobj(-12)
            out = d.decompress(data, out_len)
        else:
            import zstandard

            d = zstandard.ZstdDecompressor().decompressobj()
            out = d.decompress(data)
    except Exception:  # noqa: BLE001 - any codec failure is an I/O error for the guest
        raise QimgError("Input/output error") from None
    if len(out) < out_len:
        raise QimgError("Input/output error")
    return out[:out_len]


def read_compressed_run(drv: "Qcow2Format", offset: int, buf: memoryview) -> int:
    """Decompress the run of compressed clusters at ``offset`` (cluster aligned) into ``buf``
    with a thread pool (zlib and zstd release the GIL); return the bytes filled."""
    cs = drv.cluster_size
    entries: list[int] = []
    pos = 0
    while pos + cs <= len(buf) and len(entries) < 256:
        kind, n, e = drv.clusters.extent(offset + pos, cs, merge_compressed=False)
        if kind != COMPRESSED:
            break
        entries.append(e)
        pos += cs
    raws = []
    for e in entries:
        coff, csize = drv.clusters.compressed_info(e)
        raws.append(drv.file.pread(coff, csize))
    ctype = drv.header.compression_type
    for j, data in enumerate(pool().map(lambda r: decompress(r, ctype, cs), raws)):
        buf[j * cs : (j + 1) * cs] = data
    return pos

def read_compressed(drv: "Qcow2Format", e: int) -> bytes:
    """The data of the compressed cluster of L2 entry ``e`` (the last one is kept)."""
    cached = drv.ccache  # one read: reader threads may replace it meanwhile
    if cached is not None and cached[0] == e:
        return cached[1]
    coff, csize = drv.clusters.compressed_info(e)
    raw = drv.file.pread(coff, csize)
    data = decompress(raw, drv.header.compression_type, drv.cluster_size)
    drv.ccache = (e, data)
    return data

def write_compressed(drv: "Qcow2Format", offset: int, data: memoryview) -> None:
    """The driver's ``write_compressed``: whole clusters (the image's tail may be short), each
    compressed on its own; an empty write ends the stream (the file grows to whole sectors)."""
    drv.check_writable()
    if drv.header.crypt_method:
        raise QimgError("Compression and encryption not supported at the same time")
    drv.bitmaps_dirty(offset, len(data))
    cs = drv.cluster_size
    if drv.data_file is not None:
        raise no_compression_with_data_file()
    if not len(data):
        # QEMU's end-of-stream signal: align the file end to a sector
        fsize = drv.file.size()
        if fsize % 512:
            drv.file.truncate(fsize + (-fsize) % 512)
        return
    if offset & (cs - 1):
        raise QimgError("Compressed writes must be cluster aligned")
    if len(data) > cs:
        # several clusters: each one is compressed on its own, as QEMU splits the request
        for k in range(0, len(data), cs):
            drv.write_compressed(offset + k, data[k : k + cs])
        return
    if len(data) != cs:
        if offset + len(data) != drv.size:
            raise QimgError("Compressed writes must cover a whole cluster")
        buf = bytearray(cs)
        buf[: len(data)] = data
        data = memoryview(buf)
    drv.write_compressed_cluster(offset, (data, compress(data, drv.header.compression_type)))

def compress_cluster(drv: "Qcow2Format", data: memoryview) -> tuple[memoryview, bytes]:
    """Compress one cluster without touching the image (thread-safe: convert -c runs
    it in pool threads); hand the result to ``write_compressed_cluster``."""
    cs = drv.cluster_size
    if len(data) != cs:
        buf = bytearray(cs)
        buf[: len(data)] = data
        data = memoryview(buf)
    return data, compress(data, drv.header.compression_type)

def write_compressed_cluster(drv: "Qcow2Format", offset: int, prepared: tuple[memoryview, bytes]) -> None:
    """Store a cluster prepared by :meth:`compress_cluster` (same checks as write_compressed)."""
    drv.check_writable()
    if drv.header.crypt_method:
        raise QimgError("Compression and encryption not supported at the same time")
    cs = drv.cluster_size
    data, out = prepared
    if drv.data_file is not None:
        raise no_compression_with_data_file()
    if offset & (cs - 1):
        raise QimgError("Compressed writes must be cluster aligned")
    drv.bitmaps_dirty(offset, min(cs, drv.size - offset))
    if len(out) >= cs:
        drv.write(offset, data[: min(cs, drv.size - offset)])
        return
    drv.allocator.write_compressed(offset, out)

def no_compression_with_data_file() -> Exception:
    """QEMU refuses a compressed write to an image with an external data file with ENOTSUP
    (convert: "error while writing at byte N: Operation not supported")."""
    import errno

    from qimg.errors import os_error

    return os_error("Operation not supported", errno.ENOTSUP)
