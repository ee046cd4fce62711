"""qimg dd against qemu-img dd: operands, size arithmetic, messages and output content."""
from __future__ import annotations

import os

import pytest
from cli_support import compare, compare_in_copies, formats_available, run_qemu, run_qemu_io

MIB = 1 << 20
_RND = os.urandom(2 * MIB)


def setup(d) -> None:
    (d / "in.img").write_bytes(_RND)
    with open(d / "holes.img", "wb") as f:
        f.truncate(2 * MIB)
        f.seek(MIB)
        f.write(b"\x42" * 5000)


CASES = [
    ["if=in.img", "of=o.img", "bs=1k", "count=10", "skip=5"],
    ["if=in.img", "of=o.img", "bs=1k", "count=abc"],
    ["if=in.img", "of=o.img", "skip=-1"],
    ["if=in.img", "of=o.img", "bs=1M", "skip=100"],
    ["if=in.img", "of=o.img", "bs=3", "count=5"],
    ["if=in.img", "of=o.img", "bs=1.5k", "count=2"],
    ["if=in.img", "of=o.img", "bs=0x10", "count=2"],
    ["if=in.img", "if=holes.img", "of=o.img"],
    ["if=in.img", "of=o.img", "count=0"],
    ["if=in.img", "of=/nonexistent-dir/o.img"],
    ["if=nonexist", "of=o.img"],
    ["if=in.img", "of=o.img", "bs=4G"],
    ["if=in.img", "of=o.img", "bs=0"],
    ["if=in.img", "of=o.img", "bs=2147483647", "count=1"],
    ["if=in.img", "of=o.img", "count=2k"],
    ["if=in.img", "of=o.img", "=5"],
    ["if=in.img", "of=o.img", "bs"],
    ["if=in.img", "of=o.img", "foo=1"],
    ["-O", "foo", "if=in.img", "of=o.img"],
    ["-O", "foo", "if=nonexist", "of=o.img"],
    ["if=in.img", "of=o.img", "count=1", "count=2", "bs=1"],
    ["if=in.img", "of=o.img", "bs=abc"],
    ["if=in.img", "of=o.img", "bs=1.5"],
    ["if=holes.img", "of=o.img", "bs=64k", "skip=15"],
    ["-f", "qcow2", "if=in.img", "of=o.img"],
    ["if=in.img", "of=o.img", "skip=1k", "count=100", "bs=1k"],
    ["--image-opts", "if=driver=raw,file.filename=in.img", "of=o.img", "count=1"],
    ["if=in.img"], ["of=o.img"], [], ["-Z"], ["-U", "-f", "raw", "if=in.img", "of=o.img", "bs=4096", "count=3"],
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_dd_like_qemu(tmp_path, args):
    compare_in_copies(setup, tmp_path, "dd", *args)
    a, b = tmp_path / "qimg" / "o.img", tmp_path / "qemu" / "o.img"
    assert a.exists() == b.exists()
    if a.exists():
        # the same file bytes: qemu's raw creation rounds the size up to 512 bytes, as qimg's
        assert a.read_bytes() == b.read_bytes()


def test_dd_to_qcow2(tmp_path):
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")
    compare_in_copies(setup, tmp_path, "dd", "-O", "qcow2", "if=holes.img", "of=o.qcow2", "bs=64k", "count=30", "skip=3")
    a, b = tmp_path / "qimg" / "o.qcow2", tmp_path / "qemu" / "o.qcow2"
    assert run_qemu("compare", str(a), str(b)).returncode == 0
    assert run_qemu("check", str(a)).returncode == 0


def _map(path) -> str:
    p = run_qemu("map", "--output=json", str(path))
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qed", "vdi", "vhdx", "vpc", "vmdk", "qcow"])
@pytest.mark.parametrize("bs", ["4k", "1M", "3M"])
def test_dd_allocates_like_qemu(tmp_path, fmt, bs):
    """qemu-img dd writes every block it reads, holes included, one bs-sized request at a time:
    the output is fully allocated, in the same cluster order (qemu-img map and check agree)."""
    from qimg.plugins import get_registry

    if fmt not in get_registry().format_names():
        pytest.skip(f"{fmt} plugin not installed")
    compare_in_copies(setup, tmp_path, "dd", "-O", fmt, "if=holes.img", "of=o.img", f"bs={bs}")
    a, b = tmp_path / "qimg" / "o.img", tmp_path / "qemu" / "o.img"
    assert _map(a) == _map(b)
    if fmt in ("qcow2", "qed", "vdi", "vhdx"):
        ca, cb = run_qemu("check", str(a)), run_qemu("check", str(b))
        assert (ca.returncode, ca.stdout) == (cb.returncode, cb.stdout)


def test_read_error_names_the_input(tmp_path):
    """A cluster that cannot be read (garbage where a compressed cluster should be) fails as
    qemu-img dd does: "error while reading from input image file: ..."."""
    import struct

    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "a.qcow2", "4M", cwd=tmp_path)
    run_qemu_io("-c", "write -P 1 0 1M", "a.qcow2", cwd=tmp_path)
    data = bytearray((tmp_path / "a.qcow2").read_bytes())
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & ((1 << 56) - 1) & ~0x1FF
    struct.pack_into(">Q", data, l2 + 16, (1 << 62) | 0x50000)  # compressed, pointing at garbage
    (tmp_path / "a.qcow2").write_bytes(bytes(data))
    compare(tmp_path, "dd", "if=a.qcow2", "of=o.raw")
