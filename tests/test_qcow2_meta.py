"""qcow2 metadata against qemu-img: byte-identical create, measure, open validation, info,
amend and resize."""
from __future__ import annotations

import filecmp
import json
import shutil
import struct

import pytest
import qimg
from qimg.errors import QimgError

CREATE_CASES = [
    ("", "0"), ("", "3M"), ("compat=0.10", "3M"), ("cluster_size=512,refcount_bits=1", "65M"),
    ("cluster_size=4k,refcount_bits=64", "3M"), ("extended_l2=on", "3M"),
    ("lazy_refcounts=on,compression_type=zstd", "1G"), ("cluster_size=2M", "100G"),
    ("backing_file=base.raw,backing_fmt=raw", "3M"), ("compat=0.10,backing_file=base.raw,backing_fmt=raw", "3M"),
    ("data_file=d.raw", "3M"),
    ("data_file=d.raw,data_file_raw=on", "3M"), ("preallocation=metadata", "3M"),
    ("preallocation=metadata,cluster_size=512", "17M"), ("preallocation=falloc", "3M"),
    ("preallocation=full,cluster_size=1k,refcount_bits=64", "3M"),
    ("extended_l2=on,preallocation=falloc,cluster_size=16k", "3M"),
    ("compat=0.10,preallocation=metadata,cluster_size=1k", "3M"),
    ("cluster_size=512,refcount_bits=64,preallocation=metadata", "3M"),
    ("extended_l2=on,preallocation=metadata,backing_file=base.raw,backing_fmt=raw", "3M"),
    ("data_file=d.raw,preallocation=full", "3M"),
]


@pytest.mark.parametrize("opts,size", CREATE_CASES, ids=[f"{o or 'default'}-{s}" for o, s in CREATE_CASES])
def test_create_byte_identical(qemu_img, tmp_path, monkeypatch, opts, size):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(bytes(4096))
    args = ["-o", opts] if opts else []
    r = qemu_img("create", "-q", "-f", "qcow2", *args, "q.qcow2", size)
    assert r.returncode == 0, r.stderr
    ref = (tmp_path / "q.qcow2").read_bytes()
    ref_data = (tmp_path / "d.raw").read_bytes() if "data_file" in opts else None
    from qimg.units import parse_size

    qimg.create("i.qcow2", "qcow2", parse_size(size), opts)
    assert (tmp_path / "i.qcow2").read_bytes() == ref
    if ref_data is not None:
        assert (tmp_path / "d.raw").read_bytes() == ref_data


ERROR_CASES = ["compat=foo", "cluster_size=1000", "cluster_size=4M", "refcount_bits=3",
               "compat=0.10,refcount_bits=8", "compat=0.10,lazy_refcounts=on", "compat=0.10,extended_l2=on",
               "compat=0.10,data_file=x.raw", "compat=0.10,compression_type=zstd", "compression_type=lz4",
               "data_file_raw=on", "preallocation=foo", "extended_l2=on,cluster_size=8k", "backing_fmt=raw"]


@pytest.mark.parametrize("opts", ERROR_CASES)
def test_create_errors_as_qemu(qemu_img, tmp_path, monkeypatch, opts):
    monkeypatch.chdir(tmp_path)
    r = qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "q.qcow2", "1M")
    assert r.returncode == 1
    with pytest.raises(QimgError) as e:
        qimg.create("i.qcow2", "qcow2", 1 << 20, opts)
    assert r.stderr.strip() == f"qemu-img: q.qcow2: {e.value.message}"


MEASURE = [("", None), ("cluster_size=512,refcount_bits=1", None), ("extended_l2=on", None),
           ("cluster_size=2M,refcount_bits=64", None), ("preallocation=full", None), ("", "img"),
           ("cluster_size=16k,extended_l2=on", "img")]


