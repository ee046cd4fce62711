"""qcow2 metadata overlap protection and corruption reports against qemu-img/qemu-io.

Hostile images are made by qemu-img/qemu-io and then edited byte by byte so that one metadata
structure points at another (the cases of issue 10 and the patterns of qemu-iotests 060).
The same operation runs on copies of one crafted image: qemu-io or qemu-img 7.2 (and 10.0)
on one copy, qimg (its CLI, or its library through a small qemu-io stand-in) on another. The
``qcow2: ...`` corruption lines, the command's own message and exit code, and the resulting
bytes (corrupt bit included) must be the same.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import Run, need_qemu10

MiB = 1 << 20

# A qemu-io stand-in over qimg's library: ``[-o k=v,...] image "write -P 1 0 64k" ...``; each
# command prints "<op> ok" or "<op> failed: <reason>" on stdout, the driver its corruption
# lines on stderr (as qemu-io does)
QIO = r'''
import shlex, sys
import qimg
from qimg.errors import QimgError

argv = sys.argv[1:]
opts = {}
if argv[0] == "-o":
    opts = dict(kv.split("=", 1) for kv in argv[1].split(","))
    argv = argv[2:]
img = qimg.open(argv[0], "qcow2", writable=True, options=opts or None)

def num(text):
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)

for cmd in argv[1:]:
    words = shlex.split(cmd)
    op, args = words[0], words[1:]
    pattern, compressed, zero = 0xCD, False, False
    while args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "-P":
            pattern = int(args.pop(0), 0)
        compressed |= flag == "-c"
        zero |= flag == "-z"
    off, n = num(args[0]), num(args[1])
    try:
        if op == "write" and zero:
            img.write_zeroes(off, n)
        elif op == "write" and compressed:
            img.write_compressed(off, bytes([pattern]) * n)
        elif op == "write":
            img.pwrite(off, bytes([pattern]) * n)
        elif op == "read":
            img.pread(off, n)
        elif op == "discard":
            img.discard(off, n)
        print(op, "ok")
    except (QimgError, OSError) as e:
        print(op, "failed:", getattr(e, "strerror", None) or e)
img.close()
'''


def _tool(name: str) -> str:
    from conftest import _need

    return _need(name)


def _run(args: list[str], env: dict | None = None) -> Run:
    p = subprocess.run(args, capture_output=True, env=env)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def _qimg(*args: str, v10: bool = False) -> Run:
    """qimg's CLI in the profile of the qemu-img it is compared with."""
    return _run([sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()",
                 *args], dict(os.environ, QIMG_COMPAT="10.0" if v10 else "7.2"))


def _qemu_img(*args: str, v10: bool = False) -> Run:
    if v10:
        exe, env = need_qemu10("qemu-img")
        return _run([exe, *args], env)
    return _run([_tool("qemu-img"), *args])


def _qemu_io(path: str, cmds: list[str], opts: str = "", v10: bool = False) -> Run:
    if v10:
        exe, env = need_qemu10("qemu-io")
    else:
        exe, env = _tool("qemu-io"), None
    target = ["--image-opts", f"driver=qcow2,file.filename={path}" + (f",{opts}" if opts else "")] \
        if opts else ["-f", "qcow2", path]
    args = [exe]
    for c in cmds:
        args += ["-c", c]
    return _run([*args, *target], env)


def _qimg_io(path: str, cmds: list[str], opts: str = "") -> Run:
    return _run([sys.executable, "-c", QIO, *(["-o", opts] if opts else []), path, *cmds])


