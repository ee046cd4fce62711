"""Shared fixtures: the qemu-img oracles, qimg runner, pattern helpers.

The oracles (qemu-img, qemu-io, qemu-nbd from Debian's qemu-utils 7.2 on PATH, and 10.0 from
scripts/oracle-10) are required: a test that needs one fails when the environment variable CI
is set and it is missing, and is skipped otherwise.

Two oracles, two profiles. A *differential* test, one that runs qimg's command line and
qemu-img and compares them, runs once per oracle: with qemu-img 7.2 and ``QIMG_COMPAT=7.2``,
then with qemu-img 10.0 and ``QIMG_COMPAT=10.0`` (test ids end in ``[7.2]``/``[10.0]``). The
autouse fixture ``oracle`` selects the pair: the ``qemu_img`` fixture and cli_support's
``run_qemu``/``compare`` run that oracle, and qimg (the ``qimg`` fixture, ``run_qimg``) runs
with that profile. A test is differential when it reaches both sides: it requests the
``qemu_img`` (or ``oracle``) and ``qimg`` fixtures, or its code (and the module's helpers it calls) uses
cli_support's oracle runners (``run_qemu``, ``compare``, ``compare_in_copies``). Every other
test runs once, against 7.2: qemu-img only made its images, or qimg ran as a library, whose
results do not depend on the profile. ``@pytest.mark.oracle_72("why")`` keeps a differential
test on 7.2 alone (when qemu-img only makes its images, or it tests 7.2 behaviour);
:data:`NOT_YET_DUAL` lists the modules not yet compared with 10.0, and why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

# Until a test says otherwise, qimg reproduces qemu-img 7.2, the oracle on PATH: tests that do
# not compare with an oracle keep their meaning while the default profile is 10.0
# (qimg.compat). The ``oracle`` fixture sets the profile of each test.
os.environ.setdefault("QIMG_COMPAT", "7.2")

#: the oracles, oldest first: each differential test runs once per profile
PROFILES = ("7.2", "10.0")

#: test modules (``test_x.py``) and tests (``test_x.py::test_name``) whose differential tests run
#: against qemu-img 7.2 only, with the reason; the list empties as qimg's 10.0 profile learns
#: each difference (issue 11). ``QIMG_TEST_ALL_DUAL=1`` ignores it (to see what is left).
NOT_YET_DUAL: dict[str, str] = {
}

#: cli_support functions that run the oracle, and those that run qimg's command line
_ORACLE_NAMES = frozenset({"run_qemu", "compare", "compare_in_copies", "need_qemu", "same_as_qemu"})
_CLI_NAMES = frozenset({"run_qimg", "run_qimg_fd", "run_qimg_subprocess", "compare", "compare_in_copies", "CRASHER",
                        "same_as_qemu"})

#: the oracle of the running test (set by the ``oracle`` fixture; one test at a time per process)
current = {"profile": "7.2"}


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


def _names_used(code: types.CodeType, module: types.ModuleType, seen: set) -> set[str]:
    """Global names a function's code uses, following the module's own helper functions."""
    out: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        for name in c.co_names:
            out.add(name)
            helper = getattr(module, name, None)
            if isinstance(helper, types.FunctionType) and helper.__module__ == module.__name__:
                stack.append(helper.__code__)
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return out


def _differential(metafunc: pytest.Metafunc) -> bool:
    """Whether a test compares qimg's command line with the oracle (see the module docstring)."""
    names = set(metafunc.fixturenames)
    used = _names_used(metafunc.function.__code__, metafunc.module, set())
    for name in metafunc.fixturenames:  # the module's own fixtures count as its code
        fx = getattr(metafunc.module, name, None)
        fn = getattr(fx, "__wrapped__", None) or getattr(fx, "__pytest_wrapped__", None)
        fn = getattr(fn, "obj", fn)
        if isinstance(fn, types.FunctionType) and fn.__module__ == metafunc.module.__name__:
            used |= _names_used(fn.__code__, metafunc.module, set())
    # a test that names the ``oracle`` fixture picks its oracle itself (its helpers' runners)
    asks = "oracle" in metafunc.function.__code__.co_varnames[:metafunc.function.__code__.co_argcount]
    oracle = "qemu_img" in names or asks or bool(used & _ORACLE_NAMES)
    cli = "qimg" in names or bool(used & _CLI_NAMES)
    return oracle and cli


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "oracle_72(reason): a differential test that runs against "
                            "qemu-img 7.2 only (its images made by qemu-img, or 7.2 behaviour under test)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "oracle" not in metafunc.fixturenames:
        return
    module = os.path.basename(metafunc.module.__file__)
    listed = module in NOT_YET_DUAL or f"{module}::{metafunc.function.__name__}" in NOT_YET_DUAL
    if (listed and not os.environ.get("QIMG_TEST_ALL_DUAL")) or metafunc.definition.get_closest_marker("oracle_72"):
        return
    if _differential(metafunc):
        metafunc.parametrize("oracle", PROFILES, indirect=True)


@pytest.fixture(autouse=True)
def oracle(request, monkeypatch):
    """The oracle and profile of this test: "7.2" (the default) or "10.0" (see the module docstring)."""
    profile = getattr(request, "param", "7.2")
    monkeypatch.setenv("QIMG_COMPAT", profile)
    monkeypatch.setitem(current, "profile", profile)
    return profile


def oracle_command(tool: str = "qemu-img") -> tuple[list[str], dict | None, str]:
    """(argv prefix, environment, executable) to run the current oracle's ``tool``; argv[0] is
    the tool's plain name, as scripts run it (qemu-img 10.0 prints its argv[0] in messages)."""
    if current["profile"] == "10.0":
        exe, env = need_qemu10(tool)
        return [tool], env, exe
    return [tool], None, _need(tool)


@pytest.fixture
def qemu_img(oracle):
    """Run the oracle's qemu-img: ``qemu_img("info", path)`` -> Run (no exception on failure)."""
    argv, env, exe = oracle_command("qemu-img")

    def run(*args: str, input: bytes | None = None) -> Run:
        p = subprocess.run([*argv, *args], executable=exe, env=env, capture_output=True, input=input)
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
        p = subprocess.run(["qemu-img", *args], executable=exe, capture_output=True, input=input, env=env)
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

    def run(*args: str, input: bytes | None = None, env: dict | None = None, preexec_fn=None) -> Run:
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.run([*QIMG, *args], capture_output=True, input=input, env=e, preexec_fn=preexec_fn)
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


@pytest.fixture(scope="session")
def ceph():
    """A real single-node Ceph (RBD pool and radosgw S3), shared by the run's workers
    (tests/ceph_cluster.py); skipped without the Ceph packages, failing with CI set."""
    from ceph_cluster import Cluster, need_ceph

    need_ceph()
    cluster = Cluster()
    info = cluster.start()
    try:
        yield info
    finally:
        cluster.stop()