@pytest.mark.parametrize("opts,src", MEASURE)
def test_measure(qemu_img, qemu_io, tmp_path, opts, src):
    args = ["-o", opts] if opts else []
    if src:
        p = tmp_path / "s.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(p), "64M")
        qemu_io("-c", "write -P 1 0 3M", "-c", "write -P 2 10M 5000", "-c", "write -z 20M 1M", str(p))
        r = qemu_img("measure", "--output=json", "-O", "qcow2", *args, str(p))
        with qimg.open(str(p)) as img:
            got = _measure(opts, img)
    else:
        r = qemu_img("measure", "--output=json", "-O", "qcow2", *args, "--size", "7G")
        got = _measure(opts, None, 7 << 30)
    assert r.returncode == 0, r.stderr
    exp = json.loads(r.stdout)
    assert got["required"] == exp["required"] and got["fully-allocated"] == exp["fully-allocated"]


def _opts(opts):
    from qimg.options import parse_options
    from qimg_qcow2.options import CREATE_OPTS

    return parse_options(opts, CREATE_OPTS)


def _measure(opts, img, size=None):
    from qimg_qcow2.driver import Qcow2Format

    return Qcow2Format.measure(size, _opts(opts), img)


def _patch(path, off, fmt, val):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, val))


BAD = [(72, ">Q", 1 << 5), (72, ">Q", 1 << 40), (20, ">I", 8), (20, ">I", 22), (4, ">I", 4), (96, ">I", 7),
       (100, ">I", 100), (100, ">I", 70000), (104, "B", 1), (104, "B", 2), (36, ">I", 0), (40, ">Q", 3 * 65536 + 1),
       (48, ">Q", 65537), (56, ">I", 0), (56, ">I", 1 << 20), (32, ">I", 3), (8, ">Q", 70000), (36, ">I", 1 << 30),
       (24, ">Q", 1 << 62), (60, ">I", 70000), (64, ">Q", 13)]


@pytest.mark.parametrize("off,fmt,val", BAD)
def test_open_validation_messages(qemu_img, tmp_path, off, fmt, val):
    good = tmp_path / "g.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(good), "1M")
    bad = tmp_path / "b.qcow2"
    shutil.copy(good, bad)
    _patch(bad, off, fmt, val)
    r = qemu_img("info", "-f", "qcow2", str(bad))
    assert r.returncode == 1
    with pytest.raises(QimgError) as e:
        qimg.open(str(bad), "qcow2")
    assert r.stderr.strip() == f"qemu-img: {e.value.message}"


def test_corrupt_and_dirty(qemu_img, qemu_io, tmp_path):
    p = tmp_path / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    _patch(p, 72, ">Q", 2)
    qimg.open(str(p)).close()
    with pytest.raises(QimgError) as e:
        qimg.open(str(p), writable=True)
    assert "qcow2: Image is corrupt; cannot be opened read/write" in e.value.message
    # dirty with lazy refcounts: leaked refcounts get repaired on a writable open
    d = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(d), "1M")
    with qimg.open(str(d), writable=True) as img:
        img.pwrite(0, b"x" * 70000)
        assert img.driver.header.incompatible_features & 1
        img.driver.flush_caches()
        img.driver.dirty_set = False  # simulate a crash: the dirty bit stays set
    assert "cleanly shut down: no" in qemu_img("info", str(d)).stdout
    with qimg.open(str(d), writable=True):
        pass
    assert qemu_img("check", str(d)).returncode == 0
    assert "cleanly shut down: no" not in qemu_img("info", str(d)).stdout


INFO_CASES = ["compat=0.10", "", "lazy_refcounts=on,refcount_bits=8", "extended_l2=on,compression_type=zstd",
              "data_file=d.raw,data_file_raw=on", "backing_file=base.raw,backing_fmt=raw",
              "compat=0.10,backing_file=base.raw,backing_fmt=raw"]


