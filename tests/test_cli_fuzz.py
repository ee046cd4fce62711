"""Randomized argument lists for the inspect-and-modify commands, compared with qemu-img
(fresh identical folders per example: the commands may write)."""
from __future__ import annotations

import shutil

from cli_support import assert_same, run_qemu, run_qimg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOKENS = {
    "create": ["-f", "raw", "-o", "size=1M", "help", "-b", "a.raw", "-F", "-u", "-q", "x.img", "1M", "2G", "--",
               "-1", "--object", "secret,id=s,data=x", "a,", "-qfraw", "1x"],
    "resize": ["-f", "raw", "a.raw", "+1M", "--", "-512k", "2M", "--shrink", "--preallocation=full",
               "--preallocation", "falloc", "-q", "1M", "0"],
    "measure": ["-O", "raw", "-o", "size=1M", "--size", "1M", "a.raw", "-f", "--output=json", "-l", "s",
                "--image-opts", "-U"],
    "snapshot": ["-l", "-c", "-a", "-d", "s1", "x", "a.raw", "-q", "-U", "--image-opts"],
    "bitmap": ["--add", "--remove", "--clear", "--enable", "--disable", "--merge", "b0", "a.raw", "-f", "raw",
               "-g", "64k", "-b", "-F"],
    "amend": ["-o", "size=2M", "help", "-f", "raw", "a.raw", "-p", "-q", "--force", "-t", "none"],
    "check": ["-r", "leaks", "all", "a.raw", "-q", "--output=json", "-f", "raw", "-T", "none", "-U"],
    "map": ["--start-offset", "4k", "--max-length=1M", "a.raw", "--output=json", "-f", "raw", "-U", "1x"],
}


def _setup(folder):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=folder)


@st.composite
def command_lines(draw):
    cmd = draw(st.sampled_from(sorted(TOKENS)))
    return cmd, draw(st.lists(st.sampled_from(TOKENS[cmd]), max_size=7))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command_lines())
def test_random_command_lines(tmp_path_factory, line):
    cmd, args = line
    base = tmp_path_factory.getbasetemp() / "cmdfuzz"
    a, b = base / "qimg", base / "qemu"
    _setup(a)
    _setup(b)
    mine, theirs = run_qimg(cmd, *args, cwd=a), run_qemu(cmd, *args, cwd=b)
    if theirs.stdout.startswith("qemu-img version"):
        assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr)
    else:
        assert_same(mine, theirs)
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in b.iterdir():
        assert (a / p.name).stat().st_size == p.stat().st_size, p.name
