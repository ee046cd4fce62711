"""Differences scripts/compat-diff found between qimg and qemu-img (both profiles against both
oracles), each kept here once fixed: bitmap's granularity as a uint32, the node name in bitmap
errors, ``snapshot --delete`` without a name, the file ``rebase -c`` leaves, and how progress
lines compare (qemu-img repeats them as its event loop turns)."""
from __future__ import annotations

import json
import re

import pytest
from cli_support import Run, compare_in_copies, run_qemu, run_qemu_io, run_qimg

NODE = re.compile(r"#block\d+")
PROGRESS = re.compile(r"( *\(\d+\.\d+/100%\)(?:\r\n?|\n))\1+")


def _make(d, *cmds: list[str]) -> None:
    for args in cmds:
        r = run_qemu(*args, cwd=d)
        assert r.returncode == 0, (args, r.stderr)


@pytest.mark.parametrize("gran", ["5G", "4G", "6G", "4294967808", "8G", "2G"])
def test_bitmap_granularity_keeps_its_low_32_bits(oracle, tmp_path, gran):
    """qemu-img passes -g on as a uint32: 5G adds a 1 GiB granularity, 4G (0) is refused."""
    def setup(d):
        _make(d, ["create", "-q", "-f", "qcow2", "b.qcow2", "4M"])

    mine, theirs = compare_in_copies(setup, tmp_path, "bitmap", "--add", "-g", gran, "b.qcow2", "b1")
    infos = [json.loads(run_qemu("info", "--output=json", str(tmp_path / d / "b.qcow2")).stdout)
             for d in ("qimg", "qemu")]
    bitmaps = [i.get("format-specific", {}).get("data", {}).get("bitmaps") for i in infos]
    assert bitmaps[0] == bitmaps[1]
    assert (theirs.returncode == 0) == bool(bitmaps[1])


@pytest.mark.parametrize("fmt", ["raw", "qed", "vdi", "vmdk", "vpc", "vhdx", "qcow", "qcow2-v2"])
def test_bitmap_errors_name_the_node(oracle, tmp_path, fmt):
    """QEMU names the image's node ('#block1' and two random digits) where a format cannot
    store bitmaps; qimg says '#block100' (the random digits masked)."""
    opts = ["-f", "qcow2", "-o", "compat=0.10"] if fmt == "qcow2-v2" else ["-f", fmt]
    theirs_dir, mine_dir = tmp_path / "qemu", tmp_path / "qimg"
    for d in (theirs_dir, mine_dir):
        d.mkdir()
        _make(d, ["create", "-q", *opts, "x.img", "4M"])
    for args in (["bitmap", "--add", "x.img", "b1"], ["bitmap", "--add", "-f", opts[1], "x.img", "b1"]):
        theirs = run_qemu(*args, cwd=theirs_dir)
        mine = run_qimg(*args, cwd=mine_dir)
        assert "#block100" in mine.stderr, mine.stderr
        assert (mine.returncode, mine.stdout, NODE.sub("#blockN", mine.stderr).replace("qimg:", "qemu-img:")) == (
            theirs.returncode, theirs.stdout, NODE.sub("#blockN", theirs.stderr))


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc", "qcow"])
def test_snapshot_delete_without_a_name(tmp_path, fmt, monkeypatch):
    """qemu-img 10.0's --delete takes no argument: with no snapshot to compare the NULL name
    with, none is found (qemu-img crashes on a qcow2 image that has snapshots: qimg says why)."""
    from cli_support import run_qemu10

    monkeypatch.setenv("QIMG_COMPAT", "10.0")
    for d in ("qemu", "qimg"):
        (tmp_path / d).mkdir()
        assert run_qemu10("create", "-q", "-f", fmt, "s.img", "4M", cwd=tmp_path / d).returncode == 0
    for args in (["snapshot", "--delete", "s.img"], ["snapshot", "--d", "-f", fmt, "s.img"]):
        theirs = run_qemu10(*args, cwd=tmp_path / "qemu")
        mine = run_qimg(*args, cwd=tmp_path / "qimg")
        assert (mine.returncode, mine.stderr.replace("qimg:", "qemu-img:")) == (theirs.returncode, theirs.stderr)
    if fmt == "qcow2":
        assert run_qemu10("snapshot", "-c", "s1", "s.img", cwd=tmp_path / "qimg").returncode == 0
        mine = run_qimg("snapshot", "--delete", "s.img", cwd=tmp_path / "qimg")
        assert (mine.returncode, mine.stderr) == (1, "qimg: Could not delete snapshot '(null)': no snapshot name given\n")


def test_rebase_compressed_leaves_the_file_qemu_img_leaves(tmp_path):
    """rebase -c (10.0) writes its compressed clusters as they are: the file may end mid-sector
    (no end-of-stream rounding as convert -c has); qemu-img compresses in parallel, so the
    clusters' order varies, but the size, the map and the check are the same."""
    from cli_support import run_qemu10

    def setup(d):
        for args in (["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
                     ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"],
                     ["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]):
            assert run_qemu10(*args, cwd=d).returncode == 0
        for img, cmd in (("base.qcow2", "write -P 1 0 1M"), ("mid.qcow2", "write -P 2 1M 1M"),
                         ("top.qcow2", "write -P 3 2M 64k")):
            assert run_qemu_io("-f", "qcow2", "-c", cmd, img, cwd=d).returncode == 0

    a, b = tmp_path / "qimg", tmp_path / "qemu"
    for d in (a, b):
        d.mkdir()
        setup(d)
    theirs = run_qemu10("rebase", "-c", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=b)
    mine = run_qimg("rebase", "-c", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=a, profile="10.0")
    assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr) == (0, "", "")
    assert (a / "top.qcow2").stat().st_size == (b / "top.qcow2").stat().st_size
    assert (b / "top.qcow2").stat().st_size % 512, "the case this covers: a file ending mid-sector"
    for args in (["map", "--output=json", "top.qcow2"], ["check", "top.qcow2"]):
        assert run_qemu10(*args, cwd=a).stdout == run_qemu10(*args, cwd=b).stdout
    assert run_qemu10("compare", str(a / "top.qcow2"), str(b / "top.qcow2")).stdout == "Images are identical.\n"


def test_commit_progress_lines(oracle, tmp_path):
    """commit -p: the same percentages in the same order (qemu-img repeats each as its event
    loop turns, a varying number of times: repeats compare as one)."""
    def setup(d):
        _make(d, ["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
              ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"])

    def mask(text: str) -> str:
        return PROGRESS.sub(r"\1", text)

    mine, theirs = compare_in_copies(setup, tmp_path, "commit", "-p", "top.qcow2", mask=mask)
    assert isinstance(mine, Run) and "Image committed." in theirs.stdout
