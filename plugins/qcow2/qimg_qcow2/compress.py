"""Cluster compression codecs: zlib raw deflate (window 2^12) and zstd, as QEMU's qcow2."""
from __future__ import annotations

import threading
import zlib

from qimg.errors import QimgError

from .structs import COMPRESSION_ZLIB

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
