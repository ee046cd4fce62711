"""QED plugin against the qemu-img/qemu-io oracle: create, read, write, block status, check."""
from __future__ import annotations

import json
import os
import shutil
import struct

import format_checks
import pytest
import qimg
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO
from qimg.errors import QimgError

MiB = 1 << 20


def _ok(run):
    assert run.returncode == 0, run.stderr
    return run


def qimg_map(path: str) -> list[dict]:
    """qimg's block status in the shape of ``qemu-img map --output=json`` (merged runs)."""
    out: list[dict] = []
    with qimg.open(path) as img:
        last = len(img.chain) - 1
        for st in img.extents():
            e = {"start": 0, "length": st.length, "depth": min(st.depth, last), "present": bool(st.flags & ALLOCATED),
                 "zero": bool(st.flags & ZERO) or not st.flags & DATA, "data": bool(st.flags & DATA)}
            if st.flags & OFFSET_VALID:
                e["offset"] = st.host_offset
            if out:
                p = out[-1]
                e["start"] = p["start"] + p["length"]
                same = all(p.get(k) == e.get(k) for k in ("depth", "present", "zero", "data"))
                contiguous = ("offset" not in p and "offset" not in e) or (
                    "offset" in p and "offset" in e and p["offset"] + p["length"] == e["offset"])
                if same and contiguous:
                    p["length"] += e["length"]
                    continue
            out.append(e)
    return out


def qemu_map(qemu_img, path: str) -> list[dict]:
    return json.loads(_ok(qemu_img("map", "--output=json", path)).stdout)


def same_map(mine: list[dict], theirs: list[dict]) -> None:
    """Equal maps; the depth of unallocated runs is the map command's business, not the driver's."""
    for e in mine + theirs:
        if not e["present"]:
            e.pop("depth")
    assert mine == theirs


def raw_of(qemu_img, path: str, tmp_path) -> bytes:
    out = str(tmp_path / (os.path.basename(path) + ".raw"))
    _ok(qemu_img("convert", "-O", "raw", path, out))
    with open(out, "rb") as f:
        return f.read()


def read_all(path: str) -> bytes:
    with qimg.open(path) as img:
        return img.pread(0, img.size)


CREATE_VARIANTS = [
    ("", "4M"),
    ("cluster_size=4k,table_size=2", "4M"),
    ("cluster_size=256k,table_size=16", "3M"),
    ("cluster_size=1M", "1000"),
    ("table_size=1", "1M"),
    ("", "0"),
]


@pytest.mark.parametrize("opts,size", CREATE_VARIANTS)
def test_create_identical(tmp_path, qemu_img, opts, size):
    a, b = str(tmp_path / "q.qed"), str(tmp_path / "m.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", *(["-o", opts] if opts else []), a, size))
    from qimg.units import parse_size

    qimg.create(b, "qed", parse_size(size), opts)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert os.path.getsize(a) == os.path.getsize(b)


@pytest.mark.parametrize("fmt", ["raw", "qed"])
def test_create_backing_identical(tmp_path, qemu_img, fmt):
    base = str(tmp_path / f"base.{fmt}")
    _ok(qemu_img("create", "-q", "-f", fmt, base, "3M"))
    a, b = str(tmp_path / "q.qed"), str(tmp_path / "m.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", "-b", f"base.{fmt}", "-F", fmt, a))
    qimg.create(b, "qed", None, backing_file=f"base.{fmt}", backing_fmt=fmt)
    assert open(a, "rb").read() == open(b, "rb").read()
    with qimg.open(b) as img:
        assert img.size == 3 * MiB
        assert img.driver.backing_filename == f"base.{fmt}"
        assert img.driver.backing_format == ("raw" if fmt == "raw" else None)
        assert img.backing is not None and img.backing.format == fmt


@pytest.mark.parametrize("opts,size", [
    ("cluster_size=1000", "4M"), ("cluster_size=2k", "4M"), ("cluster_size=128M", "4M"), ("cluster_size=0", "4M"),
    ("table_size=3", "4M"), ("table_size=32", "4M"), ("table_size=0", "4M"),
    ("cluster_size=4k,table_size=1", "2G"),
])
def test_create_errors(tmp_path, qemu_img, opts, size):
    from qimg.units import parse_size

    path = str(tmp_path / "e.qed")
    r = qemu_img("create", "-q", "-f", "qed", "-o", opts, path, size)
    assert r.returncode == 1
    with pytest.raises(QimgError) as ei:
        qimg.create(path, "qed", parse_size(size), opts)
    assert r.stderr.strip() == f"qemu-img: {path}: {ei.value.message}"


