"""The parallels format against qemu-img/qemu-io 7.2 and 10.0, both directions and byte for
byte: images qimg creates and writes are the files QEMU makes with the same commands (header,
BAT, data, file size, allocated blocks), images QEMU writes read back identical, and info,
map, check (and its repairs), the open errors, the Format Extension checks and the refusals
match qemu-img profile by profile (QIMG_COMPAT=7.2 against 7.2, 10.0 against 10.0)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys

import pytest
from conftest import Run, as_qemu, oracle_command, pattern_bytes
from ro_checks import data_runs

MIB = 1 << 20
HEADER = struct.Struct("<16sIIIIIQIIIQ")
INUSE = 0x746F6E59
_NODE = re.compile(r"#block\d+")  # QEMU's generated node name (random digits)


@pytest.fixture
def qemu_io(oracle):
    """The current oracle's qemu-io (7.2 or 10.0, as ``qemu_img``)."""
    argv, env, exe = oracle_command("qemu-io")

    def run(*args: str) -> Run:
        p = subprocess.run([*argv, *args], executable=exe, env=env, capture_output=True)
        return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    return run


def run_qimg(qimg, profile, *args):
    return qimg(*args, env={"QIMG_COMPAT": profile})


def same(got, exp, *names) -> None:
    """Exit code, stdout and stderr equal (qimg's name and the image names aside; QEMU names a
    generated block node where qimg names the file: docs/commands/bitmap.md)."""
    exp.stderr = _NODE.sub("#blockN", exp.stderr)
    got.stderr = _NODE.sub("#blockN", got.stderr)
    g_out, g_err = got.stdout, as_qemu(got.stderr)
    for a, b in names:
        g_out, g_err = g_out.replace(a, b), g_err.replace(a, b)
    assert (got.returncode, g_out, g_err) == (exp.returncode, exp.stdout, exp.stderr)


def same_layout(b, a) -> None:
    """Files ``b`` and ``a`` have the same size, data extents and allocated blocks. The blocks
    may differ by ext4's extent-tree blocks (it counts one 4 KiB block once a file has more
    than four extents on disk, which depends on the disk's free space, not on the writer)."""
    assert (os.path.getsize(b), data_runs(b)) == (os.path.getsize(a), data_runs(a))
    assert abs(os.stat(b).st_blocks - os.stat(a).st_blocks) <= 16, (os.stat(b).st_blocks, os.stat(a).st_blocks)


