"""Crash consistency of qimg's write-heavy qcow2 commands (issue 6).

Each command is killed (SIGKILL) just before its n-th write to the images it modifies; the writes
are counted in the qimg process itself (the mechanism of test_hostile's convert test), so every
kill point is exact and repeatable. After each kill:

* ``qemu-img check`` finds no corruption and no check error in any image (leaks are allowed, as
  after a QEMU crash);
* the images the command only reads are byte-identical to before;
* once the kill point lies beyond the last write (the command completed), the guest view equals
  what qemu-img produces for the same command on copies of the same images.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import CRASHER

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
if (QEMU_IMG is None or QEMU_IO is None) and os.environ.get("CI"):
    raise RuntimeError("qemu-img/qemu-io (qemu-utils) are required in CI: the oracle must not be skipped")
pytestmark = pytest.mark.skipif(QEMU_IMG is None or QEMU_IO is None,
                                reason="qemu-img/qemu-io (qemu-utils) are not installed")
MIB = 1 << 20



def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def _qemu_img(*args: str) -> None:
    p = _run(QEMU_IMG, *args)
    assert p.returncode == 0, f"qemu-img {' '.join(args)}: {p.stderr}"


def _qemu_io(img: Path, *cmds: str) -> None:
    args = [QEMU_IO, "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    p = _run(*args, str(img))
    assert p.returncode == 0 and "error" not in p.stdout.lower(), p.stdout + p.stderr


def _crash_run(args: list[str], written: list[Path], limit: int,
               count_file: Path | None = None) -> int:
    env = {**os.environ, "QIMG_CRASH_AFTER": str(limit),
           "QIMG_CRASH_FILES": os.pathsep.join(str(p.resolve()) for p in written)}
    if count_file is not None:
        env["QIMG_CRASH_COUNT"] = str(count_file)
    p = subprocess.run([sys.executable, "-c", CRASHER, *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode in (0, -9), f"qimg {' '.join(args)} (limit {limit}): {p.stderr}"
    return p.returncode


def _assert_consistent(img: Path, where: str, copied_window: bool = False) -> None:
    """No corruption, no check error. ``copied_window``: OFLAG_COPIED mismatches alone are
    tolerated (see test_snapshot_create).

    An image killed with its dirty flag set is consistent in QEMU's crash model when its first
    read-write open repairs it: emptying an image (commit's make_completely_empty, QEMU's order)
    marks it dirty before breaking its refcounts, as QEMU does (iotest 098: "There may be errors,
    but they should be fixed by opening the image"); qemu-io's open repairs it, then check runs."""
    if _info(img).get("dirty-flag"):
        _qemu_io(img, "close")
        assert not _info(img).get("dirty-flag"), f"{where}: {img.name} is still dirty after a read-write open"
    p = _run(QEMU_IMG, "check", "--output=json", "-f", "qcow2", str(img))
    report = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    msg = f"{where}: qemu-img check {img.name} exit {p.returncode}\n{p.stdout}{p.stderr}"
    assert report.get("check-errors", 0) == 0, msg
    if copied_window and p.returncode == 2:
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("ERROR")]
        assert errors and all(ln.startswith("ERROR OFLAG_COPIED ") for ln in errors), msg
        return
    assert p.returncode in (0, 3), msg
    assert report.get("corruptions", 0) == 0, msg


def _kill_points(total: int, most: int = 9) -> list[int]:
    """Every point when there are few; else Fibonacci-like points below ``total`` (at most
    ``most``, spread), then total - 1 (before the last write) and total (completed)."""
    if total <= 12:
        return list(range(total + 1))
    fib, a, b = [], 1, 2
    while a < total - 1:
        fib.append(a)
        a, b = b, a + b
    if len(fib) > most:
        step = len(fib) / most
        fib = sorted({fib[int(i * step)] for i in range(most)})
    return sorted({0, *fib, max(total - 1, 0), total})


class Scenario:
    """Images built once (pristine copies), a qimg command, and the files it writes/only reads."""

    def __init__(self, root: Path, names: list[str], writes: list[str], reads: list[str],
                 cmd: list[str], stable: list[str], copied_window: bool = False):
        self.root, self.names, self.writes, self.reads, self.cmd = root, names, writes, reads, cmd
        self.stable, self.copied_window = stable, copied_window  # guest view kept at every kill
        self.pristine = root / "pristine"

    def fresh(self, into: Path) -> Path:
        """A copy of the pristine images in ``into`` (backing paths are relative, so it works)."""
        if into.exists():
            shutil.rmtree(into)
        shutil.copytree(self.pristine, into)
        return into

    def args(self, d: Path) -> list[str]:
        return [a.replace("{d}", str(d)) for a in self.cmd]