PATTERN_CMDS = [
    "write -P 0x5a 1M 64k", "write -P 1 100k 10k", "write -z 3M 128k", "write -P 3 5M 1M",
    "write -P 4 2096640 1k", "write -z 6292456 70k",
]


def test_read_qemu_written(tmp_path, qemu_img, qemu_io):
    path = str(tmp_path / "a.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=16k", path, "7M"))
    _ok(qemu_io("-f", "qed", *sum((["-c", c] for c in PATTERN_CMDS), []), path))
    assert read_all(path) == raw_of(qemu_img, path, tmp_path)
    same_map(qimg_map(path), qemu_map(qemu_img, path))


def test_read_with_backing(tmp_path, qemu_img, qemu_io):
    base = str(tmp_path / "base.qed")
    top = str(tmp_path / "top.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", base, "4M"))
    _ok(qemu_io("-f", "qed", "-c", "write -P 0x11 0 4M", base))
    _ok(qemu_img("create", "-q", "-f", "qed", "-b", "base.qed", "-F", "qed", top, "6M"))
    _ok(qemu_io("-f", "qed", "-c", "write -P 0x22 100k 10k", "-c", "write -z 1M 64k", "-c", "write -P 3 4193280 2k", top))
    assert read_all(top) == raw_of(qemu_img, top, tmp_path)
    same_map(qimg_map(top), qemu_map(qemu_img, top))


