"""Shared fixtures: the qemu-img oracle, qimg runner, pattern helpers.

The oracle (qemu-img, qemu-io, qemu-nbd from Debian's qemu-utils) is required: a test that
needs it fails when the environment variable CI is set and it is missing, and is skipped
otherwise.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

# Until a test says otherwise, qimg reproduces qemu-img 7.2, the oracle on PATH: the tests
# written against 7.2 keep their meaning while the default profile is 10.0 (qimg.compat).
# Tests that compare with qemu-img 10.0 run qimg with QIMG_COMPAT=10.0.
os.environ.setdefault("QIMG_COMPAT", "7.2")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} (Debian package qemu-utils) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the oracle is required")
        pytest.skip(msg)
    return path


@pytest.fixture
def qemu_img():
    """Run qemu-img: ``qemu_img("info", path)`` -> Run (no exception on failure)."""
    exe = _need("qemu-img")

    def run(*args: str, input: bytes | None = None) -> Run:
        p = subprocess.run([exe, *args], capture_output=True, input=input)
        return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    return run


def qemu10_dir() -> str:
    """The folder scripts/oracle-10 unpacked qemu-utils 10.0 into (its usr/bin holds the tools)."""
    d = os.environ.get("QIMG_QEMU10_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qimg", "qemu-10.0"
    )
    return d


def need_qemu10(tool: str = "qemu-img") -> tuple[str, dict]:
    """(path, environment) to run a qemu-utils 10.0 tool: QEMU_MODULE_DIR points at its own
    block modules (curl, ssh, rbd), not 7.2's. Fails with CI set and the oracle missing."""
    d = qemu10_dir()
    exe = os.path.join(d, "usr", "bin", tool)
    if not os.access(exe, os.X_OK):
        msg = f"{tool} 10.0 (scripts/oracle-10) is not in {d}"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the oracle is required")
        pytest.skip(msg)
    env = dict(os.environ, QEMU_MODULE_DIR=os.path.join(d, "usr", "lib", "x86_64-linux-gnu", "qemu"))
    return exe, env


@pytest.fixture
def qemu_img_10():
    """Run qemu-img 10.0 (the second oracle): ``qemu_img_10("info", path)`` -> Run."""
    exe, env = need_qemu10("qemu-img")

    def run(*args: str, input: bytes | None = None) -> Run:
        p = subprocess.run([exe, *args], capture_output=True, input=input, env=env)
        return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    return run


@pytest.fixture
def qemu_io():
    exe = _need("qemu-io")

    def run(*args: str) -> Run:
        p = subprocess.run([exe, *args], capture_output=True)
        return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    return run


QIMG = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"]


@pytest.fixture
def qimg():
    """Run the qimg CLI in a subprocess: ``qimg("info", path)`` -> Run."""

    def run(*args: str, input: bytes | None = None, env: dict | None = None) -> Run:
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.run([*QIMG, *args], capture_output=True, input=input, env=e)
        return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    return run


def as_qemu(text: str) -> str:
    """qimg's output with its program name spelled as qemu-img's, for direct comparison."""
    return text.replace("qimg:", "qemu-img:").replace("qimg ", "qemu-img ")


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic content: MiB i holds byte (i + seed) & 0xff, a zero MiB every 4th."""
    mib = 1 << 20
    out = bytearray()
    for i in range((size + mib - 1) // mib):
        out += bytes([(i + seed) & 0xFF]) * mib if i % 4 != 3 else bytes(mib)
    return bytes(out[:size])


def pytest_collection_modifyitems(session, config, items):
    """``QIMG_TEST_SHUFFLE=SEED`` runs the tests in an order shuffled by SEED (scripts/stress-test):
    the suite must pass in any order. The same seed gives every xdist worker the same order."""
    seed = os.environ.get("QIMG_TEST_SHUFFLE")
    if seed:
        import random

        random.Random(seed).shuffle(items)
