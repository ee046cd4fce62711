"""qcow2 data path against QEMU: qemu-io writes, qimg reads every byte; qimg writes, qemu-img
check and compare confirm."""
from __future__ import annotations

import random

import pytest
import qimg
from qimg.blockstatus import ALLOCATED, COMPRESSED, DATA

MiB = 1 << 20


def _raw_of(qemu_img, path, tmp_path, fmt="qcow2") -> bytes:
    out = tmp_path / "oracle.raw"
    r = qemu_img("convert", "-f", fmt, "-O", "raw", str(path), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def _read_all(path) -> bytes:
    with qimg.open(str(path)) as img:
        return img.pread(0, img.size)


READ_VARIANTS = [
    ("cluster_size=512", ["write -P 0x11 0 3000", "write -P 0x22 100k 700", "write -z 200k 4k"]),
    ("cluster_size=4k,refcount_bits=1", ["write -P 0x33 4k 40k", "write -z 64k 8k", "write -P 0x44 1M 1"]),
    ("cluster_size=2M,refcount_bits=64", ["write -P 0x55 1M 2M", "write -z 0 4k"]),
    ("compat=0.10", ["write -P 0x66 0 1M", "write -z 512k 64k", "discard 128k 64k"]),
    ("refcount_bits=8,lazy_refcounts=on", ["write -P 0x77 3M 100k", "write -P 0x78 3000 10"]),
    ("extended_l2=on", ["write -P 0x12 4k 2k", "write -P 0x13 70k 100", "write -z 66k 2k", "write -P 0x14 1M 128k",
                        "write -z 1M 64k"]),
    ("extended_l2=on,cluster_size=16k", ["write -P 0x21 1k 500", "write -z 0 512", "write -P 0x22 32k 64k"]),
    ("preallocation=metadata", ["write -P 0x31 0 10k"]),
    ("preallocation=falloc,extended_l2=on", ["write -P 0x32 70k 10k"]),
]


@pytest.mark.parametrize("opts,cmds", READ_VARIANTS, ids=[v[0] for v in READ_VARIANTS])
def test_read_qemu_written(qemu_img, qemu_io, tmp_path, opts, cmds):
    path = tmp_path / "a.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(path), "4M").returncode == 0
    args = [a for c in cmds for a in ("-c", c)]
    r = qemu_io(*args, str(path))
    assert r.returncode == 0, r.stderr
    assert _read_all(path) == _raw_of(qemu_img, path, tmp_path)


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_read_compressed(qemu_img, tmp_path, ctype):
    raw = tmp_path / "src.raw"
    rnd = random.Random(3)
    data = bytearray()
    for i in range(48):
        kind = i % 4
        if kind == 0:
            data += bytes([i]) * 65536
        elif kind == 1:
            data += bytes(65536)
        elif kind == 2:
            data += rnd.randbytes(65536)  # incompressible: stored plain
        else:
            data += (b"qimg" * 16 + rnd.randbytes(16)) * 819 + bytes(65536 - 80 * 819)
    raw.write_bytes(data)
    dst = tmp_path / "c.qcow2"
    r = qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", f"compression_type={ctype}", str(raw), str(dst))
    assert r.returncode == 0, r.stderr
    assert _read_all(dst) == bytes(data)
    with qimg.open(str(dst)) as img:
        kinds = {(st.flags, st.host_offset is None) for st in img.extents()}
    # compressed clusters are DATA (stored COMPRESSED) without OFFSET_VALID
    assert (DATA | ALLOCATED | COMPRESSED, True) in kinds


def test_read_data_file_and_backing(qemu_img, qemu_io, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_io("-c", "write -P 0xaa 0 4M", str(base))
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4k", str(top))
    qemu_io("-c", "write -P 0xbb 5000 10000", "-c", "write -z 1M 8k", "-c", "discard 2M 4k", str(top))
    assert _read_all(top) == _raw_of(qemu_img, top, tmp_path)
    for raw_opt in ("off", "on"):
        d = tmp_path / f"d{raw_opt}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file=data{raw_opt}.raw,data_file_raw={raw_opt}",
                 str(d), "2M")
        qemu_io("-c", "write -P 0xcc 4k 100k", "-c", "write -z 1M 64k", str(d))
        assert _read_all(d) == _raw_of(qemu_img, d, tmp_path)
        with qimg.open(str(d)) as img:
            st = img.block_status(4096, 4096)
            assert st.file.endswith(f"data{raw_opt}.raw") and st.host_offset == 4096


def test_map_coalesces_and_skips(qemu_img, qemu_io, tmp_path):
    path = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "1T")
    qemu_io("-c", "write -P 1 0 8M", "-c", "write -P 2 600G 64k", str(path))
    with qimg.open(str(path)) as img:
        runs = list(img.extents())
    assert len(runs) <= 4
    assert runs[0].length == 8 * MiB and runs[0].flags & 0x04


