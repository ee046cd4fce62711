"""``qimg map`` against qemu-img: merging, offsets, chains (depth/present), ranges, errors."""
from __future__ import annotations

import pytest
from cli_support import compare, formats_available, run_qemu, run_qemu_io


@pytest.fixture
def raws(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    (tmp_path / "empty.raw").write_bytes(b"")
    with open(tmp_path / "sparse.raw", "wb") as f:
        f.truncate(8 << 20)
        for off in (0, 2 << 20, (2 << 20) + 4096, 5 << 20):
            f.seek(off)
            f.write(b"d" * 4096)
    with open(tmp_path / "full.raw", "wb") as f:
        f.write(b"\1" * (1 << 20))
    return tmp_path


@pytest.mark.parametrize("name", ["a.raw", "empty.raw", "sparse.raw", "full.raw"])
@pytest.mark.parametrize("extra", [[], ["--output=json"], ["-f", "raw", "--output", "json"]])
def test_raw(raws, name, extra):
    compare(raws, "map", *extra, name)


@pytest.mark.parametrize("rng", [["--start-offset=4096"], ["--start-offset", "2M", "--max-length", "5000"],
                                 ["--max-length=0"], ["--start-offset=9M"], ["--start-offset=1x"],
                                 ["--max-length=-1"], ["--start-offset=-1"], ["--start-offset=100", "--max-length=1"],
                                 # qemu-img 7.2's short forms (not in its man page)
                                 ["-s", "4096"], ["-s2M", "-l", "5000"], ["-l", "x"], ["-s"]])
@pytest.mark.parametrize("out", ["human", "json"])
def test_ranges(raws, rng, out):
    compare(raws, "map", f"--output={out}", *rng, "sparse.raw")


@pytest.mark.parametrize("args", [["map"], ["map", "a.raw", "b.raw"], ["map", "--output=x", "a.raw"],
                                  ["map", "missing.raw"]])
def test_errors(raws, args):
    compare(raws, *args)


@pytest.fixture
def chain(tmp_path):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "base.qcow2", "4M", cwd=tmp_path)
    run_qemu_io("-c", "write -P 1 0 64k", "-c", "write -z 1M 64k", "-c", "write -P 3 2M 128k", "base.qcow2",
                cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", cwd=tmp_path)
    run_qemu_io("-c", "write -P 2 64k 64k", "-c", "write -z 2M 64k", "mid.qcow2", cwd=tmp_path)
    # a larger top over a smaller backing: reads past the backing's end are zeroes at depth 0
    run_qemu("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "6M", cwd=tmp_path)
    run_qemu_io("-c", "write -P 4 128k 64k", "-c", "write -P 5 5M 64k", "top.qcow2", cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["base.qcow2", "mid.qcow2", "top.qcow2"])
@pytest.mark.parametrize("extra", [[], ["--output=json"], ["--output=json", "--start-offset=65000",
                                                             "--max-length=3M"]])
def test_qcow2_chain(chain, name, extra):
    compare(chain, "map", *extra, name)


def test_library_entries():
    """map_extents merges as qemu-img: same kind and contiguous offsets only."""
    from qimg.ops.map import _MERGE_KEYS, _mergeable

    a = {"start": 0, "length": 10, "depth": 0, "present": True, "zero": False, "data": True, "offset": 100}
    assert _mergeable(a, {**a, "start": 10, "offset": 110})
    assert not _mergeable(a, {**a, "start": 10, "offset": 200})
    assert not _mergeable(a, {**a, "start": 10, "depth": 1, "offset": 110})
    b = {k: v for k, v in a.items() if k != "offset"}
    assert not _mergeable(a, {**b, "start": 10})
    # qemu-img 10.0 merges compressed runs only with compressed ones
    c = {**b, "compressed": True}
    assert _mergeable(c, {**b, "start": 10, "compressed": False})
    assert not _mergeable(c, {**b, "start": 10, "compressed": False}, _MERGE_KEYS + ("compressed",))
    assert _mergeable(c, {**c, "start": 10}, _MERGE_KEYS + ("compressed",))


@pytest.mark.parametrize("ops", [
    # iotests 179: zero clusters with a host offset (written zeroes kept allocated), without one
    # (unmapped), and again with one, are three extents, not one
    ["write 18M 14M", "write -z -u 20M 2M", "write -z 24M 6M", "write -z -u 26M 2M", "write -z 28M 2M"],
    # zero clusters whose host offsets do not follow each other
    ["write 0 64k", "write 1M 64k", "write 128k 64k", "write -z 0 64k", "write -z 128k 64k", "write -z 1M 64k"],
    ["write -z 0 1M", "write 1M 1M", "write -z 1M 1M", "write -z -u 2M 64k", "write -z 2M 128k"],
])
@pytest.mark.parametrize("out", ["--output=json", "--output=human"])
def test_qcow2_zero_cluster_kinds(tmp_path, ops, out):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "z.qcow2", "64M", cwd=tmp_path)
    for op in ops:
        run_qemu_io("-c", op, "z.qcow2", cwd=tmp_path)
    compare(tmp_path, "map", out, "z.qcow2")
