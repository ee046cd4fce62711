"""Backing chains end to end: qemu-io writes, qimg convert -B / commit / rebase / compare, then
qemu-img compare, qemu-img check and qemu-io read -P verify the result."""
from __future__ import annotations

import pytest
from cli_support import run_qemu, run_qemu_io, run_qimg


@pytest.fixture
def chain(tmp_path):
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")
    d = tmp_path
    for args in (["create", "-f", "qcow2", "base.qcow2", "4M"],
                 ["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"],
                 ["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]):
        assert run_qemu(*args, cwd=d).returncode == 0
    run_qemu_io("-c", "write -P 0xa 0 1M", "-c", "write -P 0xb 3M 1M", "base.qcow2", cwd=d)
    run_qemu_io("-c", "write -P 0xc 512k 1M", "-c", "write -z 3M 64k", "mid.qcow2", cwd=d)
    run_qemu_io("-c", "write -P 0xd 1M 4k", "-c", "write -P 0xe 3584k 128k", "top.qcow2", cwd=d)
    return d


def reads(d, image, *checks) -> None:
    args = []
    for pattern, off, length in checks:
        args += ["-c", f"read -P {pattern} {off} {length}"]
    r = run_qemu_io(*args, image, cwd=d)
    assert "Pattern verification failed" not in r.stdout, r.stdout


GUEST = [(0xA, 0, 512 << 10), (0xC, 512 << 10, 512 << 10), (0xD, 1 << 20, 4096), (0xC, (1 << 20) + 4096, 508 << 10),
         (0, 3 << 20, 64 << 10), (0xB, (3 << 20) + (64 << 10), 448 << 10), (0xE, 3584 << 10, 128 << 10),
         (0xB, 3712 << 10, 384 << 10), (0, 2 << 20, 1 << 20)]


def test_convert_flattens_chain(chain):
    r = run_qimg("convert", "-O", "qcow2", "top.qcow2", "flat.qcow2", cwd=chain)
    assert r.returncode == 0, r.stderr
    assert run_qemu("compare", "top.qcow2", "flat.qcow2", cwd=chain).returncode == 0
    assert run_qemu("check", "flat.qcow2", cwd=chain).returncode == 0
    reads(chain, "flat.qcow2", *GUEST)
    assert run_qimg("compare", "-s", "flat.qcow2", "flat.qcow2", cwd=chain).returncode == 0


def test_convert_thin_onto_backing(chain):
    r = run_qimg("convert", "-B", "mid.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "thin.qcow2", cwd=chain)
    assert r.returncode == 0, r.stderr
    reads(chain, "thin.qcow2", *GUEST)
    m = run_qemu("map", "--output=json", "thin.qcow2", cwd=chain).stdout
    depth0 = [line for line in m.splitlines() if '"depth": 0' in line and '"present": true' in line]
    assert len(depth0) == 2  # only what top.qcow2 itself allocates is copied


def test_commit_then_rebase_roundtrip(chain):
    want = run_qemu("convert", "-O", "raw", "top.qcow2", "want.raw", cwd=chain)
    assert want.returncode == 0
    r = run_qimg("commit", "-b", "base.qcow2", "top.qcow2", cwd=chain)
    assert r.returncode == 0 and r.stdout == "Image committed.\n", r.stderr
    reads(chain, "base.qcow2", *GUEST)
    assert run_qemu("check", "base.qcow2", cwd=chain).returncode == 0
    # top still reads the same (-b implies -d); now drop mid from the chain safely
    r = run_qimg("rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=chain)
    assert r.returncode == 0, r.stderr
    reads(chain, "top.qcow2", *GUEST)
    assert run_qimg("compare", "top.qcow2", "want.raw", cwd=chain).returncode == 0
    assert run_qemu("compare", "top.qcow2", "want.raw", cwd=chain).returncode == 0
    assert run_qemu("check", "top.qcow2", cwd=chain).returncode == 0


def test_commit_into_immediate_backing_empties_top(chain):
    r = run_qimg("commit", "-p", "top.qcow2", cwd=chain)
    assert r.returncode == 0 and r.stdout.endswith("Image committed.\n")
    reads(chain, "mid.qcow2", *GUEST)
    reads(chain, "top.qcow2", *GUEST)
    assert run_qemu("check", "mid.qcow2", cwd=chain).returncode == 0
    assert run_qemu("check", "top.qcow2", cwd=chain).returncode == 0


def test_convert_B_copies_only_the_top_layer_like_qemu(chain):
    """qemu-img 7.2 copies what the source's top image allocates, even when -B names an image
    further down: the man page asks for a backing file equal to the source's own backing."""
    for tool, out in ((run_qemu, "q.qcow2"), (run_qimg, "p.qcow2")):
        r = tool("convert", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", out, cwd=chain)
        assert r.returncode == 0, r.stderr
    maps = [run_qemu("map", "--output=json", name, cwd=chain).stdout for name in ("q.qcow2", "p.qcow2")]
    assert maps[0] == maps[1]