@pytest.mark.parametrize("opts", INFO_CASES)
def test_info_keys(qemu_img, tmp_path, monkeypatch, opts):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(bytes(4096))
    args = ["-o", opts] if opts else []
    qemu_img("create", "-q", "-f", "qcow2", *args, "q.qcow2", "1M")
    info = json.loads(qemu_img("info", "--output=json", "q.qcow2").stdout)
    with qimg.open("q.qcow2", backing=False) as img:
        assert img.driver.format_specific_info() == info["format-specific"]["data"]
        extra = img.driver.info_extra()
        for k, v in extra.items():
            assert info[k] == v, k
        assert img.driver.cluster_size == info["cluster-size"]


def test_amend_and_resize(qemu_img, qemu_io, tmp_path):
    p = tmp_path / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(p), "8M")
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -z 2M 1M", "-c", "write -P 3 7M 1M", str(p))
    steps = []
    with qimg.open(str(p), writable=True) as img:
        img.driver.amend({"refcount_bits": 1}, progress=lambda d, t: steps.append((d, t)))
    assert steps and steps[-1][0] == steps[-1][1] > 0  # (offset, total) as QEMU reports, ending done
    assert qemu_img("check", str(p)).returncode == 0
    with qimg.open(str(p), writable=True) as img:
        img.driver.amend({"refcount_bits": 16, "compat": "0.10"})
    info = qemu_img("info", str(p)).stdout
    assert "compat: 0.10" in info and qemu_img("check", str(p)).returncode == 0
    with qimg.open(str(p), writable=True) as img:
        img.driver.amend({"compat": "1.1", "lazy_refcounts": True})
        img.truncate(20 << 20)
    assert qemu_img("check", str(p)).returncode == 0
    with qimg.open(str(p), writable=True) as img:
        img.truncate(6 << 20, shrink=True)
    assert qemu_img("check", str(p)).returncode == 0
    r = qemu_io("-c", "read -P 1 0 1M", "-c", "read -P 0 2M 4M", str(p))
    assert "verification failed" not in r.stdout
    assert "virtual size: 6 MiB" in qemu_img("info", str(p)).stdout


@pytest.mark.parametrize("mode", ["off", "metadata", "falloc", "full"])
def test_resize_grow_like_qemu(qemu_img, tmp_path, mode):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(a), "1M")
    shutil.copy(a, b)
    assert qemu_img("resize", f"--preallocation={mode}", str(a), "5M").returncode == 0
    with qimg.open(str(b), writable=True) as img:
        img.truncate(5 << 20, preallocation=mode)
    assert qemu_img("check", str(b)).returncode == 0
    assert filecmp.cmp(a, b, shallow=False)


@pytest.mark.parametrize("opts", ["cluster_size=4k", "lazy_refcounts=on", "compat=0.10"])
def test_make_empty_as_qemu_commit(qemu_img, qemu_io, tmp_path, opts):
    base, top, top2 = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "top2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "8M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", str(base), "-F", "qcow2", str(top))
    qemu_io("-c", "write -P 7 100k 1M", "-c", "write -z 3M 64k", str(top))
    shutil.copy(top, top2)
    assert qemu_img("commit", "-q", str(top)).returncode == 0
    with qimg.open(str(top2), writable=True) as img:
        img.driver.make_empty()
    assert qemu_img("check", str(top2)).returncode == 0
    if "0.10" not in opts:
        assert top.read_bytes() == top2.read_bytes()
    # the emptied overlay shows its (committed) base again
    r = qemu_img("compare", str(top2), str(base))
    assert r.returncode == 0, r.stdout + r.stderr


AMEND_CASES = [("extended_l2=on", "compat=foo"), ("extended_l2=on", "compat=0.10"), ("", "backing_fmt=raw"),
               ("", "compat=0.10,lazy_refcounts=on"), ("", "refcount_bits=8,compat=0.10"),
               ("refcount_bits=8", "compat=0.10"), ("data_file=dx.raw", "compat=0.10"), ("", "data_file=x.raw"),
               ("", "refcount_bits=3"), ("", "data_file_raw=on"), ("compression_type=zstd", "compat=0.10"),
               ("lazy_refcounts=on", "compat=0.10"), ("compat=0.10", "compat=1.1,lazy_refcounts=on")]