def _lines(text: str) -> list[str]:
    """The corruption reports (``qcow2: ...``) and the program's own error lines, with the
    program's name and QEMU's generated node names made comparable."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^(qemu-img|qemu-io|qimg): ", "PROG: ", line)
        line = re.sub(r"#block\d+", "#blockN", line)
        if line.startswith(("qcow2:", "PROG:")):
            out.append(line)
    return out


def _corruption(text: str) -> list[str]:
    return [ln for ln in _lines(text) if ln.startswith("qcow2:")]


def _make(path, size: str = "64M", opts: str = "", io: list[str] | None = None) -> str:
    path = str(path)
    r = _qemu_img("create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), path, size)
    assert r.returncode == 0, r.stderr
    if io:
        r = _qemu_io(path, io)
        assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
    return path


def _poke(path: str, *edits: tuple[int, bytes]) -> None:
    with open(path, "r+b") as f:
        for off, data in edits:
            f.seek(off)
            f.write(data)


def _q(v: int) -> bytes:
    return struct.pack(">Q", v)


def _copies(src: str, tmp_path, *names: str) -> list[str]:
    out = []
    for n in names:
        dst = str(tmp_path / n)
        shutil.copyfile(src, dst)
        out.append(dst)
    return out


def _bytes(path: str) -> tuple[int, list[tuple[int, bytes]]]:
    """A file's size and the contents of its data extents, compared hole-aware (a repair may
    grow a file to many GiB of holes) with all-zero chunks left out."""
    chunk = 1 << 20
    out: dict[int, bytes] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(f.fileno(), data, os.SEEK_HOLE)
            for p in range(data - data % chunk, hole, chunk):
                f.seek(p)
                block = f.read(chunk)
                if block.count(0) != len(block):
                    out[p] = block
            pos = hole
    return size, sorted(out.items())


def _corrupt_bit(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(80)
    return struct.unpack(">I", head[4:8])[0] >= 3 and bool(struct.unpack(">Q", head[72:80])[0] & 2)


# the default layout of a fresh 64 MiB image with 64 KiB clusters (as qemu-iotests 060 assumes)
RT, RB, L1, L2 = 0x10000, 0x20000, 0x30000, 0x40000
COPIED = 1 << 63


# -- issue 10: write commands on images whose tables point at other metadata -------------------
def _issue10_commit_images(tmp_path) -> tuple[str, str]:
    """A base whose L2 entry for cluster 0 points at the refcount table (COPIED, so written
    in place) and an overlay with data there."""
    base = _make(tmp_path / "base.qcow2", "4M", io=["write -P 0x41 0 64k"])
    top = str(tmp_path / "top.qcow2")
    assert _qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top).returncode == 0
    assert _qemu_io(top, ["write -P 0x55 0 64k"]).returncode == 0
    _poke(base, (L2, _q(COPIED | RT)))
    return base, top


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
def test_commit_into_l2_entry_pointing_at_the_refcount_table(tmp_path, v10):
    base, top = _issue10_commit_images(tmp_path)
    pairs = []
    for d in ("q", "i"):
        (tmp_path / d).mkdir()
        b, t = _copies(base, tmp_path / d, "base.qcow2", "top.qcow2")
        shutil.copyfile(top, t)
        _rebase_unsafe(t, "base.qcow2")  # each overlay names its own copy of the base
        pairs.append((b, t))
    (qb, qt), (ib, it) = pairs
    q = _qemu_img("commit", qt, v10=v10)
    i = _qimg("commit", it, v10=v10)
    assert _corruption(q.stderr) == _corruption(i.stderr) == [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); "
        "further corruption events will be suppressed"]
    if not v10:  # (qemu-img 10.0.2 crashes after this report)
        assert _lines(q.stderr) == _lines(i.stderr) == [
            _corruption(q.stderr)[0], "PROG: Block job failed: Input/output error"]
        assert q.returncode == i.returncode == 1
        assert i.stdout == q.stdout == ""
    assert _bytes(qb) == _bytes(ib)
    assert _bytes(qt) == _bytes(it)
    assert _corrupt_bit(ib)


def _rebase_unsafe(path: str, backing: str) -> None:
    r = _qemu_img("rebase", "-u", "-b", backing, "-F", "qcow2", path)
    assert r.returncode == 0, r.stderr


def _reftable_entry_at_l1(tmp_path) -> str:
    """The refcount table's first entry points at the L1 table's cluster: the L1 entries read
    as refcounts, so the refcount table's own cluster looks free."""
    img = _make(tmp_path / "img.qcow2", "4M", io=["write -P 0x41 0 64k"])
    _poke(img, (RT, _q(L1)))
    return img


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
@pytest.mark.parametrize("untrusted", [False, True], ids=["", "untrusted"])
def test_snapshot_create_with_refblock_over_l1(tmp_path, v10, untrusted):
    img = _reftable_entry_at_l1(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("snapshot", "-c", "s1", qc, v10=v10)
    i = _qimg(*(["--untrusted"] if untrusted else []), "snapshot", "-c", "s1", ic, v10=v10)
    msg = ("Could not create snapshot 's1': Input/output error" if v10 else
           "Could not create snapshot 's1': -5 (Input/output error)")
    assert _lines(q.stderr) == [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); "
        "further corruption events will be suppressed", f"PROG: {msg}"]
    assert _lines(i.stderr) == _lines(q.stderr)
    assert q.returncode == i.returncode == 1
    assert _bytes(qc) == _bytes(ic)
    assert _corrupt_bit(ic)


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
def test_bitmap_add_with_refblock_over_l1(tmp_path, v10):
    img = _reftable_entry_at_l1(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("bitmap", "--add", qc, "b0", v10=v10)
    i = _qimg("bitmap", "--add", ic, "b0", v10=v10)
    expected = [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); "
        "further corruption events will be suppressed",
        "PROG: Lost persistent bitmaps during inactivation of node '#blockN': Qcow2 overlap check failed: "
        "Input/output error",
        "PROG: Failed to flush the refcount block cache: Input/output error"]
    if v10:  # qemu-img 10.0 inactivates the image before closing it, and fails
        expected.append("PROG: Error while closing the image: Input/output error")
    assert _lines(q.stderr) == _lines(i.stderr) == expected
    assert q.returncode == i.returncode == (1 if v10 else 0)  # qemu-img 7.2 ignores errors at close
    assert _bytes(qc) == _bytes(ic)
    assert _corrupt_bit(ic)


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
def test_convert_n_into_a_hostile_target(tmp_path, v10):
    base, _top = _issue10_commit_images(tmp_path)
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(4 * MiB))
    qc, ic = _copies(base, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("convert", "-n", "-O", "qcow2", str(src), qc, v10=v10)
    i = _qimg("convert", "-n", "-O", "qcow2", str(src), ic, v10=v10)
    assert _lines(q.stderr) == _lines(i.stderr) == [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); "
        "further corruption events will be suppressed", "PROG: error while writing at byte 0: Input/output error"]
    assert q.returncode == i.returncode == 1
    assert _bytes(qc) == _bytes(ic)


