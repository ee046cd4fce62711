"""``snapshot``, ``amend`` and ``bitmap`` against qemu-img: raw fails exactly as qemu-img,
usage errors, and qcow2 where its driver supports the operation."""
from __future__ import annotations

import re

import pytest
from cli_support import compare, compare_in_copies, formats_available, run_qemu, run_qimg


def _setup(folder):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=folder)
    if "qcow2" in formats_available():
        run_qemu("create", "-q", "-f", "qcow2", "q.qcow2", "1M", cwd=folder)
        run_qemu("snapshot", "-c", "s1", "q.qcow2", cwd=folder)


def _strip_dates(text: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)


RAW_OPTS = "driver=raw,file.filename=a.raw"


@pytest.mark.parametrize("args", [
    ["-l", "a.raw"], ["-c", "s", "a.raw"], ["-f", "raw", "-c", "s", "a.raw"], ["-a", "s", "--image-opts", RAW_OPTS],
    ["-d", "s", "--image-opts", RAW_OPTS], ["-c", "s", "--image-opts", RAW_OPTS], ["-l", "-c", "x", "a.raw"],
    ["-l", "-l", "a.raw"], ["a.raw"], ["-U", "-c", "x", "a.raw"], ["-U", "-l", "a.raw"], ["-l"], ["-c"],
    ["-q", "-l", "a.raw"], ["-l", "a.raw", "b.raw"],
])
def test_snapshot_raw(tmp_path, args):
    compare_in_copies(_setup, tmp_path, "snapshot", *args)


@pytest.mark.parametrize("args", [["-l", "q.qcow2"], ["-d", "nonex", "q.qcow2"], ["-c", "s2", "q.qcow2"],
                                  ["-d", "s1", "q.qcow2"], ["-a", "s1", "q.qcow2"], ["-a", "nonex", "q.qcow2"],
                                  # -d takes a name only, -a an ID or a name
                                  ["-d", "1", "q.qcow2"], ["-a", "1", "q.qcow2"]])
