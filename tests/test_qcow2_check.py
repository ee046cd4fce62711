"""qcow2 check/repair: qimg's CheckResult against ``qemu-img check`` on copies of damaged images.

Images are made by qemu-img/qemu-io, then damaged by editing bytes (refcounts, L1/L2 entries);
both tools must print the same message lines and statistics, and after qimg repairs an image
``qemu-img check`` must find it clean.
"""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import qimg

L2_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63


class Damage:
    """Byte-level editing of a qcow2 file (64-bit L1/L2, 16-bit refcounts unless told)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        d = self.rd(0, 104)
        self.cluster_bits = struct.unpack(">I", d[20:24])[0]
        self.l1_size, self.l1 = struct.unpack(">IQ", d[36:48])
        self.rt = struct.unpack(">Q", d[48:56])[0]
        self.refcount_order = struct.unpack(">I", d[96:100])[0] if struct.unpack(">I", d[4:8])[0] == 3 else 4

    def rd(self, off: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def wr(self, off: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def q(self, off: int) -> int:
        return struct.unpack(">Q", self.rd(off, 8))[0]

    def setq(self, off: int, v: int) -> None:
        self.wr(off, struct.pack(">Q", v))

    def refblock(self, index: int = 0) -> int:
        return self.q(self.rt + 8 * index) & ~0x1FF

    def setref(self, cluster: int, v: int) -> None:
        assert self.refcount_order == 4
        self.wr(self.refblock() + 2 * cluster, struct.pack(">H", v))

    def l1e(self, i: int) -> int:
        return self.q(self.l1 + 8 * i)

    def setl1(self, i: int, v: int) -> None:
        self.setq(self.l1 + 8 * i, v)

    def l2addr(self, i: int, l1i: int = 0) -> int:
        return (self.l1e(l1i) & L2_MASK) + 8 * i

    def l2e(self, i: int, l1i: int = 0) -> int:
        return self.q(self.l2addr(i, l1i))

    def setl2(self, i: int, v: int, l1i: int = 0) -> None:
        self.setq(self.l2addr(i, l1i), v)


def qemu_check(qemu_img, path, *extra):
    r = qemu_img("check", "--output=json", *extra, str(path))
    out = r.stdout[r.stdout.index("{"):] if "{" in r.stdout else "{}"
    data = json.loads(out)
    msgs = [ln for ln in r.stderr.splitlines() if ln]
    return r.returncode, data, msgs


def qimg_check(path, fix=()):
    with qimg.open(str(path), "qcow2", writable=bool(fix), options={"check": True} if fix else None) as img:
        return img.driver.check(set(fix))


def as_json(res) -> dict:
    """CheckResult in qemu-img's JSON key set (zero counters omitted as qemu-img does)."""
    d = {"image-end-offset": res.image_end_offset, "total-clusters": res.total_clusters,
         "check-errors": res.check_errors, "allocated-clusters": res.allocated_clusters,
         "filename": res.filename, "format": "qcow2"}
    for key, val in (("corruptions", res.corruptions), ("leaks", res.leaks),
                     ("fragmented-clusters", res.fragmented_clusters),
                     ("compressed-clusters", res.compressed_clusters),
                     ("leaks-fixed", res.leaks_fixed), ("corruptions-fixed", res.corruptions_fixed)):
        if val:
            d[key] = val
    return d


def assert_same_check(qemu_img, path, tmp_path):
    """Read-only check: identical lines and statistics."""
    _, want, want_msgs = qemu_check(qemu_img, path)
    res = qimg_check(path)
    assert res.messages == want_msgs
    got = as_json(res)
    got["filename"] = want["filename"]
    assert got == want
    return res


