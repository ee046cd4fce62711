"""Differential tests: inspection and chain commands give qemu-img's exact output.

Each case was a difference found by sweeping qemu-img and qimg over images made by
qemu-img/qemu-io; both tools run on the same files and must agree byte for byte.
"""
from __future__ import annotations

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
    for cs in ("65536", "2M", "512"):
        p = str(tmp_path / f"c{cs}.qcow2")
        assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", p, "1G").returncode == 0
        names.append(p)
    e = str(tmp_path / "e.vmdk")
    assert qemu_img("create", "-q", "-f", "vmdk", e, "1G").returncode == 0
    for a in names:
        for b in [*names, e]:
            if a != b:
                _same(qemu_img, qimg, "compare", "-s", a, b)


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