def test_snapshot_qcow2(tmp_path, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    # the two set-ups create their snapshot at times that may be a second apart
    compare_in_copies(_setup, tmp_path, "snapshot", *args, mask=_strip_dates)
    a, b = (run_qemu("snapshot", "-l", "q.qcow2", cwd=tmp_path / d).stdout for d in ("qimg", "qemu"))
    # same snapshots (names/ids/sizes), creation times aside
    assert _strip_dates(a) == _strip_dates(b)


@pytest.mark.parametrize("args", [
    ["-f", "raw", "-o", "size=2M", "a.raw"], ["-f", "raw", "a.raw"], ["-f", "raw", "-o", "help", "a.raw"],
    ["-o", "help", "a.raw"], ["-o", "help"], ["-o", "", "a.raw"], ["-o", "size=2M"], ["-o", "x=1", "a.raw", "b"],
    ["-t", "foo", "-f", "raw", "-o", "size=1M", "a.raw"], ["-f", "nosuch", "-o", "help"],
])
def test_amend_raw(tmp_path, args):
    compare_in_copies(_setup, tmp_path, "amend", *args)


@pytest.mark.parametrize("args", [["-o", "cluster_size=4k", "q.qcow2"], ["-o", "foo=1", "q.qcow2"],
                                  ["-o", "lazy_refcounts=on", "q.qcow2"], ["-p", "-o", "lazy_refcounts=on", "q.qcow2"],
                                  ["-q", "-p", "-o", "lazy_refcounts=on", "q.qcow2"]])
def test_amend_qcow2(tmp_path, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    probe = tmp_path / "probe"
    probe.mkdir()
    _setup(probe)
    if "internal error" in run_qimg("amend", "-o", "lazy_refcounts=on", "q.qcow2", cwd=probe).stderr:
        pytest.skip("the qcow2 driver's amend is not there yet")
    compare_in_copies(_setup, tmp_path, "amend", *args)


def _node_name(text: str) -> str:
    # qemu names the raw image's node "#blockNNN", a number qimg has no equivalent for
    return re.sub(r"to (#block\d+|a\.raw):", "to NODE:", text)


@pytest.mark.parametrize("args", [
    ["--add", "-f", "raw", "a.raw", "b0"], ["-f", "raw", "a.raw", "b0"], ["--add", "a.raw"],
    ["--merge", "x", "-f", "raw", "a.raw", "b0"], ["-g", "64k", "--add", "-f", "raw", "a.raw", "b0"],
    ["--remove", "-f", "raw", "a.raw", "b0"], ["--clear", "-f", "raw", "a.raw", "b0"],
    ["--enable", "-f", "raw", "a.raw", "b0"], ["--disable", "-f", "raw", "a.raw", "b0"],
    ["--add", "-g", "1000", "-f", "raw", "a.raw", "b0"], ["--add", "-g", "1x", "-f", "raw", "a.raw", "b0"],
    ["--clear", "-g", "64k", "-f", "raw", "a.raw", "b"], ["--merge", "x", "-b", "a.raw", "-F", "raw", "a.raw", "b"],
    ["-b", "a.raw", "--add", "a.raw", "b"], ["--add", "-F", "raw", "-f", "raw", "a.raw", "b0"],
    ["--remove", "--add", "-f", "raw", "a.raw", "b"], ["--add", "-f", "raw", "a.raw", ""],
    ["--object", "secret,id=s0,data=x", "--remove", "-f", "raw", "a.raw", "b"],
])
def test_bitmap_raw(tmp_path, args):
    (tmp_path / "qimg").mkdir()
    (tmp_path / "qemu").mkdir()
    _setup(tmp_path / "qimg")
    _setup(tmp_path / "qemu")
    mine = run_qimg("bitmap", *args, cwd=tmp_path / "qimg")
    theirs = run_qemu("bitmap", *args, cwd=tmp_path / "qemu")
    assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout)
    assert _node_name(mine.stderr.replace("qimg:", "qemu-img:")) == _node_name(theirs.stderr)


@pytest.mark.parametrize("args", [["--add", "-g", "64k", "q.qcow2", "b1"], ["--add", "--disable", "q.qcow2", "b1"],
                                  ["--add", "--merge", "nope", "q.qcow2", "b1"], ["--remove", "q.qcow2", "b1"],
                                  ["--add", "--clear", "--enable", "q.qcow2", "b1"]])
def test_bitmap_qcow2(tmp_path, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    compare_in_copies(_setup, tmp_path, "bitmap", *args)
    a, b = (run_qemu("info", "q.qcow2", cwd=tmp_path / d).stdout for d in ("qimg", "qemu"))
    strip = lambda t: re.sub(r"disk size: .*", "", re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "", t))  # noqa: E731
    assert strip(a) == strip(b)


def test_bitmap_library_defaults():
    """The optional driver interface: a format without bitmaps answers with qemu's messages."""
    from qimg.driver import Format
    from qimg.errors import NotSupported

    drv = Format.__new__(Format)
    drv.filename = "x"
    with pytest.raises(NotSupported, match="Can't store persistent bitmaps"):
        drv.bitmap_add("b", None)
    for m in ("bitmap_remove", "bitmap_clear", "bitmap_enable", "bitmap_disable"):
        with pytest.raises(NotSupported, match="Dirty bitmap 'b' not found"):
            getattr(drv, m)("b")


def test_snapshot_list_formatting_matches_qemu(tmp_path):
    """The table from SnapshotInfo data equals qemu-img's for the same snapshot."""
    import json

    from qimg.driver import SnapshotInfo
    from qimg.ops.snapshot import format_list

    if "qcow2" not in formats_available():
        pytest.skip("needs a qcow2 image made by qemu-img and qimg's qcow2 plugin for parity")
    run_qemu("create", "-q", "-f", "qcow2", "q.qcow2", "1M", cwd=tmp_path)
    run_qemu("snapshot", "-c", "a-rather-long-snapshot-name", "q.qcow2", cwd=tmp_path)
    run_qemu("snapshot", "-c", "short", "q.qcow2", cwd=tmp_path)
    info = json.loads(run_qemu("info", "--output=json", "q.qcow2", cwd=tmp_path).stdout)
    snaps = [SnapshotInfo(id=s["id"], name=s["name"], vm_state_size=s["vm-state-size"], date_sec=s["date-sec"],
                          date_nsec=s["date-nsec"], vm_clock_nsec=s["vm-clock-sec"] * 10**9 + s["vm-clock-nsec"],
                          icount=s.get("icount")) for s in info["snapshots"]]
    assert format_list(snaps) == run_qemu("snapshot", "-l", "q.qcow2", cwd=tmp_path).stdout
    compare(tmp_path, "snapshot", "-l", "q.qcow2")


def _amend_setup(size: str, *, v2: bool = False, snapshot: bool = False):
    def setup(folder):
        args = ["-o", "compat=0.10"] if v2 else []
        run_qemu("create", "-q", "-f", "qcow2", *args, "q.qcow2", size, cwd=folder)
        if snapshot:
            run_qemu("snapshot", "-c", "s1", "q.qcow2", cwd=folder)
    return setup


@pytest.mark.parametrize("opts, size, v2, snapshot", [
    ("compat=0.10", "4M", False, False), ("compat=0.10", "2G", False, False), ("compat=0.10", "2G", False, True),
    ("refcount_bits=4", "4M", False, False), ("refcount_bits=64", "2G", False, False),
    ("refcount_bits=1", "4M", False, False), ("compat=1.1", "4M", True, False),
    ("compat=1.1,refcount_bits=8", "4M", True, False), ("lazy_refcounts=on", "4M", False, False),
    ("compat=0.10,refcount_bits=16", "4M", False, False), ("size=8M", "4M", False, False),
])
def test_amend_progress_qcow2(tmp_path, opts, size, v2, snapshot):
    """``amend -p`` prints qemu-img's lines: each operation (upgrade, refcount width,
    downgrade) reports its steps, the total projected from the operations done so far."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    compare_in_copies(_amend_setup(size, v2=v2, snapshot=snapshot), tmp_path, "amend", "-p", "-o", opts, "q.qcow2")
