"""Differential tests: inspection and chain commands give qemu-img's exact output.

Each case was a difference found by sweeping qemu-img and qimg over images made by
qemu-img/qemu-io; both tools run on the same files and must agree byte for byte.
"""
from __future__ import annotations

import os
import shutil

import pytest
from conftest import as_qemu


def _same(qemu_img, qimg, *args: str) -> None:
    q = qemu_img(*args)
    m = qimg(*args)
    assert (m.returncode, m.stdout, as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr), args


@pytest.fixture
def full_images(tmp_path, qemu_img, qemu_io):
    """A 4 MiB raw image written everywhere and its copies in formats whose QEMU drivers
    report block status one block/grain/cluster/L2 table at a time."""
    raw = tmp_path / "full.raw"
    assert qemu_img("create", "-q", "-f", "raw", str(raw), "4M").returncode == 0
    assert qemu_io("-f", "raw", "-c", "write -P 7 0 4M", str(raw)).returncode == 0
    out = {"raw": str(raw)}
    for fmt in ("qcow2", "qcow", "vdi", "vmdk", "vpc"):
        p = tmp_path / f"full.{fmt}"
        assert qemu_img("convert", "-O", fmt, str(raw), str(p)).returncode == 0
        out[fmt] = str(p)
    return out


@pytest.mark.parametrize("a,b", [("raw", "vdi"), ("vdi", "raw"), ("raw", "vmdk"), ("qcow2", "vdi"),
                                 ("qcow", "vdi"), ("vmdk", "qcow"), ("vdi", "vmdk"), ("raw", "qcow")])
def test_compare_strict_run_ends(full_images, qemu_img, qimg, a, b):
    # strict mode compares the EOF flag: it depends on where each driver's run ends
    _same(qemu_img, qimg, "compare", "-s", full_images[a], full_images[b])


def test_compare_strict_qcow2_l2_span(tmp_path, qemu_img, qimg):
    # an unallocated qcow2 run ends with the range its L2 table maps (512 MiB at 64 KiB)
    names = []
    for cs in ("65536", "2M", "4096"):
        p = str(tmp_path / f"c{cs}.qcow2")
        assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", p, "600M").returncode == 0
        names.append(p)
    e = str(tmp_path / "e.vmdk")
    assert qemu_img("create", "-q", "-f", "vmdk", e, "8M").returncode == 0
    for a in names:
        for b in names:
            if a != b:
                _same(qemu_img, qimg, "compare", "-s", a, b)
    small = str(tmp_path / "s.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", small, "8M").returncode == 0
    _same(qemu_img, qimg, "compare", "-s", e, small)
    _same(qemu_img, qimg, "compare", "-s", small, e)


def test_compare_strict_vdi_unallocated_blocks(tmp_path, qemu_img, qemu_io, qimg):
    a, b = str(tmp_path / "a.vdi"), str(tmp_path / "b.vdi")
    for p in (a, b):
        assert qemu_img("create", "-q", "-f", "vdi", p, "4M").returncode == 0
    assert qemu_io("-f", "vdi", "-c", "write -P 0 1M 1M", a).returncode == 0
    _same(qemu_img, qimg, "compare", "-s", a, b)


@pytest.mark.parametrize("sub", ["monolithicSparse", "streamOptimized", "monolithicFlat"])
@pytest.mark.parametrize("repair", ["leaks", "all"])
def test_vmdk_check_repair_is_unsupported(tmp_path, qemu_img, qimg, sub, repair):
    p = str(tmp_path / "a.vmdk")
    assert qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={sub}", p, "1M").returncode == 0
    _same(qemu_img, qimg, "check", "-r", repair, p)
    _same(qemu_img, qimg, "check", p)


def test_snapshot_apply_on_probed_raw_warns_twice(tmp_path, qemu_img, qimg):
    p = str(tmp_path / "a.raw")
    assert qemu_img("create", "-q", "-f", "raw", p, "1M").returncode == 0
    _same(qemu_img, qimg, "snapshot", "-a", "x", p)
    _same(qemu_img, qimg, "snapshot", "-f", "raw", "-a", "x", p)
    _same(qemu_img, qimg, "snapshot", "-c", "x", p)


def _bitmap_image(tmp_path, qemu_img, qemu_io) -> str:
    p = str(tmp_path / "bm.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", p, "4M").returncode == 0
    assert qemu_img("bitmap", "--add", p, "b1").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "131072", "--disable", p, "b2").returncode == 0
    assert qemu_io("-f", "qcow2", "-c", "write -P 1 0 64k", p).returncode == 0
    return p


