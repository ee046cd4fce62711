"""Whole-table metadata walks (issue 19): check and map of qcow2 images whose L2 tables are
full, so that the run-at-a-time paths are taken, with damage placed inside long runs.

Every image is made by qemu-img (``preallocation=metadata``: every L2 entry allocated, runs
of thousands of contiguous clusters), then edited byte by byte; qimg must print what the
oracle prints, line for line and counter for counter. A wrong run boundary, a refcount counted
once per run instead of once per cluster, a mismatch missed inside a run: each shows here.
"""
from __future__ import annotations

import pytest
from cli_support import compare
from test_qcow2_check import COPIED, L2_MASK, Damage, assert_same_check, assert_same_repair, sparse_copy

COMPRESSED = 1 << 62


def _prealloc(qemu_img, path, size: str, opts: str = "") -> Damage:
    o = "preallocation=metadata" + ("," + opts if opts else "")
    r = qemu_img("create", "-q", "-f", "qcow2", "-o", o, str(path), size)
    assert r.returncode == 0, r.stderr
    return Damage(path)


#: (create options, virtual size): 64k clusters (8192-entry tables, one refcount block);
#: 4k clusters (512-entry tables, runs crossing refcount blocks); other refcount widths
GEOMETRIES = [("", "1G"), ("cluster_size=4k", "64M"), ("cluster_size=4k,refcount_bits=64", "32M"),
              ("cluster_size=4k,refcount_bits=8", "32M"), ("cluster_size=16k,refcount_bits=32", "64M"),
              ("cluster_size=2M", "8G")]


@pytest.mark.parametrize("opts, size", GEOMETRIES)
def test_preallocated_clean_and_with_snapshot(tmp_path, qemu_img, opts, size):
    p = tmp_path / "p.qcow2"
    _prealloc(qemu_img, p, size, opts)
    res = assert_same_check(qemu_img, p, tmp_path)
    assert res.allocated_clusters == res.total_clusters and not res.messages
    assert qemu_img("snapshot", "-c", "s1", str(p)).returncode == 0
    assert_same_check(qemu_img, p, tmp_path)
    compare(tmp_path, "check", "--output=json", p.name)
    compare(tmp_path, "map", "--output=json", p.name)


def _mid(d: Damage, l1i: int = 0) -> tuple[int, int]:
    """(index, entry) of an L2 entry in the middle of table ``l1i``'s run."""
    n = (1 << d.cluster_bits) // 8
    i = n // 2 + 3
    return i, d.l2e(i, l1i)


DAMAGE = ["past_eof", "duplicate", "compressed", "zero_flag", "zero_no_offset", "reserved", "unaligned",
          "no_copied", "unallocated", "refcount_2", "refcount_0", "leak_after_end", "l2_shared",
          "refcount_block_end"]


