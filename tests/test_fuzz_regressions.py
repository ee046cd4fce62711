"""Regressions for findings of the fuzzer (tests/fuzz/run.py): raw OSErrors that escaped drivers.

Each image is built as the fuzzer builds it (its seed image from qemu-img/qemu-io, then the
recorded mutation list). The library must raise a QimgError (never an OSError) and the CLI must
print one clean ``qimg:`` line, no traceback. qemu-img opens all these images too and only fails
at the I/O ("write failed: File too large" / Input/output error), so the test asserts qemu-img
also fails the same command rather than matching its (errno-only) message.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from qimg.errors import QimgError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
try:
    import run as fuzz_run
finally:
    sys.path.pop(0)

# (format, mutations, truncate, what the error must name); qcow2 fails as QEMU does, with the
# errno of the request (a refcount block past any offset: EIO; a table the file system cannot
# hold: EFBIG, which qemu-img commit reports as "Block job failed: File too large")
FINDINGS = [
    pytest.param("qcow2", [("bits", 65536, 228)] * 3 + [("u32le", 228, 127)], None, "Input/output error",
                 id="qcow2-refblock-read"),
    pytest.param("qcow2", [("u64le", 400, 16), ("u32le", 1240, 1), ("u8", 41, 1), ("u8", 85, 41)], None,
                 "File too large", id="qcow2-write-l1"),
    pytest.param("qcow2", [("bits", 6712, 233)] + [("u64be", 44, 65536)] * 3 + [("bits", 233, 2)], None,
                 "File too large", id="qcow2-reftable-entry-write"),
    pytest.param("qcow", [("u64le", 392, 16), ("u32le", 1212, 1), ("u8", 41, 1), ("u8", 80, 41)], None, "L1 table",
                 id="qcow-commit-l1"),
    pytest.param("qcow", [("u32be", 692, 22), ("u32be", 44, 32), ("u8", 6256, 104)], 104, "L2 table",
                 id="qcow-write-new-l2"),
    pytest.param("vdi", [("u64le", 336, 0)], None, "block index 0 too large", id="vdi-write-bad-map-entry"),
]


def _image(tmp_path: Path, fmt: str, muts: list, truncate: int | None) -> str:
    seed = fuzz_run.make_seed(fmt, tmp_path)
    assert seed is not None
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(fuzz_run.apply(seed, muts, truncate))
    return str(path)


@pytest.mark.parametrize("fmt,muts,truncate,field", FINDINGS)
def test_finding_raises_qimg_error(tmp_path, fmt, muts, truncate, field):
    path = _image(tmp_path, fmt, muts, truncate)
    with pytest.raises(QimgError) as ei:
        fuzz_run.exercise(path, fmt, True)
    assert "Errno" not in str(ei.value) and field in str(ei.value)


@pytest.mark.parametrize("fmt,muts,truncate,field", FINDINGS[1:])
def test_finding_commit_via_cli(tmp_path, qimg, qemu_img, qemu_io, fmt, muts, truncate, field):
    """Committing an overlay into the corrupt image: one clean error line, as qemu-img fails too."""
    base = _image(tmp_path, fmt, muts, truncate)
    for tool_run in ("qemu", "qimg"):
        b = tmp_path / f"base-{tool_run}.{fmt}"
        b.write_bytes(Path(base).read_bytes())
        ov = str(tmp_path / f"ov-{tool_run}.qcow2")
        assert qemu_img("create", "-q", "-f", "qcow2", "-b", str(b), "-F", fmt, ov).returncode == 0
        assert qemu_io("-c", "write -P 0x5a 0 8k", ov).returncode == 0
        r = (qemu_img if tool_run == "qemu" else qimg)("commit", ov)
        if tool_run == "qemu":
            want = r.returncode
        else:
            assert r.returncode == want == 1, r
            assert r.stderr.startswith("qimg: ") and r.stderr.count("\n") == 1, r.stderr
            assert "Traceback" not in r.stderr and "Errno" not in r.stderr
            assert field in r.stderr, r.stderr


def test_refblock_offset_read_via_cli(tmp_path, qimg):
    """A reftable entry past any file offset: map and convert give a clean error, check reports."""
    fmt, muts, truncate, field = FINDINGS[0].values
    path = _image(tmp_path, fmt, muts, truncate)
    for args in (("map", path), ("check", path), ("convert", "-O", "raw", path, str(tmp_path / "o.raw"))):
        r = qimg(*args)
        assert "Traceback" not in r.stderr and "Errno" not in r.stderr, (args, r.stderr)
        assert "Invalid argument" not in r.stderr, (args, r.stderr)
