"""Where ``convert`` finds zeroes at the edges of what it read, as qemu-img: the zeroes after
the last data of a read (an image whose size is not a multiple of 4 KiB: ISO files), leading
zeroes up to the first aligned offset, and block-status runs cut back to the source's cluster
(a static VDI stores guest data 1 KiB into the file); a qed target's writes split as QEMU's
block status splits them; ``-c -S 0`` compresses zero clusters too. The layouts qimg writes
must be qemu-img's."""
from __future__ import annotations

import random

import pytest
from cli_support import formats_available, run_qemu, run_qemu_io, run_qimg
from qimg.ops.copy import zero_runs

K = 1024


def test_zero_runs_edges():
    data, zero = b"\x01", b"\x00"
    # data then 3 KiB of zeroes to the end: the tail is a zero run
    assert zero_runs(bytearray(data * 1024 * K + zero * 3 * K), 1027 * K, 0, 4 * K) == [
        (0, 1024 * K, False), (1024 * K, 3 * K, True)]
    # data ending mid-granule: data to the granule's end, the rest zero
    assert zero_runs(bytearray(data * 512 + zero * 7 * K), 7 * K + 512, 0, 4 * K) == [
        (0, 4 * K, False), (4 * K, 3 * K + 512, True)]
    # a short zero gap between data stays data
    buf = bytearray(data * 4 * K + zero * 2 * K + data * 2 * K)
    assert zero_runs(buf, len(buf), 0, 4 * K) == [(0, 8 * K, False)]
    # leading zeroes that reach the first aligned offset (the read starts unaligned)
    buf = bytearray(zero * 3 * K + data * 4 * K)
    assert zero_runs(buf, len(buf), K, 4 * K) == [(0, 3 * K, True), (3 * K, 4 * K, False)]
    # ... and that do not: data
    buf = bytearray(zero * 2 * K + data * 4 * K)
    assert zero_runs(buf, len(buf), K, 4 * K) == [(0, 6 * K, False)]
    # a final partial sector of zeroes (odd image size)
    buf = bytearray(data * 4 * K + zero * 100)
    assert zero_runs(buf, len(buf), 0, 4 * K) == [(0, 4 * K, False), (4 * K, 100, True)]
    assert zero_runs(bytearray(zero * 10), 10, 0, 4 * K) == [(0, 10, True)]
    assert zero_runs(bytearray(data * 10), 10, 0, 4 * K) == [(0, 10, False)]


def _layout(cwd, name: str) -> str:
    return run_qemu("map", "--output=json", name, cwd=cwd).stdout


def _random_image(rng: random.Random) -> bytes:
    size = rng.choice([rng.randrange(1, 4096) * 512, rng.randrange(1, 3_000_000), rng.randrange(1, 600) * 4096])
    data = bytearray(size)
    pos = 0
    while pos < size:
        n = rng.choice([512, 1024, 3072, 4096, 8192, 65536, rng.randrange(1, 200_000)])
        if rng.random() < 0.7:
            n = max(512, n - n % 512)
        if rng.random() < 0.5:
            data[pos:pos + n] = bytes([rng.randrange(1, 256)]) * len(data[pos:pos + n])
        pos += n
    return bytes(data)


SOURCES = {"raw": [], "vdi": ["-o", "static=on"], "qcow2": ["-o", "cluster_size=4k"], "vmdk": [], "qcow": [],
           "vpc": ["-o", "subformat=fixed"]}