def _exercise(tmp_path: Path, sc: Scenario, compare: list[str], extra_check=None) -> None:
    # The oracle: qemu-img's result of the same command.
    ref = sc.fresh(tmp_path / "ref")
    p = _run(QEMU_IMG, *sc.args(ref))
    assert p.returncode == 0, p.stderr
    # How many writes a full run makes.
    full = sc.fresh(tmp_path / "full")
    count = tmp_path / "count"
    assert _crash_run(sc.args(full), [full / n for n in sc.writes], 10**9, count) == 0
    total = int(count.read_text())
    assert total > 0
    originals = {n: (sc.pristine / n).read_bytes() for n in sc.reads}
    completed = False
    for k in _kill_points(total):
        d = sc.fresh(tmp_path / f"k{k}")
        rc = _crash_run(sc.args(d), [d / n for n in sc.writes], k)
        where = f"qimg {' '.join(sc.cmd)} killed before write {k + 1} of {total}"
        assert (rc == 0) == (k >= total), f"{where}: exit {rc}"
        for n in sc.names:
            _assert_consistent(d / n, where, sc.copied_window)
        for n in sc.stable:
            c = _run(QEMU_IMG, "compare", "-f", "qcow2", "-F", "qcow2", str(sc.pristine / n), str(d / n))
            assert c.returncode == 0, f"{where}: guest view of {n} changed: {c.stdout}{c.stderr}"
        for n, data in originals.items():
            assert (d / n).read_bytes() == data, f"{where}: {n} (only read) changed"
        if rc == 0:
            completed = True
            for n in compare:
                c = _run(QEMU_IMG, "compare", "-f", "qcow2", "-F", "qcow2", str(d / n), str(ref / n))
                assert c.returncode == 0, f"{where}: {n} differs from qemu-img's: {c.stdout}{c.stderr}"
            if extra_check is not None:
                extra_check(d, ref)
        shutil.rmtree(d)
    assert completed


def _snapshot_names(img: Path) -> list[str]:
    p = _run(QEMU_IMG, "info", "--output=json", "-f", "qcow2", str(img))
    assert p.returncode == 0, p.stderr
    return [s["name"] for s in json.loads(p.stdout).get("snapshots", [])]