def _volatile(line: str) -> bool:
    return any(k in line for k in ("actual-size", "date-sec", "date-nsec", "vm-clock"))


def _same_result(tmp_path, qemu_img, qimg, src: str, *args: str) -> None:
    """Run the command on two copies; the outputs and the resulting images' check, map, info
    and file size must be the same."""
    paths = []
    for tool, tag in ((qemu_img, "q"), (qimg, "m")):
        dst = str(tmp_path / f"out.{tag}.qcow2")
        shutil.copyfile(src, dst)
        r = tool(*[dst if a == "IMG" else a for a in args])
        paths.append((dst, r))
    (qp, qr), (mp, mr) = paths
    assert (mr.returncode, mr.stdout.replace(mp, qp), as_qemu(mr.stderr).replace(mp, qp)) == \
        (qr.returncode, qr.stdout, qr.stderr)
    for cmd in (("check",), ("map", "--output=json"), ("info", "--output=json")):
        a, b = qemu_img(*cmd, qp), qemu_img(*cmd, mp)
        strip = [ln for ln in a.stdout.replace(qp, "X").splitlines() if not _volatile(ln)]
        strip2 = [ln for ln in b.stdout.replace(mp, "X").splitlines() if not _volatile(ln)]
        assert strip2 == strip, cmd
    assert os.path.getsize(mp) == os.path.getsize(qp)


@pytest.mark.parametrize("args", [
    ("--remove", "IMG", "b1"), ("--remove", "IMG", "b2"), ("--clear", "IMG", "b2"),
    ("--disable", "IMG", "b1"), ("--merge", "b1", "IMG", "b2"), ("--add", "IMG", "b3"),
    ("--add", "IMG", "b3", "--merge", "b1"), ("--enable", "IMG", "nosuch"),
    ("--add", "-g", "3000", "IMG", "b6"),
])
def test_bitmap_layout_like_qemu(tmp_path, qemu_img, qemu_io, qimg, args):
    # QEMU keeps bitmaps in memory and stores all of them when the image closes
    src = _bitmap_image(tmp_path, qemu_img, qemu_io)
    _same_result(tmp_path, qemu_img, qimg, src, "bitmap", *args)


@pytest.mark.parametrize("args", [("resize", "IMG", "100M"), ("snapshot", "-c", "s1", "IMG"),
                                  ("check", "-r", "all", "IMG"), ("rebase", "-u", "-b", "", "IMG")])
def test_read_write_open_stores_bitmaps(tmp_path, qemu_img, qemu_io, qimg, args):
    src = _bitmap_image(tmp_path, qemu_img, qemu_io)
    _same_result(tmp_path, qemu_img, qimg, src, *args)


@pytest.mark.parametrize("opts", ["compat=0.10", "lazy_refcounts=on"])
def test_commit_empties_top_like_qemu(tmp_path, qemu_img, qemu_io, qimg, opts):
    # without the complete-empty path (v2, bitmaps, ...) QEMU discards clusters, keeps L2 tables
    outs = []
    for tool, tag in ((qemu_img, "q"), (qimg, "m")):
        base, top = str(tmp_path / f"b.{tag}"), str(tmp_path / f"t.{tag}")
        assert qemu_img("create", "-q", "-f", "qcow2", base, "4M").returncode == 0
        assert qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", base, "-F", "qcow2", top).returncode == 0
        assert qemu_io("-f", "qcow2", "-c", "write -P 5 0 128k", "-c", "write -P 6 3M 64k", top).returncode == 0
        if opts != "compat=0.10":
            assert qemu_img("bitmap", "--add", top, "t1").returncode == 0
        assert tool("commit", top).returncode == 0
        # (the base's layout is left out: QEMU's commit job allocates in varying order)
        outs.append((qemu_img("check", top).stdout.replace(top, "X"), os.path.getsize(top)))
    assert outs[1] == outs[0]


def _unaligned_l2_entry(tmp_path, qemu_img, qemu_io, index: int) -> str:
    """A qcow2 image whose L2 entry ``index`` points to an unaligned cluster (read fails: EIO)."""
    import struct

    p = str(tmp_path / f"bad{index}.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", p, "4M").returncode == 0
    assert qemu_io("-f", "qcow2", "-c", "write -P 1 0 128k", "-c", "write -P 2 1M 64k", p).returncode == 0
    with open(p, "r+b") as f:
        d = f.read()
        l1 = struct.unpack(">Q", d[40:48])[0]
        l2 = struct.unpack(">Q", d[l1 : l1 + 8])[0] & 0x00FFFFFFFFFFFE00
        data0 = struct.unpack(">Q", d[l2 : l2 + 8])[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2 + 8 * index)
        f.write(struct.pack(">Q", (1 << 63) | (data0 + 512)))
    return p