def _same_ops(tmp_path, qemu_img, qemu_io, create_args, size, ops):
    """Apply ``ops`` with qemu-io to one image and with qimg to another; compare."""
    a, b = str(tmp_path / "q.qed"), str(tmp_path / "m.qed")
    sz = [size] if size else []
    _ok(qemu_img("create", "-q", "-f", "qed", *create_args, a, *sz))
    _ok(qemu_img("create", "-q", "-f", "qed", *create_args, b, *sz))
    cmds = []
    with qimg.open(b, writable=True) as img:
        for op, off, n, pat in ops:
            if op == "w":
                img.pwrite(off, bytes([pat]) * n)
                cmds.append(f"write -P {pat} {off} {n}")
            else:
                img.write_zeroes(off, n)
                cmds.append(f"write -z {off} {n}")
    _ok(qemu_io("-f", "qed", *sum((["-c", c] for c in cmds), []), a))
    assert open(a, "rb").read() == open(b, "rb").read()
    assert "No errors were found" in _ok(qemu_img("check", b)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", a, b)).stdout
    return a, b


OPS = [
    ("w", 0, 256 << 10, 1), ("z", 64 << 10, 64 << 10, 0), ("z", 200 << 10, 100 << 10, 0),
    ("z", MiB, 64 << 10, 0), ("z", 2 * MiB, 10 << 10, 0), ("w", 3 * MiB - 100, 300, 9),
    ("w", 0, 4096, 7), ("w", 3 * MiB + 5, 70 << 10, 8),
]


def test_write_identical_to_qemu(tmp_path, qemu_img, qemu_io):
    _same_ops(tmp_path, qemu_img, qemu_io, [], "4M", OPS)


def test_write_identical_small_tables(tmp_path, qemu_img, qemu_io):
    # 4k clusters, 2-cluster tables: one L2 table covers 4 MiB, writes cross tables
    ops = [("w", 4 * MiB - 6000, 12000, 5), ("w", 100, 10, 6), ("z", 8 * MiB, 64 << 10, 0)]
    _same_ops(tmp_path, qemu_img, qemu_io, ["-o", "cluster_size=4k,table_size=2"], "12M", ops)


def test_write_cow_backing(tmp_path, qemu_img, qemu_io):
    base = str(tmp_path / "b.raw")
    with open(base, "wb") as f:
        f.write(bytes(range(256)) * (4 * MiB // 256))
    ops = [("w", 100, 5000, 0x78), ("w", MiB - 10, 70 << 10, 0x79), ("z", 3 * MiB, 64 << 10, 0),
           ("z", 2 * MiB + 7, 100, 0)]
    a, b = _same_ops(tmp_path, qemu_img, qemu_io, ["-b", "b.raw", "-F", "raw"], None, ops)
    assert read_all(b) == raw_of(qemu_img, a, tmp_path)


def test_reference_compare_and_map(tmp_path, qemu_img):
    path = str(tmp_path / "m.qed")
    ref = bytearray(5 * MiB)
    qimg.create(path, "qed", len(ref), "cluster_size=8k")
    with qimg.open(path, writable=True) as img:
        for off, n, v in [(0, 10000, 1), (MiB + 3, 300000, 2), (4 * MiB - 1, 2, 3)]:
            img.pwrite(off, bytes([v]) * n)
            ref[off:off + n] = bytes([v]) * n
    rawp = str(tmp_path / "ref.raw")
    with open(rawp, "wb") as f:
        f.write(ref)
    assert "Images are identical" in _ok(qemu_img("compare", "-f", "qed", "-F", "raw", path, rawp)).stdout
    _ok(qemu_img("check", path))
    same_map(qimg_map(path), qemu_map(qemu_img, path))
    info = json.loads(_ok(qemu_img("info", "--output=json", path)).stdout)
    assert info["dirty-flag"] is False and info["cluster-size"] == 8192


def test_check_matches_qemu(tmp_path, qemu_img, qemu_io, qimg):
    import qimg as qlib  # the fixture of the same name runs the CLI

    path = str(tmp_path / "c.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", path, "4M"))
    _ok(qemu_io("-f", "qed", "-c", "write -P 1 0 256k", "-c", "write -P 2 1M 64k", "-c", "write -z 2M 64k", path))

    def same(p):
        q = json.loads(qemu_img("check", "--output=json", p).stdout)
        with qlib.open(p) as img:
            r = img.driver.check(set())
        assert r.total_clusters == q["total-clusters"]
        assert r.allocated_clusters == q.get("allocated-clusters", 0)
        assert r.fragmented_clusters == q.get("fragmented-clusters", 0)
        assert r.leaks == q.get("leaks", 0)
        assert r.corruptions == q.get("corruptions", 0)
        return r

    same(path)
    with open(path, "r+b") as f:  # leak two clusters at the end
        f.truncate(os.path.getsize(path) + 128 * 1024)
    assert same(path).leaks == 2
    with open(path, "r+b") as f:  # an L2 entry pointing at the L1 table: a corruption
        l2 = struct.unpack("<Q", os.pread(f.fileno(), 8, 65536))[0]
        os.pwrite(f.fileno(), struct.pack("<Q", 65536), l2 + 8 * 40)
    assert same(path).corruptions == 1
    with open(path, "r+b") as f:  # and one past the end of the file: a repairable corruption
        os.pwrite(f.fileno(), struct.pack("<Q", 1 << 30), l2 + 8 * 41)
    assert same(path).corruptions == 2
    shutil.copy(path, path + ".q")
    q = qemu_img("check", "-r", "all", path + ".q")
    m = qimg("check", "-r", "all", path)
    assert (m.returncode, m.stdout) == (q.returncode, q.stdout)
    assert open(path, "rb").read() == open(path + ".q", "rb").read()
    # QED has no refcounts: leaks stay, and so does the shared entry (qemu-img leaves them too)
    assert same(path).corruptions == 1


def test_need_check_flag(tmp_path, qemu_img):
    path = str(tmp_path / "d.qed")
    qimg.create(path, "qed", 4 * MiB)
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), struct.pack("<Q", 2), 16)
    info = json.loads(_ok(qemu_img("info", "--output=json", "-U", path)).stdout)
    with qimg.open(path) as img:
        assert img.driver.info_extra()["dirty-flag"] is info["dirty-flag"]
        assert img.driver.needs_check
    with qimg.open(path, writable=True) as img:  # checked and cleared on a read-write open
        assert not img.driver.needs_check
        img.pwrite(0, b"x" * 100)
        with open(path, "rb") as f:  # allocating writes are bracketed by NEED_CHECK
            assert struct.unpack("<Q", f.read(24)[16:24])[0] & 2
    with open(path, "rb") as f:
        assert struct.unpack("<Q", f.read(24)[16:24])[0] == 0