def sparse_copy(src, dst) -> None:
    """Copy a file keeping its holes (big preallocated-metadata images stay cheap)."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                pos = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
            os.pwrite(g.fileno(), os.pread(f.fileno(), end - pos, pos), pos)
            pos = end
        g.truncate(size)


def assert_same_repair(qemu_img, path, tmp_path, mode):
    """Repair copies with both tools: same lines and counts, and qimg's result checks clean."""
    a = tmp_path / "qemu-repaired.qcow2"
    b = tmp_path / "qimg-repaired.qcow2"
    sparse_copy(path, a)
    sparse_copy(path, b)
    _, want, want_msgs = qemu_check(qemu_img, a, "-r", mode)
    fix = {"leaks"} if mode == "leaks" else {"leaks", "errors"}
    if want_msgs and want_msgs[-1].startswith("qemu-img: Check failed: "):
        from qimg_qcow2.check import CheckFailed

        with pytest.raises(CheckFailed) as exc:
            qimg_check(b, fix)
        assert exc.value.messages == want_msgs[:-1]
        assert want_msgs[-1] == f"qemu-img: Check failed: {exc.value.message}"
        return None
    res = qimg_check(b, fix)
    # qemu-img prints the lines of the repair pass; its double check prints more only if unclean
    assert res.messages == want_msgs[: len(res.messages)]
    assert res.leaks_fixed == want.get("leaks-fixed", 0)
    assert res.corruptions_fixed == want.get("corruptions-fixed", 0)
    rc_a, after_a, msgs_a = qemu_check(qemu_img, a)
    rc_b, after_b, msgs_b = qemu_check(qemu_img, b)
    assert (rc_b, msgs_b) == (rc_a, msgs_a)
    after_b["filename"] = after_a["filename"]
    assert after_b == after_a
    return res


@pytest.fixture
def base(tmp_path, qemu_img, qemu_io):
    """A 10 MiB image: clusters 5..8 hold guest 0..256k, cluster 9 guest 1M (64k clusters)."""
    p = tmp_path / "base.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(p), "10M").returncode == 0
    r = qemu_io("-c", "write -P 1 0 200k", "-c", "write -P 2 1M 64k", str(p))
    assert r.returncode == 0, r.stderr
    return p


def test_clean_image_matches(base, qemu_img, tmp_path):
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.messages == [] and res.corruptions == 0 and res.allocated_clusters == 5


@pytest.mark.parametrize("cluster, value", [(8, 2), (4, 2), (6, 0), (3, 3)])
def test_refcount_damage(base, qemu_img, tmp_path, cluster, value):
    Damage(base).setref(cluster, value)
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.messages
    assert_same_repair(qemu_img, base, tmp_path, "leaks")
    assert_same_repair(qemu_img, base, tmp_path, "all")


def test_leaked_cluster(base, qemu_img, tmp_path):
    d = Damage(base)
    d.setl2(16, 0)  # drop guest 1M: cluster 9 leaks
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.leaks == 1 and res.messages == ["Leaked cluster 9 refcount=1 reference=0"]
    res = assert_same_repair(qemu_img, base, tmp_path, "leaks")
    assert res.leaks_fixed == 1


def test_l2_entry_past_eof(base, qemu_img, tmp_path):
    Damage(base).setl2(3, COPIED | (100 << 16))
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.corruptions == 2 and res.fragmented_clusters == 2
    assert_same_repair(qemu_img, base, tmp_path, "all")


@pytest.mark.parametrize("entry", [COPIED | 0x50200, COPIED | 0x80201, 0x80000, COPIED | 0x30000, COPIED | 0x40000,
                                   COPIED | 0x10000, COPIED | (0x50000 | 0x100)])
def test_l2_entry_damage(base, qemu_img, tmp_path, entry):
    """Misaligned data/zero clusters, missing OFLAG_COPIED, entries overlapping metadata."""
    Damage(base).setl2(3, entry)
    assert_same_check(qemu_img, base, tmp_path)
    assert_same_repair(qemu_img, base, tmp_path, "leaks")
    assert_same_repair(qemu_img, base, tmp_path, "all")


@pytest.mark.parametrize("what", ["l1_nocopied", "l1_misaligned", "l1_reserved", "rt_reserved", "rb_misaligned"])
def test_table_damage(base, qemu_img, tmp_path, what):
    d = Damage(base)
    if what == "l1_nocopied":
        d.setl1(0, d.l1e(0) & ~COPIED)
    elif what == "l1_misaligned":
        d.setl1(0, d.l1e(0) | 0x200)
    elif what == "l1_reserved":
        d.setl1(0, d.l1e(0) | (1 << 57))
    elif what == "rt_reserved":
        d.setq(d.rt, d.q(d.rt) | 0x100)
    elif what == "rb_misaligned":
        d.setq(d.rt + 8, 0x30200)
    assert_same_check(qemu_img, base, tmp_path)
    if what not in ("l1_misaligned", "rt_reserved"):  # qemu-img itself fails on these
        assert_same_repair(qemu_img, base, tmp_path, "all")


