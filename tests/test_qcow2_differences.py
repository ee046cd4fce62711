"""qcow2 results compared byte for byte with qemu-img's (issues 10, 11, 20): amend's downgrade
with bitmaps and snapshots, check of lazy-refcounts images, resize with an external data file,
refcount widths past int64. Each test runs against both oracles ([7.2] and [10.0])."""
from __future__ import annotations

import shutil
import struct

import pytest
from conftest import as_qemu

EXT_BITMAPS = 0x23852875


def _same_file(mine, ref) -> None:
    """Byte-identical files; else the first differing offset (not pytest's diff of two MiB)."""
    a, b = mine.read_bytes(), ref.read_bytes()
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        pytest.fail(f"{mine.name} differs from {ref.name} at byte {first} (sizes {len(a)}, {len(b)})")


def _set_in_use(path) -> None:
    """Mark the first bitmap of the directory in use (a crash while it was loaded)."""
    with open(path, "r+b") as f:
        d = f.read(65536)
        off = struct.unpack(">I", d[100:104])[0]
        while True:
            t, n = struct.unpack(">II", d[off : off + 8])
            assert t, "no bitmaps extension"
            if t == EXT_BITMAPS:
                directory = struct.unpack(">Q", d[off + 16 : off + 24])[0]
                break
            off += 8 + (n + 7) // 8 * 8
        f.seek(directory + 15)
        flags = f.read(1)[0]
        f.seek(directory + 15)
        f.write(bytes([flags | 1]))


def _make(kind: str, path, tmp_path, run_img, run_io) -> None:
    def img(*a):
        r = run_img(*a)
        assert r.returncode == 0, r.stderr

    def io(*cmds):
        args = []
        for c in cmds:
            args += ["-c", c]
        r = run_io(*args, str(path))
        assert r.returncode == 0, r.stderr

    p = str(path)
    if kind == "backed":
        back = tmp_path / "back.qcow2"
        img("create", "-q", "-f", "qcow2", str(back), "4M")
        r = run_io("-c", "write -P 9 0 4M", str(back))
        assert r.returncode == 0
        img("create", "-q", "-f", "qcow2", "-b", str(back), "-F", "qcow2", p)
    else:
        img("create", "-q", "-f", "qcow2", p, "4M")
    if kind == "bitmaps":
        io("write -P 1 0 64k", "write -z 64k 64k", "write -P 2 1M 128k")
        img("bitmap", "--add", p, "b0")
        io("write -P 5 2M 64k")
        img("bitmap", "--add", p, "b1", "-g", "512k")
    elif kind == "snapshots":
        io("write -P 1 0 64k", "write -z 64k 64k", "write -P 2 1M 128k")
        img("snapshot", "-c", "s1", p)
        io("write -P 3 0 64k", "write -z 1M 64k", "write -z 3M 64k")
        img("snapshot", "-c", "s2", p)
        io("write -P 4 0 64k")
    elif kind == "both":
        io("write -P 1 0 64k", "write -z 64k 64k", "write -P 2 1M 128k")
        img("snapshot", "-c", "s1", p)
        io("write -z 1M 64k")
        img("bitmap", "--add", p, "b0")
        io("write -P 5 2M 64k")
    elif kind == "backed":
        io("write -z 64k 64k", "write -P 2 1M 128k")
        img("snapshot", "-c", "s1", p)
        io("write -z 2M 64k", "write -z 1M 64k")
        img("bitmap", "--add", p, "b0")
    elif kind == "zero-allocated":  # preallocated zero clusters, shared with a snapshot
        io("write -P 1 0 256k", "write -z 0 128k")
        img("snapshot", "-c", "s1", p)
        io("write -P 3 1M 64k", "write -z 128k 64k")
    elif kind == "in-use-bitmap":
        img("bitmap", "--add", p, "b0")
        img("bitmap", "--add", p, "b1")
        io("write -P 1 0 64k")
        _set_in_use(path)