def test_commit_whose_last_flush_fails(tmp_path):
    """The refcount block written back at the end of the job lands on the L1 table: the job
    fails ("Block job failed"), as QEMU's commit job flushes its target before completing."""
    runs = []
    for d, tool in (("q", _qemu_img), ("i", _qimg)):
        (tmp_path / d).mkdir()
        base = _make(tmp_path / d / "base.qcow2", io=["write -P 0x41 0 64k"])
        _poke(base, (RT, _q(L1)))
        top = str(tmp_path / d / "top.qcow2")
        assert _qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", top,
                         "64M").returncode == 0
        assert _qemu_io(top, ["write -P 0x55 0 256k"]).returncode == 0
        runs.append((tool("commit", top), _bytes(base), _bytes(top)))
    (q, *qb), (i, *ib) = runs
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr)) == (1, [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L1 table); "
        "further corruption events will be suppressed", "PROG: Block job failed: Input/output error"])
    assert qb == ib


def _snapshot_l1_is_the_active_one(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write -P 0x41 0 64k"])
    assert _qemu_img("snapshot", "-c", "s1", img).returncode == 0
    assert _qemu_io(img, ["write -P 2 64k 64k"]).returncode == 0
    with open(img, "rb") as f:
        f.seek(64)
        sn_table = struct.unpack(">Q", f.read(8))[0]
    _poke(img, (sn_table, _q(L1)))
    return img


@pytest.mark.parametrize("op", [["-c", "s2"], ["-d", "s1"]], ids=["create", "delete"])
def test_snapshot_ops_when_the_snapshot_l1_is_the_active_one(tmp_path, op):
    """QEMU writes the active L1 table's COPIED flags with no overlap check (the snapshot's L1
    table sitting there is no hit), and deleting such a snapshot works on the active table."""
    img = _snapshot_l1_is_the_active_one(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("snapshot", *op, qc)
    i = _qimg("snapshot", *op, ic)
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr)) == (0, [])
    q, i = _qemu_img("check", qc), _qemu_img("check", ic)
    assert (q.returncode, q.stdout, q.stderr) == (i.returncode, i.stdout, i.stderr)
    if op[0] == "-d":
        assert _bytes(qc) == _bytes(ic)


