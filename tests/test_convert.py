"""qimg convert against qemu-img convert: messages, exit codes, content, allocation, -n/-B/-c/-S/-l."""
from __future__ import annotations

import json
import os
import random

import pytest
from cli_support import assert_same, compare, compare_in_copies, run_qemu, run_qemu_io, run_qimg

MIB = 1 << 20


def make_sources(d) -> None:
    """src.raw: 4 MiB with data runs, a zero-filled data run and holes; small.raw: 512 KiB."""
    with open(d / "src.raw", "wb") as f:
        f.truncate(4 * MIB)
        f.seek(0)
        f.write(b"\x11" * 65536)
        f.seek(MIB)
        f.write(bytes(65536))          # written zeroes: data on disk, zero content
        f.write(b"\x22" * 4096)
        f.seek(3 * MIB + 512)
        f.write(b"\x33" * 1000)        # unaligned, inside a granule
    with open(d / "small.raw", "wb") as f:
        f.truncate(512 * 1024)
        f.write(b"\x44" * 8192)
    with open(d / "garbage.raw", "wb") as f:
        f.write(b"\xff" * (5 * MIB))


def blocks(path) -> int:
    return os.stat(path).st_blocks


# -- usage and error messages -----------------------------------------------------------------
ERROR_CASES = [
    [],
    ["src.raw"],
    ["-O", "raw"],
    ["-Z", "src.raw", "x.raw"],
    ["-pZ", "src.raw", "x.raw"],
    ["-q", "-pZq", "src.raw", "x.raw"],
    ["src.raw", "-Zq", "x.raw"],
    ["--foo", "src.raw", "x.raw"],
    ["--target", "src.raw", "x.raw"],
    ["--image-opts=5", "src.raw", "x.raw"],
    ["src.raw", "-O"],
    ["-q", "-pO"],
    ["-O", "raw", "nonexist.raw", "out.raw"],
    ["-c", "-O", "raw", "src.raw", "c.raw"],
    ["-n", "-O", "raw", "src.raw", "missing.raw"],
    ["-n", "-O", "raw", "src.raw", "small.raw"],
    ["-S", "-1", "src.raw", "x.raw"],
    ["-S", "abc", "src.raw", "x.raw"],
    ["-S", "1000", "src.raw", "x.raw"],
    ["-S", "100M", "src.raw", "x.raw"],
    ["-m", "0", "-Z", "src.raw", "x.raw"],
    ["-m", "17", "src.raw", "x.raw"],
    ["-O", "foo", "src.raw", "x.raw"],
    ["-B", "src.raw", "-O", "raw", "src.raw", "x.raw"],
    ["-F", "raw", "src.raw", "x.raw"],
    ["-l", "snapshot.id=1", "src.raw", "x.raw"],
    ["-l", "snapshot.foo=1", "src.raw", "x.raw"],
    ["-l", "a", "src.raw", "src.raw", "x.raw"],
    ["--target-image-opts", "src.raw", "x.raw"],
    ["--target-is-zero", "src.raw", "x.raw"],
    ["--skip-broken-bitmaps", "src.raw", "x.raw"],
    ["--bitmaps", "-O", "raw", "src.raw", "x.raw"],
    ["-C", "-c", "-O", "qcow2", "src.raw", "x.qcow2"],
    ["-C", "-S", "4k", "src.raw", "x.raw"],
    ["-r", "foo", "src.raw", "x.raw"],
    ["-t", "foo", "src.raw", "x.raw"],
    ["-T", "foo", "src.raw", "x.raw"],
    ["-o", ",,", "src.raw", "x.raw"],
    ["-n", "-o", "size=1M", "src.raw", "small.raw"],
    ["--image-opts", "-f", "raw", "src.raw", "x.raw"],
    ["-f", "foo", "src.raw", "x.raw"],
    ["-O", "raw", "src.raw", "/nonexistent-dir/x.raw"],
    ["-O", "raw", "-o", "help"],
    ["-o", "help", "-o", "size=1", "src.raw", "x.raw"],
    ["-O", "raw", "-o", "preallocation=full,help"],
    ["-O", "qcow2", "-o", "foo=bar", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-B", "src.raw", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=src.raw", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=3", "src.raw", "x.qcow2"],
    ["-n", "-B", "src.raw", "-O", "qcow2", "src.raw", "small.raw"],
    # a backing file and several sources (iotests 122): refused before the backing format
    ["-O", "qcow2", "-B", "small.raw", "src.raw", "small.raw", "x.qcow2"],
    ["-O", "qcow2", "-B", "small.raw", "-F", "raw", "src.raw", "small.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=small.raw,backing_fmt=raw", "src.raw", "small.raw", "x.qcow2"],
    ["-n", "-B", "small.raw", "src.raw", "small.raw", "garbage.raw"],
    ["-O", "raw", "-B", "small.raw", "src.raw", "small.raw", "x.raw"],
    # ',,' in -o values survives convert's own handling of the size option (iotests 082)
    ["-O", "qcow2", "-o", "backing_fmt=raw,backing_file=small.raw,,help", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=small.raw,", "-o", "help", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "backing_file=small.raw,,,", "-o", "help", "src.raw", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=4k,,,,lazy_refcounts=on", "src.raw", "x.qcow2"],
]


@pytest.mark.parametrize("args", ERROR_CASES, ids=lambda a: " ".join(a) or "none")
def test_errors_and_usage(tmp_path, args):
    compare_in_copies(make_sources, tmp_path, "convert", *args)


def test_help_option_exits_zero(tmp_path):
    r = run_qimg("convert", "-h", cwd=tmp_path)
    assert r.returncode == 0 and "usage: qimg" in r.stdout


# -- content and allocation ---------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["-S", "0"], ["-S", "64k"], ["-m", "1"], ["-W"], ["-m", "3", "-W"],
                                   ["-C"], ["-r", "1G"], ["-q"]])