@pytest.mark.parametrize("kind", ["bitmaps", "snapshots", "both", "backed", "zero-allocated", "in-use-bitmap"])
def test_amend_downgrade_same_bytes(kind, tmp_path, qemu_img, qimg, qemu_io):
    """``amend -o compat=0.10``: QEMU keeps the bitmaps (stored at close, their extension in the
    v2 header), drops unallocated zero clusters of every table when nothing is behind, and
    sets COPIED by the L2 table's refcount: the same file, and the same check verdict."""
    import subprocess

    base = tmp_path / "base.qcow2"

    def run_img(*a):  # the images are made by one tool (7.2), the same for both sides
        p = subprocess.run(["qemu-img", *a], capture_output=True, text=True)
        return p

    _make(kind, base, tmp_path, run_img, qemu_io)
    ref, mine = tmp_path / "ref.qcow2", tmp_path / "mine.qcow2"
    shutil.copy(base, ref)
    shutil.copy(base, mine)
    r = qemu_img("amend", "-o", "compat=0.10", str(ref))
    q = qimg("amend", "-o", "compat=0.10", str(mine))
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    assert r.returncode == 0
    _same_file(mine, ref)
    rc, qc = qemu_img("check", str(ref)), qimg("check", str(ref))
    assert (qc.returncode, as_qemu(qc.stdout), as_qemu(qc.stderr)) == (rc.returncode, rc.stdout, rc.stderr)


def _set_dirty(path) -> None:
    with open(path, "r+b") as f:
        f.seek(79)
        b = f.read(1)[0]
        f.seek(79)
        f.write(bytes([b | 1]))


def _make_dirty(kind: str, path, qemu_io) -> None:
    import subprocess

    p = str(path)
    lazy = [] if kind == "dirty-not-lazy" else ["-o", "lazy_refcounts=on"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *lazy, p, "4M"], check=True)
    if kind == "crashed":  # writes with lazy refcounts, then killed before close
        qemu_io("-c", "write -P 1 0 64k", "-c", "write -P 2 1M 128k", "-c", "abort", p)
        with open(p, "rb") as f:
            f.seek(79)
            assert f.read(1)[0] & 1, "qemu-io's abort left no dirty bit"
        return
    assert qemu_io("-c", "write -P 1 0 64k", "-c", "write -P 2 1M 64k", p).returncode == 0
    if kind == "leaked":  # a cluster discarded whose refcount stayed
        assert qemu_io("-c", "discard 1M 64k", p).returncode == 0
        with open(p, "r+b") as f:
            d = f.read(65536 * 3)
            rt = struct.unpack(">Q", d[48:56])[0]
            f.seek(rt)
            rb = struct.unpack(">Q", f.read(8))[0]
            f.seek(rb + 2 * 9)
            f.write(b"\0\1")
    _set_dirty(path)


@pytest.mark.parametrize("repair", [[], ["-r", "leaks"], ["-r", "all"], ["--output=json", "-r", "leaks"]],
                         ids=["none", "leaks", "all", "json-leaks"])
@pytest.mark.parametrize("kind", ["crashed", "clean", "leaked", "dirty-not-lazy"])
def test_check_dirty_lazy_refcounts(kind, repair, tmp_path, qemu_img, qimg, qemu_io):
    """check of an image whose dirty bit is set (lazy refcounts, killed before close): the same
    output and exit code, and the same file after it: QEMU's close marks the image clean even
    when ``-r leaks`` fails for refcounts that need a rebuild."""
    (tmp_path / "r").mkdir()
    (tmp_path / "q").mkdir()
    ref, mine = tmp_path / "r" / "img.qcow2", tmp_path / "q" / "img.qcow2"
    _make_dirty(kind, ref, qemu_io)
    shutil.copy(ref, mine)
    r = subprocess_in(tmp_path / "r", qemu_img, "check", *repair, "img.qcow2")
    q = subprocess_in(tmp_path / "q", qimg, "check", *repair, "img.qcow2")
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    _same_file(mine, ref)


def subprocess_in(cwd, run, *args):
    """Run a fixture's tool from ``cwd`` (relative names: the JSON output names the file)."""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return run(*args)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("raw", [False, True], ids=["data-file", "data-file-raw"])
@pytest.mark.parametrize("args", [["--shrink", "1M"], ["--shrink", "2M"], ["4M"], ["8M"], ["--", "-1M"],
                                  ["--preallocation=metadata", "8M"], ["--preallocation=full", "6M"]],
                         ids=["shrink-1M", "shrink-2M", "same", "grow", "minus-no-shrink", "grow-metadata",
                              "grow-full"])