def _snapshot_image_with_refblock_over_l1(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", "4M", io=["write -P 1 0 64k"])
    assert _qemu_img("snapshot", "-c", "s1", img).returncode == 0
    assert _qemu_io(img, ["write -P 2 64k 64k"]).returncode == 0
    _poke(img, (RT, _q(L1)))
    return img


@pytest.mark.parametrize("op", [["-a", "s1"], ["-d", "s1"], ["-c", "s2"]], ids=["apply", "delete", "create"])
def test_snapshot_ops_with_refblock_over_l1(tmp_path, op):
    img = _snapshot_image_with_refblock_over_l1(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("snapshot", *op, qc)
    i = _qimg("snapshot", *op, ic)
    # (qemu-img prints its error before the image closes, qimg after: at close, the refcount
    # block written back hits the L1 table in both)
    assert sorted(_lines(q.stderr)) == sorted(_lines(i.stderr)), (q.stderr, i.stderr)
    assert q.returncode == i.returncode == 1
    assert _bytes(qc) == _bytes(ic)
    assert _corrupt_bit(ic)


@pytest.mark.parametrize("op", [["-d", "s1"], ["-a", "s1"], ["-d", "s2"], ["-a", "s2"]])
def test_snapshot_ops_discard_what_they_free(tmp_path, op):
    """Clusters a snapshot operation frees are discarded in the file, as QEMU passes snapshot
    frees down by default (and the snapshot's L1 table gets its COPIED flags on apply)."""
    img = _make(tmp_path / "img.qcow2", "4M", io=["write -P 1 0 64k"])
    assert _qemu_img("snapshot", "-c", "s1", img).returncode == 0
    assert _qemu_io(img, ["write -P 2 0 128k"]).returncode == 0
    assert _qemu_img("snapshot", "-c", "s2", img).returncode == 0
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    assert _qemu_img("snapshot", *op, qc).returncode == 0
    assert _qimg("snapshot", *op, ic).returncode == 0
    assert _bytes(qc) == _bytes(ic)


def test_rebase_into_refcount_table(tmp_path):
    """``rebase`` copies old backing data into an overlay whose refcounts say the refcount
    table's cluster is free."""
    runs = []
    for d, tool in (("q", _qemu_img), ("i", _qimg)):
        (tmp_path / d).mkdir()
        _make(tmp_path / d / "a.qcow2", "4M", io=["write -P 1 0 64k"])
        _make(tmp_path / d / "b.qcow2", "4M")
        top = str(tmp_path / d / "top.qcow2")
        assert _qemu_img("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", top).returncode == 0
        assert _qemu_io(top, ["write -P 2 1M 64k"]).returncode == 0
        _poke(top, (RT, _q(L1)))
        runs.append((tool("rebase", "-b", "b.qcow2", "-F", "qcow2", top), _bytes(top)))
    (q, q_bytes), (i, i_bytes) = runs
    assert _lines(q.stderr) == _lines(i.stderr) == [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); "
        "further corruption events will be suppressed", "PROG: Error while writing to COW image: Input/output error"]
    assert q.returncode == i.returncode == 1
    assert q_bytes == i_bytes


def test_corrupt_image_is_refused_read_write_but_reads(tmp_path, qemu_img):
    """After the report the image opens read-only only, for both tools."""
    img = _reftable_entry_at_l1(tmp_path)
    assert _qimg("snapshot", "-c", "s1", img).returncode == 1
    for tool in (_qimg, lambda *a: _qemu_img(*a)):
        r = tool("snapshot", "-c", "s2", img)
        assert r.returncode == 1
        assert "Image is corrupt; cannot be opened read/write" in r.stderr
    assert "corrupt: true" in _qimg("info", img).stdout
    r = _qimg("convert", "-O", "raw", img, str(tmp_path / "out.raw"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.raw").read_bytes()[:64 << 10] == b"\x41" * (64 << 10)


# -- qemu-iotests 060: structures pointing at each other, through qemu-io writes --------------------
def _case_l2_into_l1(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (L1, _q(COPIED | L1)))  # the first L2 table is the L1 table itself
    return img


def _case_data_into_refblock(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    os.truncate(img, L2 + 0x10000)
    _poke(img, (L1, _q(COPIED | L2)), (RB + 8, b"\x00\x01"), (L2, _q(COPIED | RB)))
    return img


def _case_data_into_inactive_l2(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write -P 1 0 512"])
    assert _qemu_img("snapshot", "-c", "foo", img).returncode == 0
    assert _qemu_io(img, ["write -P 2 0 512"]).returncode == 0
    _poke(img, (0x80000, _q(COPIED | L2)))  # the active L2 entry points at the inactive L2 table
    return img


def _case_unallocated_header(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (RB, b"\x00\x00"))  # the header's cluster looks free
    return img


def _case_unaligned_l1_entry(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (L1, _q(COPIED | 0x42A00)))
    return img


def _case_unaligned_l2_entry(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (L2, _q(COPIED | 0x52A00)))
    return img


def _case_two_unaligned_l2_entries(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 128k"])
    _poke(img, (L2, _q(COPIED | 0x52A00)), (L2 + 8, _q(COPIED | 0x62A00)))
    return img


def _case_unaligned_reftable_entry(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (RT, _q(0x22A00)))
    return img


def _case_empty_reftable(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (RT, _q(0)))
    return img


def _case_empty_reftable_with_tables(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (RT, _q(0)))
    return img


def _case_empty_refblock(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (RB, _q(0)))
    return img


def _case_empty_refblock_compressed(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 64k 64k"])
    _poke(img, (RB, _q(0)))
    return img


def _case_reftable_offset_zero(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (48, _q(0)))
    return img


def _case_unaligned_prealloc_zero(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k", "discard 0 64k"])
    _poke(img, (L2, _q(COPIED | 0x2A01)))  # a preallocated zero cluster inside the header
    return img


def _case_data_into_l2_itself(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (L2 + 8, _q(COPIED | L2)))  # cluster 1's data is its own L2 table
    return img


def _case_snapshot_table_under_data(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    assert _qemu_img("snapshot", "-c", "s", img).returncode == 0
    with open(img, "rb") as f:
        f.seek(64)
        sn_off = struct.unpack(">Q", f.read(8))[0]
    _poke(img, (L2 + 8, _q(COPIED | sn_off)), (RB + 2 * (sn_off >> 16), b"\x00\x01"))
    return img


def _case_data_into_snapshot_l1(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    assert _qemu_img("snapshot", "-c", "s", img).returncode == 0
    with open(img, "rb") as f:
        f.seek(64)
        sn_off = struct.unpack(">Q", f.read(8))[0]
        f.seek(sn_off)
        sn_l1 = struct.unpack(">Q", f.read(8))[0]
    # the active L2 was shared with the snapshot: write through a fresh table pointing at it
    _poke(img, (L2 + 16, _q(COPIED | sn_l1)))
    return img


def _case_data_into_bitmap_directory(tmp_path) -> str:
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    assert _qemu_img("bitmap", "--add", img, "b0").returncode == 0
    with open(img, "rb") as f:
        cluster0 = f.read(0x10000)
    pos = 112
    while True:
        kind, length = struct.unpack(">II", cluster0[pos : pos + 8])
        if kind == 0x23852875:
            dir_off = struct.unpack(">Q", cluster0[pos + 24 : pos + 32])[0]
            break
        assert kind, "no bitmaps extension"
        pos += 8 + (length + 7) // 8 * 8
    _poke(img, (L2 + 8, _q(COPIED | dir_off)))
    return img


WRITE_CASES = {
    # name: (image maker, qemu-io commands, overlap-check option string)
    "l2-into-l1": (_case_l2_into_l1, ["write -P 0x2a 0 512"], "overlap-check=all"),
    "l2-into-l1-cached": (_case_l2_into_l1, ["write -P 0x2a 0 512"], ""),
    "data-into-refblock": (_case_data_into_refblock, ["write -P 0x2a 0 512"], "overlap-check=all"),
    "data-into-inactive-l2": (_case_data_into_inactive_l2, ["write -P 3 0 512"], "overlap-check=all"),
    # the default ("cached") does not read snapshot L1 tables: the write goes through in both
    "data-into-inactive-l2-cached": (_case_data_into_inactive_l2, ["write -P 3 0 512"], ""),
    "unallocated-header": (_case_unallocated_header, ["write 64k 64k"], ""),
    "unaligned-l1-entry": (_case_unaligned_l1_entry, ["read 0 64k"], ""),
    "unaligned-l2-entry": (_case_unaligned_l2_entry, ["read 0 64k"], ""),
    "unaligned-l2-entry-write": (_case_unaligned_l2_entry, ["write 512 4k"], ""),
    "unaligned-reftable-entry": (_case_unaligned_reftable_entry, ["write 0 64k"], ""),
    "free-unaligned-cluster": (_case_unaligned_l2_entry, ["discard 0 64k"], ""),
    "non-fatal-then-fatal": (_case_two_unaligned_l2_entries, ["discard 0 64k", "read 64k 64k"], ""),
    "empty-reftable": (_case_empty_reftable, ["write 0 64k"], ""),
    "empty-reftable-with-tables": (_case_empty_reftable_with_tables, ["write 0 128k"], ""),
    "empty-refblock": (_case_empty_refblock, ["write 0 64k"], ""),
    "empty-refblock-compressed": (_case_empty_refblock_compressed, ["write -c 0k 64k"], ""),
    "reftable-offset-zero": (_case_reftable_offset_zero, ["write 0 64k"], ""),
    "unaligned-prealloc-zero": (_case_unaligned_prealloc_zero, ["write 0 64k"], ""),
    "data-into-own-l2": (_case_data_into_l2_itself, ["write 64k 4k"], ""),
    "data-into-snapshot-table": (_case_snapshot_table_under_data, ["write 64k 4k"], ""),
    "data-into-snapshot-l1": (_case_data_into_snapshot_l1, ["write 128k 4k"], ""),
    "data-into-bitmap-directory": (_case_data_into_bitmap_directory, ["write 64k 4k"], ""),
    # the per-structure switches override the template, both ways
    "template-none-l1-on": (_case_l2_into_l1, ["write -P 0x2a 0 512"],
                            "overlap-check=none,overlap-check.active-l1=on"),
    "cached-l1-off": (_case_l2_into_l1, ["write -P 0x2a 0 512"], "overlap-check.active-l1=off"),
    "none": (_case_data_into_refblock, ["write -P 0x2a 0 512"], "overlap-check=none"),
    "template-constant": (_case_data_into_refblock, ["write -P 0x2a 0 512"], "overlap-check.template=constant"),
}


#: what qemu-io 7.2 says for some cases, spelled out (the comparisons alone are blind to a case
#: where neither tool reports anything)
EXPECTED = {
    "l2-into-l1": "Preventing invalid write on metadata (overlaps with active L1 table)",
    "data-into-refblock": "Preventing invalid write on metadata (overlaps with refcount block)",
    "data-into-inactive-l2": "Preventing invalid write on metadata (overlaps with inactive L2 table)",
    "unallocated-header": "Preventing invalid write on metadata (overlaps with qcow2_header)",
    "data-into-own-l2": "Preventing invalid write on metadata (overlaps with active L2 table)",
    "data-into-snapshot-table": "Preventing invalid write on metadata (overlaps with snapshot table)",
    "data-into-snapshot-l1": "Preventing invalid write on metadata (overlaps with inactive L1 table)",
    "data-into-bitmap-directory": "Preventing invalid write on metadata (overlaps with bitmap directory)",
    "unaligned-l1-entry": "L2 table offset 0x42a00 unaligned (L1 index: 0)",
    "unaligned-reftable-entry": "Refblock offset 0x22a00 unaligned (reftable index: 0)",
    "empty-refblock-compressed": "Preventing invalid allocation of compressed cluster at offset 0",
    "reftable-offset-zero": "Preventing invalid allocation of L2 table at offset 0",
    "empty-reftable-with-tables": "Preventing invalid allocation of refcount block at offset 0",
    "unaligned-prealloc-zero": "Preallocated zero cluster offset 0x2a00 unaligned (guest offset: 0)",
    "unaligned-l2-entry-write": "Data cluster offset 0x52a00 unaligned (guest offset: 0x200)",
    "template-none-l1-on": "Preventing invalid write on metadata (overlaps with active L1 table)",
}
#: the cases also run against qemu-io 10.0 (each structure once, and the options)
CASES_10 = ("l2-into-l1", "data-into-refblock", "data-into-inactive-l2", "unallocated-header",
            "data-into-own-l2", "data-into-snapshot-table", "data-into-snapshot-l1", "data-into-bitmap-directory",
            "unaligned-l2-entry-write", "non-fatal-then-fatal", "template-none-l1-on", "cached-l1-off")


@pytest.mark.parametrize("case,v10", [(c, False) for c in sorted(WRITE_CASES)] + [(c, True) for c in CASES_10],
                         ids=[f"7.2-{c}" for c in sorted(WRITE_CASES)] + [f"10.0-{c}" for c in CASES_10])
def test_qemu_io_patterns(tmp_path, case, v10):
    make, cmds, opts = WRITE_CASES[case]
    img = make(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_io(qc, cmds, opts, v10=v10)
    i = _qimg_io(ic, cmds, opts)
    assert "Traceback" not in i.stderr, i.stderr
    assert _corruption(i.stderr) == _corruption(q.stderr), (q.stdout + q.stderr, i.stdout + i.stderr)
    if case in EXPECTED:
        assert _corruption(i.stderr) == [
            f"qcow2: Marking image as corrupt: {EXPECTED[case]}; further corruption events will be suppressed"]
        assert _corrupt_bit(ic)
    # each command fails or succeeds alike (qemu-io says "wrote ..." where the stand-in says ok)
    q_failed = [ln.split(" failed")[0] for ln in q.stdout.splitlines() if " failed: " in ln]
    i_failed = [ln.split(" failed")[0] for ln in i.stdout.splitlines() if " failed: " in ln]
    assert q_failed == i_failed, (q.stdout, i.stdout)
    assert _bytes(qc) == _bytes(ic)


REPAIRED_CASES = ("data-into-refblock", "empty-reftable", "empty-reftable-with-tables", "empty-refblock",
                  "empty-refblock-compressed", "unaligned-prealloc-zero")


@pytest.mark.parametrize("case", REPAIRED_CASES)
def test_check_repairs_what_the_write_left(tmp_path, case):
    """``check -r all`` after the refused write: same report, same bytes, corrupt bit cleared;
    then writing works again."""
    make, cmds, opts = WRITE_CASES[case]
    img = make(tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    _qemu_io(qc, cmds, opts)
    _qimg_io(ic, cmds, opts)
    q = _qemu_img("check", "-r", "all", qc)
    i = _qimg("check", "-r", "all", ic)
    assert (q.returncode, q.stdout, _lines(q.stderr)) == (i.returncode, i.stdout, _lines(i.stderr))
    assert _bytes(qc) == _bytes(ic)
    assert not _corrupt_bit(ic)
    q = _qemu_io(qc, ["write -P 0x2a 0 512"], opts)
    i = _qimg_io(ic, ["write -P 0x2a 0 512"], opts)
    assert "failed" not in q.stdout + i.stdout
    assert _bytes(qc) == _bytes(ic)


# -- amend, resize, check, open: the other writers ------------------------------------------------
@pytest.mark.parametrize("entry", [("l1", L1, COPIED | 0x42A00), ("l2", L2, COPIED | 0x52A01)],
                         ids=["unaligned-l1", "unaligned-prealloc-zero"])
def test_amend_downgrade_reports_unaligned_tables(tmp_path, entry):
    _name, where, value = entry
    img = _make(tmp_path / "img.qcow2", io=["write 0 64k"])
    _poke(img, (where, _q(value)))
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("amend", "-o", "compat=0.10", qc)
    i = _qimg("amend", "-o", "compat=0.10", ic)
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr))
    assert _lines(i.stderr)[-1] == "PROG: Failed to turn zero into data clusters: Input/output error"
    assert _bytes(qc) == _bytes(ic)


#: refcount-block edits that make a metadata cluster look free (the refcount block covers
#: clusters 0.., two bytes each), and a refcount-table entry pointing at the L1 table
AMEND_REFCOUNT_CASES = {
    "l1-looks-free": (RB + 2 * (L1 >> 16), b"\0\0"),
    "l2-looks-free": (RB + 2 * (L2 >> 16), b"\0\0"),
    "reftable-looks-free": (RB + 2 * (RT >> 16), b"\0\0"),
    "reftable-entry-at-l1": (RT, _q(L1)),
    "clean": (0, b"QFI\xfb"),
}


@pytest.mark.parametrize("bits", [1, 64])
@pytest.mark.parametrize("case", sorted(AMEND_REFCOUNT_CASES))
def test_amend_refcount_bits_on_hostile_images(tmp_path, case, bits):
    """``amend -o refcount_bits`` allocates the new refcount structures in the clusters the old
    refcounts call free, as QEMU: one landing on metadata is refused by the overlap check
    ("Overlap check failed"), the image marked corrupt and the allocations freed; a clean image
    ends byte for byte as QEMU's (old blocks keep the counts of the new clusters)."""
    img = _make(tmp_path / "img.qcow2", io=["write -P 0x41 0 64k", "write 10M 3M"])
    _poke(img, AMEND_REFCOUNT_CASES[case])
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("amend", "-o", f"refcount_bits={bits}", qc)
    i = _qimg("amend", "-o", f"refcount_bits={bits}", ic)
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr))
    if case.endswith("free"):
        assert _lines(i.stderr)[-1] == "PROG: Overlap check failed: Input/output error"
        assert _corrupt_bit(ic)
    assert _bytes(qc) == _bytes(ic)


def _refcount1_image(tmp_path, *edits) -> str:
    img = _make(tmp_path / "img.qcow2", opts="refcount_bits=1")
    _poke(img, *edits)
    return img


SHRINK_CASES = {
    # qemu-iotests 060: refcount-table entries the shrink's reftable clean-up trips over
    "out-of-bounds-refblock": lambda p: _poke(_make(p / "img.qcow2"), (RT + 8, _q(0x00FFFFFF00000000))) or
    str(p / "img.qcow2"),
    "non-covered-refblock": lambda p: _refcount1_image(p, (RT + 8, _q(0x1000000000))),
    "covered-by-unaligned-refblock": lambda p: _refcount1_image(p, (RT + 8, _q(0x1000000000)),
                                                                (RT + 16, _q(0x200))),
    "unaligned-refblock": lambda p: _poke(_make(p / "img.qcow2"), (RT + 8, _q(0x2A00))) or str(p / "img.qcow2"),
}


@pytest.mark.parametrize("case", sorted(SHRINK_CASES))
def test_resize_shrink_with_bad_refcount_table(tmp_path, case):
    img = SHRINK_CASES[case](tmp_path)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("resize", "--shrink", qc, "32M")
    i = _qimg("resize", "--shrink", ic, "32M")
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr))
    assert _lines(i.stderr)[-1].startswith("PROG: Failed to discard unused refblocks: ")
    assert _bytes(qc) == _bytes(ic)
    # repaired, the shrink then succeeds alike
    q = _qemu_img("check", "-r", "all", qc)
    i = _qimg("check", "-r", "all", ic)
    assert (q.returncode, q.stdout, _lines(q.stderr)) == (i.returncode, i.stdout, _lines(i.stderr))
    assert _bytes(qc) == _bytes(ic)
    q = _qemu_img("resize", "--shrink", qc, "32M")
    i = _qimg("resize", "--shrink", ic, "32M")
    assert (q.returncode, q.stdout) == (i.returncode, i.stdout)
    assert _bytes(qc) == _bytes(ic)


#: resize on images whose structures point at other metadata: each failing step is worded as
#: QEMU's qcow2_co_truncate words it, and a shrink that changes nothing in a table writes nothing
RESIZE_CASES = {
    "grow-l1-looks-free": ((RB + 2 * (L1 >> 16), b"\0\0"), ["4G"], "Failed to grow the L1 table"),
    "grow-header-looks-free": ((RB, b"\0\0"), ["4G"], "Failed to grow the L1 table"),
    "full-reftable-entry-at-l1": ((RT, _q(L1)), ["--preallocation=full", "65M"],
                                  "Failed to resize refcount structures"),
    "full-l1-entry-at-l1": ((L1, _q(COPIED | L1)), ["--preallocation=full", "65M"],
                            "Failed to flush the preallocated area to disk"),
    "shrink-l1-entry-at-l1": ((L1, _q(COPIED | L1)), ["--shrink", "32M"], None),
    "shrink-reftable-entry-at-l1": ((RT, _q(L1)), ["--shrink", "32M"], None),
}


@pytest.mark.parametrize("case", sorted(RESIZE_CASES))
def test_resize_on_hostile_images(tmp_path, case):
    edit, args, step = RESIZE_CASES[case]
    img = _make(tmp_path / "img.qcow2", io=["write -P 0x41 0 64k"])
    _poke(img, edit)
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("resize", "-q", qc, *args)
    i = _qimg("resize", "-q", ic, *args)
    assert (q.returncode, _lines(q.stderr)) == (i.returncode, _lines(i.stderr))
    if step:
        assert i.returncode == 1 and _lines(i.stderr)[-1] == f"PROG: {step}: Input/output error"
        assert _corrupt_bit(ic)
    else:
        assert i.returncode == 0
    assert _bytes(qc) == _bytes(ic)


@pytest.mark.parametrize("size", ["64k", "300k", "513k"])
def test_shrink_drops_refcount_blocks_no_longer_used(tmp_path, size):
    """QEMU's shrink also removes refcount blocks left empty and truncates the file after
    the last used cluster (512-byte clusters: a refcount block covers 128 KiB)."""
    img = _make(tmp_path / "img.qcow2", "1M", opts="cluster_size=512", io=["write -P 1 0 1M"])
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    assert _qemu_img("resize", "--shrink", qc, size).returncode == 0
    assert _qimg("resize", "--shrink", ic, size).returncode == 0
    assert _bytes(qc) == _bytes(ic)


@pytest.mark.parametrize("repair", [False, True], ids=["check", "repair"])
def test_check_reports_unaligned_refblock_as_qemu(tmp_path, repair):
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (RT, _q(0xFFFF2A00)))
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    args = ["check", *(["-r", "all"] if repair else [])]
    q = _qemu_img(*args, qc)
    i = _qimg(*args, ic)
    assert (q.returncode, q.stdout, _lines(q.stderr)) == (i.returncode, i.stdout, _lines(i.stderr))
    assert ("qcow2: Marking image as corrupt: " if repair else "qcow2: Image is corrupt: ") in i.stderr
    assert _bytes(qc) == _bytes(ic)


def test_dirty_image_whose_repair_fails_is_not_opened(tmp_path):
    """qemu-iotests 060 "dirty corrupt image": the repair on open marks the image corrupt and
    the open fails; the repaired structures and both bits stay."""
    img = _make(tmp_path / "img.qcow2")
    _poke(img, (RT, _q(0xFFFF2A00)), (72, _q(1)))
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("resize", qc, "128M")
    i = _qimg("resize", ic, "128M")
    assert (q.returncode, q.stdout) == (i.returncode, i.stdout)
    assert [ln.replace(qc, "IMG") for ln in q.stderr.replace("qemu-img:", "qimg:").splitlines()] == \
        [ln.replace(ic, "IMG") for ln in i.stderr.splitlines()]
    assert "Could not repair dirty image: Input/output error" in i.stderr
    assert _bytes(qc) == _bytes(ic)


# -- options ------------------------------------------------------------------------------------
def test_overlap_option_names_are_qemus(tmp_path):
    img = _make(tmp_path / "img.qcow2")
    for opt in ("overlap-check.foo=on", "overlap-check.main-header=maybe", "overlap-check=on"):
        q = _qemu_img("info", "--image-opts", f"driver=qcow2,file.filename={img},{opt}")
        i = _qimg("info", "--image-opts", f"driver=qcow2,file.filename={img},{opt}")
        assert q.returncode == i.returncode == 1
        assert _lines(q.stderr) == _lines(i.stderr)


def test_overlap_masks():
    from qimg_qcow2 import overlap as O

    assert O.mask_from_options({}) == O.CACHED
    assert O.mask_from_options({"overlap-check": "none"}) == 0
    assert O.mask_from_options({"overlap-check.template": "all"}) == O.ALL
    assert O.mask_from_options({"overlap-check": "constant", "overlap-check.active-l2": True}) == \
        O.CONSTANT | O.ACTIVE_L2
    assert O.mask_from_options({"overlap-check.main-header": False}) == O.CACHED & ~O.MAIN_HEADER
    assert O.CACHED & O.INACTIVE_L2 == 0 and O.ALL & O.INACTIVE_L2


def test_entry_index_follows_table_changes():
    """The cluster index of the active-L2 check keeps up with edits of the live table."""
    from array import array

    from qimg_qcow2.overlap import EntryIndex

    idx = EntryIndex(0x00FFFFFFFFFFFE00, 16)
    table = array("Q", [0] * 300)
    assert idx.clusters(table, 0) == {}
    table[5] = COPIED | 0x30000
    table[250] = 0x52A00  # unaligned: touches two clusters
    assert idx.clusters(table, 0) == {}  # same generation: not looked at again
    assert idx.clusters(table, 1) == {3: 1, 5: 1, 6: 1}
    table[5] = 0
    table[7] = 0x30000
    assert idx.clusters(table, 2) == {3: 1, 5: 1, 6: 1}
    table[7] = 0
    assert idx.clusters(table, 3) == {5: 1, 6: 1}
    other = array("Q", [0x10000])
    assert idx.clusters(other, 3) == {1: 1}


# -- the allocation the write path shares with QEMU ------------------------------------------------
def test_write_continues_its_host_range_after_in_place_clusters(tmp_path):
    """A write over an allocated cluster and a free one allocates the free one right after
    the first in the file when that place is free (QEMU's qcow2_alloc_clusters_at), not in an
    earlier hole."""
    img = _make(tmp_path / "img.qcow2", io=["write -P 1 128k 64k", "write -P 2 0 64k", "discard 128k 64k"])
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    assert "failed" not in _qemu_io(qc, ["write -P 3 0 128k"]).stdout
    assert "failed" not in _qimg_io(ic, ["write -P 3 0 128k"]).stdout
    assert _bytes(qc) == _bytes(ic)


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
def test_bitmap_add_with_reftable_offset_at_l1(tmp_path, v10):
    """The header's refcount table offset names the L1 table: storing the new bitmap at close
    cannot allocate clusters. Reported, the close goes on (7.2: exit 0); 10.0's inactivation
    fails ('Error while closing the image: Invalid argument', exit 1) and its close tries
    again. Nothing is written."""
    img = _make(tmp_path / "img.qcow2", "4M", io=["write -P 0x41 0 64k"])
    _poke(img, (48, _q(L1)))
    qc, ic = _copies(img, tmp_path, "q.qcow2", "i.qcow2")
    q = _qemu_img("bitmap", "--add", qc, "b0", v10=v10)
    i = _qimg("bitmap", "--add", ic, "b0", v10=v10)
    # (qemu-img names the allocation of the bitmap's data, qimg that of its table)
    lost = re.compile(r"^(PROG: Lost persistent bitmaps during inactivation of node '#blockN': )Failed to allocate "
                      r"clusters.*(: Input/output error)$")
    ql, il = ([lost.sub(r"\1\2", ln) for ln in _lines(r.stderr)] for r in (q, i))
    lost_line = "PROG: Lost persistent bitmaps during inactivation of node '#blockN': : Input/output error"
    if v10:
        assert ql == il == [lost_line, "PROG: Error while closing the image: Invalid argument", lost_line]
    else:
        assert ql == il == [lost_line]
    assert q.returncode == i.returncode == (1 if v10 else 0)
    assert _bytes(qc) == _bytes(ic) and open(ic, "rb").read() == open(img, "rb").read()
