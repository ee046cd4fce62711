"""commit writes zero runs into the base as qemu-img does (unmapping), so the bases match byte for byte."""
from __future__ import annotations

import filecmp


def _chain(qemu_img, qemu_io, folder, tag):
    base, top = folder / f"b{tag}.qcow2", folder / f"t{tag}.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(base), "16M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 8M", str(base)).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(top)).returncode == 0
    assert qemu_io("-c", "write -z 1M 2M", "-c", "write -z -u 4M 1M", "-c", "write -P 7 6M 64k",
                   str(top)).returncode == 0
    return base, top


def test_commit_of_zero_runs_matches_qemu_img(tmp_path, qemu_img, qemu_io, qimg):
    qbase, qtop = _chain(qemu_img, qemu_io, tmp_path, "q")
    mbase, mtop = _chain(qemu_img, qemu_io, tmp_path, "m")
    assert qemu_img("commit", str(qtop)).returncode == 0
    r = qimg("commit", str(mtop))
    assert r.returncode == 0, r.stderr
    assert qemu_img("map", "--output=json", str(qbase)).stdout == qemu_img("map", "--output=json", str(mbase)).stdout
    assert filecmp.cmp(qbase, mbase, shallow=False)
    assert qemu_img("check", str(mbase)).returncode == 0