def test_compressed_and_fragmented(tmp_path, qemu_img, qemu_io):
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(range(256)) * 4096 * 3)
    p = tmp_path / "c.qcow2"
    assert qemu_img("convert", "-c", "-O", "qcow2", str(src), str(p)).returncode == 0
    assert qemu_io("-c", "write -P 7 64k 64k", "-c", "write -P 8 1M 64k", str(p)).returncode == 0
    res = assert_same_check(qemu_img, p, tmp_path)
    assert res.compressed_clusters > 0
    # the copied flag on a compressed cluster is an error
    d = Damage(p)
    d.setl2(0, d.l2e(0) | COPIED)
    assert_same_check(qemu_img, p, tmp_path)


def test_small_clusters_refcount_bits(tmp_path, qemu_img, qemu_io):
    """512-byte clusters (many L2 tables) and 4-bit refcounts: statistics and leaks still match."""
    p = tmp_path / "s.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=4", str(p), "1M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 100k", "-c", "write -P 2 300k 50k", "-c", "write -P 3 50k 10k",
                   str(p)).returncode == 0
    assert_same_check(qemu_img, p, tmp_path)
    d = Damage(p)
    d.setl2(3, 0)
    assert_same_check(qemu_img, p, tmp_path)
    assert_same_repair(qemu_img, p, tmp_path, "leaks")


def test_extended_l2(tmp_path, qemu_img, qemu_io):
    p = tmp_path / "x.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(p), "10M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 10k", "-c", "write -P 2 1M 64k", str(p)).returncode == 0
    assert_same_check(qemu_img, p, tmp_path)
    d = Damage(p)
    d.setref(5, 0)
    assert_same_check(qemu_img, p, tmp_path)
    assert_same_repair(qemu_img, p, tmp_path, "all")


def test_snapshots_and_bitmaps_counted(base, qemu_img, qemu_io, tmp_path):
    assert qemu_img("snapshot", "-c", "s1", str(base)).returncode == 0
    assert qemu_io("-c", "write -P 9 0 64k", str(base)).returncode == 0
    bm = tmp_path / "bm.qcow2"
    shutil.copy(base, bm)
    assert qemu_img("bitmap", "--add", str(bm), "b0").returncode == 0
    assert qemu_io("-c", "write -P 9 2M 64k", str(bm)).returncode == 0
    res = assert_same_check(qemu_img, bm, tmp_path)
    assert res.messages == []
    # qemu-img check -r on an image with bitmaps is not compared: qemu-img 7.2 drops the
    # snapshot's references there and "repairs" them away
    # a leaked copy of nothing: drop the refcount of the snapshot's L1 copy
    raw = base.read_bytes()
    snap_off = struct.unpack(">Q", raw[64:72])[0]
    sn_l1 = struct.unpack(">Q", raw[snap_off:snap_off + 8])[0]
    Damage(base).setref(sn_l1 >> 16, 2)
    assert_same_check(qemu_img, base, tmp_path)
    assert_same_repair(qemu_img, base, tmp_path, "leaks")


@pytest.mark.parametrize("damage, mode, output", [
    (None, None, "human"), ("leak", None, "json"), ("leak", "leaks", "human"), ("error", None, "human"),
    ("error", "all", "json"), ("copied", "all", "human"), ("copied", "leaks", "human"),
    ("zero_refcount", "leaks", "human"), ("zero_refcount", "all", "human"),
    ("dirty", None, "json"), ("dirty", "leaks", "human"), ("dirty", "all", "human"),
])
def test_cli_check_matches_qemu_img(base, qemu_img, qimg, tmp_path, damage, mode, output):
    from conftest import as_qemu

    d = Damage(base)
    if damage == "leak":
        d.setref(8, 2)
    elif damage == "error":
        d.setref(6, 1)
        d.setl2(5, COPIED | 0x60000)
    elif damage == "copied":
        d.setl2(1, d.l2e(1) & ~COPIED)
    elif damage == "zero_refcount":
        d.setref(7, 0)
    elif damage == "dirty":
        # lazy refcounts after a crash: dirty bit set, refcounts not yet written; no repair on open
        d.setq(72, 1)
        d.setref(7, 0)
        d.setref(8, 0)
    a = tmp_path / "a" / "img.qcow2"
    b = tmp_path / "b" / "img.qcow2"
    for p in (a, b):
        p.parent.mkdir()
        shutil.copy(base, p)
    args = ["--output", output] + (["-r", mode] if mode else [])
    want = qemu_img("check", *args, str(a))
    got = qimg("check", *args, str(b))
    assert got.returncode == want.returncode
    assert as_qemu(got.stdout).replace(str(b), str(a)) == want.stdout
    assert as_qemu(got.stderr) == want.stderr