@pytest.mark.parametrize("opts, size", [("", "1G"), ("cluster_size=4k", "64M")])
@pytest.mark.parametrize("what", DAMAGE)
def test_damage_inside_a_run(tmp_path, qemu_img, opts, size, what):
    p = tmp_path / "p.qcow2"
    d = _prealloc(qemu_img, p, size, opts)
    cs = 1 << d.cluster_bits
    i, e = _mid(d)
    off = e & L2_MASK
    if what == "past_eof":
        d.setl2(i, COPIED | (p.stat().st_size + 64 * cs) & ~(cs - 1))
    elif what == "duplicate":
        d.setl2(i, d.l2e(i - 5))
    elif what == "compressed":
        d.setl2(i, COMPRESSED | off)
    elif what == "zero_flag":
        d.setl2(i, e | 1)
    elif what == "zero_no_offset":
        d.setl2(i, 1)
    elif what == "reserved":
        d.setl2(i, e | 0x2)
    elif what == "unaligned":
        d.setl2(i, e | 0x200)
    elif what == "no_copied":
        d.setl2(i, e & ~COPIED)
    elif what == "unallocated":
        d.setl2(i, 0)
    elif what in ("refcount_2", "refcount_0"):
        d.wr(_refcount_addr(d, off >> d.cluster_bits), (2 if what == "refcount_2" else 0).to_bytes(2, "big"))
    elif what == "leak_after_end":
        end = -(-p.stat().st_size // cs)
        d.wr(_refcount_addr(d, end + 3), (1).to_bytes(2, "big"))
    elif what == "refcount_block_end":
        per = cs // 2  # the last refcount of the first block (a data cluster or past the end)
        d.wr(_refcount_addr(d, per - 1), (2).to_bytes(2, "big"))
    elif what == "l2_shared":
        d.setl1(1, d.l1e(0))  # two L1 entries name one L2 table: every cluster counted twice
    assert_same_check(qemu_img, p, tmp_path)
    compare(tmp_path, "check", p.name)
    if what in ("duplicate", "unaligned", "no_copied", "refcount_2", "refcount_0"):
        assert_same_repair(qemu_img, p, tmp_path, "all")
    if what in ("unallocated", "leak_after_end", "refcount_2", "refcount_block_end"):
        assert_same_repair(qemu_img, p, tmp_path, "leaks")


def _refcount_addr(d: Damage, cluster: int) -> int:
    """Where cluster's 16-bit refcount is stored."""
    assert d.refcount_order == 4
    per = (1 << d.cluster_bits) // 2
    return d.refblock(cluster // per) + 2 * (cluster % per)


def test_refcount_overflow_in_a_run(tmp_path, qemu_img):
    """1-bit refcounts, one L2 table named twice: each cluster's second reference overflows
    (the run falls back to the per-cluster messages, in order)."""
    p = tmp_path / "p.qcow2"
    d = _prealloc(qemu_img, p, "32M", "cluster_size=4k,refcount_bits=1")
    d.setl1(1, d.l1e(0))
    assert_same_check(qemu_img, p, tmp_path)


def test_fragmented_and_mixed_tables(tmp_path, qemu_img, qemu_io):
    """Tables of short runs (written in scattered order), zero and compressed clusters and
    discarded ranges between long runs, an internal snapshot taken halfway."""
    import random

    p = tmp_path / "f.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(p), "16M").returncode == 0
    order = list(range(0, 1024, 2))
    random.Random(5).shuffle(order)
    cmds = [f"write -P {k % 200 + 1} {k * 4}k 4k" for k in order[:300]]
    cmds += ["write -P 7 8M 2M", "write -z 8200k 40k", "write -c -P 3 12M 4k", "write -c -P 4 12292k 4k", "discard 9300k 64k",
             "write -z -u 9500k 16k"]
    args = []
    for c in cmds:
        args += ["-c", c]
    assert qemu_io(*args, str(p)).returncode == 0
    assert_same_check(qemu_img, p, tmp_path)
    assert qemu_img("snapshot", "-c", "s1", str(p)).returncode == 0
    assert qemu_io("-c", "write -P 9 8300k 300k", "-c", "write -P 9 4k 40k", str(p)).returncode == 0
    assert_same_check(qemu_img, p, tmp_path)
    compare(tmp_path, "map", "--output=json", p.name)
    compare(tmp_path, "map", p.name)
    q = tmp_path / "g.qcow2"
    sparse_copy(p, q)
    d = Damage(q)
    i = 2048 + 40  # inside the 2 MiB run of table 4 (4k clusters: 512 entries a table)
    d.setl2(i % 512, d.l2e(i % 512, i // 512) & ~COPIED, i // 512)
    assert_same_check(qemu_img, q, tmp_path)


@pytest.mark.parametrize("opts", ["extended_l2=on", "extended_l2=on,cluster_size=128k"])
def test_extended_l2_preallocated(tmp_path, qemu_img, opts):
    p = tmp_path / "x.qcow2"
    _prealloc(qemu_img, p, "2G", opts)
    assert_same_check(qemu_img, p, tmp_path)
    compare(tmp_path, "map", "--output=json", p.name)


def test_same_run_matches_naive_model() -> None:
    """qimg.tables.same_run (byte lanes for power-of-two steps, integer XOR otherwise) against
    the entry-by-entry definition: long tables, flags in the top bits, series that would leave
    64 bits, starts and counts inside the table, a last entry that fits the series after a gap."""
    import random
    from array import array

    from qimg.tables import same_run

    def naive(vals, start, count, e0, step):
        k = 0
        end = len(vals) if count is None else min(len(vals), start + count)
        while start + k < end and vals[start + k] == e0 + k * step:
            k += 1
        return k

    rng = random.Random(19)
    top = (1 << 64) - 1
    for it in range(4000):
        n = rng.randint(0, 20000) if it % 10 == 0 else rng.randint(0, 1500)
        step = rng.choice([0, 512, 4096, 65536, 1 << 21, 1 << 13, 1 << 62, 3 * 512])
        e0 = rng.randrange(1 << 64) if rng.random() < 0.2 else \
            (rng.randrange(1 << 40) & ~511) | rng.choice([0, 1 << 63, 1, 0x1FF, 1 << 62])
        vals = [e0 + j * step for j in range(rng.randint(0, n))]
        vals = [v for v in vals if v <= top]
        run = len(vals)
        vals += [rng.choice([0, (e0 + 7) & top, (e0 + (run + 1) * step) & top,
                             (e0 + run * step + (1 << rng.randint(0, 63))) & top, (e0 + (n - 1) * step) & top])
                 for _ in range(n - run)]
        a = array("Q", vals)
        start = rng.randint(0, 3) if n > 3 else 0
        x = a[start] if start < n else e0
        count = rng.choice([None, rng.randint(0, n)])
        assert same_run(a, x, step, start, count) == naive(a, start, count, x, step), (it, e0, step)


@pytest.mark.parametrize("opts, size", [("", "1G"), ("cluster_size=4k", "64M"),
                                        ("cluster_size=4k,refcount_bits=8", "32M"),
                                        ("cluster_size=4k,refcount_bits=64", "32M"),
                                        ("cluster_size=4k,refcount_bits=4", "16M")])
def test_snapshot_refcount_runs_like_qemu(tmp_path, qemu_img, qemu_io, opts, size):
    """Internal snapshots of a fully allocated image: create (every run's refcounts +1, the
    COPIED flags cleared), overwrite some clusters (copy on write), create again, delete both
    (runs back to 1, clusters only the snapshots held freed): after every step both tools'
    images check alike, and in the end they are the same bytes."""
    from cli_support import run_qemu, run_qimg

    a, b = tmp_path / "qimg", tmp_path / "qemu"
    a.mkdir()
    b.mkdir()
    _prealloc(qemu_img, a / "p.qcow2", size, opts)
    sparse_copy(a / "p.qcow2", b / "p.qcow2")
    steps = [("snapshot", "-c", "s1"), ("io", "write -P 5 0 300k"), ("io", "write -P 6 5M 64k"),
             ("snapshot", "-c", "s2"), ("io", "write -P 7 128k 64k"), ("snapshot", "-d", "s1"),
             ("snapshot", "-d", "s2")]
    for step in steps:
        for folder, run in ((a, run_qimg), (b, run_qemu)):
            if step[0] == "io":
                r = qemu_io("-c", step[1], str(folder / "p.qcow2"))
            else:
                r = run(*step, "p.qcow2", cwd=folder)
            assert r.returncode == 0, (step, r.stderr)
        assert qemu_img("check", str(a / "p.qcow2")).stdout == qemu_img("check", str(b / "p.qcow2")).stdout
    assert _same_bytes(a / "p.qcow2", b / "p.qcow2")


def _same_bytes(p, q) -> bool:
    """Two sparse files hold the same bytes (only their data extents are read)."""
    import os

    with open(p, "rb") as f, open(q, "rb") as g:
        size = os.fstat(f.fileno()).st_size
        if size != os.fstat(g.fileno()).st_size:
            return False
        for fd in (f.fileno(), g.fileno()):
            pos = 0
            while pos < size:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, pos, os.SEEK_HOLE)
                for at in range(pos, end, 1 << 20):
                    n = min(1 << 20, end - at)
                    if os.pread(f.fileno(), n, at) != os.pread(g.fileno(), n, at):
                        return False
                pos = end
    return True


@pytest.mark.parametrize("order", [0, 2, 3, 4, 5, 6])
def test_find_free_matches_naive_model(order) -> None:
    """The allocator's search for n free clusters (C searches in byte-wide refcount blocks)
    against the cluster-by-cluster definition, over random blocks: used clusters with values
    whose bytes hold zeros, free runs across block ends, missing blocks."""
    import random
    from array import array
    from types import SimpleNamespace

    from qimg_qcow2.refcount import Refcounts

    rng = random.Random(order)
    cluster_bits = 9
    ent = (1 << cluster_bits) * 8 >> order
    vmax = (1 << (1 << order)) - 1

    class Blocks:
        def __init__(self, blocks):
            self.blocks = blocks

        def get(self, off):
            return self.blocks[off]

    def refcounts(table: array) -> Refcounts:
        drv = SimpleNamespace(file=None, cluster_bits=cluster_bits, header=SimpleNamespace(refcount_order=order))
        return Refcounts(drv, table, 8)

    for _ in range(60):
        nblocks = rng.randint(1, 6)
        values = []
        table = array("Q")
        blocks = {}
        for b in range(nblocks):
            if rng.random() < 0.15:
                table.append(0)
                values += [0] * ent
                continue
            dens = rng.random()
            vals = [0 if rng.random() > dens else rng.choice([1, vmax, 256 % (vmax + 1) or 1, rng.randint(1, vmax)])
                    for _ in range(ent)]
            off = (b + 1) << 20
            table.append(off)
            s = refcounts(array("Q"))
            blk = bytearray(1 << cluster_bits)
            for i, v in enumerate(vals):
                s.set_entry(blk, i, v)
            blocks[off] = blk
            values += vals
        s = refcounts(table)
        assert s.block_entries == ent
        s.cache = Blocks(blocks)
        for _ in range(20):
            n = rng.choice([1, 2, 3, rng.randint(1, 3 * ent)])
            start = rng.randrange(len(values))
            s.free_cluster_index = start
            # naive: the first run of n clusters with refcount 0 from start (past the table: free)
            ci, run, run_start = start, 0, start
            while run < n:
                if (values[ci] if ci < len(values) else 0) == 0:
                    if run == 0:
                        run_start = ci
                    run += 1
                else:
                    run = 0
                ci += 1
            assert s.find_free(n) == run_start, (order, n, start)


@pytest.mark.parametrize("what", ["alloc_and_zero", "alloc_on_unallocated", "other_bitmap", "refcount_2"])
def test_extended_l2_damage_inside_a_run(tmp_path, qemu_img, what):
    """Extended L2 tables of preallocated clusters: one entry or bitmap inside the run changed."""
    p = tmp_path / "x.qcow2"
    d = _prealloc(qemu_img, p, "1G", "extended_l2=on")
    i = 1000  # 16-byte entries: (entry, bitmap)
    addr = (d.l1e(0) & L2_MASK) + 16 * i
    e, bm = d.q(addr), d.q(addr + 8)
    if what == "alloc_and_zero":
        d.setq(addr + 8, bm | 0x1 | (1 << 32))
    elif what == "alloc_on_unallocated":
        d.setq(addr, 0)
        d.setq(addr + 8, 0x3)
    elif what == "other_bitmap":
        d.setq(addr + 8, 0xFFFF)
    else:
        d.wr(_refcount_addr(d, (e & L2_MASK) >> d.cluster_bits), (2).to_bytes(2, "big"))
    assert_same_check(qemu_img, p, tmp_path)
    compare(tmp_path, "check", p.name)
