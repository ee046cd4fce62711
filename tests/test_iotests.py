"""QEMU's own qemu-iotests with qimg as qemu-img (scripts/iotests, docs/iotests.md): the bounded
part the default run includes, every qcow2 test that needs no VM.

The runner fetches QEMU's tests from Debian's qemu source package of the oracle's version, runs
each test with qimg standing in for qemu-img (and with the real qemu-img where qimg does not
pass) and exits 1 when a test passes with qemu-img but not with qimg, unless
scripts/iotests.known lists it (with its owner and cause), or when a listed test passes now.
QIMG_IOTESTS_FORMATS=qcow2,vmdk,... widens the run (all formats: ``scripts/iotests``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "scripts" / "iotests"


def test_iotests_pass_as_with_qemu_img(tmp_path):
    formats = (os.environ.get("QIMG_IOTESTS_FORMATS") or "qcow2").split(",")
    out = tmp_path / "iotests.json"
    args = [sys.executable, str(RUNNER), "-q", "--json", str(out)]
    for f in formats:
        args += ["-f", f]
    p = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if p.returncode == 2:
        msg = f"QEMU's iotests could not be run: {p.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: they are required)")
        pytest.skip(msg)
    summary = json.loads(out.read_text())
    for fmt, s in summary["formats"].items():
        # the run compared something: qemu-img passes most of these tests
        assert len(s["pass_ref"]) >= 20, (fmt, s["pass_ref"], p.stdout[-3000:])
    problems = []
    for fmt, s in summary["formats"].items():
        for d in s["new"]:
            problems.append(f"-- {fmt} {d['test']}: passes with qemu-img, not with qimg: {d['status']}, "
                            f"{d['reason']}\n{d['diff'][:6000]}")
        for t in s["fixed"]:
            problems.append(f"-- {fmt} {t}: passes now (or differs only by the program name): delete its line "
                            "from scripts/iotests.known")
    assert p.returncode == 0 and not problems, (
        "scripts/iotests found new differences or stale lines of scripts/iotests.known:\n" + "\n".join(problems)
        + ("" if problems else p.stdout[-5000:] + p.stderr[-3000:]))