def test_resize_with_data_file(raw, args, tmp_path, qemu_img, qimg, qemu_io):
    """resize of an image with an external data file: the data file follows the new size
    (shrinking too), and a data_file_raw image gets the new area's metadata preallocated, as
    QEMU's truncate does; the same output, exit code and bytes of both files."""
    import subprocess

    opts = "data_file=d.raw" + (",data_file_raw=on" if raw else "")
    dirs = {}
    for side in ("r", "q"):
        d = tmp_path / side
        d.mkdir()
        dirs[side] = d
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "img.qcow2", "4M"], cwd=dirs["r"],
                   check=True)
    r = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", "-c", "write -P 2 1M 128k",
                        "-c", "write -P 3 3M 64k", "img.qcow2"], cwd=dirs["r"], capture_output=True)
    assert r.returncode == 0, r.stderr
    for name in ("img.qcow2", "d.raw"):
        shutil.copy(dirs["r"] / name, dirs["q"] / name)
    cmd = ["resize", "img.qcow2", *args] if args[0] != "--shrink" else ["resize", "--shrink", "img.qcow2", args[1]]
    if args[0].startswith("--preallocation"):
        cmd = ["resize", args[0], "img.qcow2", args[1]]
    if args[0] == "--":
        cmd = ["resize", "img.qcow2", "--", args[1]]
    r = subprocess_in(dirs["r"], qemu_img, *cmd)
    q = subprocess_in(dirs["q"], qimg, *cmd)
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    for name in ("img.qcow2", "d.raw"):
        _same_file(dirs["q"] / name, dirs["r"] / name)


@pytest.mark.parametrize("value", ["9223372036854775807", "9223372036854775808", "18446744073709551615",
                                   "18446744073709551616", "-1", "128"])
@pytest.mark.parametrize("command", ["create", "amend"])
def test_refcount_bits_past_int64(command, value, tmp_path, qemu_img, qimg):
    """refcount_bits is an int64 in QEMU's create options (a uint64 to QemuOpts): from 2^63
    to 2^64 - 1 its visitor refuses it ("expects integer"), past 2^64 QemuOpts does; amend
    takes the uint64 and finds the width wrong. The same lines and exit code, nothing made."""
    import subprocess

    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    (tmp_path / "r").mkdir()
    (tmp_path / "q").mkdir()
    if command == "amend":
        for side in ("r", "q"):
            shutil.copy(base, tmp_path / side / "img.qcow2")
        cmd = ["amend", "-o", f"refcount_bits={value}", "img.qcow2"]
    else:
        cmd = ["create", "-f", "qcow2", "-o", f"refcount_bits={value}", "img.qcow2", "1M"]
    r = subprocess_in(tmp_path / "r", qemu_img, *cmd)
    q = subprocess_in(tmp_path / "q", qimg, *cmd)
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    assert r.returncode == 1
    assert (tmp_path / "q" / "img.qcow2").exists() == (tmp_path / "r" / "img.qcow2").exists()
    if command == "amend":
        _same_file(tmp_path / "q" / "img.qcow2", tmp_path / "r" / "img.qcow2")


@pytest.mark.parametrize("opts", ["compression_type=bad,preallocation=bad", "compression_type=bad,refcount_bits=0x8000000000000000",
                                  "preallocation=bad,refcount_bits=9223372036854775808",
                                  "refcount_bits=-9223372036854775809", "refcount_bits=-9223372036854775808"])
def test_create_option_errors_in_qapi_order(opts, tmp_path, qemu_img, qimg):
    """qcow2 create's options refused by QEMU's QAPI visitor, first in its field order."""
    (tmp_path / "r").mkdir()
    (tmp_path / "q").mkdir()
    cmd = ["create", "-q", "-f", "qcow2", "-o", opts, "img.qcow2", "1M"]
    r = subprocess_in(tmp_path / "r", qemu_img, *cmd)
    q = subprocess_in(tmp_path / "q", qimg, *cmd)
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    assert r.returncode == 1


