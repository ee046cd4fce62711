"""Random argument lists for convert, compare, dd, bench, rebase and commit, run by qimg and
qemu-img on identical folders: same exit code, stdout and stderr (timings masked)."""
from __future__ import annotations

import random
import re
import shutil

import pytest
from cli_support import run_qemu, run_qimg
from conftest import as_qemu

VOCABULARY = {
    "convert": ["t.qcow2", "qcow2", "o.qcow2", "-B", "src.raw", "-F", "raw", "-c", "-o", "cluster_size=4k", "-O", "raw", "-f", "raw", "-p", "-q", "-n", "-c", "-S", "4k", "0", "1000", "-m", "2", "0", "-W",
                "-o", "size=1M", "src.raw", "src.raw", "out.raw", "out.raw", "--target-is-zero", "-B", "-F", "-l",
                "snap", "--foo", "-Z", "--", "-C", "-t", "none", "-T", "writeback", "-U", "--image-opts", "-r", "1M",
                "--salvage", "--bitmaps", "-pq", "-Oraw", "--target-image-opts", "--skip-broken-bitmaps"],
    "compare": ["t.qcow2", "qcow2", "-F", "t.qcow2", "-f", "raw", "-F", "-p", "-q", "-s", "-U", "a.raw", "b.raw", "src.raw", "-T", "none", "--image-opts",
                "-Z", "--foo", "--", "-sq"],
    "dd": ["-O", "qcow2", "of=t2.qcow2", "if=t.qcow2", "count=1k", "if=src.raw", "of=o.raw", "bs=1k", "bs=0", "count=3", "skip=2", "skip=9999", "-f", "raw", "-O", "-U",
           "--image-opts", "foo=1", "bs", "count=x"],
    "bench": ["-c", "10", "-d", "4", "-s", "512", "-S", "1k", "-o", "0", "-w", "-q", "-f", "raw", "--pattern=3",
              "--flush-interval=8", "--no-drain", "-U", "-n", "-t", "none", "-i", "threads", "src.raw", "b.raw", "-Z",
              "--pat"],
    "rebase": ["-u", "-b", "", "src.raw", "-F", "raw", "-f", "-p", "-q", "-t", "none", "-T", "-U", "t.qcow2", "-Z"],
    # (no -p: qemu-img's commit progress depends on its event loop's timing)
    "commit": ["t.qcow2", "-b", "./src.raw", "-d", "-b", "src.raw", "-d", "-q", "-f", "qcow2", "-t", "none", "-r", "1M", "t.qcow2", "-Z"],
}


def setup(d) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "src.raw", "wb") as f:
        f.truncate(1 << 20)
        f.write(b"x" * 5000)
    with open(d / "a.raw", "wb") as f:
        f.truncate(1 << 20)
    with open(d / "b.raw", "wb") as f:
        f.truncate(2 << 20)
        f.seek(1 << 20)
        f.write(b"y")
    with open(d / "out.raw", "wb") as f:
        f.truncate(2 << 20)
    assert run_qemu("create", "-q", "-f", "qcow2", "-b", "src.raw", "-F", "raw", "t.qcow2", cwd=d).returncode == 0


def _norm(text: str) -> str:
    return re.sub(r"[0-9]+\.[0-9]{3} seconds", "X seconds", text)


@pytest.mark.parametrize("seed", range(4))
def test_random_command_lines(tmp_path, seed):
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")
    rng = random.Random(seed)
    for _ in range(15):
        cmd = rng.choice(sorted(VOCABULARY))
        args = [rng.choice(VOCABULARY[cmd]) for _ in range(rng.randrange(0, 7))]
        a, b = tmp_path / "qimg", tmp_path / "qemu"
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
            setup(d)
        theirs = run_qemu(cmd, *args, cwd=b)
        mine = run_qimg(cmd, *args, cwd=a)
        got = (mine.returncode, _norm(as_qemu(mine.stdout)), as_qemu(mine.stderr))
        want = (theirs.returncode, _norm(theirs.stdout), theirs.stderr)
        assert got == want, (cmd, args)