def _info(img: Path) -> dict:
    p = _run(QEMU_IMG, "info", "--output=json", "-f", "qcow2", str(img))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _create(d: Path, name: str, size: str = "4M", backing: str | None = None, *opts: str) -> Path:
    args = ["create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    for o in opts:
        args += ["-o", o]
    _qemu_img(*args, str(d / name), size)
    return d / name


def test_commit(tmp_path):
    """base <- mid <- top; commit top into mid (default), which also empties top: base only read."""
    sc = Scenario(tmp_path, ["base.qcow2", "mid.qcow2", "top.qcow2"],
                  writes=["mid.qcow2", "top.qcow2"], reads=["base.qcow2"],
                  cmd=["commit", "-f", "qcow2", "{d}/top.qcow2"], stable=["top.qcow2"])
    d = sc.pristine
    d.mkdir()
    _qemu_io(_create(d, "base.qcow2"), "write -P 0x11 0 3M")
    _qemu_io(_create(d, "mid.qcow2", "4M", "base.qcow2"), "write -P 0x22 512k 1M")
    _qemu_io(_create(d, "top.qcow2", "4M", "mid.qcow2"),
             "write -P 0x33 1M 1536k", "write -z 2560k 512k", "write -P 0x44 3584k 64k")
    _exercise(tmp_path, sc, compare=["mid.qcow2", "top.qcow2"])


def test_rebase_safe(tmp_path):
    """Safe rebase of top from old.qcow2 onto new.qcow2: both backings are only read."""
    sc = Scenario(tmp_path, ["old.qcow2", "new.qcow2", "top.qcow2"],
                  writes=["top.qcow2"], reads=["old.qcow2", "new.qcow2"],
                  cmd=["rebase", "-f", "qcow2", "-b", "new.qcow2", "-F", "qcow2", "{d}/top.qcow2"],
                  stable=["top.qcow2"])
    d = sc.pristine
    d.mkdir()
    _qemu_io(_create(d, "old.qcow2"), "write -P 0x11 0 2M", "write -P 0x12 3M 512k")
    _qemu_io(_create(d, "new.qcow2"), "write -P 0x21 1M 2M", "write -P 0x11 0 256k")
    _qemu_io(_create(d, "top.qcow2", "4M", "old.qcow2"), "write -P 0x33 512k 256k",
             "write -z 1536k 128k")

    def same_backing(got: Path, ref: Path) -> None:
        assert _info(got / "top.qcow2").get("backing-filename") == "new.qcow2"

    _exercise(tmp_path, sc, compare=["top.qcow2"], extra_check=same_backing)


def _snap_image(d: Path) -> Path:
    img = _create(d, "img.qcow2")
    _qemu_io(img, "write -P 0x11 0 2M", "write -z 3M 256k")
    _qemu_img("snapshot", "-c", "s1", str(img))
    _qemu_io(img, "write -P 0x22 1M 1M", "write -P 0x23 3584k 128k")
    _qemu_img("snapshot", "-c", "s2", str(img))
    _qemu_io(img, "write -P 0x33 256k 512k", "discard 2M 1M")
    return img


def _same_snapshots(got: Path, ref: Path) -> None:
    assert _snapshot_names(got / "img.qcow2") == _snapshot_names(ref / "img.qcow2")
    for s in _snapshot_names(ref / "img.qcow2"):
        outs = []
        for root in (got, ref):
            out = root / f"{s}.raw"
            _qemu_img("convert", "-f", "qcow2", "-O", "raw", "-l", s, str(root / "img.qcow2"), str(out))
            outs.append(out.read_bytes())
        assert outs[0] == outs[1], f"snapshot {s} differs from qemu-img's"


def test_snapshot_create(tmp_path):
    """Adding references to shared clusters cannot change a refcount and its L1/L2 COPIED flag in
    one write, whichever goes first: a crash between them leaves OFLAG_COPIED mismatches that
    qemu-img check counts as corruptions (QEMU has the same window). They are data-safe (a
    stale COPIED on refcount 2 only leaks, a missing COPIED on refcount 1 only forces a COW), so
    only those are tolerated here, and the guest view must stay intact at every kill point."""
    sc = Scenario(tmp_path, ["img.qcow2"], writes=["img.qcow2"], reads=[],
                  cmd=["snapshot", "-c", "s3", "{d}/img.qcow2"], stable=["img.qcow2"],
                  copied_window=True)
    sc.pristine.mkdir()
    _snap_image(sc.pristine)
    _exercise(tmp_path, sc, compare=["img.qcow2"], extra_check=_same_snapshots)


def test_snapshot_delete(tmp_path):
    """Deleting the newest snapshot drops the active image's clusters back to refcount 1: the
    COPIED flags are set after the refcounts, so the window of test_snapshot_create (refcount 1,
    no COPIED: data-safe) exists here too, just before the last write."""
    sc = Scenario(tmp_path, ["img.qcow2"], writes=["img.qcow2"], reads=[],
                  cmd=["snapshot", "-d", "s2", "{d}/img.qcow2"], stable=["img.qcow2"],
                  copied_window=True)
    sc.pristine.mkdir()
    _snap_image(sc.pristine)
    _exercise(tmp_path, sc, compare=["img.qcow2"], extra_check=_same_snapshots)


def test_resize_grow_preallocated(tmp_path):
    sc = Scenario(tmp_path, ["img.qcow2"], writes=["img.qcow2"], reads=[],
                  cmd=["resize", "-f", "qcow2", "--preallocation=metadata", "{d}/img.qcow2", "24M"],
                  stable=["img.qcow2"])
    sc.pristine.mkdir()
    _qemu_io(_create(sc.pristine, "img.qcow2"), "write -P 0x11 0 1M", "write -P 0x12 3M 1M")

    def same_size(got: Path, ref: Path) -> None:
        assert _info(got / "img.qcow2")["virtual-size"] == 24 * MIB

    _exercise(tmp_path, sc, compare=["img.qcow2"], extra_check=same_size)


@pytest.mark.parametrize("option", ["compat=0.10", "refcount_bits=8"])
def test_amend(tmp_path, option):
    """compat=0.10 must turn zero clusters into something v2 can say; refcount_bits=8 rebuilds the
    refcount structures."""
    sc = Scenario(tmp_path, ["img.qcow2"], writes=["img.qcow2"], reads=[],
                  cmd=["amend", "-f", "qcow2", "-o", option, "{d}/img.qcow2"],
                  stable=["img.qcow2"])
    sc.pristine.mkdir()
    _qemu_io(_create(sc.pristine, "img.qcow2"), "write -P 0x11 0 2M", "write -z 512k 512k",
             "write -z 3M 512k", "write -P 0x12 3584k 64k")

    def same_format(got: Path, ref: Path) -> None:
        a = _info(got / "img.qcow2")["format-specific"]["data"]
        b = _info(ref / "img.qcow2")["format-specific"]["data"]
        assert (a["compat"], a["refcount-bits"]) == (b["compat"], b["refcount-bits"])

    _exercise(tmp_path, sc, compare=["img.qcow2"], extra_check=same_format)