@pytest.mark.parametrize("seed", range(16))
def test_layout_matches_qemu_img(tmp_path, seed):
    """Random data/zero layouts (odd sizes, sector-sized runs), converted by both tools from
    sources whose block status QEMU reports per block or cluster, into every target (qed's
    layout follows how the writes are split), with -S and -c: the same layout."""
    rng = random.Random(seed)
    (tmp_path / "f.raw").write_bytes(_random_image(rng))
    src, fmt = "f.raw", "raw"
    kind = rng.choice(sorted(SOURCES))
    if kind != "raw" and kind in formats_available():
        src, fmt = f"f.{kind}", kind
        assert run_qemu("convert", "-f", "raw", "-O", kind, *SOURCES[kind], "f.raw", src, cwd=tmp_path).returncode == 0
    sparse = rng.choice([[], ["-S", "0"], ["-S", "512"], ["-S", "4k"], ["-S", "8k"], ["-S", "64k"]])
    target = rng.choice([t for t in ("raw", "qcow2", "vmdk", "qed", "vdi", "qcow", "vpc", "vhdx")
                         if t == "raw" or t in formats_available()])
    compress = ["-c"] if target in ("qcow2", "qcow", "vmdk") and rng.random() < 0.3 else []
    args = ["convert", "-f", fmt, "-O", target, *compress, *sparse, src]
    code = run_qemu(*args, f"q.{target}", cwd=tmp_path).returncode
    assert run_qimg(*args, f"m.{target}", cwd=tmp_path).returncode == code
    assert _layout(tmp_path, f"m.{target}") == _layout(tmp_path, f"q.{target}"), args
    assert run_qemu("compare", f"q.{target}", f"m.{target}", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("target", ["raw", "qcow2", "qcow", "qed", "vdi", "vmdk"])
def test_static_vdi_source(tmp_path, target):
    for fmt in ("vdi", target):
        if fmt != "raw" and fmt not in formats_available():
            pytest.skip(f"{fmt} plugin not installed")
    run_qemu("create", "-q", "-f", "raw", "src.raw", "8M", cwd=tmp_path)

    run_qemu_io("-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 64k", "src.raw", cwd=tmp_path)
    assert run_qemu("convert", "-O", "vdi", "-o", "static=on", "src.raw", "s.vdi", cwd=tmp_path).returncode == 0
    assert run_qemu("convert", "-O", target, "s.vdi", f"q.{target}", cwd=tmp_path).returncode == 0
    assert run_qimg("convert", "-O", target, "s.vdi", f"m.{target}", cwd=tmp_path).returncode == 0
    assert _layout(tmp_path, f"m.{target}") == _layout(tmp_path, f"q.{target}")


@pytest.mark.parametrize("target", ["qcow2", "qcow"])
def test_compress_without_zero_detection(tmp_path, target):
    """``-c -S 0``: zero clusters are written compressed, as qemu-img does."""
    if target not in formats_available():
        pytest.skip(f"{target} plugin not installed")
    (tmp_path / "z.raw").write_bytes(b"\x01" * 65536 + bytes(131072) + b"\x02" * 65536 + bytes(1000))
    codes = [tool("convert", "-f", "raw", "-O", target, "-c", "-S", "0", "z.raw", out, cwd=tmp_path).returncode
             for tool, out in ((run_qemu, f"q.{target}"), (run_qimg, f"m.{target}"))]
    assert codes[0] == codes[1]  # qcow: 1, qemu-img's end-of-stream write fails there
    assert _layout(tmp_path, f"m.{target}") == _layout(tmp_path, f"q.{target}")


@pytest.mark.parametrize("seed", range(6))
def test_concatenation_layout_matches_qemu_img(tmp_path, seed):
    """Several sources of odd sizes and formats into one target: each source's reads start
    and end where qemu-img's do, so the zero runs at the joins come out the same."""
    rng = random.Random(1000 + seed)
    sources = []
    for k in range(rng.randrange(2, 4)):
        (tmp_path / f"s{k}.raw").write_bytes(_random_image(rng)[: rng.randrange(512, 1_500_000)])
        fmt = rng.choice([f for f in ("raw", "qcow2", "vmdk", "vdi") if f == "raw" or f in formats_available()])
        if fmt != "raw":
            assert run_qemu("convert", "-f", "raw", "-O", fmt, f"s{k}.raw", f"s{k}.{fmt}", cwd=tmp_path).returncode == 0
        sources.append(f"s{k}.{fmt}")
    target = rng.choice([t for t in ("raw", "qcow2", "qed", "vmdk", "vdi") if t == "raw" or t in formats_available()])
    args = ["convert", "-O", target, *sources]
    code = run_qemu(*args, f"q.{target}", cwd=tmp_path).returncode
    assert run_qimg(*args, f"m.{target}", cwd=tmp_path).returncode == code
    assert _layout(tmp_path, f"m.{target}") == _layout(tmp_path, f"q.{target}"), args