def test_raw_to_raw_content_and_allocation(tmp_path, extra):
    mine, theirs = compare_in_copies(make_sources, tmp_path, "convert", *extra, "-O", "raw", "src.raw", "out.raw")
    assert mine.returncode == 0
    a, b = tmp_path / "qimg" / "out.raw", tmp_path / "qemu" / "out.raw"
    assert a.read_bytes() == b.read_bytes()
    if "-C" not in extra:  # copy offloading may share or copy blocks: the allocation is the kernel's
        assert blocks(a) == blocks(b)


def test_concatenated_sources(tmp_path):
    compare_in_copies(make_sources, tmp_path, "convert", "-O", "raw", "small.raw", "src.raw", "small.raw", "o.raw")
    a, b = tmp_path / "qimg" / "o.raw", tmp_path / "qemu" / "o.raw"
    assert a.stat().st_size == 5 * MIB and a.read_bytes() == b.read_bytes()


def test_options_after_positionals_and_clusters(tmp_path):
    compare_in_copies(make_sources, tmp_path, "convert", "src.raw", "-qOraw", "o.raw", "-S4k", "-m2")
    assert (tmp_path / "qimg" / "o.raw").read_bytes() == (tmp_path / "qemu" / "o.raw").read_bytes()


@pytest.mark.parametrize("target_is_zero", [False, True])
def test_no_create_zeroes_target_unless_told(tmp_path, target_is_zero):
    extra = ["--target-is-zero"] if target_is_zero else []
    compare_in_copies(make_sources, tmp_path, "convert", "-n", *extra, "-O", "raw", "src.raw", "garbage.raw")
    a, b = tmp_path / "qimg" / "garbage.raw", tmp_path / "qemu" / "garbage.raw"
    assert a.read_bytes() == b.read_bytes()
    src = (tmp_path / "qimg" / "src.raw").read_bytes()
    if target_is_zero:
        assert a.read_bytes()[2 * MIB: 2 * MIB + 16] == b"\xff" * 16  # nothing written over source holes
    else:
        assert a.read_bytes()[: 4 * MIB] == src


def test_progress_output(tmp_path):
    mine, _ = compare_in_copies(make_sources, tmp_path, "convert", "-p", "-O", "raw", "small.raw", "o.raw")
    assert mine.stdout.startswith("    (0.00/100%)\r") and mine.stdout.endswith("    (100.00/100%)\r\n")


def test_progress_on_error(tmp_path):
    compare_in_copies(make_sources, tmp_path, "convert", "-p", "-O", "raw", "nonexist", "o.raw")


