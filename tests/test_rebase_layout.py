"""Safe ``rebase`` writes as qemu-img 7.2 does: every run of differing sectors is one write
(zeroes past the old backing's end), so the rebased image's layout, even for qed whose
tables follow the writes, is qemu-img's. Random three-image chains of every backing-capable
format; both tools run on copies of one set-up."""
from __future__ import annotations

import random
import re
import subprocess

import pytest
from cli_support import formats_available, run_qemu, run_qemu_io, run_qimg

FORMATS = ["qcow2", "qed", "qcow", "vmdk"]


def _writes(rng: random.Random, size: int, count: int, ops: list[str]) -> list[str]:
    cmds: list[str] = []
    for _ in range(rng.randrange(0, count)):
        off = rng.randrange(0, size // 512) * 512
        length = min(size - off, rng.choice([512, 4096, 65536, 1 << 20]))
        cmds += ["-c", f"{rng.choice(ops)} {off} {length}"]
    return cmds


def _state(cwd) -> list[str]:
    out = []
    for name in ("base", "mid", "top"):
        out.append(run_qemu("map", "--output=json", "-U", name, cwd=cwd).stdout)
        out.append(re.sub(r"disk size:.*|cid:.*", "", run_qemu("info", "-U", name, cwd=cwd).stdout))
        out.append(run_qemu("check", "-U", name, cwd=cwd).stdout)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_rebase_layout_matches_qemu_img(tmp_path, seed):
    have = [f for f in FORMATS if f in formats_available()]
    if not have:
        pytest.skip("no backing-capable format plugin installed")
    rng = random.Random(seed)
    size = rng.choice([1, 2, 4]) * (1 << 20) + rng.choice([0, 0, 65536])
    f0 = rng.choice(have + ["raw"])
    f1, f2 = rng.choice(have), rng.choice(have)
    # a vmdk takes only a vmdk backing file
    f1 = "vmdk" if f2 == "vmdk" else f1
    f0 = "vmdk" if f1 == "vmdk" else f0
    setup = tmp_path / "setup"
    setup.mkdir()
    run_qemu("create", "-q", "-f", f0, "base", str(size), cwd=setup)
    w0 = _writes(rng, size, 5, ["write -P 1", "write -P 2", "write -z"])
    if w0:
        run_qemu_io("-f", f0, *w0, "base", cwd=setup)
    run_qemu("create", "-q", "-f", f1, "-b", "base", "-F", f0, "mid", cwd=setup)
    w1 = _writes(rng, size, 5, ["write -P 3", "write -z", "discard", "write -P 0"])
    if w1:
        run_qemu_io("-f", f1, *w1, "mid", cwd=setup)
    run_qemu("create", "-q", "-f", f2, "-b", "mid", "-F", f1, "top", cwd=setup)
    w2 = _writes(rng, size, 4, ["write -P 4", "write -z", "discard"])
    if w2:
        run_qemu_io("-f", f2, *w2, "top", cwd=setup)
    cmd = rng.choice([["rebase", "-b", "base", "-F", f0, "top"], ["rebase", "-b", "", "top"],
                      ["rebase", "-b", "mid", "-F", f1, "top"]])
    results = []
    for tool, name in ((run_qemu, "qemu"), (run_qimg, "qimg")):
        subprocess.run(["cp", "-a", "--sparse=always", str(setup), str(tmp_path / name)], check=True)
        r = tool(*cmd, cwd=tmp_path / name)
        results.append([r.returncode, *_state(tmp_path / name)])
    assert results[1] == results[0], (f0, f1, f2, w0, w1, w2, cmd)