def _same_run(q, r) -> None:
    import re

    def norm(text: str) -> str:
        return re.sub(r"#block\d+", "#blockN", text)

    assert (q.returncode, as_qemu(q.stdout), norm(as_qemu(q.stderr))) == (r.returncode, r.stdout, norm(r.stderr))


def test_snapshot_delete_with_failing_cluster_free(tmp_path, qemu_img, qimg, qemu_io):
    """blkdebug's error injected at qcow2's cluster_free event (iotest 217): the free of the old
    snapshot table fails on the refcount block's read, then the snapshot's L1 table cannot be
    read: the same messages, exit code and leaked clusters as qemu-img."""
    import subprocess

    conf = tmp_path / "blkdebug.conf"
    conf.write_text('[inject-error]\nevent = "cluster_free"\nerrno = "5"\n')
    ref, mine = tmp_path / "r.qcow2", tmp_path / "q.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(ref), "64M"], check=True)
    assert qemu_io("-c", "write 0 64k", str(ref)).returncode == 0
    subprocess.run(["qemu-img", "snapshot", "-c", "foo", str(ref)], check=True)
    shutil.copy(ref, mine)
    r = qemu_img("snapshot", "-d", "foo", f"blkdebug:{conf}:{ref}")
    q = qimg("snapshot", "-d", "foo", f"blkdebug:{conf}:{mine}")
    _same_run(q, r)
    assert r.returncode == 1 and "Failed to free the cluster and L1 table" in r.stderr
    _same_file(mine, ref)
    rc, qc = qemu_img("check", str(ref)), qimg("check", str(mine))
    assert (qc.returncode, qc.stdout, as_qemu(qc.stderr)) == (rc.returncode, rc.stdout, rc.stderr)


def test_bitmap_store_fails_at_close(tmp_path, qemu_img, qimg, qemu_io):
    """A bitmap that cannot be written when the image closes (a raw node's size ends the file):
    "Failed to write bitmap 'X' to file: <error>", and the tables written before it freed so
    that the close's second attempt fails on the same bitmap (10.0's qemu-img-close-errors)."""
    import json
    import subprocess

    paths = {}
    for side in ("r", "q"):
        p = tmp_path / f"{side}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "1M"], check=True)
        for name in ("b0", "b1"):
            subprocess.run(["qemu-img", "bitmap", "--add", str(p), name], check=True)
        assert qemu_io("-c", "write 0 64k", str(p)).returncode == 0
        size = -(-p.stat().st_size // 65536) * 65536
        assert qemu_io("-f", "raw", "-c", f"truncate {size}", str(p)).returncode == 0
        paths[side] = "json:" + json.dumps({"driver": "qcow2", "file": {
            "driver": "raw", "size": size, "file": {"driver": "file", "filename": str(p)}}})
    r = qemu_img("bitmap", "--add", paths["r"], "b2")
    q = qimg("bitmap", "--add", paths["q"], "b2")
    _same_run(q, r)
    assert "Failed to write bitmap 'b" in r.stderr
    _same_file(tmp_path / "q.qcow2", tmp_path / "r.qcow2")


@pytest.mark.parametrize("field", [(32, ">I", 0xFFFFFFFE), (32, ">I", 0xC0000000), (24, ">Q", (1 << 64) - 1),
                                   (24, ">Q", (1 << 64) - 512), (24, ">Q", 1 << 63)],
                         ids=["crypt-minus-2", "crypt-high", "size-max", "size-wraps", "size-2^63"])
@pytest.mark.parametrize("command", ["info", "check"])
def test_open_refusals_worded_as_qemu(command, field, tmp_path, qemu_img, qimg):
    """Header fields QEMU reads in C types: the encryption method printed as an int, a size
    within an L2 table's reach of 2^64 wrapping past the L1 check to fail on the sector count
    (found by the fuzz campaign)."""
    import subprocess

    offset, fmt, value = field
    p = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "1M"], check=True)
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    r, q = qemu_img(command, str(p)), qimg(command, str(p))
    assert (q.returncode, as_qemu(q.stdout), as_qemu(q.stderr)) == (r.returncode, r.stdout, r.stderr)
    assert r.returncode == 1