@pytest.mark.parametrize("create,opts", AMEND_CASES)
def test_amend_as_qemu(qemu_img, qemu_io, qimg, tmp_path, monkeypatch, create, opts):
    monkeypatch.chdir(tmp_path)
    args = ["-o", create] if create else []
    qemu_img("create", "-q", "-f", "qcow2", *args, "a.qcow2", "1M")
    qemu_io("-c", "write -z 0 64k", "-c", "write -P 3 64k 64k", "a.qcow2")
    shutil.copy("a.qcow2", "b.qcow2")
    exp = qemu_img("amend", "-o", opts, "a.qcow2")
    got = qimg("amend", "-o", opts, "b.qcow2")
    assert (got.returncode, got.stderr) == (exp.returncode, exp.stderr.replace("qemu-img: ", "qimg: "))
    if exp.returncode == 0:
        assert qemu_img("check", "b.qcow2").returncode == 0
        assert qemu_img("compare", "a.qcow2", "b.qcow2").returncode == 0
        ia = json.loads(qemu_img("info", "--output=json", "a.qcow2").stdout)["format-specific"]
        ib = json.loads(qemu_img("info", "--output=json", "b.qcow2").stdout)["format-specific"]
        assert ia == ib


def test_downgrade_with_snapshot(qemu_img, qemu_io, qimg, tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(a), "1M")
    qemu_io("-c", "write -z 0 64k", "-c", "write -P 3 64k 64k", str(a))
    qemu_img("snapshot", "-c", "s", str(a))
    qemu_io("-c", "write -z 64k 128k", str(a))
    shutil.copy(a, b)
    assert qemu_img("amend", "-o", "compat=0.10", str(a)).returncode == 0
    assert qimg("amend", "-o", "compat=0.10", str(b)).returncode == 0
    # the same file: QEMU's downgrade sets COPIED on the expanded cluster of an unshared L2
    # table although the cluster is shared with the snapshot (check reports it, for both)
    assert filecmp.cmp(a, b, shallow=False)
    assert qemu_img("check", str(b)).returncode == qemu_img("check", str(a)).returncode
    assert qemu_img("compare", str(a), str(b)).returncode == 0
    for p in (a, b):
        assert qemu_img("snapshot", "-a", "s", str(p)).returncode == 0
    assert qemu_img("compare", str(a), str(b)).returncode == 0


def test_unknown_feature_named_in_table(qemu_img, tmp_path):
    """Unknown incompatible bits are listed by the names of the image's feature table."""
    p = tmp_path / "f.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    data = bytearray(p.read_bytes())
    # rename the table's "compression type" entry (type 0, bit 3) to bit 5, then set bits 5 and 9
    i = data.index(b"compression type") - 2
    data[i + 1] = 5
    data[72:80] = struct.pack(">Q", (1 << 5) | (1 << 9))
    p.write_bytes(bytes(data))
    r = qemu_img("info", str(p))
    with pytest.raises(QimgError) as e:
        qimg.open(str(p))
    assert r.stderr.strip() == f"qemu-img: {e.value.message}"


def _entry(bit, name, kind=0, pad=True):
    return bytes([kind, bit]) + (name.ljust(46, b"\0") if pad else name)


