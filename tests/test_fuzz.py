"""Short, bounded fuzz runs of every installed driver (tests/fuzz/run.py does the work).

Each format runs in its own process (address space capped, an alarm per example) with a fixed
derandomized Hypothesis run (no shrinking: a hang would make it slow): only QimgError may escape open/info/read/map/check/write on a
mutated image. On failure Hypothesis has shrunk the input; the message shows the mutation list
and the traceback (replay it with tests/fuzz/run.py or by hand). The long run is
``python tests/fuzz/run.py --minutes N``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from qimg.plugins import get_registry

RUNNER = os.path.join(os.path.dirname(__file__), "fuzz", "run.py")
EXAMPLES = int(os.environ.get("QIMG_FUZZ_EXAMPLES", "25"))


@pytest.mark.parametrize("fmt", get_registry().format_names())
def test_fuzz_driver(fmt, tmp_path):
    p = subprocess.run([sys.executable, RUNNER, "--format", fmt, "--examples", str(EXAMPLES), "--raise",
                        "--mem", str(2 << 30), "--example-timeout", "10", "--read-cap", str(4 << 20)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, f"fuzzing {fmt} found a problem:\n{p.stderr[-6000:]}\n{p.stdout[-3000:]}"
    assert f"{fmt}: " in p.stderr  # it really ran (or said why not)


def test_fuzz_harness_catches_non_qimg_errors(tmp_path, monkeypatch):
    """The property itself: a driver raising anything but QimgError is reported, QimgError is not."""
    sys.path.insert(0, os.path.dirname(RUNNER))
    try:
        import run as fuzz_run
    finally:
        sys.path.pop(0)
    from qimg.errors import QimgError

    data = bytes(4096)

    def boom(path, fmt, write):
        raise KeyError("deliberate")

    monkeypatch.setattr(fuzz_run, "exercise", boom)
    f = fuzz_run.run_one("raw", data, ([("u8", 0, 1)], None, False, 5), tmp_path, 5.0)
    assert f is not None and f.kind == "KeyError" and "deliberate" in f.message

    def refused(path, fmt, write):
        raise QimgError("Could not open 'x': bad header")

    monkeypatch.setattr(fuzz_run, "exercise", refused)
    assert fuzz_run.run_one("raw", data, ([("u8", 0, 1)], None, False, 5), tmp_path, 5.0) is None
    # mutations land where they say
    assert fuzz_run.apply(b"\0" * 8, [("u32be", 2, 0x01020304), ("u8", 7, 9)], None) == b"\0\0\1\2\3\4\0\x09"
    assert fuzz_run.apply(b"\0" * 8, [("u64le", 6, 1)], 10) == b"\0" * 6 + b"\1\0\0\0"


# -- differential fuzzing against qemu-img (tests/fuzz/diff.py) -----------------------------------
DIFF_PER_VARIANT = int(os.environ.get("QIMG_FUZZ_DIFF", "3"))


@pytest.mark.parametrize("fmt", get_registry().format_names())
def test_differential(fmt, tmp_path):
    """A deterministic spread of field-aware mutants of every variant of ``fmt`` through every
    read and write command, judged against qemu-img 7.2: no crash, hang or memory blow-up, no
    file opened in untrusted mode but the image, qemu-img's exit status, its output when
    both succeed, and every write reading back as written (tests/fuzz/diff.py has the rules; the
    long campaign is ``python tests/fuzz/diff.py --all``, see docs/security.md)."""
    from conftest import _need

    _need("qemu-img")
    sys.path.insert(0, os.path.dirname(RUNNER))
    try:
        import diff
    finally:
        sys.path.pop(0)
    ms = diff.select([fmt], None, DIFF_PER_VARIANT, tmp_path)
    camp = diff.Campaign(tmp_path / "cases", "7.2")
    camp.run_mutants(ms)
    known = [f.line() for f in camp.findings if f.known]
    if known:
        print(f"{len(known)} known differences:\n  " + "\n  ".join(known))
    bad = camp.failures()
    assert not bad, f"{len(bad)} findings on {camp.count} mutants:\n" + "\n".join(f.line() for f in bad)