def _poke(src: str, dst: str, off: int, data: bytes) -> None:
    with open(src, "rb") as f:
        buf = bytearray(f.read())
    buf[off:off + len(data)] = data
    with open(dst, "wb") as f:
        f.write(buf)


@pytest.mark.parametrize("off,data", [
    (4, struct.pack("<I", 0x3000)), (8, b"\x03"), (12, b"\x02"), (16, b"\x10"), (40, b"\x00\x11"),
    (48, b"\x01\x01"), (48, b"\x00" * 7 + b"\x40"), (16, b"\x01"),
    (56, struct.pack("<II", 0x40, 0xFFF)), (56, struct.pack("<II", 0x40, 0xFC0)),
    (0, b"QED\0" + b"\xff" * 60),
])
def test_corrupt_headers(tmp_path, qemu_img, off, data):
    good = str(tmp_path / "g.qed")
    bad = str(tmp_path / "h.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4k,table_size=2", good, "1M"))
    if off == 56:
        _poke(good, good, 16, b"\x01")
    _poke(good, bad, off, data)
    r = qemu_img("info", "--output=json", bad)
    if r.returncode == 0:
        with qimg.open(bad, "qed") as img:
            assert img.size == json.loads(r.stdout)["virtual-size"]
            read_all(bad)
    else:
        with pytest.raises(QimgError) as ei:
            qimg.open(bad, "qed")
        assert r.stderr.strip() == f"qemu-img: {ei.value.message}"


def test_table_size_one_refused_like_qemu(tmp_path, qemu_img):
    path = str(tmp_path / "t.qed")
    qimg.create(path, "qed", MiB, "table_size=1")
    r = qemu_img("info", path)
    with pytest.raises(QimgError) as ei:
        qimg.open(path)
    assert r.stderr.strip() == f"qemu-img: {ei.value.message}"


def test_truncate(tmp_path, qemu_img):
    a, b = str(tmp_path / "a.qed"), str(tmp_path / "b.qed")
    qimg.create(a, "qed", 4 * MiB)
    qimg.create(b, "qed", 4 * MiB)
    _ok(qemu_img("resize", a, "20M"))
    with qimg.open(b, writable=True) as img:
        img.truncate(20 * MiB)
        with pytest.raises(QimgError, match="Shrinking"):
            img.truncate(MiB)
        with pytest.raises(QimgError, match="Invalid image size"):
            img.truncate(20 * MiB + 1000)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_probe_and_lazy_import(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "p.qed")
    qimg.create(path, "qed", MiB)
    with qimg.open(path) as img:
        assert img.format == "qed"
    code = "import sys, qimg_qed; assert 'construct' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_info_matches(tmp_path, qemu_img, qimg):
    path = str(tmp_path / "i.qed")
    _ok(qemu_img("create", "-q", "-f", "qed", "-b", "x.raw", "-F", "raw", "-u", path, "2M"))
    r = qimg("info", "--output=json", "-U", path)
    if r.returncode != 0 and "No such command" in r.stderr + r.stdout:
        pytest.skip("the info command is not there yet")
    q = json.loads(_ok(qemu_img("info", "--output=json", "-U", path)).stdout)
    m = json.loads(_ok(r).stdout)
    for k in ("actual-size",):
        q.pop(k, None)
        m.pop(k, None)
    assert m == q


