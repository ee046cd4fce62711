"""qimg rebase against qemu-img rebase: safe and unsafe modes, -b "", messages; the diff recipe."""
from __future__ import annotations

import pytest
from cli_support import compare_in_copies, run_qemu, run_qemu_io, run_qimg


def need_qcow2() -> None:
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")


def setup(d) -> None:
    for args in (["create", "-f", "raw", "base.raw", "1M"], ["create", "-f", "raw", "new.raw", "1M"],
                 ["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "top.qcow2"],
                 ["create", "-f", "qcow2", "solo.qcow2", "1M"]):
        assert run_qemu(*args, cwd=d).returncode == 0
    run_qemu_io("-f", "raw", "-c", "write -P 5 0 300k", "-c", "write -P 6 600k 10k", "base.raw", cwd=d)
    run_qemu_io("-f", "raw", "-c", "write -P 5 0 100k", "-c", "write -P 7 900k 4k", "new.raw", cwd=d)
    run_qemu_io("-c", "write -P 1 64k 64k", "top.qcow2", cwd=d)


def view(path) -> bytes:
    out = path.parent / (path.name + ".view")
    r = run_qemu("convert", "-U", "-O", "raw", str(path), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def info_backing(path) -> list[str]:
    out = run_qemu("info", "-U", path.name, cwd=path.parent).stdout
    return [line for line in out.splitlines() if "backing" in line]


CASES = [
    ["-u", "top.qcow2"], ["-u", "-b", "new.raw", "-F", "raw", "top.qcow2"], ["-u", "-b", "nonex", "-F", "raw", "top.qcow2"],
    ["-b", "nonex", "-F", "raw", "top.qcow2"], ["-b", "new.raw", "-F", "qcow2", "top.qcow2"],
    ["-b", "new.raw", "-F", "foo", "top.qcow2"], ["-t", "foo", "-b", "new.raw", "top.qcow2"],
    ["-T", "foo", "-b", "new.raw", "top.qcow2"], ["-b", "new.raw", "-F", "raw", "solo.qcow2"],
    ["-b", "", "top.qcow2"], ["-b", "new.raw", "-F", "raw", "top.qcow2"], ["-q", "-b", "new.raw", "-F", "raw", "top.qcow2"],
    ["-f", "raw", "-b", "new.raw", "-F", "raw", "top.qcow2"], ["top.qcow2"], [], ["-u", "a", "b"], ["-Z"],
    ["-u", "-b", "new.raw", "top.qcow2"], ["-U", "-b", "new.raw", "-F", "raw", "top.qcow2"],
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_rebase_like_qemu(tmp_path, args):
    need_qcow2()
    compare_in_copies(setup, tmp_path, "rebase", *args)
    for name in ("top.qcow2", "solo.qcow2"):
        a, b = tmp_path / "qimg" / name, tmp_path / "qemu" / name
        assert info_backing(a) == info_backing(b)
        if "-u" not in args:
            assert view(a) == view(b), name
        if "nonex" not in args:  # qemu-img check opens the backing chain
            assert run_qemu("check", "-U", str(a)).returncode == 0


def test_safe_rebase_keeps_guest_view(tmp_path):
    need_qcow2()
    setup(tmp_path)
    before = view(tmp_path / "top.qcow2")
    r = run_qimg("rebase", "-b", "new.raw", "-F", "raw", "top.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert view(tmp_path / "top.qcow2") == before
    r = run_qimg("rebase", "-b", "", "top.qcow2", cwd=tmp_path)
    assert r.returncode == 0 and view(tmp_path / "top.qcow2") == before
    assert info_backing(tmp_path / "top.qcow2") == []


def test_unsafe_rebase_with_missing_old_backing(tmp_path):
    need_qcow2()
    setup(tmp_path)
    (tmp_path / "base.raw").rename(tmp_path / "moved.raw")
    r = run_qimg("rebase", "-b", "new.raw", "-F", "raw", "top.qcow2", cwd=tmp_path)
    assert r.returncode == 1 and "Could not open backing file" in r.stderr
    r = run_qimg("rebase", "-u", "-b", "moved.raw", "-F", "raw", "top.qcow2", cwd=tmp_path)
    assert r.returncode == 0
    assert info_backing(tmp_path / "top.qcow2")[0].endswith("moved.raw")


def test_diff_recipe(tmp_path):
    """The man page: a modified clone, rebased onto the base, becomes a thin diff of it."""
    need_qcow2()
    d = tmp_path
    assert run_qemu("create", "-f", "raw", "base.img", "2M", cwd=d).returncode == 0
    run_qemu_io("-f", "raw", "-c", "write -P 1 0 2M", "base.img", cwd=d)
    assert run_qemu("convert", "-O", "raw", "base.img", "modified.img", cwd=d).returncode == 0
    run_qemu_io("-f", "raw", "-c", "write -P 2 512k 64k", "modified.img", cwd=d)
    assert run_qemu("create", "-f", "qcow2", "-b", "modified.img", "-F", "raw", "diff.qcow2", cwd=d).returncode == 0
    r = run_qimg("rebase", "-b", "base.img", "-F", "raw", "diff.qcow2", cwd=d)
    assert r.returncode == 0, r.stderr
    assert run_qemu("compare", "diff.qcow2", "modified.img", cwd=d).returncode == 0
    m = run_qemu("map", "--output=json", "diff.qcow2", cwd=d).stdout
    assert m.count('"depth": 0') == 1 and '"start": 524288, "length": 65536, "depth": 0' in m


def test_progress_lines_byte_for_byte(tmp_path):
    need_qcow2()

    def setup(d):
        with open(d / "old.raw", "wb") as f:
            f.truncate(120 << 20)
        with open(d / "new.raw", "wb") as f:
            f.truncate(120 << 20)
            f.seek(50 << 20)
            f.write(b"\x02" * 4096)
        assert run_qemu("create", "-f", "qcow2", "-b", "old.raw", "-F", "raw", "t.qcow2", cwd=d).returncode == 0
        run_qemu_io("-c", "write 0 1k", "-c", "write 100M 1k", "t.qcow2", cwd=d)

    mine, _ = compare_in_copies(setup, tmp_path, "rebase", "-p", "-b", "new.raw", "-F", "raw", "t.qcow2")
    assert mine.stdout.count("\r") > 10
    (tmp_path / "u").mkdir()
    compare_in_copies(setup, tmp_path / "u", "rebase", "-p", "-u", "-b", "new.raw", "-F", "raw", "t.qcow2")


def test_compare_run_matches_a_naive_model():
    """rebase's in-place piece comparison (bytearray.startswith) against slicing and comparing:
    the first piece's answer and how many whole pieces keep it, from any start."""
    import random

    from qimg.ops.rebase import _compare_run

    def naive(a, b, start, end, chunk):
        n = end - start
        i = min(n, chunk)
        differ = a[start:start + i] != b[start:start + i]
        while i < n:
            k = min(n - i, chunk)
            if (a[start + i:start + i + k] != b[start + i:start + i + k]) != differ:
                break
            i += k
        return differ, i

    rnd = random.Random(8)
    for _ in range(2000):
        chunk = rnd.choice([1, 2, 8, 512, 4096])
        n = rnd.randint(1, 9000)
        a = bytearray(rnd.choice([b"\0", b"q"]) * n)
        b = bytearray(a)
        for _ in range(rnd.randint(0, 6)):
            p = rnd.randrange(n)
            b[p] ^= 0x5A
        start = rnd.randrange(n)
        end = rnd.randint(start + 1, n)
        assert _compare_run(a, b, start, end, chunk) == naive(a, b, start, end, chunk), (chunk, n, start, end)
