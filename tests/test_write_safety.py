"""No write lands on a format's own metadata (issue 10, item 1), for every format but qcow2.

Each case is a valid image made by qemu-img whose table entry is turned against the image: a
data cluster (grain, block) that *is* a table, a table placed over the header or over another
table, a table past the end of the file where the next allocation goes, a block over a block
map or a header. The guest range ``[at, at + length)`` is then written by every write command
(commit of an overlay, ``convert -n``, ``rebase`` where the format has backing files, and the
metadata commands resize, amend, snapshot, bitmap), on copies, by qemu-img 7.2, qemu-img 10.0
and qimg.

The verdict: qemu-img's write is *sound* when it succeeds, leaves the protected bytes alone and
the written range reads back (with qemu-img 7.2) as what was written. qimg must succeed exactly
where qemu-img's write is sound; where qemu-img fails or destroys the image, qimg refuses with
``Preventing invalid write on metadata (...)`` (or qemu-img's own error) and changes nothing
protected.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field

import pytest
from cli_support import run_qimg
from conftest import _need, need_qemu10

MiB = 1 << 20
PATTERN = 0x5A


@dataclass
class Case:
    name: str  # the image's file name in the case folder
    fmt: str
    at: int
    length: int
    protected: list[tuple[int, int]] = field(default_factory=list)
    commands: tuple[str, ...] = ("commit", "convert", "resize", "amend", "snapshot", "bitmap")


def run(tool: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([_need(tool), *args], capture_output=True, cwd=cwd)


def made(t, *args: str) -> None:
    p = run(*args, cwd=t)
    assert p.returncode == 0, p.stderr


def poke(path, edits) -> None:
    with open(path, "r+b") as f:
        for off, fmt, value in edits:
            f.seek(off)
            f.write(struct.pack(fmt, value))


def u(path, off: int, fmt: str) -> int:
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


# -- qcow (v1): header 48 bytes, L1 at offset 40, 4 KiB clusters, 512-entry L2 tables ----------

def _qcow(t, backing: bool = False) -> tuple:
    if backing:
        (t / "base.raw").write_bytes(bytes(4 * MiB))
        made(t, "qemu-img", "create", "-q", "-f", "qcow", "-b", "base.raw", "-F", "raw", "q.qcow", "4M")
    else:
        made(t, "qemu-img", "create", "-q", "-f", "qcow", "q.qcow", "4M")
    made(t, "qemu-io", "-f", "qcow", "-c", "write -P 0x41 0 64k", "q.qcow")
    p = t / "q.qcow"
    l1 = u(p, 40, ">Q")
    return p, l1, u(p, l1, ">Q")


def qcow_data_cluster_is_l2(t):
    p, l1, l2 = _qcow(t)
    poke(p, [(l2, ">Q", l2)])  # guest cluster 0 is stored in the L2 table itself
    return Case("q.qcow", "qcow", 0, 4096, [(0, 48), (l1, 16), (l2, 4096)])


def qcow_l2_over_header(t):
    """A second L2 table at byte 8: its entries are the header and the L1 table; entry 5 is
    L1[0], the first L2 table, taken as a data cluster."""
    p, l1, l2 = _qcow(t)
    poke(p, [(l1 + 8, ">Q", 8)])
    return Case("q.qcow", "qcow", 2 * MiB + 5 * 4096, 4096, [(0, 48), (l1, 16), (l2, 4096)])


def qcow_l1_past_eof(t):
    """The L1 table sits where the next cluster will be allocated (it reads as zeroes)."""
    p, l1, l2 = _qcow(t, backing=True)
    end = os.path.getsize(p)
    poke(p, [(40, ">Q", (end + 4095) // 4096 * 4096)])
    case = Case("q.qcow", "qcow", 2 * MiB, 4096, [(0, 48)])
    case.commands += ("rebase",)
    return case


# -- qed: header cluster, L1 at offset 40; L2 entries are cluster offsets -------------------------

def _qed(t):
    made(t, "qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", "e.qed", "4M")
    made(t, "qemu-io", "-f", "qed", "-c", "write -P 0x41 0 4k", "e.qed")
    p = t / "e.qed"
    l1 = u(p, 40, "<Q")
    return p, l1, u(p, l1, "<Q")


def qed_data_cluster_is_l1(t):
    p, l1, l2 = _qed(t)
    poke(p, [(l2, "<Q", l1)])
    return Case("e.qed", "qed", 0, 4096, [(0, 64), (l1, 8192), (l2, 8192)])


def qed_l2_is_l1(t):
    """L1[0] names the L1 table as an L2 table: L2 entry 0 (= L1[0]) is the L1 table again."""
    p, l1, l2 = _qed(t)
    poke(p, [(l1, "<Q", l1)])
    return Case("e.qed", "qed", 0, 4096, [(0, 64), (l1, 8192)])


# -- vdi: block map at offset_bmap (340), data at offset_data (344) ---------------------------------

def _vdi(t):
    made(t, "qemu-img", "create", "-q", "-f", "vdi", "d.vdi", "4M")
    made(t, "qemu-io", "-f", "vdi", "-c", "write -P 0x41 0 64k", "d.vdi")
    return t / "d.vdi"


def vdi_data_over_block_map(t):
    p = _vdi(t)
    bmap = u(p, 340, "<I")
    poke(p, [(344, "<I", bmap)])  # the data area starts at the block map: block 0 is the map
    return Case("d.vdi", "vdi", 0, 4096, [(0, 512), (bmap, 512)])


def vdi_data_over_header(t):
    p = _vdi(t)
    poke(p, [(344, "<I", 0)])
    return Case("d.vdi", "vdi", 0, 4096, [(0, 512), (u(p, 340, "<I"), 512)])


# -- vpc: footer copy, dynamic header at 512, BAT (big-endian sectors) --------------------------------

def _vpc(t):
    made(t, "qemu-img", "create", "-q", "-f", "vpc", "p.vpc", "4M")
    made(t, "qemu-io", "-f", "vpc", "-c", "write -P 0x41 0 64k", "p.vpc")
    p = t / "p.vpc"
    return p, u(p, 512 + 16, ">Q")


def vpc_block_on_bat(t):
    p, bat = _vpc(t)
    poke(p, [(bat, ">I", bat // 512)])  # block 0's bitmap is the BAT
    return Case("p.vpc", "vpc", 0, 4096, [(0, 512), (512, 1024), (bat, 512)])


def vpc_block_on_footer_copy(t):
    p, bat = _vpc(t)
    poke(p, [(bat, ">I", 0)])
    return Case("p.vpc", "vpc", 0, 4096, [(0, 512), (512, 1024), (bat, 512)])


# -- vhdx: BAT entries (state 6 = present, offset in MiB from bit 20) ----------------------------------

def _vhdx(t):
    made(t, "qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", "x.vhdx", "8M")
    made(t, "qemu-io", "-f", "vhdx", "-c", "write -P 0x41 0 64k", "x.vhdx")
    p = t / "x.vhdx"
    # the BAT region: the region table's entry whose GUID starts 66 77 c2 2d
    data = p.read_bytes()[192 * 1024:256 * 1024]
    for i in range(struct.unpack("<I", data[8:12])[0]):
        e = data[16 + 32 * i:48 + 32 * i]
        if e[:4] == bytes.fromhex("6677c22d"):
            return p, struct.unpack("<Q", e[16:24])[0]
    raise AssertionError("no BAT region")


def vhdx_block_on_header_section(t):
    """A payload block at offset 0: QEMU opens it (the header section is not checked) and
    writes the guest data over the file identifier and the headers."""
    p, bat = _vhdx(t)
    poke(p, [(bat, "<Q", 6)])
    return Case("x.vhdx", "vhdx", 0, 4096, [(0, 64 * 1024), (192 * 1024, 128 * 1024)])


# -- vmdk: sparse header (gd at 56), grain tables of 512 entries ----------------------------------------

def vmdk_grain_is_grain_directory(t):
    made(t, "qemu-img", "create", "-q", "-f", "vmdk", "m.vmdk", "4M")
    made(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x41 0 64k", "m.vmdk")
    p = t / "m.vmdk"
    gd = u(p, 56, "<Q") * 512
    gt = u(p, gd, "<I") * 512
    poke(p, [(gt, "<I", gd // 512)])
    return Case("m.vmdk", "vmdk", 0, 4096, [(0, 512), (gd, 512), (gt, 2048)])


def vmdk_flat_extent_is_descriptor(t):
    """A flat extent naming the descriptor file itself: guest data would overwrite the text."""
    made(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "f.vmdk", "1M")
    p = t / "f.vmdk"
    p.write_text(p.read_text().replace('RW 2048 FLAT "f-flat.vmdk" 0', 'RW 8 FLAT "f.vmdk" 0\nRW 2048 FLAT "f-flat.vmdk" 0'))
    return Case("f.vmdk", "vmdk", 0, 4096, [(0, 64)])


CASES = {f.__name__: f for f in [
    qcow_data_cluster_is_l2, qcow_l2_over_header, qcow_l1_past_eof, qed_data_cluster_is_l1, qed_l2_is_l1,
    vdi_data_over_block_map, vdi_data_over_header, vpc_block_on_bat, vpc_block_on_footer_copy,
    vhdx_block_on_header_section, vmdk_grain_is_grain_directory, vmdk_flat_extent_is_descriptor,
]}


def _prepare(folder, case: Case, command: str, size: int) -> list[str]:
    """Files a command needs beside the image (made with qemu-img 7.2), and the command."""
    name, fmt = case.name, case.fmt
    if command == "commit":
        # 4 KiB clusters: the write is whole clusters, nothing is copied from the hostile image
        made(folder, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", name,
             "-F", fmt, "ov.qcow2", str(size))
        made(folder, "qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} {case.at} {case.length}", "ov.qcow2")
        return ["commit", "-f", "qcow2", "ov.qcow2"]
    if command in ("convert", "rebase"):
        src = bytearray(size)
        src[case.at:case.at + case.length] = bytes([PATTERN]) * case.length
        (folder / "src.raw").write_bytes(bytes(src))
        if command == "convert":
            return ["convert", "-n", "--target-is-zero", "-f", "raw", "-O", fmt, "src.raw", name]
        return ["rebase", "-f", fmt, "-b", "src.raw", "-F", "raw", name]
    return {
        "resize": ["resize", "-f", fmt, name, "+1M"],
        "amend": ["amend", "-f", fmt, "-o", "size=8M", name],
        "snapshot": ["snapshot", "-c", "s1", name],
        "bitmap": ["bitmap", "--add", name, "b0"],
    }[command]


def _protected(path, case: Case) -> bytes:
    data = path.read_bytes()
    return b"".join(data[o:o + n] for o, n in case.protected)


def _reads_back(folder, case: Case) -> bool:
    """The written range reads back as written (qemu-img 7.2; False: it cannot even read it)."""
    p = run("qemu-img", "convert", "-f", case.fmt, "-O", "raw", case.name, "readback.raw", cwd=folder)
    if p.returncode:
        return False
    with open(folder / "readback.raw", "rb") as f:
        f.seek(case.at)
        return f.read(case.length) == bytes([PATTERN]) * case.length


def _versions():
    out = [("7.2", _need("qemu-img"), dict(os.environ))]
    exe, env = need_qemu10("qemu-img")
    out.append(("10.0", exe, env))
    return out


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_no_write_lands_on_metadata(tmp_path, monkeypatch, case_name):
    build = tmp_path / "build"
    build.mkdir()
    case = CASES[case_name](build)
    info = run("qemu-img", "info", "--output=json", "-f", case.fmt, case.name, cwd=build)
    import json

    size = json.loads(info.stdout)["virtual-size"] if info.returncode == 0 else 4 * MiB
    problems = []
    for command in case.commands:
        for version, exe, env in _versions():
            q_dir, m_dir = tmp_path / f"{command}-{version}-q", tmp_path / f"{command}-{version}-m"
            shutil.copytree(build, q_dir)
            shutil.copytree(build, m_dir)
            args = _prepare(q_dir, case, command, size)
            _prepare(m_dir, case, command, size)
            before = _protected(build / case.name, case)
            q = subprocess.run([exe, *args], capture_output=True, cwd=q_dir, env=env)
            write = command in ("commit", "convert", "rebase")
            sound = q.returncode == 0 and _protected(q_dir / case.name, case) == before and _reads_back(q_dir, case)
            monkeypatch.setenv("QIMG_COMPAT", version)
            m = run_qimg(*args, cwd=m_dir)
            where = f"qimg {' '.join(args)} [{version}]"
            if "Traceback" in m.stderr or "internal error" in m.stderr:
                problems.append(f"{where}: {m.stderr}")
                continue
            if not write:
                # metadata commands change the header as they should: the same verdict as
                # qemu-img's and, when both succeed, the same file
                if (m.returncode == 0) != (q.returncode == 0):
                    problems.append(f"{where}: exit {m.returncode} ({m.stderr.strip()}), qemu-img exit "
                                    f"{q.returncode} ({q.stderr.decode(errors='replace').strip()})")
                elif m.returncode == 0 and (m_dir / case.name).read_bytes() != (q_dir / case.name).read_bytes():
                    problems.append(f"{where}: the image differs from qemu-img's")
                continue
            if _protected(m_dir / case.name, case) != before:
                problems.append(f"{where}: metadata changed (exit {m.returncode}: {m.stderr.strip()})")
            if sound and m.returncode != 0:
                problems.append(f"{where}: refused a write qemu-img makes soundly: {m.stderr.strip()}")
            if not sound and m.returncode == 0:
                problems.append(f"{where}: succeeded where qemu-img fails or damages the image "
                                f"(qemu-img exit {q.returncode}: {q.stderr.decode(errors='replace').strip()})")
            if m.returncode == 0 and not _reads_back(m_dir, case):
                problems.append(f"{where}: the written data does not read back")
    assert not problems, "\n".join(problems)


def test_overlap_refusal_is_one_clear_line(tmp_path):
    """What the user sees when a write would land on metadata: one line, exit 1, nothing written."""
    case = qcow_data_cluster_is_l2(tmp_path)
    before = (tmp_path / case.name).read_bytes()
    args = _prepare(tmp_path, case, "commit", 4 * MiB)
    m = run_qimg(*args, cwd=tmp_path)
    assert m.returncode == 1
    assert m.stderr.strip().splitlines() == [
        "qimg: Error while committing image: Preventing invalid write on metadata (overlaps with L2 table)"
    ] or m.stderr.strip().endswith("Preventing invalid write on metadata (overlaps with L2 table)"), m.stderr
    assert (tmp_path / case.name).read_bytes() == before