@pytest.mark.parametrize("bits,table", [
    ((63,), None),  # no table at all
    ((63,), b"\x00\x3fTest feature"),  # one partial entry, zero-padded as QEMU reads it
    ((61, 62, 63), b"\x00\x3fTest feature"),
    ((61, 62, 63), b"\x00\x3dTest feature"),
    ((61, 62, 63), _entry(61, b"test1") + _entry(62, b"test2")),
    ((61, 62, 63), _entry(63, b"test3") + _entry(61, b"test1") + _entry(62, b"test2")),  # table order
    ((61, 63), _entry(61, b"first") + _entry(61, b"second") + _entry(63, b"x", kind=1)),  # first wins, types
    ((61, 62), _entry(61, b"a") + _entry(0, b"") + _entry(62, b"hidden")),  # an unnamed entry ends the table
    ((62,), _entry(62, b"n" * 46)),
])
def test_unknown_feature_names_as_qemu(qemu_img, tmp_path, bits, table):
    """The feature name table names unknown incompatible bits as QEMU reads it (iotests 036)."""
    p = tmp_path / "f.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    data = bytearray(p.read_bytes())
    hlen = struct.unpack(">I", data[100:104])[0]
    exts = b""
    if table is not None:
        exts = struct.pack(">II", 0x6803F857, len(table)) + table + bytes(-len(table) % 8)
    exts += bytes(8)  # the end marker
    data[hlen : hlen + 4096 - hlen] = exts.ljust(4096 - hlen, b"\0")
    features = struct.unpack(">Q", data[72:80])[0]
    for b in bits:
        features |= 1 << b
    data[72:80] = struct.pack(">Q", features)
    p.write_bytes(bytes(data))
    r = qemu_img("info", str(p))
    assert r.returncode == 1
    with pytest.raises(QimgError) as e:
        qimg.open(str(p))
    assert r.stderr.strip() == f"qemu-img: {e.value.message}"


def test_unknown_extension_preserved_on_header_rewrite(qemu_img, qimg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(bytes(4096))
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "u.qcow2", "1M")
    d = bytearray((tmp_path / "u.qcow2").read_bytes())
    ext = struct.pack(">II", 0x12345678, 5) + b"hello" + bytes(3)
    d[112:112] = ext
    bo = struct.unpack(">Q", d[8:16])[0]
    d[8:16] = struct.pack(">Q", bo + len(ext))
    del d[65536 : 65536 + len(ext)]
    (tmp_path / "u.qcow2").write_bytes(bytes(d))
    shutil.copy("u.qcow2", "v.qcow2")
    assert qemu_img("amend", "-o", "lazy_refcounts=on", "u.qcow2").returncode == 0
    assert qimg("amend", "-o", "lazy_refcounts=on", "v.qcow2").returncode == 0
    assert (tmp_path / "u.qcow2").read_bytes() == (tmp_path / "v.qcow2").read_bytes()
    assert b"hello" in (tmp_path / "v.qcow2").read_bytes()[:4096]


@pytest.mark.parametrize("args", [["2M"], ["--shrink", "512k"]])
def test_resize_with_snapshot_as_qemu(qemu_img, qemu_io, qimg, tmp_path, args):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(a), "1M")
    qemu_io("-c", "write -P 1 0 1M", str(a))
    qemu_img("snapshot", "-c", "s", str(a))
    qemu_io("-c", "write -P 2 0 100k", str(a))
    shutil.copy(a, b)
    assert qemu_img("resize", str(a), *args).returncode == 0
    r = qimg("resize", str(b), *args)
    assert r.returncode == 0, r.stderr
    assert filecmp.cmp(a, b, shallow=False)


@pytest.mark.parametrize("create,data,bits", [
    ("refcount_bits=1,cluster_size=512", f"{58 * 512}", 64),  # iotests 112: a walk more is needed
    ("refcount_bits=16,cluster_size=512", "600k", 1),  # refused: a refcount of 2 needs 2 bits
    ("refcount_bits=16", "3M", 64), ("refcount_bits=64,cluster_size=4k", "5M", 2),
    ("refcount_bits=1,cluster_size=1k", "2M", 8), ("refcount_bits=8,cluster_size=512", "1M", 32),
    ("refcount_bits=16,cluster_size=512", "3M", 4),
])
def test_refcount_width_change_as_qemu(qemu_img, qemu_io, qimg, tmp_path, create, data, bits):
    """amend -o refcount_bits=N walks the refcount table as QEMU does: the same progress lines
    (more walks when one allocation needs another) and the same file (new blocks where QEMU's
    allocator puts them, the old ones freed), or the same refusal."""
    from conftest import as_qemu

    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", create, str(a), "16M")
    qemu_io("-c", f"write 0 {data}", str(a))
    qemu_img("snapshot", "-c", "s", str(a))
    shutil.copy(a, b)
    want = qemu_img("amend", "-p", "-o", f"refcount_bits={bits}", str(a))
    got = qimg("amend", "-p", "-o", f"refcount_bits={bits}", str(b))
    assert (got.returncode, got.stdout, as_qemu(got.stderr)) == (want.returncode, want.stdout, want.stderr)
    assert filecmp.cmp(a, b, shallow=False)


