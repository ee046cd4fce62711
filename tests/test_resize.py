"""``qimg resize`` against qemu-img: sizes, --shrink, preallocation, messages, resulting files."""
from __future__ import annotations

import pytest
from cli_support import compare_in_copies, formats_available, run_qemu


def _setup(folder):
    run_qemu("create", "-q", "-f", "raw", "b.raw", "1M", cwd=folder)
    if "qcow2" in formats_available():
        run_qemu("create", "-q", "-f", "qcow2", "q.qcow2", "1M", cwd=folder)


@pytest.mark.parametrize("args", [
    ["b.raw", "2M"], ["b.raw", "512k"], ["b.raw", "--shrink", "512k"], ["b.raw", "--", "-512K"],
    ["--shrink", "b.raw", "--", "-512K"], ["-f", "raw", "b.raw", "+1M"], ["-q", "-f", "raw", "b.raw", "+1M"],
    ["-f", "raw", "b.raw"], ["-f", "raw", "b.raw", "1x"], ["-f", "raw", "b.raw", "--preallocation=full", "4M"],
    ["-f", "raw", "b.raw", "--preallocation=falloc", "3M"], ["-f", "raw", "b.raw", "--preallocation=foo", "5M"],
    ["-f", "raw", "--shrink", "--preallocation=full", "b.raw", "1M"], ["-f", "raw", "b.raw", "--", "-100M"],
    ["-f", "raw", "b.raw", "2M", "3"], ["-f", "raw", "b.raw", "++1M"], ["-f", "raw", "b.raw", "0"],
    ["-f", "raw", "b.raw", "1.5k"], ["b.raw"], [], ["nonexist", "1M"], ["-f", "raw", "b.raw", "1M"],
    ["--image-opts", "driver=raw,file.filename=b.raw", "3M"], ["-f", "raw", "-z", "b.raw", "2M"],
    ["-f", "raw", "--shrink", "b.raw", "-1"], ["-f", "raw", "b.raw", "9E"], ["-f", "raw", "b.raw", "+9E"],
    ["-f", "raw", "b.raw", "-9E"], ["-f", "raw", "b.raw", "16E"], ["-f", "raw", "b.raw", "0x1k"],
    ["-f", "raw", "b.raw", " 3M"], ["-f", "raw", "b.raw", "+ 1M"], ["-f", "raw", "b.raw", "2M "],
])
def test_raw(tmp_path, args):
    compare_in_copies(_setup, tmp_path, "resize", *args)
    a, b = tmp_path / "qimg" / "b.raw", tmp_path / "qemu" / "b.raw"
    assert a.stat().st_size == b.stat().st_size
    if "full" in " ".join(args) or "falloc" in " ".join(args):
        assert a.stat().st_blocks >= b.stat().st_blocks // 2


@pytest.mark.parametrize("args", [["q.qcow2", "2M"], ["q.qcow2", "512k"], ["--shrink", "q.qcow2", "512k"],
                                  ["-f", "qcow2", "q.qcow2", "+1G"]])
def test_qcow2(tmp_path, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    compare_in_copies(_setup, tmp_path, "resize", *args)
    a, b = tmp_path / "qimg" / "q.qcow2", tmp_path / "qemu" / "q.qcow2"
    assert run_qemu("info", "--output=json", str(a)).stdout.replace(str(a), "X") == \
        run_qemu("info", "--output=json", str(b)).stdout.replace(str(b), "X").replace(
            f'"actual-size": {b.stat().st_blocks * 512}', f'"actual-size": {a.stat().st_blocks * 512}')


def test_library_resize(tmp_path):
    import qimg
    from qimg.errors import QimgError
    from qimg.ops.resize import resize

    run_qemu("create", "-q", "-f", "raw", "r.raw", "1M", cwd=tmp_path)
    with qimg.open(str(tmp_path / "r.raw"), "raw", writable=True) as img:
        assert resize(img, "+1M") == 2 << 20
        with pytest.raises(QimgError, match="--shrink"):
            resize(img, "1M")
        assert resize(img, 4096, shrink=True) == 4096
    assert (tmp_path / "r.raw").stat().st_size == 4096
