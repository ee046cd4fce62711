"""Broken qcow2 snapshot tables against qemu-img: check, check -r all, amend and snapshot on
tables with short or oversized extra data, too many snapshots or a table past QEMU's 64 MiB,
and snapshots whose L1 table or L2 entries are bad (the cases of iotests 261 and 080).

Each case is made twice from the same bytes; qemu-img and qimg run the same command on one copy
each; messages, exit codes and the resulting files must be the same.
"""
from __future__ import annotations

import shutil
import struct

import pytest
from cli_support import compare_in_copies, run_qemu, run_qemu72, run_qemu_io

CLUSTER = 65536
MIB = 1 << 20


def _entry(l1_offset: int = 0, l1_size: int = 0, sid: bytes = b"", name: bytes = b"", extra: bytes = b"",
           extra_size: int | None = None) -> bytes:
    """One snapshot table entry (padded to 8 bytes as tables lay them out)."""
    size = len(extra) if extra_size is None else extra_size
    e = struct.pack(">QIHHIIQII", l1_offset, l1_size, len(sid), len(name), 0, 0, 0, 0, size) + extra + sid + name
    return e + bytes(-len(e) % 8)


def _hook_table(path, offset: int, entries: list[bytes], count: int | None = None) -> None:
    """Write a table at ``offset`` and point the header at it (``count`` entries)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"".join(entries))
        f.seek(60)
        f.write(struct.pack(">IQ", len(entries) if count is None else count, offset))


def _allocate(path, start: int, end: int) -> None:
    """Refcount 1 for the clusters in [start, end) (refblock 0, 16-bit refcounts)."""
    with open(path, "r+b") as f:
        f.seek(48)
        reftable = struct.unpack(">Q", f.read(8))[0]
        f.seek(reftable)
        refblock = struct.unpack(">Q", f.read(8))[0]
        for c in range(start // CLUSTER, -(-end // CLUSTER)):
            f.seek(refblock + 2 * c)
            f.write(b"\0\1")


def _known(disk_size: int, icount: int = 0) -> bytes:
    return struct.pack(">QQQ", 0, disk_size, icount)


def _with_snapshots(folder, compat: str) -> None:
    """An image with three snapshots taken by qemu-img; its table rewritten as iotests 261 does:
    no extra data, extra data unknown to QEMU, only the 64-bit VM state size."""
    run_qemu("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", "t.qcow2", "64M", cwd=folder)
    run_qemu_io("-c", "write -P 1 0 64k", "t.qcow2", cwd=folder)
    for name in ("sn0", "sn1", "sn2"):
        run_qemu("snapshot", "-c", name, "t.qcow2", cwd=folder)
    p = folder / "t.qcow2"
    data = p.read_bytes()
    nb, table = struct.unpack(">IQ", data[60:72])
    pos, l1s = table, []
    for _ in range(nb):
        pos = (pos + 7) & ~7
        l1o, l1s_, ids, names = struct.unpack(">QIHH", data[pos : pos + 16])
        extra = struct.unpack(">I", data[pos + 36 : pos + 40])[0]
        l1s.append((l1o, l1s_))
        pos += 40 + extra + ids + names
    entries = [_entry(*l1s[0], b"1", b"sn0"),
               _entry(*l1s[1], b"2", b"sn1", _known(64 * MIB) + b"very important data".ljust(26, b"\0")),
               _entry(*l1s[2], b"3", b"sn2", struct.pack(">Q", 0))]
    _hook_table(p, table, entries)


def _once(build):
    """A set-up for compare_in_copies that builds the image once and copies it (snapshots
    taken twice would differ in their dates)."""
    made = []

    def setup(folder):
        if made:
            shutil.copy(made[0] / "t.qcow2", folder / "t.qcow2")
        else:
            build(folder)
            made.append(folder)

    return setup


def _same_files(tmp_path, name: str = "t.qcow2") -> None:
    assert (tmp_path / "qimg" / name).read_bytes() == (tmp_path / "qemu" / name).read_bytes()


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("args", [["check"], ["check", "-r", "all"], ["check", "-r", "leaks"],
                                  ["check", "--output=json"], ["snapshot", "-l"]])
def test_short_extra_data(tmp_path, compat, args):
    """Entries without the disk size are valid in v2 and incomplete in v3 (repaired by
    rewriting the table with 24 bytes of extra data each)."""
    compare_in_copies(_once(lambda d: _with_snapshots(d, compat)), tmp_path, *args, "t.qcow2")
    _same_files(tmp_path)


def test_upgrade_completes_the_entries(tmp_path):
    """``amend -o compat=1.1`` of a v2 image with short entries writes the table again."""
    compare_in_copies(_once(lambda d: _with_snapshots(d, "0.10")), tmp_path, "amend", "-o", "compat=1.1", "t.qcow2")
    _same_files(tmp_path)
    r = run_qemu("check", "t.qcow2", cwd=tmp_path / "qimg")
    assert r.returncode == 0, r.stdout + r.stderr


def _too_much_extra(folder) -> None:
    """The fourth entry claims 64 KiB of extra data (running into the next cluster)."""
    _with_snapshots(folder, "1.1")
    run_qemu("check", "-q", "-r", "all", "t.qcow2", cwd=folder)
    run_qemu("snapshot", "-c", "sn3", "t.qcow2", cwd=folder)
    p = folder / "t.qcow2"
    data = p.read_bytes()
    nb, pos = struct.unpack(">IQ", data[60:72])
    for _ in range(nb - 1):
        pos = (pos + 7) & ~7
        ids, names = struct.unpack(">HH", data[pos + 12 : pos + 16])
        pos += 40 + struct.unpack(">I", data[pos + 36 : pos + 40])[0] + ids + names
    pos = (pos + 7) & ~7
    with open(p, "r+b") as f:
        f.seek(pos + 36)
        f.write(struct.pack(">I", 65536))


@pytest.mark.parametrize("args", [["info"], ["check"], ["check", "-r", "all"], ["check", "-r", "leaks"]])
def test_too_much_extra_data(tmp_path, args):
    compare_in_copies(_once(_too_much_extra), tmp_path, *args, "t.qcow2")
    _same_files(tmp_path)


def _too_many(folder) -> None:
    """A v2 image claiming 131072 all-zero entries (QEMU takes 65536); one of those dropped
    has an L1 and an L2 table (which leak when it is dropped)."""
    run_qemu("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "t.qcow2", "64M", cwd=folder)
    p = folder / "t.qcow2"
    with open(p, "r+b") as f:
        f.truncate(MIB + 40 * 131072)
        f.seek(MIB + 40 * 65536)
        f.write(struct.pack(">QI", MIB - 2 * CLUSTER, 1))
        f.seek(MIB - 2 * CLUSTER)
        f.write(struct.pack(">Q", (1 << 63) | (MIB - CLUSTER)))
        f.seek(60)
        f.write(struct.pack(">IQ", 131072, MIB))
    _allocate(p, MIB - 2 * CLUSTER, MIB + 40 * 131072)


@pytest.mark.parametrize("args", [["info"], ["check"], ["check", "-r", "all"], ["check", "-r", "leaks"]])
def test_too_many_snapshots(tmp_path, args):
    compare_in_copies(_too_many, tmp_path, *args, "t.qcow2")
    _same_files(tmp_path)


def test_too_many_snapshots_repaired(tmp_path):
    compare_in_copies(_too_many, tmp_path, "check", "-r", "all", "t.qcow2")
    for side in ("qimg", "qemu"):
        r = run_qemu72("info", "t.qcow2", cwd=tmp_path / side)  # 7.2's table layout, counted below
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n" + " " * 32) == 65536


def _too_big(folder) -> None:
    """Entries of 1 KiB extra data and 65535-byte id and name until the table passes 64 MiB;
    the last one (beyond the limit) has an L1 and an L2 table."""
    run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "64M", cwd=folder)
    p = folder / "t.qcow2"
    head = struct.pack(">QIHHIIQII", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0, 0, 1024)
    size = 40 + 1024 + 65535 + 65535 + 2
    offset, written, count = MIB, 0, 0
    with open(p, "r+b") as f:
        while written <= 64 * MIB:
            f.seek(offset)
            f.write(head)
            offset += size
            written += size
            count += 1
        f.truncate(offset)
        f.seek(offset - size)
        f.write(struct.pack(">QI", MIB - 2 * CLUSTER, 1))
        f.seek(MIB - 2 * CLUSTER)
        f.write(struct.pack(">Q", (1 << 63) | (MIB - CLUSTER)))
        f.seek(60)
        f.write(struct.pack(">IQ", count, MIB))
    _allocate(p, MIB - 2 * CLUSTER, offset)


@pytest.mark.parametrize("args", [["info"], ["check"], ["check", "-r", "all"]])
def test_table_too_big(tmp_path, args):
    compare_in_copies(_too_big, tmp_path, *args, "t.qcow2")
    _same_files(tmp_path)


# -- snapshots whose L1 table or L2 entries are bad (iotests 080) -----------------------------
def _snapshot_l1(folder, field: str) -> None:
    run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "64M", cwd=folder)
    run_qemu_io("-c", "write 0 512", "t.qcow2", cwd=folder)
    run_qemu("snapshot", "-c", "test", "t.qcow2", cwd=folder)
    p = folder / "t.qcow2"
    table = struct.unpack(">Q", p.read_bytes()[64:72])[0]
    with open(p, "r+b") as f:
        if field == "offset":
            f.seek(table)
            f.write(struct.pack(">Q", 0x400200))
        else:
            f.seek(table + 8)
            f.write(struct.pack(">I", 0x10000000))


@pytest.mark.parametrize("field", ["offset", "size"])
@pytest.mark.parametrize("args", [["amend", "-o", "compat=0.10"], ["snapshot", "-a", "test"],
                                  ["snapshot", "-d", "test"], ["check"], ["convert", "-l", "test", "-O", "raw"]])
def test_bad_snapshot_l1(tmp_path, field, args):
    out = ["t.raw"] if args[0] == "convert" else []
    compare_in_copies(_once(lambda d: _snapshot_l1(d, field)), tmp_path, *args, "t.qcow2", *out)
    _same_files(tmp_path)


def _huge_l2_entry(folder, entry: int) -> None:
    run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "64M", cwd=folder)
    run_qemu_io("-c", "write 0 512", "t.qcow2", cwd=folder)
    p = folder / "t.qcow2"
    data = p.read_bytes()
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1 : l1 + 8])[0] & 0x00FFFFFFFFFFFE00
    with open(p, "r+b") as f:
        f.seek(l2)
        f.write(struct.pack(">Q", entry))


@pytest.mark.parametrize("entry", [0xBFFFFFFFFFFF0000, 0x800000FFFFFF0000])
def test_snapshot_of_huge_l2_entry(tmp_path, entry):
    """Taking a snapshot counts a reference to a cluster far beyond the refcount blocks: QEMU
    makes the missing block and stops there with EAGAIN (or EFBIG past its limits)."""
    compare_in_copies(lambda d: _huge_l2_entry(d, entry), tmp_path, "snapshot", "-c", "test", "t.qcow2")
    _same_files(tmp_path)