# -- qcow2 (the formats helper's plugin) ----------------------------------------------------------
def _qemu_map(path) -> list:
    r = run_qemu("map", "--output=json", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _need_qcow2():
    from qimg.plugins import get_registry

    if "qcow2" not in get_registry().format_names():
        pytest.skip("qcow2 plugin not installed")


@pytest.mark.parametrize("extra", [[], ["-c"], ["-S", "0"], ["-o", "cluster_size=4k"], ["-c", "-W", "-m", "4"]])
def test_raw_to_qcow2_same_layout_as_qemu(tmp_path, extra):
    _need_qcow2()
    compare_in_copies(make_sources, tmp_path, "convert", *extra, "-O", "qcow2", "src.raw", "o.qcow2")
    a, b = tmp_path / "qimg" / "o.qcow2", tmp_path / "qemu" / "o.qcow2"
    assert run_qemu("check", str(a)).returncode == 0
    assert run_qemu("compare", str(a), str(b)).returncode == 0
    if "-W" not in extra:
        assert _qemu_map(a) == _qemu_map(b)


def test_qcow2_to_raw_and_back(tmp_path):
    _need_qcow2()
    make_sources(tmp_path)
    assert run_qemu("convert", "-O", "qcow2", "src.raw", "q.qcow2", cwd=tmp_path).returncode == 0
    run_qemu_io("-c", "write -z 0 32k", "-c", "write -P 7 2M 64k", "q.qcow2", cwd=tmp_path)
    r = run_qimg("convert", "-O", "raw", "q.qcow2", "o.raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run_qemu("compare", "-f", "qcow2", "-F", "raw", "q.qcow2", "o.raw", cwd=tmp_path).returncode == 0


def make_chain(d) -> None:
    make_sources(d)
    assert run_qemu("create", "-f", "qcow2", "-b", "src.raw", "-F", "raw", "top.qcow2", cwd=d).returncode == 0
    run_qemu_io("-c", "write -P 0x55 128k 64k", "-c", "write -z 0 64k", "-c", "write -P 0x66 3M 4k",
                "top.qcow2", cwd=d)


@pytest.mark.parametrize("args", [
    ["-O", "qcow2", "top.qcow2", "flat.qcow2"],
    ["-O", "raw", "top.qcow2", "flat.raw"],
    ["-B", "src.raw", "-F", "raw", "-O", "qcow2", "top.qcow2", "thin.qcow2"],
])
def test_chain_sources_and_backing_target(tmp_path, args):
    _need_qcow2()
    compare_in_copies(make_chain, tmp_path, "convert", *args)
    out = args[-1]
    a, b = tmp_path / "qimg" / out, tmp_path / "qemu" / out
    assert run_qemu("compare", str(a), str(b)).returncode == 0
    assert run_qemu("compare", str(a), str(tmp_path / "qemu" / "top.qcow2")).returncode == 0
    if out.endswith("qcow2"):
        assert run_qemu("check", str(a)).returncode == 0
        assert _qemu_map(a) == _qemu_map(b)


def test_no_create_into_an_overlay_copies_the_whole_chain(tmp_path):
    """With -n the target's own backing file does not make qemu-img skip anything."""
    _need_qcow2()

    def setup(d):
        make_chain(d)
        assert run_qemu("create", "-f", "qcow2", "-b", "src.raw", "-F", "raw", "t.qcow2", cwd=d).returncode == 0

    compare_in_copies(setup, tmp_path, "convert", "-n", "-O", "qcow2", "top.qcow2", "t.qcow2")
    a, b = tmp_path / "qimg" / "t.qcow2", tmp_path / "qemu" / "t.qcow2"
    assert _qemu_map(a) == _qemu_map(b)
    assert run_qemu("compare", str(a), str(b)).returncode == 0


def test_snapshot_source(tmp_path):
    _need_qcow2()

    def setup(d):
        make_sources(d)
        assert run_qemu("convert", "-O", "qcow2", "src.raw", "s.qcow2", cwd=d).returncode == 0
        assert run_qemu("snapshot", "-c", "snap1", "s.qcow2", cwd=d).returncode == 0
        run_qemu_io("-c", "write -P 0x77 0 1M", "s.qcow2", cwd=d)

    for i, sel in enumerate(["snap1", "snapshot.name=snap1", "snapshot.id=1", "snapshot.name=nope"]):
        (tmp_path / str(i)).mkdir()
        compare_in_copies(setup, tmp_path / str(i), "convert", "-l", sel, "-O", "raw", "s.qcow2", "o.raw")
    a = tmp_path / "0" / "qimg" / "o.raw"
    assert a.read_bytes() == (tmp_path / "0" / "qimg" / "src.raw").read_bytes()


def test_bitmaps_copied(tmp_path):
    _need_qcow2()

    def setup(d):
        assert run_qemu("create", "-f", "qcow2", "b.qcow2", "1M", cwd=d).returncode == 0
        assert run_qemu("bitmap", "--add", "b.qcow2", "b1", cwd=d).returncode == 0
        assert run_qemu("bitmap", "--add", "-g", "128k", "b.qcow2", "b2", cwd=d).returncode == 0
        assert run_qemu("bitmap", "--disable", "b.qcow2", "b2", cwd=d).returncode == 0

    compare_in_copies(setup, tmp_path, "convert", "--bitmaps", "-O", "qcow2", "b.qcow2", "o.qcow2")
    info = [json.loads(run_qemu("info", "--output=json", str(tmp_path / w / "o.qcow2")).stdout)
            ["format-specific"]["data"]["bitmaps"] for w in ("qimg", "qemu")]
    assert info[0] == info[1] and len(info[0]) == 2


# -- library level ----------------------------------------------------------------------------------
def test_failed_convert_keeps_created_target(tmp_path, monkeypatch):
    # qemu-img never deletes a target it created (a read error in the copy leaves it)
    import qimg
    from qimg.errors import QimgError
    from qimg.ops.convert import ConvertOptions, convert

    make_sources(tmp_path)
    src = qimg.open(str(tmp_path / "src.raw"), "raw")

    def boom(offset, view):
        raise QimgError("simulated read failure")

    monkeypatch.setattr(src, "preadinto", boom)
    with pytest.raises(QimgError, match="simulated read failure"):
        convert([src], str(tmp_path / "out.raw"), ConvertOptions())
    src.close()
    assert (tmp_path / "out.raw").exists()


def test_huge_sparse_image_reads_only_data(tmp_path, monkeypatch):
    """A 1 TiB image with 4 MiB of data: only the data is read (holes cost nothing)."""
    import qimg
    from qimg.ops.convert import ConvertOptions, convert

    path = tmp_path / "huge.raw"
    with open(path, "wb") as f:
        f.truncate(1 << 40)
        f.seek(500 << 30)
        f.write(os.urandom(4 * MIB))
    src = qimg.open(str(path), "raw")
    read = []
    orig = src.preadinto
    monkeypatch.setattr(src, "preadinto", lambda off, view: (read.append(len(view)), orig(off, view))[1])
    convert([src], str(tmp_path / "o.raw"), ConvertOptions())
    src.close()
    assert sum(read) == 4 * MIB
    assert os.stat(tmp_path / "o.raw").st_blocks * 512 <= 8 * MIB
    with open(tmp_path / "o.raw", "rb") as f, open(path, "rb") as g:
        f.seek(500 << 30)
        g.seek(500 << 30)
        assert f.read(4 * MIB) == g.read(4 * MIB)
        assert os.path.getsize(tmp_path / "o.raw") == 1 << 40


def test_zero_runs_property():
    from qimg.ops.copy import zero_runs

    rng = random.Random(7)
    for _ in range(200):
        g = rng.choice([512, 4096, 65536])
        n = rng.randrange(1, 300_000)
        base = rng.randrange(0, 3) * 512
        buf = bytearray(n)
        for _ in range(rng.randrange(0, 6)):
            s = rng.randrange(0, n)
            e = min(n, s + rng.randrange(1, 80_000))
            buf[s:e] = bytes([rng.randrange(1, 256)]) * (e - s)
        runs = zero_runs(buf, n, base, g)
        pos = 0
        for s, k, z in runs:
            assert s == pos and k > 0
            pos += k
            if z:
                assert not any(buf[s:s + k])
        assert pos == n
        # every granule-aligned all-zero granule lies in a zero run
        zero_at = {s + i for s, k, z in runs if z for i in range(0, k, 512)}
        first = (-base) % g
        for a in range(first, n - g + 1, g):
            if not any(buf[a:a + g]):
                assert a in zero_at or any(s <= a < s + k for s, k, z in runs if z)


def test_same_messages_in_process_and_oracle(tmp_path):
    make_sources(tmp_path)
    assert_same(run_qimg("convert", "-O", "raw", "-o", "help", cwd=tmp_path),
                run_qemu("convert", "-O", "raw", "-o", "help", cwd=tmp_path))
    compare(tmp_path, "convert", "-O", "raw", "src.raw", "/nonexistent-dir/x.raw")


def test_random_images_convert_exactly(tmp_path):
    """Random layouts of data, written zeroes and holes: every option mix copies the content,
    and the zero granules found in data never hold a non-zero byte."""
    import qimg
    from qimg.ops.convert import ConvertOptions, convert

    rng = random.Random(11)
    for i in range(12):
        path = tmp_path / f"r{i}.raw"
        size = rng.randrange(1, 6 * MIB)
        with open(path, "wb") as f:
            f.truncate(size)
            for _ in range(rng.randrange(0, 8)):
                off = rng.randrange(0, size)
                n = min(size - off, rng.randrange(1, 700_000))
                kind = rng.random()
                f.seek(off)
                f.write(bytes(n) if kind < 0.3 else bytes([rng.randrange(1, 256)]) * n if kind < 0.6
                        else rng.randbytes(n))
        opts = ConvertOptions(sparse=rng.choice([0, 512, 4096, 65536]), workers=rng.choice([1, 2, 8]),
                              ordered=rng.random() < 0.7)
        src = qimg.open(str(path), "raw")
        out = tmp_path / f"o{i}.raw"
        convert([src], str(out), opts)
        src.close()
        got, want = out.read_bytes(), path.read_bytes()
        # raw creation rounds the size up to whole sectors, as qemu's does
        assert got[:size] == want and not any(got[size:]) and len(got) == -(-size // 512) * 512, (i, opts)
        if opts.sparse == 0:
            assert os.stat(out).st_blocks * 512 >= size


def test_progress_lines_byte_for_byte(tmp_path):
    """convert -p prints the same lines as qemu-img (its 1-point threshold, float32 sums)."""
    def setup(d):
        with open(d / "s.raw", "wb") as f:
            f.truncate(70 * MIB)
            f.write(b"\x01" * 4096)

    for args in (["-S", "0"], ["-S", "0", "-m", "1"]):
        (tmp_path / args[-1]).mkdir()
        mine, theirs = compare_in_copies(setup, tmp_path / args[-1], "convert", "-p", *args, "-O", "raw", "s.raw", "o.raw")
        assert mine.stdout.count("\r") > 10


def test_backing_target_zeroes_past_backing_end_are_skipped(tmp_path):
    """-B with a backing file shorter than the source: zero runs past its end stay
    unallocated, runs are cut at its end (same map and progress lines as qemu-img)."""
    _need_qcow2()

    def setup(d):
        with open(d / "b.raw", "wb") as f:
            f.write(b"\x01" * MIB)
        assert run_qemu("create", "-f", "qcow2", "s.qcow2", "3M", cwd=d).returncode == 0
        run_qemu_io("-c", "write -z 0 3M", "-c", "write -P 3 512k 1M", "s.qcow2", cwd=d)

    compare_in_copies(setup, tmp_path, "convert", "-p", "-B", "b.raw", "-F", "raw", "-O", "qcow2", "s.qcow2", "o.qcow2")
    a, b = tmp_path / "qimg" / "o.qcow2", tmp_path / "qemu" / "o.qcow2"
    assert _qemu_map(a) == _qemu_map(b)


@pytest.mark.parametrize("compressed", [False, True])
def test_copy_offload_from_qcow2(tmp_path, compressed):
    _need_qcow2()
    make_sources(tmp_path)
    extra = ["-c"] if compressed else []
    assert run_qemu("convert", *extra, "-O", "qcow2", "src.raw", "q.qcow2", cwd=tmp_path).returncode == 0
    r = run_qimg("convert", "-C", "-O", "raw", "q.qcow2", "o.raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.raw").read_bytes() == (tmp_path / "src.raw").read_bytes()


def test_sigusr1_prints_progress_once(tmp_path):
    """As qemu-img: SIGUSR1 prints the progress line even without -p."""
    import re
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "src.raw"
    src.write_bytes(b"\1" * (8 << 20))
    code = "import sys; from qimg_cli.main import main; sys.argv[0] = 'qimg'; main()"
    p = subprocess.Popen([sys.executable, "-c", code, "convert", "-r", "2M", "-f", "raw", "-O", "raw", str(src),
                          str(tmp_path / "out.raw")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # start-up, then copying at 2 MiB/s for about 4 s
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
    finally:
        p.kill()
        out, err = p.communicate()
    assert re.fullmatch(rb" {4}\(\d+\.\d\d/100%\)\r", out), (out, err)