def qimg_writes(path, ops, profile: str, options: dict | None = None) -> None:
    """Run write operations through the library (what qemu-io does to QEMU's driver)."""
    code = f"""
import qimg
with qimg.open({str(path)!r}, "parallels", writable=True, options={options or {}!r}) as im:
    for op, off, n, val in {ops!r}:
        if op == "write":
            im.pwrite(off, bytes([val]) * n)
        elif op == "zero":
            im.write_zeroes(off, n)
        else:
            im.discard(off, n)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, QIMG_COMPAT=profile))
    assert p.returncode == 0, p.stderr


def qemu_io_cmds(ops) -> list[str]:
    out = []
    for op, off, n, val in ops:
        cmd = {"write": f"write -P {val} {off} {n}", "zero": f"write -z {off} {n}", "discard": f"discard {off} {n}"}[op]
        out += ["-c", cmd]
    return out


# ---------------------------------------------------------------------------- create
@pytest.mark.parametrize("args", [
    ["64M"], ["-o", "cluster_size=64k", "8M"], ["-o", "cluster_size=4k", "10G"], ["1000"],
    ["-o", "cluster_size=1000", "10M"], ["-o", "cluster_size=512", "3M"], ["-o", "preallocation=full", "8M"],
    ["-o", "preallocation=falloc,cluster_size=2M", "9M"], ["0"],
])
def test_create_as_qemu(args, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    e = qemu_img("create", "-f", "parallels", *args[:-1], str(a), args[-1])
    g = run_qimg(qimg, profile, "create", "-f", "parallels", *args[:-1], str(b), args[-1])
    same(g, e, (str(b), str(a)))
    assert b.read_bytes() == a.read_bytes()
    same_layout(b, a)
    for cmd in (["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"], ["map", "--output=json"]):
        e, g = qemu_img(*cmd, str(a)), run_qimg(qimg, profile, *cmd, str(a))
        if cmd == ["info", "--output=json"]:
            ej, gj = json.loads(e.stdout), json.loads(g.stdout)
            assert gj == ej
            continue
        same(g, e)


@pytest.mark.parametrize("args", [
    ["-o", "cluster_size=2G", "1M"], ["-o", "cluster_size=512", "3T"], ["-o", "cluster_size=0", "1M"],
    ["-o", "preallocation=metadata", "1M"], ["-o", "preallocation=bogus", "1M"], ["-b", "x.img", "-F", "raw", "1M"],
    ["-o", "cluster_size=foo", "1M"], ["-o", "backing_file=x", "1M"],
])
@pytest.mark.parametrize("existing", [False, True])
def test_create_errors_as_qemu(args, existing, tmp_path, qemu_img, qimg):
    results = []
    for tool, name in ((qemu_img, "a.img"), (qimg, "b.img")):
        path = tmp_path / name
        if existing:
            path.write_bytes(b"keep")
        r = tool("create", "-f", "parallels", *args[:-1], str(path), args[-1])
        results.append((r.returncode, as_qemu(r.stderr).replace(name, "X"), r.stdout.replace(name, "X"),
                        path.read_bytes() if path.exists() else None))
    assert results[1] == results[0]
    assert results[0][0] == 1


def test_create_help_as_qemu(tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    for args in (["create", "-f", "parallels", "-o", "help"], ["create", "-f", "parallels", "-o", "help", "x.img"]):
        same(run_qimg(qimg, profile, *args), qemu_img(*args))


# ---------------------------------------------------------------------------- writes, both directions
OPS = [("write", 0, 65536, 1), ("write", MIB, 102400, 2), ("write", 1000, 100, 3), ("zero", 0, 65536, 0),
       ("zero", MIB, 1000, 0), ("discard", 2 * MIB, 65536, 0), ("write", 2 * MIB, 65536, 4),
       ("zero", 2 * MIB, 65536, 0), ("write", 5 * MIB, 512, 5), ("write", 3 * MIB + 7, 200000, 6),
       ("discard", 0, 2 * MIB, 0), ("write", 64 * 1024 * 3, 70000, 7)]


@pytest.mark.parametrize("create", [["-o", "cluster_size=64k", "8M"], ["8M"]])
def test_writes_make_the_same_file(create, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert qemu_img("create", "-q", "-f", "parallels", *create[:-1], str(a), create[-1]).returncode == 0
    b.write_bytes(a.read_bytes())
    r = qemu_io(*qemu_io_cmds(OPS), str(a))
    assert r.returncode == 0 and "error" not in r.stderr.lower(), r.stderr
    qimg_writes(b, OPS, profile)
    assert b.read_bytes() == a.read_bytes()
    same_layout(b, a)
    for cmd in (["check"], ["map", "--output=json"], ["map"], ["compare", str(a)]):
        same(run_qimg(qimg, profile, *cmd, str(b)), qemu_img(*cmd, str(b)))
    raw_a, raw_b = tmp_path / "a.raw", tmp_path / "b.raw"
    assert qemu_img("convert", "-O", "raw", str(b), str(raw_a)).returncode == 0
    assert run_qimg(qimg, profile, "convert", "-O", "raw", str(a), str(raw_b)).returncode == 0
    assert raw_a.read_bytes() == raw_b.read_bytes()


@pytest.mark.parametrize("mode", ["falloc", "truncate"])
def test_prealloc_options_make_the_same_file(mode, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert qemu_img("create", "-q", "-f", "parallels", "-o", "cluster_size=64k", str(a), "8M").returncode == 0
    b.write_bytes(a.read_bytes())
    ops = [("write", 0, 512, 1), ("write", 3 * MIB, 70000, 2)]
    r = qemu_io("--image-opts", f"driver=parallels,file.filename={a},prealloc-mode={mode},prealloc-size=256k",
                *qemu_io_cmds(ops))
    assert r.returncode == 0, r.stderr
    qimg_writes(b, ops, profile, {"prealloc-mode": mode, "prealloc-size": "256k"})
    assert b.read_bytes() == a.read_bytes()
    same_layout(b, a)


def test_convert_as_qemu(tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    src = tmp_path / "s.raw"
    src.write_bytes(pattern_bytes(12 * MIB, seed=5))
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for opts in (["-o", "cluster_size=64k"], []):
        e = qemu_img("convert", "-O", "parallels", *opts, str(src), str(a))
        g = run_qimg(qimg, profile, "convert", "-O", "parallels", *opts, str(src), str(b))
        same(g, e)
        assert b.read_bytes() == a.read_bytes()
        same_layout(b, a)
    # and back
    ra, rb = tmp_path / "a.raw", tmp_path / "b.raw"
    assert qemu_img("convert", "-O", "raw", str(a), str(ra)).returncode == 0
    assert run_qimg(qimg, profile, "convert", "-O", "raw", str(a), str(rb)).returncode == 0
    assert ra.read_bytes() == rb.read_bytes() == src.read_bytes()
    for cmd in (["measure", "-O", "parallels", str(src)], ["resize", str(a), "20M"],
                ["amend", "-o", "cluster_size=4k", str(a)], ["snapshot", "-l", str(a)],
                ["bitmap", "--add", str(a), "b0"], ["rebase", "-u", "-b", "", str(a)]):
        # each on a fresh copy: qemu-img 10.0's bitmap and commit leave a parallels image
        # marked in use (they inactivate it before closing, and its driver then skips the close)
        c = tmp_path / "c.img"
        c.write_bytes(a.read_bytes())
        cmd = [str(c) if x == str(a) else x for x in cmd]
        g = run_qimg(qimg, profile, *cmd)
        c.write_bytes(a.read_bytes())
        same(g, qemu_img(*cmd))


# ---------------------------------------------------------------------------- hand-made images
def make_image(path, *, magic=b"WithouFreSpacExt", tracks=128, bat=None, nb_sectors=None, inuse=0,
               data_off=None, ext_off=0, clusters: dict | None = None, version=2, tail=b"") -> None:
    """A parallels image built field by field: ``bat`` entries (in the magic's unit), cluster data
    at the given sector offsets."""
    bat = bat or [0] * 16
    if data_off is None:
        end = -(-(64 + 4 * len(bat)) // 512)
        data_off = -(-end // tracks) * tracks if magic == b"WithouFreSpacExt" and tracks else end
    if nb_sectors is None:
        nb_sectors = len(bat) * tracks
    hdr = HEADER.pack(magic, version, 16, 1, tracks, len(bat), nb_sectors, inuse, data_off, 0, ext_off)
    d = bytearray(hdr + struct.pack(f"<{len(bat)}I", *bat))
    d = d.ljust(data_off * 512, b"\0")
    for sector, data in (clusters or {}).items():
        end = sector * 512 + len(data)
        if len(d) < end:
            d = d.ljust(end, b"\0")
        d[sector * 512 : end] = data
    path.write_bytes(bytes(d) + tail)


def old_magic(path, data_off_zero: bool) -> None:
    """A "WithoutFreeSpace" image (BAT in sectors), 8 clusters of 63 sectors (an old size)."""
    tracks = 63
    bat = [0] * 8
    data_off = 0 if data_off_zero else 1
    base = 1  # the data area right after the 96-byte header and BAT: sector 1
    clusters = {}
    for i, cl in enumerate((2, 5, 0)):
        sector = base + i * tracks
        bat[cl] = sector
        clusters[sector] = bytes([0x30 + cl]) * (tracks * 512)
    make_image(path, magic=b"WithoutFreeSpace", tracks=tracks, bat=bat, data_off=data_off, clusters=clusters,
               nb_sectors=(1 << 32) + 8 * tracks)


@pytest.mark.parametrize("data_off_zero", [True, False])
def test_old_magic_reads_as_qemu(data_off_zero, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    img = tmp_path / "old.img"
    old_magic(img, data_off_zero)
    for cmd in (["info", "--output=json"], ["map", "--output=json"], ["check"], ["check", "--output=json"]):
        e, g = qemu_img(*cmd, str(img)), run_qimg(qimg, profile, *cmd, str(img))
        if cmd[0] == "info":
            ej, gj = json.loads(e.stdout), json.loads(g.stdout)
            assert gj == ej
        else:
            same(g, e)
    ra, rb = tmp_path / "a.raw", tmp_path / "b.raw"
    assert qemu_img("convert", "-O", "raw", str(img), str(ra)).returncode == 0
    assert run_qimg(qimg, profile, "convert", "-O", "raw", str(img), str(rb)).returncode == 0
    assert ra.read_bytes() == rb.read_bytes()
    # writes: the same file as QEMU's
    a, b = tmp_path / "w1.img", tmp_path / "w2.img"
    a.write_bytes(img.read_bytes())
    b.write_bytes(img.read_bytes())
    ops = [("write", 4 * 63 * 512 + 100, 1000, 9), ("write", 5 * 63 * 512, 512, 8)]
    r = qemu_io(*qemu_io_cmds(ops), str(a))
    assert r.returncode == 0, r.stderr
    qimg_writes(b, ops, profile)
    assert b.read_bytes() == a.read_bytes()


# ---------------------------------------------------------------------------- check and repair
def corrupt_image(path, what: str) -> None:
    """From a 64 KiB-cluster image with clusters 0, 2 and 5 written."""
    d = bytearray(path.read_bytes())
    bat = 64

    def entry(i, v):
        d[bat + 4 * i : bat + 4 * i + 4] = struct.pack("<I", v)

    first = struct.unpack("<I", d[bat : bat + 4])[0]
    if what == "unclean":
        d[44:48] = struct.pack("<I", INUSE)
    elif what == "outside":
        entry(7, 100)
    elif what == "outside-end":
        del d[-1000:]
    elif what == "leak":
        d += bytes(200000)
    elif what == "duplicate":
        entry(7, first)
    elif what == "duplicate-last":
        entry(127, first)
    elif what == "data-off-small":
        d[48:52] = struct.pack("<I", 1)
    elif what == "data-off-large":
        d[48:52] = struct.pack("<I", 100000)
    elif what == "fragmented":
        entry(1, first + 5)
    elif what == "into-header":
        entry(3, 0)
        entry(3, 0)
        d[bat + 12 : bat + 16] = struct.pack("<I", 0)
    elif what == "everything":
        d[44:48] = struct.pack("<I", INUSE)
        entry(7, first)
        entry(9, 100)
        d += bytes(70000)
    path.write_bytes(bytes(d))


CHECK_CASES = ["unclean", "outside", "outside-end", "leak", "duplicate", "duplicate-last", "data-off-small",
               "data-off-large", "fragmented", "everything"]


@pytest.fixture
def written(tmp_path, qemu_img, qemu_io):
    img = tmp_path / "w.img"
    assert qemu_img("create", "-q", "-f", "parallels", "-o", "cluster_size=64k", str(img), "8M").returncode == 0
    r = qemu_io("-c", "write -P 1 0 64k", "-c", "write -P 2 128k 64k", "-c", "write -P 3 320k 1k", str(img))
    assert r.returncode == 0, r.stderr
    return img


@pytest.mark.parametrize("what", CHECK_CASES)
def test_check_and_repair_as_qemu(what, written, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    corrupt_image(written, what)
    if profile == "10.0" and what in ("outside", "everything"):
        # qemu-img 10.0 aborts (an assertion in its duplicate check) on a cluster left outside
        r = qemu_img("check", str(written))
        assert r.returncode in (-6, 134)
        g = run_qimg(qimg, profile, "check", str(written))
        assert g.returncode in (1, 2) and "is outside image" in g.stderr and "Traceback" not in g.stderr
        args_list = [["check", "-r", "all"], ["check", "-r", "leaks"]]
    else:
        args_list = [["check"], ["check", "--output=json"], ["check", "-r", "leaks"], ["check", "-r", "all"],
                     ["info", "--output=json"], ["map", "--output=json"]]
    for args in args_list:
        a, b = tmp_path / "a.img", tmp_path / "b.img"
        a.write_bytes(written.read_bytes())
        b.write_bytes(written.read_bytes())
        e = qemu_img(*args, str(a))
        g = run_qimg(qimg, profile, *args, str(b))
        if e.returncode < 0:
            # qemu-img 10.0 aborts on an assertion (its duplicate check meets a cluster it did
            # not count): qimg reports what it found
            assert "Traceback" not in g.stderr and g.returncode in (1, 2, 3), g
            continue
        if args[0] == "info":
            ej, gj = json.loads(e.stdout), json.loads(g.stdout.replace(str(b), str(a)))
            assert (g.returncode, gj) == (e.returncode, ej)
            continue
        same(g, e, (str(b), str(a)))
        assert b.read_bytes() == a.read_bytes(), args
        same_layout(b, a)


@pytest.mark.parametrize("what", ["unclean", "data-off-small", "duplicate", "everything", "outside"])
def test_writable_open_as_qemu(what, written, tmp_path, oracle, qemu_img, qemu_io, qimg):
    """7.2 refuses an unclean image read-write; 10.0 repairs what its check finds, then writes."""
    profile = oracle
    corrupt_image(written, what)
    src = tmp_path / "s.raw"
    src.write_bytes(pattern_bytes(MIB, seed=2))
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(written.read_bytes())
    b.write_bytes(written.read_bytes())
    e = qemu_img("convert", "-n", "-f", "raw", "-O", "parallels", str(src), str(a))
    g = run_qimg(qimg, profile, "convert", "-n", "-f", "raw", "-O", "parallels", str(src), str(b))
    same(g, e, (str(b), str(a)))
    assert b.read_bytes() == a.read_bytes()
    same_layout(b, a)


# ---------------------------------------------------------------------------- open errors
@pytest.mark.parametrize("kw", [
    {"version": 3}, {"magic": b"WithoutFreeSpacX"}, {"tracks": 0}, {"tracks": 5000000, "data_off": 1},
    {"bat": [0] * 8, "nb_sectors": 1 << 40}, {"ext_off": 1 << 55},
])
def test_open_errors_as_qemu(kw, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    img = tmp_path / "e.img"
    make_image(img, **kw)
    for args in (["info", "-f", "parallels"], ["map", "-f", "parallels"], ["check", "-f", "parallels"]):
        e, g = qemu_img(*args, str(img)), run_qimg(qimg, profile, *args, str(img))
        if e.returncode < 0:
            # qemu-img aborts on an assertion (7.2: an extension offset past 2^63 wraps to a
            # negative one; both: a disk far larger than its BAT in map): qimg answers, or
            # fails with one line
            assert "Traceback" not in g.stderr and (g.returncode == 0 or g.stderr.count("\n") == 1), g
            continue
        same(g, e)


def test_catalog_too_large_as_qemu(tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    img = tmp_path / "e.img"
    make_image(img)
    d = bytearray(img.read_bytes())
    d[32:36] = struct.pack("<I", 0x30000000)
    img.write_bytes(bytes(d))
    e, g = qemu_img("info", str(img)), run_qimg(qimg, profile, "info", str(img))
    same(g, e)


def test_runtime_options_as_qemu(tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    img = tmp_path / "e.img"
    make_image(img)
    for o in ("prealloc-mode=foo", "prealloc-size=x", "prealloc-size=1M,prealloc-mode=truncate", "foo=bar"):
        args = ["convert", "-O", "raw", "--image-opts", f"driver=parallels,file.filename={img},{o}", str(tmp_path / "o")]
        same(run_qimg(qimg, profile, *args), qemu_img(*args))


# ---------------------------------------------------------------------------- Format Extension
def extension(cs: int, features: list[tuple[int, int, bytes]], magic=0xAB234CEF23DCEA87, bad_sum=False) -> bytes:
    body = bytearray()
    for fmagic, flags, data in features:
        body += struct.pack("<QQII", fmagic, flags, len(data), 0) + data
        body += bytes(-len(body) % 8)
    body = bytes(body).ljust(cs - 24, b"\0")
    digest = hashlib.md5(body).digest()
    if bad_sum:
        digest = bytes(16)
    return struct.pack("<Q", magic) + digest + body


def bitmap(sectors: int, uuid: bytes, gran: int, l1: list[int], size=None) -> bytes:
    return struct.pack("<Q16sII", sectors if size is None else size, uuid, gran, len(l1)) + \
        struct.pack(f"<{len(l1)}Q", *l1)


BM = 0x20385FAE252CB34A
EXTENSIONS = {
    "empty": [],
    "bitmap": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [0]))],
    "two-bitmaps": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [1])), (BM, 0, bitmap(2048, b"\x12" * 16, 1, [0]))],
    "same-uuid": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [0])), (BM, 0, bitmap(2048, b"\x11" * 16, 16, [0]))],
    "bitmap-size": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [0], size=99))],
    "l1-size": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [0, 0]))],
    "l1-exceeds": [(BM, 0, struct.pack("<Q16sII", 2048, b"\x11" * 16, 16, 9))],
    "small": [(BM, 0, b"\0" * 10)],
    "flags": [(BM, 1, bitmap(2048, b"\x11" * 16, 16, [0]))],
    "unknown": [(0x1234, 0, b"abc")],
    "data-cluster": [(BM, 0, bitmap(2048, b"\x11" * 16, 16, [1 << 60]))],
}


@pytest.mark.parametrize("case", [*EXTENSIONS, "magic", "checksum", "past-end", "huge-size"])
def test_format_extension_as_qemu(case, tmp_path, oracle, qemu_img, qemu_io, qimg):
    profile = oracle
    cs = 128 * 512
    img = tmp_path / "x.img"
    if case == "huge-size":
        ext = extension(cs, [(BM, 0, b"")]).replace(struct.pack("<QQII", BM, 0, 0, 0),
                                                    struct.pack("<QQII", BM, 0, 1 << 20, 0))
        ext = ext[:24] + ext[24:]
        body = ext[24:]
        ext = ext[:8] + hashlib.md5(body).digest() + body
    else:
        ext = extension(cs, EXTENSIONS.get(case, []), magic=7 if case == "magic" else 0xAB234CEF23DCEA87,
                        bad_sum=case == "checksum")
    ext_sector = 256 if case != "past-end" else 4096
    make_image(img, ext_off=ext_sector, clusters={} if case == "past-end" else {ext_sector: ext})
    src = tmp_path / "s.raw"
    src.write_bytes(bytes(4096))
    for args in (["info"], ["check"], ["convert", "-O", "raw", str(img), str(tmp_path / "o.raw")],
                 ["convert", "-n", "-f", "raw", "-O", "parallels", str(src), str(img)]):
        args = [*args, str(img)] if len(args) == 1 else args
        e, g = qemu_img(*args), run_qimg(qimg, profile, *args)
        same(g, e)


# ---------------------------------------------------------------------------- hostile images
@pytest.mark.parametrize("target", ["bat", "data-off", "past-file"])
def test_bat_pointing_at_metadata(target, tmp_path, qemu_img, qimg):
    """A BAT entry naming the BAT itself, or a data offset inside it (where QEMU 7.2 then puts new
    clusters): reads match QEMU's, and no write lands on the header or the BAT (qemu-img 7.2
    writes guest data over them)."""
    img = tmp_path / "h.img"
    # 512-byte clusters and 256 entries: the header and the BAT fill sectors 0-2, data from 3
    bat = [0] * 256
    bat[0] = 3
    if target == "bat":
        bat[5] = 1
    elif target == "past-file":
        bat[5] = 5000
    make_image(img, tracks=1, bat=bat, data_off=1 if target == "data-off" else 3, clusters={3: b"\x42" * 512})
    before = img.read_bytes()
    ra, rb = tmp_path / "a.raw", tmp_path / "b.raw"
    e = qemu_img("convert", "-O", "raw", str(img), str(ra))
    g = qimg("convert", "-O", "raw", str(img), str(rb))
    same(g, e)
    assert ra.read_bytes() == rb.read_bytes()
    src = tmp_path / "s.raw"
    src.write_bytes(b"\x99" * 16384)
    qemu_copy = tmp_path / "q.img"
    qemu_copy.write_bytes(before)
    e = qemu_img("convert", "-n", "-f", "raw", "-O", "parallels", str(src), str(qemu_copy))
    g = qimg("convert", "-n", "-f", "raw", "-O", "parallels", str(src), str(img))
    after = img.read_bytes()
    # guest data never lands on the header or the BAT (QEMU 7.2 writes it there)
    assert b"\x99" * 4 not in after[: 64 + 1024]
    assert "Traceback" not in g.stderr
    if target == "past-file":
        same(g, e)
        assert after == qemu_copy.read_bytes()
    elif target == "bat":
        # the entry naming the BAT: the write through it is refused, the image stays consistent
        assert g.returncode == 1 and "Preventing invalid write on metadata" in g.stderr, g.stderr
        assert qimg("check", str(img)).returncode in (0, 2, 3)
    else:
        # a data offset inside the BAT: new clusters go after the BAT (7.2), or the offset is
        # repaired first (10.0, as qemu-img 10.0)
        assert g.returncode == 0, g.stderr
        r = qemu_img("convert", "-O", "raw", str(img), str(ra))
        assert r.returncode == 0 and ra.read_bytes()[:16384] == src.read_bytes()


def test_disk_descriptor_xml_probes_as_raw(tmp_path, oracle, qemu_img, qemu_io, qimg):
    """QEMU's parallels driver does not read Parallels' DiskDescriptor.xml: it is a raw file to
    qemu-img (with the probing warning on write), and to qimg."""
    profile = oracle
    xml = tmp_path / "DiskDescriptor.xml"
    xml.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<Parallels_disk_image Version="1.0">\n'
                   "  <Disk_Parameters><Disk_size>16384</Disk_size></Disk_Parameters>\n"
                   "  <StorageData><Storage><Image><File>disk.hds</File><Type>Compressed</Type></Image>"
                   "</Storage></StorageData>\n</Parallels_disk_image>\n")
    for args in (["info", str(xml)], ["map", "--output=json", str(xml)]):
        e, g = qemu_img(*args), run_qimg(qimg, profile, *args)
        same(g, e)


# ---------------------------------------------------------------------------- close
@pytest.mark.parametrize("command", ["bitmap", "commit", "commit-into"])
def test_bitmap_and_commit_close_as_qemu(command, tmp_path, oracle, qemu_img, qemu_io, qimg):
    """10.0's bitmap and commit inactivate the image before closing it: parallels leaves it
    marked in use (7.2 clears ``inuse``); commit into a parallels base is refused by both (its
    driver cannot reopen a node read-write)."""
    profile = oracle
    files = {}
    for who in ("q", "m"):
        d = tmp_path / who
        d.mkdir()
        img = d / "p.img"
        assert qemu_img("create", "-q", "-f", "parallels", str(img), "4M").returncode == 0
        assert qemu_io("-f", "parallels", "-c", "write -P 3 0 64k", str(img)).returncode == 0
        target = img
        if command == "commit-into":
            target = d / "ov.qcow2"
            assert qemu_img("create", "-q", "-f", "qcow2", "-b", "p.img", "-F", "parallels", str(target)).returncode == 0
            assert qemu_io("-c", "write -P 5 0 64k", str(target)).returncode == 0
        args = ["bitmap", "--add", str(target), "b0"] if command == "bitmap" else ["commit", str(target)]
        files[who] = (img, target, args)
    (qi, qt, qargs), (mi, mt, margs) = files["q"], files["m"]
    e = qemu_img(*qargs)
    g = run_qimg(qimg, profile, *margs)
    e.stderr = re.sub(r"'#block\d+'", "'#block100'", e.stderr)
    same(g, e, (str(tmp_path / "m"), str(tmp_path / "q")))
    assert e.returncode == 1
    assert mi.read_bytes() == qi.read_bytes()
    assert mt.read_bytes() == qt.read_bytes()
    inuse = struct.unpack_from("<I", mi.read_bytes(), 44)[0]
    assert inuse == (INUSE if profile == "10.0" and command != "commit-into" else 0)


def test_measure_into_qcow2_as_qemu(tmp_path, oracle, qemu_img, qemu_io, qimg):
    """10.0 prints "bitmaps size: 0" for a parallels source (QEMU 8.2: parallels images carry
    persistent bitmaps, loaded as non-persistent ones); 7.2 no bitmaps line (issue 17)."""
    profile = oracle
    src = tmp_path / "p.img"
    assert qemu_img("create", "-q", "-f", "parallels", str(src), "8M").returncode == 0
    assert qemu_io("-f", "parallels", "-c", "write -P 7 1M 1M", str(src)).returncode == 0
    for args in (["-O", "qcow2"], ["--output=json", "-O", "qcow2"], ["-O", "qcow2", "-o", "compat=0.10"],
                 ["-O", "qed"]):
        cmd = ["measure", *args, "-f", "parallels", str(src)]
        same(run_qimg(qimg, profile, *cmd), qemu_img(*cmd))
