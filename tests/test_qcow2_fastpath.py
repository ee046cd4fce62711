"""qcow2 data-path fast paths: bulk run search, bulk cluster allocation, parallel reads.

Each fast path is checked against qemu-img's bytes (layout must not change) or a naive model.
"""
from __future__ import annotations

import os
import random
import sys
import threading
from array import array

import pytest
import qimg
from qimg.tables import same_run as _same_run


def _naive_same_run(vals: array, e0: int, step: int) -> int:
    k = 0
    while k < len(vals) and vals[k] == e0 + k * step:
        k += 1
    return k


def test_same_run_matches_naive_model() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randint(0, 700)
        step = rng.choice([0, 512, 65536])
        e0 = rng.randrange(1 << 40) & ~511
        run = rng.randint(0, n)
        vals = [e0 + j * step for j in range(run)]
        vals += [rng.choice([0, e0 + 7, e0 + (run + 1) * step]) for _ in range(n - run)]
        a = array("Q", vals)
        assert _same_run(a, e0, step) == _naive_same_run(a, e0, step)


def _sparse_raw(path, size: int, runs: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for i, (off, n) in enumerate(runs):
            os.pwrite(f.fileno(), bytes([(i * 37 + 1) & 0xFF]) * n, off)


@pytest.mark.parametrize("opts", [
    "cluster_size=512,refcount_bits=16",   # refcount blocks created mid-run (per-cluster path)
    "cluster_size=4096,refcount_bits=64",
    "cluster_size=65536,refcount_bits=8",
    "cluster_size=1024,refcount_bits=1",   # sub-byte refcounts: per-cluster path
])
def test_convert_to_qcow2_identical_to_qemu(tmp_path, qemu_img, qimg, opts: str) -> None:
    src = tmp_path / "src.raw"
    mib = 1 << 20
    _sparse_raw(src, 24 * mib, [(0, mib), (3 * mib + 512, 2 * mib), (9 * mib, 3 * mib + 4096), (23 * mib, mib)])
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    r = qimg("convert", "-f", "raw", "-O", "qcow2", "-o", opts, str(src), str(a))
    assert r.returncode == 0, r.stderr
    r = qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", opts, str(src), str(b))
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    r = qemu_img("check", str(a))
    assert r.returncode == 0, r.stdout + r.stderr


def test_parallel_reads_with_evicting_cache(tmp_path, qemu_img, qemu_io) -> None:
    """Reader threads sharing one driver whose L2 cache holds 2 tables (constant eviction)."""
    img, raw = tmp_path / "t.qcow2", tmp_path / "t.raw"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(img), "8M").returncode == 0
    cmds = []
    for k in range(48):
        cmds += ["-c", f"write -P {k + 1} {k * 160 * 1024 + 512 * (k % 5)} {4096 + 512 * k}"]
    assert qemu_io("-f", "qcow2", *cmds, str(img)).returncode == 0
    assert qemu_img("convert", "-f", "qcow2", "-O", "raw", str(img), str(raw)).returncode == 0
    expect = raw.read_bytes()
    image = qimg.open(str(img), fmt="qcow2")
    try:
        drv = image.driver
        drv.clusters.cache.capacity = 2
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(150):
                    off = rng.randrange(0, len(expect) - 1) & ~511
                    n = min(len(expect) - off, rng.randint(1, 96) * 512)
                    buf = bytearray(n)
                    image.preadinto(off, memoryview(buf))
                    assert buf == expect[off : off + n], (off, n)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often: races show up
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(old_switch)
        assert not errors, errors[0]
        assert len(drv.clusters.cache.tables) <= 2
    finally:
        image.close()
