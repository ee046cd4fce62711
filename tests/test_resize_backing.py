"""Growing an image whose backing file is longer than it (qemu-iotests 292).

QEMU's block layer asks the driver to zero the grown area (BDRV_REQ_ZERO_WRITE) when the
backing file would otherwise show through it: qcow2 makes whole (sub)clusters zero clusters
and writes zeroes over the unaligned head (version 2 images cannot: "Failed to zero out new
clusters: Operation not supported"); drivers that cannot zero (qed) are refused the resize.
Each case runs qemu-img and qimg on copies of one image made by qemu-img; bytes and messages
are compared, and the grown tail is read back through qemu-io.
"""
from __future__ import annotations

import shutil

import pytest
from conftest import as_qemu


def _bytes(text: str) -> int:
    return int(text[:-1]) << {"k": 10, "M": 20}[text[-1]]


@pytest.fixture
def backing(tmp_path, qemu_img, qemu_io):
    path = tmp_path / "back.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(path), "1M").returncode == 0
    assert qemu_io("-c", "write -P 0x11 0 1M", str(path)).returncode == 0
    return path


@pytest.mark.parametrize("opts", ["compat=1.1", "extended_l2=on", "cluster_size=4k", "compat=0.10"])
@pytest.mark.parametrize("shrink,grow", [("520k", "567k"), ("512k", "1M"), ("100k", "900k"), ("520k", "2M")])
def test_grown_tail_reads_zeroes(tmp_path, qemu_img, qemu_io, qimg, backing, opts, shrink, grow):
    img = tmp_path / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", "back.qcow2", "-F", "qcow2",
                    str(img), "1M").returncode == 0
    assert qemu_io("-c", "write -P 0x22 0 64k", str(img)).returncode == 0
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    shutil.copyfile(img, theirs)
    shutil.copyfile(img, mine)
    for run, path in ((qemu_img, theirs), (qimg, mine)):
        assert run("resize", "--shrink", str(path), shrink).returncode == 0
    q = qemu_img("resize", str(theirs), grow)
    i = qimg("resize", str(mine), grow)
    assert (i.returncode, as_qemu(i.stdout), as_qemu(i.stderr)) == (q.returncode, q.stdout, q.stderr)
    assert theirs.read_bytes() == mine.read_bytes()
    if q.returncode == 0:
        old, new = _bytes(shrink), _bytes(grow)
        r = qemu_io("-c", f"read -P 0 {old} {new - old}", str(mine))
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def test_write_at_the_end_copies_backing_data_beyond_it(tmp_path, qemu_img, qemu_io, backing):
    """A write into the last, partial cluster copies the rest of the cluster from the backing
    file as QEMU does, beyond the image's end too (the backing file is longer)."""
    import qimg as lib

    img = tmp_path / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "back.qcow2", "-F", "qcow2", str(img), "520k").returncode == 0
    mine = tmp_path / "i.qcow2"
    shutil.copyfile(img, mine)
    assert qemu_io("-c", "write -P 0x33 516k 4k", str(img)).returncode == 0
    with lib.open(str(mine), writable=True) as im:
        im.pwrite(516 << 10, b"\x33" * 4096)
    assert img.read_bytes() == mine.read_bytes()


def test_qed_refuses_to_grow_over_a_longer_backing_file(tmp_path, qemu_img, qimg, backing):
    img = tmp_path / "top.qed"
    assert qemu_img("create", "-q", "-f", "qed", "-b", "back.qcow2", "-F", "qcow2", str(img), "512k").returncode == 0
    mine = tmp_path / "i.qed"
    shutil.copyfile(img, mine)
    q = qemu_img("resize", "-f", "qed", str(img), "1M")
    i = qimg("resize", "-f", "qed", str(mine), "1M")
    assert (i.returncode, as_qemu(i.stderr)) == (q.returncode, q.stderr) == (1, "qemu-img: Block driver does not "
                                                                           "support requested flags\n")
    assert img.read_bytes() == mine.read_bytes()


@pytest.mark.parametrize("mode", ["metadata", "falloc", "full"])
@pytest.mark.parametrize("ext", ["off", "on"])
@pytest.mark.parametrize("with_backing", [False, True])
def test_preallocated_grow_keeps_the_partial_last_cluster(tmp_path, qemu_img, qemu_io, qimg, mode, ext,
                                                          with_backing):
    """qemu-iotests 271's resizes with preallocation: the cluster holding an unaligned old end
    keeps what it read (its own data, or the backing file's), the grown area reads zeroes.
    falloc/full allocate that cluster anew and copy its head into it (QEMU's COW), metadata
    allocates it when it was not (copying the backing file's data); the old one is freed. The
    (sub)cluster after the new end gets the backing file's data (or zeroes) and the file ends
    there, as QEMU's allocation copies it (COW)."""
    img = tmp_path / "top.qcow2"
    args = ["-F", "raw", "-b", "base.raw"] if with_backing else []
    if with_backing:
        assert qemu_img("create", "-q", "-f", "raw", str(tmp_path / "base.raw"), "1M").returncode == 0
        assert qemu_io("-f", "raw", "-c", "write -P 0xff 0 1M", str(tmp_path / "base.raw")).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"extended_l2={ext}", *args, str(img),
                    "503k").returncode == 0
    if not with_backing:
        assert qemu_io("-c", "write -P 0xff 0 503k", str(img)).returncode == 0
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    shutil.copyfile(img, theirs)
    shutil.copyfile(img, mine)
    q = qemu_img("resize", f"--preallocation={mode}", str(theirs), "1013k")
    i = qimg("resize", f"--preallocation={mode}", str(mine), "1013k")
    assert (i.returncode, as_qemu(i.stdout), as_qemu(i.stderr)) == (q.returncode, q.stdout, q.stderr)
    r = qemu_io("-c", "read -P 0xff 0 503k", "-c", "read -P 0 503k 510k", str(mine))
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout
    assert qemu_img("check", str(mine)).returncode == 0
    assert theirs.read_bytes() == mine.read_bytes()
