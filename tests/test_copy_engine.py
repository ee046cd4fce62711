"""The copy engine's speed-ups keep qemu-img's results:

- ``convert -c`` reads batches of clusters per task but compresses, writes and counts progress
  cluster by cluster: the same image bytes and the same ``-p`` lines as qemu-img;
- raw targets written from the pool threads hold the same bytes;
- the plan's short block-status window gives the same pieces as one query over the whole rest;
- convert's default cache mode (unsafe) never syncs; ``-t writeback`` does;
- an error in a reader thread or in the writing thread ends the copy with that error, without
  leaving threads behind, in order and with ``-W``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

MIB = 1 << 20


def _source(path: Path) -> None:
    """Data, zero clusters and holes over several 1 MiB compression batches, odd size."""
    with open(path, "wb") as f:
        f.truncate(5 * MIB + 12345)
        f.seek(0)
        f.write(os.urandom(300_000))           # incompressible, partial cluster at its end
        f.seek(MIB - 4096)
        f.write(b"text line\n" * 30_000)        # compressible, crosses a batch boundary
        f.seek(2 * MIB + 65536)
        f.write(bytes(65536) + b"\x07" * 70_000)  # an explicit zero cluster, then data
        f.seek(5 * MIB)
        f.write(b"\x09" * 12345)                # the tail cluster is partial


@pytest.mark.parametrize("extra", [[], ["-m", "1"]])
def test_compressed_progress_and_bytes_as_qemu(tmp_path, qemu_img, qimg, extra):
    src = tmp_path / "s.raw"
    _source(src)
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    mine = qimg("convert", "-p", "-c", *extra, "-f", "raw", "-O", "qcow2", str(src), str(a))
    theirs = qemu_img("convert", "-p", "-c", *extra, "-f", "raw", "-O", "qcow2", str(src), str(b))
    assert mine.returncode == theirs.returncode == 0, mine.stderr
    assert mine.stdout == theirs.stdout
    assert mine.stdout.count("\r") > 5
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("src_fmt", ["raw", "qcow2"])
def test_raw_target_from_pool_threads(tmp_path, qemu_img, qimg, src_fmt):
    raw = tmp_path / "s.raw"
    _source(raw)
    src = raw
    if src_fmt == "qcow2":
        src = tmp_path / "s.qcow2"
        assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(src)).returncode == 0
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    assert qimg("convert", "-f", src_fmt, "-O", "raw", str(src), str(a)).returncode == 0
    assert qemu_img("convert", "-f", src_fmt, "-O", "raw", str(src), str(b)).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    # the same holes too (zero granules are not written)
    assert os.stat(a).st_blocks == os.stat(b).st_blocks


def test_plan_window_gives_the_same_pieces(tmp_path, monkeypatch):
    import qimg
    from qimg.ops import convert as conv

    path = tmp_path / "s.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(MIB)
        f.write(b"\x01" * (20 * MIB))   # a data run longer than the window
        f.seek(40 * MIB)
        f.write(b"\x02" * 4096)
    img = qimg.open(str(path), "raw")
    try:
        for backing in (False, True):
            monkeypatch.setattr(conv, "PLAN_WINDOW", 1 << 62)
            whole = list(conv.plan([img], target_has_backing=backing, sparse=4096))
            monkeypatch.setattr(conv, "PLAN_WINDOW", 64 * 1024)
            windowed = list(conv.plan([img], target_has_backing=backing, sparse=4096))
            assert windowed == whole
            assert any(p.length >= 20 * MIB for p in whole)
    finally:
        img.close()


@pytest.mark.parametrize("cache,syncs", [("unsafe", False), ("writeback", True)])
def test_cache_unsafe_never_syncs(tmp_path, monkeypatch, cache, syncs):
    import qimg
    from qimg.ops.convert import ConvertOptions, convert

    pytest.importorskip("qimg_qcow2")
    src = tmp_path / "s.raw"
    _source(src)
    out = tmp_path / "o.qcow2"
    img = qimg.open(str(src), "raw")
    # creating the image syncs (as qemu-img's creation does): count from the copy on (-n)
    qimg.create(str(out), "qcow2", img.size)
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    try:
        convert([img], str(out), ConvertOptions(out_format="qcow2", no_create=True, cache=cache))
    finally:
        img.close()
    assert bool(calls) == syncs


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 8])
@pytest.mark.parametrize("where", ["read", "write"])
def test_errors_end_the_copy(tmp_path, ordered, workers, where):
    import qimg
    from qimg.errors import QimgError
    from qimg.ops.copy import COPY, Copier, Piece

    path = str(tmp_path / "t.raw")
    qimg.create(path, "raw", 64 * MIB)
    fail_at = 20 * MIB

    def read(offset: int, view: memoryview) -> None:
        if where == "read" and offset <= fail_at < offset + len(view):
            raise QimgError("boom while reading")
        view[:] = b"\1" * len(view)

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))  # the engine's threads are not threading's

    before = os_threads()
    with qimg.open(path, "raw", writable=True) as img:
        copier = Copier(img, read, zero_init=True, workers=workers, ordered=ordered)
        if where == "write":
            real = copier._twrite

            def write(offset: int, data) -> None:  # noqa: ANN001
                if offset <= fail_at < offset + len(data):
                    raise OSError(5, "Input/output error")
                real(offset, data)

            copier._twrite = write
        with pytest.raises(QimgError, match="boom while reading" if where == "read" else "Input/output error"):
            copier.run([Piece(0, 64 * MIB, COPY)])
    # The property: every worker ends once the copy has failed (no thread is leaked). A worker
    # releases its ``finished`` lock as its last Python step, so the engine returns while the
    # OS thread may still be unwinding for a moment: wait for the kernel to drop it, bounded.
    deadline = time.monotonic() + 10
    while os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os_threads() <= before, "worker threads still alive 10 s after the copy failed"
