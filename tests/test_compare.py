"""qimg compare against qemu-img compare: result lines, exit codes 0/1/2, strict mode, sizes."""
from __future__ import annotations

import os

import pytest
from cli_support import compare, run_qemu, run_qemu_io, run_qimg

MIB = 1 << 20


def setup(d) -> None:
    def raw(name, size, writes=()):
        with open(d / name, "wb") as f:
            f.truncate(size)
            for off, data in writes:
                f.seek(off)
                f.write(data)

    raw("c1.img", MIB)
    raw("c2.img", MIB, [(1000, b"x")])
    raw("c3.img", 2 * MIB)
    raw("c4.img", 2 * MIB, [(1500000, b"y")])
    raw("c5.img", MIB, [(0, bytes(MIB))])                 # allocated zeroes
    rnd = os.urandom(3 * MIB)
    raw("r1.img", 3 * MIB, [(0, rnd)])
    raw("r2.img", 3 * MIB, [(0, rnd), (2 * MIB + 777, b"Z")])
    raw("r3.img", 3 * MIB, [(0, rnd[:MIB]), (2 * MIB, rnd[2 * MIB:])])   # a hole where r1 has data


CASES = [
    ["c1.img", "c2.img"], ["-s", "c1.img", "c2.img"], ["c1.img", "c3.img"], ["-s", "c1.img", "c3.img"],
    ["c1.img", "c4.img"], ["c4.img", "c1.img"], ["c2.img", "c4.img"], ["-q", "c1.img", "c2.img"],
    ["c1.img", "nonexist"], ["-s", "c1.img", "c5.img"], ["c1.img", "c5.img"], ["-f", "qcow2", "c1.img", "c1.img"],
    ["-T", "foo", "c1.img", "c1.img"], ["c1.img"], ["c1.img", "c1.img", "c1.img"], ["-Z", "c1.img", "c1.img"],
    ["--image-opts", "-f", "raw", "c1.img", "c1.img"], ["r1.img", "r2.img"], ["r2.img", "r1.img"],
    ["r1.img", "r3.img"], ["-s", "r1.img", "r3.img"], ["-f", "raw", "-F", "raw", "r1.img", "r1.img"],
    ["-U", "r1.img", "r1.img"], ["c1.img", "-s", "c2.img"], ["-p", "c1.img", "c2.img"], ["-p", "-q", "r1.img", "r2.img"],
    ["-p", "c1.img", "c1.img"], ["-f"],
    ["--image-opts", "driver=raw,file.filename=c1.img", "driver=raw,file.filename=c2.img"],
    ["--image-opts", "c1.img", "c2.img"],
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_compare_like_qemu(tmp_path, args):
    setup(tmp_path)
    compare(tmp_path, "compare", *args)


def test_first_difference_is_exact():
    from qimg.ops.compare import first_difference, first_nonzero

    a = bytearray(os.urandom(100_000))
    for pos in (0, 1, 511, 512, 65535, 99_999):
        b = bytearray(a)
        b[pos] ^= 0xFF
        assert first_difference(a, b, len(a)) == pos
        z = bytearray(len(a))
        z[pos] = 1
        assert first_nonzero(z, len(z)) == pos
    assert first_difference(a, bytearray(a), len(a)) == -1
    assert first_nonzero(bytearray(10), 10) == -1


def test_qcow2_and_chains(tmp_path):
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")
    setup(tmp_path)
    d = tmp_path
    assert run_qemu("create", "-f", "qcow2", "q.qcow2", "2M", cwd=d).returncode == 0
    run_qemu_io("-c", "write -P 0 0 64k", "-c", "write -z 64k 64k", "q.qcow2", cwd=d)
    assert run_qemu("create", "-f", "qcow2", "-b", "r1.img", "-F", "raw", "t.qcow2", cwd=d).returncode == 0
    run_qemu_io("-c", "write -P 9 1M 4k", "t.qcow2", cwd=d)
    for args in (["-s", "c3.img", "q.qcow2"], ["c3.img", "q.qcow2"], ["-s", "q.qcow2", "q.qcow2"],
                 ["t.qcow2", "r1.img"], ["-s", "t.qcow2", "r1.img"], ["r1.img", "t.qcow2"],
                 ["-F", "qcow2", "t.qcow2", "t.qcow2"]):
        compare(d, "compare", *args)
    r = run_qimg("compare", "-f", "qcow2", "-F", "raw", "q.qcow2", "c3.img", cwd=d)
    assert r.returncode == 0 and r.stdout == "Images are identical.\n"


def test_progress_lines_byte_for_byte(tmp_path):
    for name in ("big.img", "big2.img"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(300 << 20)
            for i in range(0, 300, 3):  # many short runs: many progress steps
                f.seek(i << 20)
                f.write(b"1")
    r = compare(tmp_path, "compare", "-p", "big.img", "big2.img")
    assert r.stdout.count("\r") > 20