@pytest.mark.parametrize("index", [2, 40])
def test_block_status_error_like_qemu(tmp_path, qemu_img, qemu_io, qimg, index):
    # map prints what it finished before the failing query; compare names the image only
    bad = _unaligned_l2_entry(tmp_path, qemu_img, qemu_io, index)
    good = str(tmp_path / "good.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", good, "4M").returncode == 0
    _same(qemu_img, qimg, "map", "--output=json", bad)
    _same(qemu_img, qimg, "map", bad)
    _same(qemu_img, qimg, "compare", good, bad)
    _same(qemu_img, qimg, "compare", "-s", bad, good)


def _qed_bad_entry(tmp_path, qemu_img, qemu_io) -> str:
    """A QED image whose second L2 entry points far past the end of the file."""
    import struct

    p = str(tmp_path / "bad.qed")
    assert qemu_img("create", "-q", "-f", "qed", p, "4M").returncode == 0
    assert qemu_io("-f", "qed", "-c", "write -P 1 0 128k", "-c", "write -P 2 2M 64k", p).returncode == 0
    with open(p, "r+b") as f:
        d = f.read()
        cs = struct.unpack("<I", d[4:8])[0]
        l1 = struct.unpack("<Q", d[40:48])[0]
        l2 = struct.unpack("<Q", d[l1 : l1 + 8])[0]
        f.seek(l2 + 8)
        f.write(struct.pack("<Q", len(d) + 100 * cs))
    return p


@pytest.mark.parametrize("repair", ["leaks", "all"])
def test_qed_check_repairs_everything_with_any_r(tmp_path, qemu_img, qemu_io, qimg, repair):
    src = _qed_bad_entry(tmp_path, qemu_img, qemu_io)
    _same_result(tmp_path, qemu_img, qimg, src, "check", "-r", repair, "IMG")


def test_qed_bad_entry_map_error(tmp_path, qemu_img, qemu_io, qimg):
    src = _qed_bad_entry(tmp_path, qemu_img, qemu_io)
    _same(qemu_img, qimg, "map", "--output=json", src)
    _same(qemu_img, qimg, "check", src)


def test_vmdk_grain_past_end_of_file(tmp_path, qemu_img, qemu_io, qimg):
    # QEMU maps such a grain as data and reads zeroes from it; check reports it
    import struct

    p = str(tmp_path / "k.vmdk")
    ref = str(tmp_path / "ref.vmdk")
    for x in (p, ref):
        assert qemu_img("create", "-q", "-f", "vmdk", x, "4M").returncode == 0
        assert qemu_io("-f", "vmdk", "-c", "write -P 1 0 128k", x).returncode == 0
    with open(p, "r+b") as f:
        d = f.read(1 << 20)
        gd = struct.unpack("<Q", d[56:64])[0] * 512
        gt = struct.unpack("<I", d[gd : gd + 4])[0] * 512
        f.seek(gt + 4 * 5)
        f.write(struct.pack("<I", 10**6))
    for args in (("map", "--output=json", p), ("map", p), ("compare", ref, p), ("check", p)):
        _same(qemu_img, qimg, *args)


def test_rebase_without_backing_format_copies_then_fails(tmp_path, qemu_img, qemu_io, qimg):
    # safe mode copies the differences first; only changing the name then fails (as qemu-img)
    outs = []
    for tool, tag in ((qemu_img, "q"), (qimg, "m")):
        d = tmp_path / tag
        d.mkdir()
        b, o, t = str(d / "b.qcow2"), str(d / "o.qcow2"), str(d / "t.qcow2")
        assert qemu_img("create", "-q", "-f", "qcow2", b, "4M").returncode == 0
        assert qemu_io("-f", "qcow2", "-c", "write -P 1 0 1M", b).returncode == 0
        assert qemu_img("create", "-q", "-f", "qcow2", o, "4M").returncode == 0
        assert qemu_io("-f", "qcow2", "-c", "write -P 9 2M 1M", o).returncode == 0
        assert qemu_img("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", t).returncode == 0
        r = tool("rebase", "-b", o, t)
        outs.append((r.returncode, as_qemu(r.stderr).replace(str(d), "D"),
                     qemu_img("map", "--output=json", t).stdout, qemu_img("check", t).stdout.replace(str(d), "D")))
    assert outs[1] == outs[0]
