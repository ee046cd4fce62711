"""qimg commit against qemu-img commit on qcow2 chains: messages, base/top content, -d/-b/-p."""
from __future__ import annotations

import pytest
from cli_support import compare_in_copies, run_qemu, run_qemu_io


def need_qcow2() -> None:
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")


def chain(d) -> None:
    """base.raw (1 MiB of 9s) <- mid.qcow2 <- top.qcow2 (2 MiB: larger than the base)."""
    for args in (["create", "-f", "raw", "base.raw", "1M"],
                 ["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "mid.qcow2"],
                 ["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "2M"]):
        assert run_qemu(*args, cwd=d).returncode == 0
    run_qemu_io("-f", "raw", "-c", "write -P 9 0 1M", "base.raw", cwd=d)
    run_qemu_io("-c", "write -P 1 0 64k", "-c", "write -z 256k 64k", "mid.qcow2", cwd=d)
    run_qemu_io("-c", "write -P 2 32k 64k", "-c", "write -z 512k 64k", "-c", "write -P 3 1536k 4k",
                "top.qcow2", cwd=d)


def raw_view(path) -> bytes:
    out = path.parent / (path.name + ".view")
    r = run_qemu("convert", "-U", "-O", "raw", str(path), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


@pytest.mark.parametrize("args", [
    ["top.qcow2"], ["-d", "top.qcow2"], ["-q", "top.qcow2"], ["-b", "base.raw", "top.qcow2"],
    ["-b", "./base.raw", "-q", "top.qcow2"], ["-b", "mid.qcow2", "top.qcow2"], ["mid.qcow2"],
    ["-r", "100M", "top.qcow2"], ["-t", "writeback", "-f", "qcow2", "top.qcow2"],
])
def test_commit_like_qemu(tmp_path, args):
    need_qcow2()
    compare_in_copies(chain, tmp_path, "commit", *args)
    for name in ("base.raw", "mid.qcow2", "top.qcow2"):
        a, b = tmp_path / "qimg" / name, tmp_path / "qemu" / name
        assert raw_view(a) == raw_view(b), name
        if name.endswith("qcow2"):
            assert run_qemu("check", str(a)).returncode == 0


@pytest.mark.parametrize("args", [
    [], ["-Z", "top.qcow2"], ["-r", "foo", "top.qcow2"], ["-t", "foo", "top.qcow2"],
    ["-b", "nonexist", "top.qcow2"], ["-b", "top.qcow2", "top.qcow2"], ["nonexist.qcow2"], ["base.raw"],
    ["-f", "raw", "base.raw"], ["a", "b"],
])
def test_commit_errors_like_qemu(tmp_path, args):
    need_qcow2()
    compare_in_copies(chain, tmp_path, "commit", *args)


def test_commit_empties_top_and_grows_base(tmp_path):
    need_qcow2()
    from cli_support import run_qimg

    chain(tmp_path)
    want = raw_view(tmp_path / "top.qcow2")
    r = run_qimg("commit", "-b", "base.raw", "top.qcow2", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "Image committed.\n"
    assert (tmp_path / "base.raw").stat().st_size == 2 << 20
    assert (tmp_path / "base.raw").read_bytes() == want
    r = run_qimg("commit", "top.qcow2", cwd=tmp_path)   # into mid, then top is emptied
    assert r.returncode == 0
    m = run_qemu("map", "--output=json", "top.qcow2", cwd=tmp_path).stdout
    assert '"depth": 0' not in m
