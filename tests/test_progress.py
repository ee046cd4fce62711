"""``QIMG_PROGRESS_FD`` (docs/progress.md): JSON progress lines on the descriptor the caller
names, for convert, compare, commit and rebase on the command line, while stdout, stderr and the
exit status stay qemu-img's (``-p`` included); a bad descriptor changes nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import QIMG, Run, as_qemu


def qimg_with_fd(*args: str, cwd: Path, fd_value: str | None = None) -> tuple[Run, list[dict]]:
    """qimg's CLI with ``QIMG_PROGRESS_FD`` naming the write end of a pipe (or ``fd_value``)."""
    r, w = os.pipe()
    try:
        env = dict(os.environ, QIMG_PROGRESS_FD=fd_value if fd_value is not None else str(w))
        p = subprocess.Popen([*QIMG, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                             pass_fds=(w,))
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            stream = f.read()  # EOF once qimg exits
        out, err = p.communicate(timeout=300)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    lines = [json.loads(x) for x in stream.decode().splitlines()]
    return Run(p.returncode, out.decode(errors="replace"), err.decode(errors="replace")), lines


def same(mine: Run, theirs: Run) -> None:
    assert (mine.returncode, as_qemu(mine.stdout), as_qemu(mine.stderr)) == \
        (theirs.returncode, theirs.stdout, theirs.stderr)


def check_stream(lines: list[dict], operation: str, complete: bool = True) -> None:
    assert lines, "no progress line"
    assert all(set(x) == {"operation", "phase", "bytes_done", "bytes_total"} for x in lines)
    assert {x["operation"] for x in lines} == {operation}
    done = [x["bytes_done"] for x in lines]
    assert done == sorted(done) and all(0 <= x["bytes_done"] <= x["bytes_total"] for x in lines)
    if complete:
        assert lines[-1]["phase"] == "done" and lines[-1]["bytes_done"] == lines[-1]["bytes_total"] > 0
        assert [x["phase"] for x in lines].count("done") == 1
    else:
        assert all(x["phase"] != "done" for x in lines)


@pytest.fixture
def images(tmp_path: Path, qemu_img, qemu_io) -> Path:
    """base.qcow2 <- top.qcow2 (made by qemu-img) with data in both."""
    assert qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "16M").returncode == 0
    assert qemu_io("-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 8M 2M", str(tmp_path / "base.qcow2")).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(tmp_path / "top.qcow2")).returncode == 0
    assert qemu_io("-c", "write -P 0x33 1M 4M", str(tmp_path / "top.qcow2")).returncode == 0
    return tmp_path


def copies(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """Three copies of the images: for qimg with the stream, qemu-img, and qimg without it."""
    out = []
    for side in (name + "-qimg", name + "-qemu", name + "-plain"):
        d = tmp_path / side
        d.mkdir()
        for f in ("base.qcow2", "top.qcow2"):
            shutil.copy(tmp_path / f, d / f)
        out.append(d)
    return out[0], out[1], out[2]


def run_qemu(qemu_img, cwd: Path, *args: str) -> Run:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return qemu_img(*args)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("p", [(), ("-p",)], ids=["quiet", "meter"])
@pytest.mark.parametrize("command", ["convert", "compare", "commit", "rebase"])
def test_stream_never_changes_output(images: Path, qemu_img, qimg, command: str, p: tuple[str, ...]) -> None:
    args = {"convert": ["convert", *p, "-O", "qcow2", "top.qcow2", "out.qcow2"],
            "compare": ["compare", *p, "top.qcow2", "base.qcow2"],
            "commit": ["commit", *p, "top.qcow2"],
            "rebase": ["rebase", *p, "-b", "", "top.qcow2"]}[command]
    mine_dir, theirs_dir, plain_dir = copies(images, command + "".join(p))
    mine, lines = qimg_with_fd(*args, cwd=mine_dir)
    old = os.getcwd()
    os.chdir(plain_dir)
    try:
        plain = qimg(*args)
    finally:
        os.chdir(old)
    assert mine == plain  # the stream changes nothing
    theirs = run_qemu(qemu_img, theirs_dir, *args)
    if not (command == "commit" and p):  # (qemu-img commit's meter follows a polling timer)
        same(mine, theirs)
    if command == "compare":  # the images differ: the comparison stops at the first difference
        assert mine.returncode == 1
        check_stream(lines, "compare", complete=False)
        mine, lines = qimg_with_fd("compare", "top.qcow2", "top.qcow2", cwd=mine_dir)
        assert mine.returncode == 0
    check_stream(lines, command)
    if command == "convert":
        assert lines[-1]["bytes_total"] == 7 << 20  # the allocated data (0-5M, 8-10M), as qemu-img counts it
        assert qemu_img("compare", str(mine_dir / "top.qcow2"), str(mine_dir / "out.qcow2")).returncode == 0
    if command in ("commit", "rebase"):
        assert lines[-1]["bytes_total"] == 16 << 20
        for f in ("base.qcow2", "top.qcow2"):
            assert qemu_img("compare", str(mine_dir / f), str(theirs_dir / f)).returncode == 0


@pytest.mark.parametrize("value", ["999", "-3", "stdout", ""])
def test_a_bad_descriptor_changes_nothing(images: Path, qemu_img, value: str) -> None:
    mine, lines = qimg_with_fd("convert", "-p", "-O", "raw", "top.qcow2", "out.raw", cwd=images, fd_value=value)
    theirs = run_qemu(qemu_img, images, "convert", "-p", "-O", "raw", "top.qcow2", "out2.raw")
    same(mine, theirs)
    assert lines == []
    assert (images / "out.raw").read_bytes() == (images / "out2.raw").read_bytes()


def test_failures_write_no_done_line(images: Path, qemu_img) -> None:
    (images / "base.qcow2").unlink()
    mine, lines = qimg_with_fd("convert", "-O", "raw", "top.qcow2", "out.raw", cwd=images)
    theirs = run_qemu(qemu_img, images, "convert", "-O", "raw", "top.qcow2", "out.raw")
    same(mine, theirs)
    assert mine.returncode == 1 and lines == []