WRITE_VARIANTS = [
    "cluster_size=65536", "cluster_size=512", "cluster_size=4k,refcount_bits=1", "compat=0.10",
    "extended_l2=on", "lazy_refcounts=on", "refcount_bits=64,cluster_size=2M", "compression_type=zstd",
    "data_file=d.raw", "data_file=d.raw,data_file_raw=on", "preallocation=metadata",
    "extended_l2=on,cluster_size=16k,preallocation=falloc",
    "B:cluster_size=65536", "B:compat=0.10", "B:extended_l2=on", "B:cluster_size=512",
]


@pytest.mark.parametrize("variant", WRITE_VARIANTS)
def test_qimg_writes_pass_check(qemu_img, qemu_io, tmp_path, variant, monkeypatch):
    size = 4 * MiB
    backing = variant.startswith("B:")
    opts = variant[2:] if backing else variant
    exp = bytearray(size)
    if backing:
        b = tmp_path / "b.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(b), str(size))
        qemu_io("-c", f"write -P 0x5a 0 {size}", str(b))
        exp[:] = b"\x5a" * size
        opts += ",backing_file=b.qcow2,backing_fmt=qcow2"
    path = tmp_path / "w.qcow2"
    monkeypatch.chdir(tmp_path)
    r = qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(path), str(size))
    assert r.returncode == 0, r.stderr
    rnd = random.Random(7)
    img = qimg.open(str(path), writable=True)
    cs = img.driver.cluster_size
    v3 = img.driver.header.version >= 3
    for _ in range(60):
        op = rnd.choice("wwwzdc")
        off = rnd.randrange(0, size)
        n = min(rnd.choice([1, 511, 4096, cs, 3 * cs + 17, 200000]), size - off)
        if op == "w":
            data = bytes([rnd.randrange(1, 256)]) * n
            img.pwrite(off, data)
            exp[off : off + n] = data
        elif op == "z":
            img.write_zeroes(off, n, unmap=rnd.random() < 0.5)
            exp[off : off + n] = bytes(n)
        elif op == "d":
            img.discard(off, n)
            a, b_ = -(-off // cs) * cs, (off + n) // cs * cs
            if off + n == size:
                b_ = off + n
            if a < b_ and (v3 or not backing):  # v2 with a backing file ignores discards
                exp[a:b_] = bytes(b_ - a)
        elif op == "c" and "data_file" not in opts:
            o = off // cs * cs
            n = min(cs, size - o)
            data = (bytes([rnd.randrange(256)]) * 64 + rnd.randbytes(8)) * (n // 72)
            data += bytes(n - len(data))
            img.write_compressed(o, data)
            exp[o : o + n] = data
    assert img.pread(0, size) == bytes(exp)
    img.close()
    c = qemu_img("check", str(path))
    assert c.returncode == 0, c.stdout + c.stderr
    assert "No errors were found" in c.stdout
    rawp = tmp_path / "exp.raw"
    rawp.write_bytes(exp)
    cmp = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(path), str(rawp))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    if "lazy" in opts:
        info = qemu_img("info", str(path)).stdout
        assert "cleanly shut down: no" not in info


def test_write_shared_cluster_copies(qemu_img, qemu_io, tmp_path):
    """Clusters shared with an internal snapshot (COPIED clear) are copied on write."""
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "2M")
    qemu_io("-c", "write -P 0x11 0 2M", str(path))
    assert qemu_img("snapshot", "-c", "snap", str(path)).returncode == 0
    with qimg.open(str(path), writable=True) as img:
        img.pwrite(1000, b"\x22" * 70000)
        img.write_zeroes(1 * MiB, 65536)
    assert qemu_img("check", str(path)).returncode == 0
    r = qemu_io("-c", "read -P 0x22 1000 70000", "-c", "read -P 0 1M 64k", "-c", "read -P 0x11 0 1000", str(path))
    assert "Pattern verification failed" not in r.stdout, r.stdout
    assert qemu_img("snapshot", "-a", "snap", str(path)).returncode == 0
    r = qemu_io("-c", "read -P 0x11 0 2M", str(path))
    assert "Pattern verification failed" not in r.stdout


