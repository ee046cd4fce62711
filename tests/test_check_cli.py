"""``qimg check`` against qemu-img: raw (63), and qcow2 clean/leaks/corruptions/repair when the
qcow2 plugin is installed; the report formatter on its own."""
from __future__ import annotations

import shutil
import struct

import pytest
from cli_support import compare, formats_available, run_qemu, run_qemu_io, run_qimg
from qimg.driver import CheckResult


@pytest.fixture
def raw(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", [["a.raw"], ["--output=json", "a.raw"], ["-q", "a.raw"], ["-r", "leaks", "-f", "raw", "a.raw"],
                                  ["-r", "foo", "a.raw"], ["a.raw", "b.raw"], [], ["--output=x", "a.raw"],
                                  ["-T", "bogus", "a.raw"], ["missing.raw"]])
def test_raw(raw, args):
    compare(raw, "check", *args)


def _refblock(path):
    with open(path, "rb") as f:
        f.seek(48)
        (rt,) = struct.unpack(">Q", f.read(8))
        f.seek(rt)
        (rb,) = struct.unpack(">Q", f.read(8))
    return rb


def _make_leak(path):
    with open(path, "r+b") as f:
        end = f.seek(0, 2)
        rb = _refblock(path)
        f.seek(rb + 2 * (end // 65536))
        f.write(struct.pack(">H", 1))
        f.seek(end)
        f.write(bytes(65536))


def _make_corrupt(path):
    with open(path, "r+b") as f:
        f.seek(_refblock(path) + 2 * 5)
        f.write(struct.pack(">H", 0))


@pytest.fixture
def qcow2s(tmp_path):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "ok.qcow2", "4M", cwd=tmp_path)
    run_qemu_io("-c", "write -P 1 0 64k", "ok.qcow2", cwd=tmp_path)
    shutil.copy(tmp_path / "ok.qcow2", tmp_path / "leak.qcow2")
    _make_leak(tmp_path / "leak.qcow2")
    shutil.copy(tmp_path / "ok.qcow2", tmp_path / "bad.qcow2")
    _make_corrupt(tmp_path / "bad.qcow2")
    return tmp_path


@pytest.mark.parametrize("name", ["ok.qcow2", "leak.qcow2", "bad.qcow2"])
@pytest.mark.parametrize("extra", [[], ["--output=json"], ["-q"]])
def test_qcow2(qcow2s, name, extra):
    compare(qcow2s, "check", *extra, name)


@pytest.mark.parametrize("extra", [[], ["--output=json"]])
def test_qcow2_repair_leaks(qcow2s, extra):
    shutil.copy(qcow2s / "leak.qcow2", qcow2s / "leak2.qcow2")
    theirs = run_qemu("check", "-r", "leaks", *extra, "leak.qcow2", cwd=qcow2s)
    mine = run_qimg("check", "-r", "leaks", *extra, "leak2.qcow2", cwd=qcow2s)
    assert mine.returncode == theirs.returncode == 0
    assert mine.stdout.replace("leak2", "leak") == theirs.stdout
    compare(qcow2s, "check", "leak2.qcow2")


# -- the formatter alone (what the qcow2 driver's CheckResult turns into) --------------------

def test_report_texts():
    from qimg.ops.check import exit_code, format_human, format_json, repaired_text

    r = CheckResult(filename="x.qcow2", format="qcow2", leaks=1, corruptions=2, check_errors=0,
                    image_end_offset=458752, total_clusters=64, allocated_clusters=4, fragmented_clusters=1,
                    compressed_clusters=0)
    assert format_human(r) == (
        "\n2 errors were found on the image.\n"
        "Data may be corrupted, or further writes to the image may corrupt it.\n"
        "\n1 leaked clusters were found on the image.\n"
        "This means waste of disk space, but no harm to data.\n"
        "4/64 = 6.25% allocated, 25.00% fragmented, 0.00% compressed clusters\n"
        "Image end offset: 458752\n")
    # as qemu-img printed it for a qcow2 with one leaked cluster
    leak = CheckResult(filename="leak.qcow2", format="qcow2", leaks=1, image_end_offset=458752,
                       total_clusters=64, allocated_clusters=1)
    assert format_json(leak) == (
        '{\n    "image-end-offset": 458752,\n    "total-clusters": 64,\n    "check-errors": 0,\n'
        '    "leaks": 1,\n    "allocated-clusters": 1,\n    "filename": "leak.qcow2",\n    "format": "qcow2"\n}\n')
    assert '"leaks": 1' in format_json(r) and '"compressed-clusters"' not in format_json(r)
    assert exit_code(r) == 2
    assert exit_code(CheckResult(leaks=3)) == 3
    assert exit_code(CheckResult(check_errors=1)) == 1
    assert format_human(CheckResult()) == "No errors were found on the image.\n"
    assert "    1 leaked clusters\n    0 corruptions\n" in repaired_text(CheckResult(leaks_fixed=1))
    assert format_human(CheckResult(check_errors=2)).startswith("\n2 internal errors have occurred")


@pytest.mark.parametrize("args", [["-r", "all", "bad.qcow2"], ["-r", "all", "leak.qcow2"], ["-r", "leaks", "bad.qcow2"],
                                  ["-r", "all", "--output=json", "bad.qcow2"], ["-q", "-r", "all", "bad.qcow2"]])
def test_qcow2_repairs(qcow2s, tmp_path, args):
    from cli_support import compare_in_copies

    def setup(folder):
        for name in ("bad.qcow2", "leak.qcow2"):
            shutil.copy(qcow2s / name, folder / name)

    (tmp_path / "copies").mkdir()
    compare_in_copies(setup, tmp_path / "copies", "check", *args)
