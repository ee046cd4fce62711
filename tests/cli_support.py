"""Shared helpers for the CLI comparison tests (test_cli*.py, test_info.py, ...).

``run_qimg`` runs the CLI in-process (fast: no interpreter start-up per case) with the output
captured; ``run_qemu`` runs qemu-img. ``same`` compares the two after spelling qimg's program
name as qemu-img's. Tests chdir into tmp_path so relative names print identically.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
from conftest import Run, _need, as_qemu, need_qemu10, oracle_command


def need_qemu() -> str:
    """The current oracle's qemu-img (conftest's ``oracle`` fixture chooses 7.2 or 10.0)."""
    return oracle_command("qemu-img")[2]


def reset_state() -> None:
    """Process-wide state the CLI keeps between in-process runs."""
    from qimg import secrets, trace

    trace.reset()
    secrets._secrets.clear()
    from qimg import tlscreds

    tlscreds.clear()


def run_qimg(*args: str, cwd: str | os.PathLike | None = None, profile: str | None = None,
             prog: str | None = None) -> Run:
    """qimg in-process; ``profile``: QIMG_COMPAT for this run; ``prog``: the name it is invoked
    as (argv[0]; default qimg)."""
    from qimg_cli.main import main

    reset_state()
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    old_profile = os.environ.get("QIMG_COMPAT")
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        if profile is not None:
            os.environ["QIMG_COMPAT"] = profile
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args), prog_name=prog)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(old)
        if profile is not None:
            if old_profile is None:
                os.environ.pop("QIMG_COMPAT", None)
            else:
                os.environ["QIMG_COMPAT"] = old_profile
        reset_state()
    return Run(code, out.getvalue(), err.getvalue())


def run_qimg_fd(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    """qimg in-process with its output taken at the file descriptors: what C libraries loaded
    into the process write there themselves (librados' "unable to get monitor info from DNS SRV
    ...") lands in order with qimg's own lines, as it does when qimg runs as a program."""
    import ctypes
    import tempfile

    from qimg_cli.main import main

    reset_state()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    old = os.getcwd()
    code = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        streams = sys.stdout, sys.stderr
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = open(1, "w", closefd=False, encoding="utf-8", errors="surrogateescape")
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
        try:
            if cwd is not None:
                os.chdir(cwd)
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(old)
            for f in (sys.stdout, sys.stderr):
                f.flush()
            ctypes.CDLL(None).fflush(None)  # what C code left in stdio's buffers
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            reset_state()
        out.seek(0)
        err.seek(0)
        return Run(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def run_qimg_subprocess(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    cmd = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()", *args]
    p = subprocess.run(cmd, capture_output=True, cwd=cwd)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def run_qemu(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    """Run the current oracle's qemu-img (7.2 or 10.0, conftest's ``oracle`` fixture)."""
    argv, env, exe = oracle_command("qemu-img")
    p = subprocess.run([*argv, *args], executable=exe, env=env, capture_output=True, cwd=cwd)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def run_qemu72(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    """qemu-img 7.2 (the oracle on PATH), whichever oracle the running test has."""
    p = subprocess.run([_need("qemu-img"), *args], capture_output=True, cwd=cwd)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def run_qemu10(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    """qemu-img 10.0 (the second oracle; fails under CI when missing)."""
    exe, env = need_qemu10("qemu-img")
    p = subprocess.run([exe, *args], capture_output=True, cwd=cwd, env=env)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


ORACLES = {"7.2": run_qemu72, "10.0": run_qemu10}


def oracle_path(profile: str) -> str:
    """The path the profile's oracle runs from (qimg is run under the same name to compare
    byte for byte: the messages quote argv[0])."""
    return _need("qemu-img") if profile == "7.2" else need_qemu10("qemu-img")[0]


def as_oracle(profile: str, *args: str, cwd: str | os.PathLike | None = None) -> tuple[Run, Run]:
    """(qimg, qemu-img) for the profile: qimg in-process under the oracle's own argv[0]."""
    theirs = ORACLES[profile](*args, cwd=cwd)
    mine = run_qimg(*args, cwd=cwd, profile=profile, prog=oracle_path(profile))
    return mine, theirs


def run_qemu_io(*args: str, cwd: str | os.PathLike | None = None) -> Run:
    exe = _need("qemu-io")
    p = subprocess.run([exe, *args], capture_output=True, cwd=cwd)
    assert p.returncode == 0, p.stderr
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


# QEMU names a generated block node ('#block146': a counter and two random digits); qimg names
# it '#block100' (docs/commands/bitmap.md)
_NODE_NAME = re.compile(r"#block\d+")


def _mask_node(text: str) -> str:
    return _NODE_NAME.sub("#blockN", text)


def normalized(r: Run) -> tuple[int, str, str]:
    return r.returncode, as_qemu(r.stdout), _mask_node(as_qemu(r.stderr))


def assert_same(mine: Run, theirs: Run) -> None:
    a, b = normalized(mine), (theirs.returncode, theirs.stdout, _mask_node(theirs.stderr))
    assert a == b, f"\nqimg:     {a!r}\nqemu-img: {b!r}"


def compare(cwd: str | os.PathLike, *args: str) -> Run:
    """Run qimg and qemu-img with the same arguments in the same folder; assert identical."""
    theirs = run_qemu(*args, cwd=cwd)
    mine = run_qimg(*args, cwd=cwd)
    assert_same(mine, theirs)
    return mine


def compare_in_copies(setup, tmp_path, *args: str, mask=None) -> tuple[Run, Run]:
    """For commands that write: ``setup(folder)`` prepares two identical folders.

    ``mask(text)`` hides what legitimately differs between the two set-ups (such as
    the creation time of a snapshot made a second apart) in both outputs."""
    a, b = tmp_path / "qimg", tmp_path / "qemu"
    a.mkdir()
    b.mkdir()
    setup(a)
    setup(b)
    theirs = run_qemu(*args, cwd=b)
    mine = run_qimg(*args, cwd=a)
    if mask is None:
        assert_same(mine, theirs)
    else:
        assert_same(Run(mine.returncode, mask(mine.stdout), mask(mine.stderr)),
                    Run(theirs.returncode, mask(theirs.stdout), mask(theirs.stderr)))
    return mine, theirs


def strip_formats(lines: list[str]) -> list[str]:
    """The global help's lines after the version line, without the list of formats (7.2: one
    line; 10.0: a "Supported image formats:" block wrapped to the terminal), qemu-img spelled qimg."""
    out, in_block = [], False
    for ln in lines[1:]:
        if ln.startswith("Supported formats:"):
            continue
        if ln == "Supported image formats:":
            in_block = True
            continue
        if in_block:
            if ln == "" or ln.startswith("  "):
                continue
            in_block = False
        out.append(ln.replace("qemu-img", "qimg"))
    return out


def formats_available() -> list[str]:
    from qimg.plugins import get_registry

    return get_registry().format_names()


def qcow2_params() -> list:
    """``["raw", "qcow2"]`` with qcow2 skipped until its plugin is installed."""
    have = "qcow2" in formats_available()
    return ["raw", pytest.param("qcow2", marks=pytest.mark.skipif(not have, reason="qcow2 plugin not installed"))]


# Count writes to the files in QIMG_CRASH_FILES (os.pathsep-separated); kill before write number
# QIMG_CRASH_AFTER + 1. With QIMG_CRASH_COUNT set, write the number of writes there at exit.
CRASHER = r"""
import atexit, os, signal, sys
from qimg import protocol
limit = int(os.environ["QIMG_CRASH_AFTER"])
targets = set(os.environ["QIMG_CRASH_FILES"].split(os.pathsep))
done = [0]

def wrap(name):
    orig = getattr(protocol.FileProtocol, name)

    def hooked(self, *a, **k):
        if os.path.abspath(self.path) in targets:
            if done[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash just before this write
            done[0] += 1
        return orig(self, *a, **k)

    setattr(protocol.FileProtocol, name, hooked)

for n in ("pwrite", "pwritev", "truncate", "write_zeroes", "discard", "allocate"):
    wrap(n)
if os.environ.get("QIMG_CRASH_COUNT"):
    atexit.register(lambda: open(os.environ["QIMG_CRASH_COUNT"], "w").write(str(done[0])))
sys.argv[0] = "qimg"
from qimg_cli.main import main
main(sys.argv[1:])
"""


def run_qemu_version(version: str, *args: str, cwd=None) -> Run:
    """qemu-img of the given version ("7.2" or "10.0") on ``args``."""
    if version == "7.2":
        return run_qemu72(*args, cwd=cwd)
    exe, env = need_qemu10("qemu-img")
    p = subprocess.run([exe, *args], capture_output=True, env=env, cwd=cwd)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def same_as_qemu(monkeypatch, version: str, *args: str, cwd=None, norm=lambda text: text) -> Run:
    """Run qimg under ``version``'s profile and that qemu-img on ``args``: stdout, exit code and
    stderr (``norm`` applied to both, qimg's program name as qemu-img's) must be the same."""
    monkeypatch.setenv("QIMG_COMPAT", version)
    theirs = run_qemu_version(version, *args, cwd=cwd)
    mine = run_qimg(*args, cwd=cwd)
    assert (norm(as_qemu(mine.stderr)), mine.stdout, mine.returncode) == \
        (norm(theirs.stderr), theirs.stdout, theirs.returncode), args
    return mine