def test_large_run_moves_whole_clusters(qemu_img, tmp_path):
    path = tmp_path / "l.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    data = bytes(range(256)) * (32 * MiB // 256)
    with qimg.open(str(path), writable=True) as img:
        calls = []
        f = img.driver.file
        orig = f.pwritev
        f.pwritev = lambda off, bufs: (calls.append(off), orig(off, bufs))[1]
        orig_w = f.pwrite
        f.pwrite = lambda off, d: (calls.append(off), orig_w(off, d))[1]
        img.pwrite(4096, data)
        assert len(calls) < 16
    with qimg.open(str(path)) as img:
        assert img.pread(4096, len(data)) == data
    assert qemu_img("check", str(path)).returncode == 0


@pytest.mark.parametrize("opts", ["preallocation=metadata", "preallocation=metadata,cluster_size=4k,refcount_bits=2",
                                  "extended_l2=on", "extended_l2=on,preallocation=metadata", "data_file=dd.raw",
                                  "compat=0.10", "preallocation=falloc"])
def test_map_and_info_as_qemu(qemu_img, qemu_io, qimg, tmp_path, monkeypatch, opts):
    monkeypatch.chdir(tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "m.qcow2", "4M")
    qemu_io("-c", "write -P 1 64k 100k", "-c", "write -z 1M 64k", "-c", "write -P 2 1M 3k", "m.qcow2")
    for cmd in (["map", "--output=json"], ["info", "--output=json"]):
        exp = qemu_img(*cmd, "m.qcow2")
        got = qimg(*cmd, "m.qcow2")
        assert got.returncode == exp.returncode == 0, got.stderr
        assert got.stdout == exp.stdout


@pytest.mark.parametrize("opts", [[], ["-c"], ["-c", "-o", "compression_type=zstd,cluster_size=4k"],
                                  ["-o", "cluster_size=4k"], ["-o", "compat=0.10"], ["-o", "extended_l2=on"]])
def test_convert_output_identical_to_qemu(qemu_img, qimg, tmp_path, opts):
    """The write path allocates as QEMU does: qimg convert writes the same bytes as qemu-img."""
    from conftest import pattern_bytes

    src = tmp_path / "p.raw"
    src.write_bytes(pattern_bytes(6 * MiB))
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    assert qemu_img("convert", "-O", "qcow2", *opts, str(src), str(a)).returncode == 0
    r = qimg("convert", "-O", "qcow2", *opts, str(src), str(b))
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("off,n", [(4096, 2048), (5000, 100), (61440, 204800), (0, 65536), (1000, 1)])
def test_subcluster_writes_identical_to_qemu(qemu_img, qemu_io, tmp_path, off, n):
    """extended_l2: only the touched subclusters are allocated, the rest still shows the backing."""
    base, a, b = tmp_path / "b.qcow2", tmp_path / "x1.qcow2", tmp_path / "x2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_io("-c", "write -P 9 0 1M", str(base))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", str(base), "-F", "qcow2", str(a))
    qemu_io("-c", "write -z 100k 8k", str(a))
    b.write_bytes(a.read_bytes())
    qemu_io("-c", f"write -P 1 {off} {n}", str(a))
    with qimg.open(str(b), writable=True) as img:
        img.pwrite(off, b"\x01" * n)
    assert a.read_bytes() == b.read_bytes()


OPS = ["write -z 1000 100", "write -z 100k 300k", "discard 0 1M", "discard 64k 64k;write -P 3 0 10k;discard 0 64k",
       "write -P 3 0 300k;write -z -u 64k 128k", "write -P 3 0 300k;write -z 64k 128k",
       "write -P 3 0 300k;discard 10k 300k"]


def _apply(img, ops: str) -> None:
    from qimg.units import parse_size

    for cmd in ops.split(";"):
        p = cmd.split()
        if p[0] == "discard":
            img.discard(parse_size(p[1]), parse_size(p[2]))
        elif p[1] == "-z":
            unmap = p[2] == "-u"
            p = p[1:] if unmap else p
            img.write_zeroes(parse_size(p[2]), parse_size(p[3]), unmap=unmap)
        else:
            img.pwrite(parse_size(p[3]), bytes([int(p[2])]) * parse_size(p[4]))