@pytest.mark.parametrize("field, fmt, value", [
    (0, ">Q", 0x90200),     # snapshot L1 not cluster aligned
    (8, ">I", 0x1000000),   # snapshot L1 too large
    (0, ">Q", 0x9000000),   # snapshot L1 past the end of the file
])
def test_snapshot_table_damage(base, qemu_img, tmp_path, field, fmt, value):
    for name in ("s1", "s2"):
        assert qemu_img("snapshot", "-c", name, str(base)).returncode == 0
    raw = bytearray(base.read_bytes())
    so = struct.unpack(">Q", raw[64:72])[0]
    struct.pack_into(fmt, raw, so + field, value)
    base.write_bytes(bytes(raw))
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.corruptions == 1 and res.leaks == 7
    assert_same_repair(qemu_img, base, tmp_path, "all")


def test_unreadable_snapshot_table_fails_like_qemu(base, qemu_img, qimg, tmp_path):
    from conftest import as_qemu

    assert qemu_img("snapshot", "-c", "s1", str(base)).returncode == 0
    raw = bytearray(base.read_bytes())
    so = struct.unpack(">Q", raw[64:72])[0]
    struct.pack_into(">I", raw, so + 36, 2000)  # extra data size beyond QEMU's 1024 limit
    base.write_bytes(bytes(raw))
    want = qemu_img("check", str(base))
    got = qimg("check", str(base))
    assert want.returncode == got.returncode == 1
    assert as_qemu(got.stderr) == want.stderr and got.stdout == want.stdout


@pytest.mark.parametrize("index, word, value", [
    (1, 1, 0x0000000100000001),            # a subcluster both allocated and zero
    (3, 1, 0x3),                           # unallocated cluster with allocation bits
    (3, 0, (1 << 62) | 0x50000),           # compressed cluster ... with a bitmap (word set below)
])
def test_extended_l2_bitmap_damage(tmp_path, qemu_img, qemu_io, index, word, value):
    p = tmp_path / "x.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(p), "10M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 10k", "-c", "write -P 2 1M 64k", str(p)).returncode == 0
    d = Damage(p)
    base = d.l1e(0) & L2_MASK
    d.setq(base + 16 * index + 8 * word, value)
    if word == 0:
        d.setq(base + 16 * index + 8, 1)
    res = assert_same_check(qemu_img, p, tmp_path)
    assert res.corruptions == 1
    assert_same_repair(qemu_img, p, tmp_path, "all")


@pytest.mark.parametrize("opts", ["refcount_bits=1", "refcount_bits=64", "cluster_size=512",
                                  "cluster_size=4k,refcount_bits=2"])
def test_rebuild_refcount_structure(tmp_path, qemu_img, qemu_io, opts):
    """A wiped refcount block: -r all rebuilds the structures where qemu-img puts them."""
    p = tmp_path / "r.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(p), "64M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 3M", "-c", "write -P 2 40M 5M", str(p)).returncode == 0
    d = Damage(p)
    d.wr(d.refblock(), bytes(1 << d.cluster_bits))
    assert_same_check(qemu_img, p, tmp_path)
    assert_same_repair(qemu_img, p, tmp_path, "leaks")  # qemu-img: "need to rebuild", check failed
    res = assert_same_repair(qemu_img, p, tmp_path, "all")
    assert res.messages[0] != "Rebuilding refcount structure" and "Rebuilding refcount structure" in res.messages