@pytest.mark.parametrize("args", [["64M"], ["--shrink", "16M"], ["32M"]])
def test_resize_v2_with_snapshot_refused(qemu_img, qemu_io, qimg, tmp_path, args):
    """A v2 image's snapshots need not record their size: qemu-img refuses to resize it, even to
    its own size (iotests 061)."""
    from conftest import as_qemu

    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(a), "32M")
    qemu_io("-c", "write -P 0x2a 24M 64k", str(a))
    qemu_img("snapshot", "-c", "foo", str(a))
    shutil.copy(a, b)
    want = qemu_img("resize", str(a), *args)
    got = qimg("resize", str(b), *args)
    assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr).replace(str(b), str(a))) == (
        want.returncode, want.stdout, want.stderr)
    assert filecmp.cmp(a, b, shallow=False)


def test_too_large_for_cluster_size(qemu_img, qimg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "a.qcow2", "1T")
    got = qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "b.qcow2", "1T")
    assert (got.returncode, got.stderr) == (exp.returncode, exp.stderr.replace("qemu-img:", "qimg:").replace("a.q", "b.q"))
    assert not (tmp_path / "b.qcow2").exists()
    for name in ("a.qcow2", "b.qcow2"):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", name, "1M")
    exp = qemu_img("resize", "a.qcow2", "1T")
    got = qimg("resize", "b.qcow2", "1T")
    assert (got.returncode, got.stderr) == (exp.returncode, exp.stderr.replace("qemu-img:", "qimg:"))
    assert qemu_img("check", "b.qcow2").returncode == 0


@pytest.mark.parametrize("create,args", [("", ["-u", "-b", "other.raw", "-F", "raw"]), ("", ["-u", "-b", ""]),
                                         ("", ["-u", "-b", "x" * 1100, "-F", "raw"]),
                                         ("data_file=d.raw,data_file_raw=on", ["-u", "-b", "base.raw", "-F", "raw"])])
def test_change_backing_file_as_qemu(qemu_img, qimg, tmp_path, monkeypatch, create, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(bytes(4096))
    opts = ["-o", create] if create else ["-b", "base.raw", "-F", "raw"]
    qemu_img("create", "-q", "-f", "qcow2", *opts, "a.qcow2", "1M")
    shutil.copy("a.qcow2", "b.qcow2")
    exp = qemu_img("rebase", *args, "a.qcow2")
    got = qimg("rebase", *args, "b.qcow2")
    assert (got.returncode, got.stderr) == (exp.returncode, exp.stderr.replace("qemu-img:", "qimg:"))
    assert (tmp_path / "a.qcow2").read_bytes() == (tmp_path / "b.qcow2").read_bytes()


@pytest.mark.parametrize("crypt", ["", ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
                                       "encrypt.ivgen-hash-alg=sha256"])
def test_info_luks(qemu_img, qimg, tmp_path, crypt):
    p = tmp_path / "l.qcow2"
    for _ in range(10):  # a short iter-time sometimes makes QEMU's PBKDF benchmark give up
        r = qemu_img("create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2", "-o",
                     "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=200" + crypt, str(p), "1M")
        if "accurate CPU usage" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    for out in ("--output=json", "--output=human"):
        exp = qemu_img("info", out, str(p))
        got = qimg("info", out, str(p))
        assert (got.returncode, got.stdout) == (exp.returncode, exp.stdout)