@pytest.mark.parametrize("variant", ["", "compat=0.10", "extended_l2=on", "B", "B:compat=0.10"])
@pytest.mark.parametrize("ops", OPS)
def test_zero_and_discard_identical_to_qemu(qemu_img, qemu_io, tmp_path, variant, ops):
    """write -z (with and without -u) and discard leave the same bytes as qemu-io."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    if variant.startswith("B"):
        base = tmp_path / "base.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
        qemu_io("-c", "write -P 5 0 64k", str(base))
        compat = "0.10" if "0.10" in variant else "1.1"
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", "-b", str(base), "-F", "qcow2", str(a))
    else:
        qemu_img("create", "-q", "-f", "qcow2", *(["-o", variant] if variant else []), str(a), "1M")
    b.write_bytes(a.read_bytes())
    r = qemu_io(*[x for c in ops.split(";") for x in ("-c", c)], str(a))
    assert r.returncode == 0, r.stderr
    with qimg.open(str(b), writable=True) as img:
        _apply(img, ops)
    assert a.read_bytes() == b.read_bytes()


WRITES = ["write -P 1 1000 70000", "write -P 1 0 3M;write -P 2 100k 1k",
          "write -P 1 5000 1;write -P 2 2M 200k;write -P 3 1M 64k", "write -c -P 1 0 64k;write -P 2 1000 10"]


@pytest.mark.parametrize("variant", ["", "cluster_size=4k", "lazy_refcounts=on", "B", "refcount_bits=1,cluster_size=512"])
@pytest.mark.parametrize("ops", WRITES)
def test_writes_identical_to_qemu(qemu_img, qemu_io, tmp_path, variant, ops):
    """Allocation order, copy-on-write from the backing file and compressed packing as qemu-io."""
    if "-c" in ops and "cluster_size" in variant:
        pytest.skip("QEMU compresses the clusters of one request in parallel (order not fixed)")
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    if variant == "B":
        base = tmp_path / "base.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
        qemu_io("-c", "write -P 5 0 4M", str(base))
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(a))
    else:
        qemu_img("create", "-q", "-f", "qcow2", *(["-o", variant] if variant else []), str(a), "4M")
    b.write_bytes(a.read_bytes())
    assert qemu_io(*[x for c in ops.split(";") for x in ("-c", c)], str(a)).returncode == 0
    from qimg.units import parse_size

    with qimg.open(str(b), writable=True) as img:
        for cmd in ops.split(";"):
            p = cmd.split()
            if p[1] == "-c":
                img.write_compressed(parse_size(p[4]), bytes([int(p[3])]) * parse_size(p[5]))
            else:
                img.pwrite(parse_size(p[3]), bytes([int(p[2])]) * parse_size(p[4]))
    if "-c" in ops:  # qemu-io does not align the file end after compressed writes; convert does
        assert a.read_bytes() == b.read_bytes()[: a.stat().st_size]
    else:
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("backing", ["none", "zero", "data", "short"])
@pytest.mark.parametrize("write", [(1000448, 512), (5, 3000), (65536 + 100, 70000), (4 * MiB - 700, 700)])
def test_partial_cluster_write_keeps_file_sparse_like_qemu(qemu_img, qemu_io, tmp_path, backing, write):
    """A write into part of a new cluster: where the rest reads as zero (QEMU's is_zero_cow),
    QEMU zeroes the cluster in the file and writes only the data; otherwise it copies the rest
    in. The file (and so ``map``'s zero flags within the cluster) must be the same."""
    off, n = write
    paths = []
    for name in ("q", "m"):
        p = tmp_path / f"{name}.qcow2"
        args = []
        if backing != "none":
            b = tmp_path / f"{name}-b.qcow2"
            qemu_img("create", "-q", "-f", "qcow2", str(b), "2M" if backing == "short" else str(4 * MiB))
            if backing in ("data", "short"):
                qemu_io("-c", "write -P 0x33 0 2M", str(b))
            args = ["-b", b.name, "-F", "qcow2"]
        assert qemu_img("create", "-q", "-f", "qcow2", *args, str(p), str(4 * MiB)).returncode == 0
        paths.append(p)
    assert qemu_io("-c", f"write -P 0x44 {off} {n}", str(paths[0])).returncode == 0
    with qimg.open(str(paths[1]), writable=True) as img:
        img.pwrite(off, b"\x44" * n)
    maps = [qemu_img("map", "--output=json", str(p)).stdout.replace(f"{p.stem}-b", "B") for p in paths]
    assert maps[1] == maps[0]
    assert qemu_img("compare", str(paths[0]), str(paths[1])).returncode == 0