def test_dirty_image_repaired_on_open_like_qemu(base, qemu_io, tmp_path, capfd):
    d = Damage(base)
    d.setq(72, 1)  # dirty bit (lazy refcounts after a crash)
    d.setref(7, 0)
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    shutil.copy(base, a)
    shutil.copy(base, b)
    r = qemu_io("-c", "read 0 512", str(a))
    assert r.returncode == 0
    capfd.readouterr()
    with qimg.open(str(b), "qcow2", writable=True):
        pass
    assert capfd.readouterr().err == r.stderr
    assert a.read_bytes() == b.read_bytes()


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    """Small clusters, a snapshot, compressed clusters: many kinds of metadata in few bytes."""
    import subprocess

    p = tmp_path_factory.mktemp("fuzz") / "base.qcow2"
    for args in (["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(p), "4M"],
                 ["qemu-io", "-c", "write -P 1 0 100k", "-c", "write -P 2 1M 30k", str(p)],
                 ["qemu-img", "snapshot", "-c", "s1", str(p)],
                 ["qemu-io", "-c", "write -P 3 8k 16k", "-c", "write -c -P 4 2M 4k", "-c", "write -c -P 5 2052k 4k",
                  str(p)]):
        if subprocess.run(args, capture_output=True).returncode:
            if os.environ.get("CI"):
                pytest.fail(f"the qemu-img oracle is required in CI: {args[0]} failed")
            pytest.skip("qemu tools unavailable")
    return p.read_bytes()


@pytest.mark.parametrize("seed", range(16))
def test_random_metadata_damage(fuzz_base, qemu_img, tmp_path, seed):
    """Random bit flips in metadata: same lines and statistics as qemu-img (and same repair)."""
    import random

    rnd = random.Random(seed)
    raw = bytearray(fuzz_base)
    cs = 4096
    for _ in range(rnd.randint(1, 3)):
        cl = rnd.randint(1, len(raw) // cs - 1)
        off = cl * cs + rnd.choice([rnd.randint(0, 63), rnd.randint(0, cs - 1)])
        raw[off] ^= 1 << rnd.randint(0, 7)
    p = tmp_path / "f.qcow2"
    p.write_bytes(bytes(raw))
    rc, want, want_msgs = qemu_check(qemu_img, p)
    try:
        res = qimg_check(p)
    except qimg.QimgError as e:
        assert rc == 1 and any(e.message in m for m in want_msgs)
        return
    assert res.messages == want_msgs
    got = as_json(res)
    got["filename"] = want["filename"]
    assert got == want
    if seed % 4 == 0:
        assert_same_repair(qemu_img, p, tmp_path, "all")


def test_l1_entry_without_offset_walks_the_header(base, qemu_img, tmp_path):
    """A nonzero L1 entry with offset 0 makes QEMU read the header as an L2 table; repairing
    would overwrite the header: both tools refuse, mark the image corrupt, fail the check."""
    Damage(base).setl1(0, COPIED)
    res = assert_same_check(qemu_img, base, tmp_path)
    assert res.corruptions > 0
    assert_same_repair(qemu_img, base, tmp_path, "all")
    a = (tmp_path / "qemu-repaired.qcow2").read_bytes()
    b = (tmp_path / "qimg-repaired.qcow2").read_bytes()
    assert a[72:80] == b[72:80] == (2).to_bytes(8, "big")  # the corrupt bit


def test_snapshot_l1_beyond_readable_range(base, qemu_img, qimg, tmp_path):
    from conftest import as_qemu

    assert qemu_img("snapshot", "-c", "s1", str(base)).returncode == 0
    raw = bytearray(base.read_bytes())
    so = struct.unpack(">Q", raw[64:72])[0]
    struct.pack_into(">Q", raw, so, (1 << 63) | struct.unpack(">Q", raw[so:so + 8])[0])
    base.write_bytes(bytes(raw))
    want = qemu_img("check", str(base))
    got = qimg("check", str(base))
    assert (got.returncode, got.stdout, as_qemu(got.stderr)) == (want.returncode, want.stdout, want.stderr)
    assert "I/O error in check_refcounts_l1" in want.stderr


def test_file_past_8_tib_is_checked_in_bounded_memory(tmp_path, qemu_img, qemu_io, qimg):
    """A file of 9 TiB whose tail no metadata names (more clusters than one expected-refcount
    array holds): qemu-img checks it, qimg too, with the same report, keeping the expected
    refcounts in chunks made where clusters are counted (issue 19: it stopped with "File too
    large")."""
    import tracemalloc

    p = tmp_path / "huge.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(p), "1G").returncode == 0
    assert qemu_io("-c", "write -P 7 0 1M", "-c", "write -P 8 512M 64k", str(p)).returncode == 0
    try:
        os.truncate(p, 9 << 40)
    except OSError as e:  # a file system without files this large
        pytest.skip(f"cannot make a 9 TiB sparse file here: {e}")
    tracemalloc.start()
    try:
        assert_same_check(qemu_img, p, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # one array would take 288 MiB (16-bit refcounts, 64 KiB clusters)
    Damage(p).setref(5, 0)
    for args in (("check",), ("check", "--output=json")):
        want, got = qemu_img(*args, str(p)), qimg(*args, str(p))
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
