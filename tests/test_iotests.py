"""QEMU's own qemu-iotests with qimg as qemu-img (scripts/iotests, docs/iotests.md).

The runner fetches QEMU's tests from Debian's qemu source package of the oracle's version, runs
each test with qimg standing in for qemu-img (and with the real qemu-img where qimg does not
pass) and exits 1 when a test passes with qemu-img but not with qimg, unless
scripts/iotests.known lists it (with its owner and cause), or when a listed test passes now.

The default run has only a smoke test of the runner (two tests, one of which starts qemu-nbd
servers that must not outlive it). The campaign is on demand, as it takes half an hour and more:
QIMG_IOTESTS=qcow2 (or qcow2,vmdk,... or all) runs every no-VM test of those formats.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "scripts" / "iotests"
sys.path.insert(0, str(ROOT / "scripts"))

from iotests_lib.procs import RUN_MARK, kill_marked, marked  # noqa: E402
from iotests_lib.sources import FORMATS  # noqa: E402


def run_runner(tmp_path, args, timeout):
    """(process, summary) of scripts/iotests ARGS; every process it started is ended after it,
    and those that were still there are returned as leftovers."""
    out = tmp_path / "iotests.json"
    token = uuid.uuid4().hex
    env = {**os.environ, RUN_MARK: token}
    try:
        p = subprocess.run([sys.executable, str(RUNNER), "-q", "--json", str(out), *args],
                           capture_output=True, text=True, timeout=timeout, env=env)
        left = [_describe(pid) for pid in marked(RUN_MARK, token)]
    finally:
        kill_marked(RUN_MARK, token)
    if p.returncode == 2:
        msg = f"QEMU's iotests could not be run: {p.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: they are required)")
        pytest.skip(msg)
    return p, json.loads(out.read_text()), left


def _describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        args = ""
    return f"{pid} {args}"


def test_runner_smoke_leaves_no_process(tmp_path):
    # 001 passes with qimg; 162 starts qemu-nbd --fork servers (daemons, outside the test's
    # process group) that wait for a client qimg may not be: the runner must end them all
    p, summary, left = run_runner(tmp_path, ["-f", "qcow2", "001", "162"], timeout=900)
    assert not left, f"processes of the iotests outlived the runner: {left}"
    s = summary["formats"]["qcow2"]
    assert "001" in s["pass_both"], (s, p.stdout[-3000:], p.stderr[-3000:])
    assert "162" in s["pass_ref"], s
    new = [d["test"] for d in s["new"]]
    assert not new, (s["new"], p.stdout[-3000:])


@pytest.mark.skipif(not os.environ.get("QIMG_IOTESTS"),
                    reason="the iotests campaign takes half an hour and more: QIMG_IOTESTS=qcow2 (or all) runs it")
def test_iotests_pass_as_with_qemu_img(tmp_path):
    wanted = os.environ["QIMG_IOTESTS"]
    formats = FORMATS if wanted in ("1", "all") else wanted.split(",")
    args = []
    for f in formats:
        args += ["-f", f]
    p, summary, left = run_runner(tmp_path, args, timeout=6 * 3600)
    assert not left, f"processes of the iotests outlived the runner: {left}"
    for fmt, s in summary["formats"].items():
        # the run compared something: qemu-img passes most of these tests
        assert len(s["pass_ref"]) >= 10, (fmt, s["pass_ref"], p.stdout[-3000:])
    problems = []
    for fmt, s in summary["formats"].items():
        for d in s["new"]:
            problems.append(f"-- {fmt} {d['test']}: passes with qemu-img, not with qimg: {d['status']}, "
                            f"{d['reason']}\n{d['diff'][:6000]}")
        for t in s["fixed"]:
            problems.append(f"-- {fmt} {t}: passes now: delete its line "
                            "from scripts/iotests.known")
    assert p.returncode == 0 and not problems, (
        "scripts/iotests found new differences or stale lines of scripts/iotests.known:\n" + "\n".join(problems)
        + ("" if problems else p.stdout[-5000:] + p.stderr[-3000:]))


@pytest.mark.parametrize("text,starts", [
    ("_launch_qemu -drive file=x\n", "_launch_qemu"),
    ("vm = iotests.VM().add_drive(img)\n", "VM("),
    ("with QemuStorageDaemon('--blockdev', x):\n", "QemuStorageDaemon("),
    ("$QEMU -machine none\n", "$QEMU"),
    ("$QEMU_IMG info x\n$QEMU_IO -c 'read 0 1' x\nqemu_comm_method=monitor\n", ""),
    ("iotests.qemu_img('info', x)\n", ""),
])
def test_tests_that_start_a_vm_are_found_in_their_source(tmp_path, text, starts):
    """A test whose source starts a VM or qemu-storage-daemon is reported as needing one without
    being run (some ran a minute before their first VM); qemu-img, qemu-io and qemu-nbd alone do not
    count (qemu_comm_method is only a variable: iotest 146 runs no VM)."""
    from iotests_lib.running import starts_vm

    (tmp_path / "123").write_text("#!/usr/bin/env bash\n" + text)
    assert starts_vm(tmp_path, "123") == starts