@pytest.mark.parametrize("field", [40, 48], ids=["l1_table_offset", "refcount_table_offset"])
@pytest.mark.parametrize("offset", [0x7FFFFFFFC0000000, 0x7FFFFFFFBFFFFFF8, 0x7FFFFFFFBFFF0000])
def test_a_table_reaching_past_the_block_layers_limit(tmp_path, qemu_img, qimg, field, offset):
    """A table that passes qcow2's own offset checks (bounded by INT64_MAX) but ends past
    BDRV_MAX_LENGTH (INT64_MAX rounded down to 1 GiB) fails in QEMU's block layer: "Could not read
    L1 table: Input/output error", "Could not initialize refcount handling: Input/output error"
    (found by tests/fuzz/diff.py against 10.0; 7.2 says the same). One that ends inside it reads
    past the end of the file: zeroes, and the image opens."""
    path = tmp_path / "m.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(path), "4M").returncode == 0
    with open(path, "r+b") as f:
        f.seek(field)
        f.write(struct.pack(">Q", offset))
    for cmd in (["info", str(path)], ["check", str(path)], ["map", "--output=json", str(path)]):
        theirs, mine = qemu_img(*cmd), qimg(*cmd)
        assert (mine.returncode, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stderr), cmd


def test_a_write_over_an_invalid_extended_l2_entry_marks_the_image_corrupt(tmp_path, qemu_img, qemu_io, qimg):
    """Extended L2: an unallocated cluster whose bitmap says a subcluster is allocated is QEMU's
    QCOW2_SUBCLUSTER_INVALID. A write whose range reaches it (here convert -n into the image)
    marks the image corrupt and fails ("Invalid cluster entry found"), as qemu-img does; it was
    written over (found by tests/fuzz/diff.py: extl2/L2[63]=0x8)."""
    src = tmp_path / "src.raw"
    src.write_bytes(b"\x5a" * (4 << 20))
    made = tmp_path / "made.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(made), "4M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 64k", str(made)).returncode == 0
    with open(made, "r+b") as f:
        f.seek(40)
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2 + 63 * 8)  # cluster 31's subcluster bitmap: subcluster 3 allocated
        f.write(struct.pack(">Q", 8))
    runs = []
    for tool, name in ((qemu_img, "theirs.qcow2"), (qimg, "mine.qcow2")):
        img = tmp_path / name
        shutil.copy(made, img)
        runs.append((tool("convert", "-n", "-f", "raw", "-O", "qcow2", str(src), str(img)),
                     qemu_img("check", "--output=json", str(img))))
    (theirs, tcheck), (mine, mcheck) = runs
    assert theirs.returncode == 1 and "Invalid cluster entry found" in theirs.stderr
    assert (mine.returncode, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stderr)
    assert mcheck.stdout == tcheck.stdout.replace("theirs.qcow2", "mine.qcow2")


@pytest.mark.parametrize("data_file", [False, True], ids=["", "data-file"])
@pytest.mark.parametrize("writes", [[], ["write -P 1 64k 4k"], ["write -P 1 3M 64k"], ["write -P 1 32k 4k"]],
                         ids=["empty", "sub", "far", "cluster0"])
def test_extended_l2_map_of_clusters_without_an_l2_table(tmp_path, qemu_img, qemu_io, qimg, writes, data_file):
    """Extended L2: clusters under an empty L1 entry (no L2 table) are unallocated with no host
    offset; map printed them with "offset": 0 (host 0 taken for an unallocated subcluster's
    offset in an allocated cluster) and split the run (found by tests/fuzz/diff.py). In an
    external data file, guest cluster 0's subclusters do have host offset 0."""
    path = tmp_path / "e.qcow2"
    opts = "extended_l2=on,cluster_size=64k" + (f",data_file={tmp_path / 'e.raw'}" if data_file else "")
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(path), "1G").returncode == 0
    for w in writes:
        assert qemu_io("-c", w, str(path)).returncode == 0
    for cmd in (["map", "--output=json", str(path)], ["map", str(path)]):
        theirs, mine = qemu_img(*cmd), qimg(*cmd)
        assert (mine.returncode, mine.stdout, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stdout, theirs.stderr)