def test_random_writes_against_reference(tmp_path, qemu_img):
    import random

    rng = random.Random(7)
    base = str(tmp_path / "base.raw")
    size = 3 * MiB
    ref = bytearray(rng.randbytes(size))
    with open(base, "wb") as f:
        f.write(ref)
    path = str(tmp_path / "r.qed")
    qimg.create(path, "qed", size, "cluster_size=4k,table_size=2", backing_file="base.raw", backing_fmt="raw")
    with qimg.open(path, writable=True) as img:
        for i in range(60):
            off = rng.randrange(size)
            n = min(rng.choice([1, 511, 4096, 5000, 70000]), size - off)
            if i % 5 == 4:
                img.write_zeroes(off, n)
                ref[off:off + n] = bytes(n)
            else:
                b = bytes([i + 1]) * n
                img.pwrite(off, b)
                ref[off:off + n] = b
        assert img.pread(0, size) == ref
    rawp = str(tmp_path / "ref.raw")
    with open(rawp, "wb") as f:
        f.write(ref)
    assert "No errors were found" in _ok(qemu_img("check", path)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", "-F", "raw", path, rawp)).stdout
    same_map(qimg_map(path), qemu_map(qemu_img, path))


FMT = "qed"
CLI_VARIANTS = ["", "cluster_size=4k,table_size=2"]


CLI_MATCH_VARIANTS = [""]
@pytest.mark.parametrize("create_opts", CLI_MATCH_VARIANTS)
def test_cli_matches_qemu(tmp_path, qemu_img, qemu_io, qimg, create_opts):
    format_checks.cli_matches_qemu(FMT, tmp_path, qemu_img, qemu_io, qimg, create_opts)


@pytest.mark.parametrize("create_opts", CLI_VARIANTS)
def test_cli_convert_roundtrip(tmp_path, qemu_img, qimg, create_opts):
    format_checks.convert_roundtrip(FMT, tmp_path, qemu_img, qimg, create_opts)


def test_rebase_unsafe_identical(tmp_path, qemu_img, qimg):
    d = tmp_path
    _ok(qemu_img("create", "-q", "-f", "raw", str(d / "b1.raw"), "4M"))
    _ok(qemu_img("create", "-q", "-f", "qed", str(d / "b2.qed"), "4M"))
    q, m = str(d / "q.qed"), str(d / "m.qed")
    for p in (q, m):
        _ok(qemu_img("create", "-q", "-f", "qed", "-b", "b1.raw", "-F", "raw", p))
    for args in (["-b", "b2.qed", "-F", "qed"], ["-b", ""], ["-b", "b1.raw", "-F", "raw"]):
        _ok(qemu_img("rebase", "-u", *args, q))
        _ok(qimg("rebase", "-u", *args, m))
        assert open(q, "rb").read() == open(m, "rb").read(), args


@pytest.mark.parametrize("fmt", ["qed", "vmdk"])
def test_commit_keeps_top_like_qemu(tmp_path, qemu_img, qemu_io, qimg, fmt):
    """qemu-img empties the top image only when its driver can; QED and VMDK drivers cannot."""
    maps = []
    for who in ("q", "m"):
        base, top = str(tmp_path / f"b{who}.{fmt}"), str(tmp_path / f"{who}.{fmt}")
        _ok(qemu_img("create", "-q", "-f", fmt, base, "4M"))
        _ok(qemu_img("create", "-q", "-f", fmt, "-b", os.path.basename(base), "-F", fmt, top))
        _ok(qemu_io("-f", fmt, "-c", "write -P 7 0 1M", top))
        r = (qemu_img if who == "q" else qimg)("commit", top)
        assert r.returncode == 0 and r.stdout == "Image committed.\n"
        maps.append(json.loads(_ok(qemu_img("map", "--output=json", top)).stdout))
    assert maps[0] == maps[1]
    assert "Images are identical" in _ok(qemu_img("compare", str(tmp_path / f"bq.{fmt}"),
                                                  str(tmp_path / f"bm.{fmt}"))).stdout


@pytest.mark.parametrize("keep", [2, 4, 6, 20, 63])
@pytest.mark.parametrize("cmd", [["check"], ["info"], ["check", "-f", "qed"]])
def test_truncated_header_as_qemu(tmp_path, qemu_img, qimg, keep, cmd):
    """A header cut short reads zeroes past the end of the file, as QEMU's block layer: the
    magic alone opens as qed and fails on the fields (``QED cluster size is invalid``)."""
    full, path = tmp_path / "full.qed", tmp_path / "t.qed"
    _ok(qemu_img("create", "-q", "-f", "qed", str(full), "1M"))
    path.write_bytes(full.read_bytes()[:keep])
    e, g = qemu_img(*cmd, str(path)), qimg(*cmd, str(path))
    assert (g.returncode, g.stdout, g.stderr.replace("qimg:", "qemu-img:")) == (e.returncode, e.stdout, e.stderr)
