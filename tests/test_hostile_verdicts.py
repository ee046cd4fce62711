"""Hostile images qemu-img refuses or reads in its own way: qimg gives its verdict, word for word.

Each case builds its image in the test (qemu-img makes a valid one, the test patches it) and
runs the same commands with qemu-img 7.2 and 10.0 and with qimg in the matching profile: exit
code, stdout and stderr must be equal (qimg's program name spelled as qemu-img's), and a
``convert`` output byte for byte. The cases are issue 10's (descriptor sizes trusted over the
header, extent lines, overHead, createType, stream-optimized flags, qcow L1 entries, qed file
size, vhdx log offset) and issue 17's (VMFS extent with an offset, a split-sparse extent
opened directly, "L1 size too big", "L1 entry size is invalid").
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from cli_support import run_qimg
from conftest import _need, as_qemu, need_qemu10

MiB = 1 << 20


def qemu(tmp_path, *args: str) -> None:
    """Build with qemu-img/qemu-io (7.2) in ``tmp_path``."""
    tool = args[0]
    p = subprocess.run([_need(tool), *args[1:]], capture_output=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def patch(path, edits) -> None:
    with open(path, "r+b") as f:
        for off, fmt, value in edits:
            f.seek(off)
            f.write(value if isinstance(value, bytes) else struct.pack(fmt, value))


# -- builders: each returns (image name, format, commands) ----------------------------------------

def vmdk_desc_size_over_header(t):
    """A descriptor line claims 45.5 PiB over a 4 MiB sparse extent: the header wins."""
    qemu(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "d.vmdk", "4M")
    text = (t / "d.vmdk").read_text().replace("RW 8192 SPARSE", "RW 99999999999999 SPARSE")
    (t / "d.vmdk").write_text(text)
    return "d.vmdk", "vmdk", ["info", "map", "check"]


def vmdk_vmfs_with_offset(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "v.vmdk", "10M")
    text = (t / "v.vmdk").read_text().replace('createType="monolithicFlat"', 'createType="vmfs"')
    (t / "v.vmdk").write_text(text.replace('RW 20480 FLAT "v-flat.vmdk" 0', 'RW 20480 VMFS "v-flat.vmdk" 0'))
    return "v.vmdk", "vmdk", ["info"]


def vmdk_split_extent_direct(t):
    """An extent file of a split image has no descriptor of its own: no CID, EINVAL."""
    qemu(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "s.vmdk", "4M")
    return "s-s001.vmdk", "vmdk", ["info"]


def vmdk_stub(t):
    (t / "stub.vmdk").write_bytes(b"KDMV\x01\x00")
    return "stub.vmdk", "vmdk", ["info"]


def _sparse(t, name="m.vmdk", opts=()):
    qemu(t, "qemu-img", "create", "-q", "-f", "vmdk", *opts, name, "4M")
    qemu(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x41 0 64k", "-c", "write -P 0x42 1M 64k", name)
    return t / name


# sparse header fields: capacity 12, grain 20, gtes 44, gd 56, overhead 64, compress 77, flags 8
def vmdk_l1_size_too_big(t):
    patch(_sparse(t), [(12, "<Q", (1 << 25) * 65536 + 65536)])
    return "m.vmdk", "vmdk", ["info"]


def vmdk_overhead_max(t):
    patch(_sparse(t), [(64, "<Q", 2**64 - 1)])
    return "m.vmdk", "vmdk", ["info"]


def vmdk_overhead_2_40(t):
    patch(_sparse(t), [(64, "<Q", 1 << 40)])
    return "m.vmdk", "vmdk", ["info"]


def vmdk_granularity(t):
    patch(_sparse(t), [(20, "<Q", 0x400000)])
    return "m.vmdk", "vmdk", ["info"]


def vmdk_version_4(t):
    patch(_sparse(t), [(4, "<I", 4)])
    return "m.vmdk", "vmdk", ["info", "check"]


def _flat_desc(t, replace: tuple[str, str]):
    qemu(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "f.vmdk", "10M")
    (t / "f.vmdk").write_text((t / "f.vmdk").read_text().replace(*replace))
    return "f.vmdk", "vmdk", ["info"]


def vmdk_create_type_custom(t):
    return _flat_desc(t, ('createType="monolithicFlat"', 'createType="custom"'))


def vmdk_create_type_stream(t):
    return _flat_desc(t, ('createType="monolithicFlat"', 'createType="streamOptimized"'))


def vmdk_create_type_sparse(t):
    return _flat_desc(t, ('createType="monolithicFlat"', 'createType="monolithicSparse"'))


def vmdk_flat_without_offset(t):
    return _flat_desc(t, ('"f-flat.vmdk" 0', '"f-flat.vmdk"'))


def vmdk_flat_negative_offset(t):
    return _flat_desc(t, ('"f-flat.vmdk" 0', '"f-flat.vmdk" -5'))


def vmdk_sparse_with_offset(t):
    return _flat_desc(t, ('RW 20480 FLAT "f-flat.vmdk" 0', 'RW 20480 SPARSE "f-flat.vmdk" 0'))


def vmdk_unknown_type_with_offset(t):
    return _flat_desc(t, ('RW 20480 FLAT "f-flat.vmdk" 0', 'RW 20480 FOO "f-flat.vmdk" 3'))


def vmdk_skipped_lines(t):
    """Lines QEMU skips: ZERO extents, RDONLY and NOACCESS ones, sizes of 0 or less."""
    extra = ('RW 10 ZERO\nRDONLY 100 FLAT "f-flat.vmdk" 0\nNOACCESS 9 FLAT "f-flat.vmdk" 0\n'
             'RW -5 FLAT "f-flat.vmdk" 0\nRW 0 FLAT "f-flat.vmdk" 0\nRW 7 FOO "f-flat.vmdk"\n')
    name, fmt, _ = _flat_desc(t, ('RW 20480 FLAT', extra + 'RW 20480 FLAT'))
    return name, fmt, ["info", "map"]


def vmdk_flat_offset_saturated(t):
    """sscanf saturates an offset too large for 64 bits; QEMU shifts it into a negative one."""
    name, fmt, _ = _flat_desc(t, ('"f-flat.vmdk" 0', '"f-flat.vmdk" 99999999999999999999'))
    return name, fmt, ["info", "map", "convert"]


def _stream(t):
    _sparse(t, "m.vmdk")
    qemu(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "m.vmdk", "s.vmdk")
    return t / "s.vmdk"


def _flags(path, clear: int) -> None:
    flags = struct.unpack("<I", path.read_bytes()[8:12])[0]
    patch(path, [(8, "<I", flags & ~clear)])


def vmdk_stream_without_markers(t):
    _flags(_stream(t), 1 << 17)
    return "s.vmdk", "vmdk", ["map", "convert"]


def vmdk_stream_without_algorithm(t):
    patch(_stream(t), [(77, "<H", 0)])
    return "s.vmdk", "vmdk", ["map", "convert"]


def vmdk_stream_without_compressed_flag(t):
    _flags(_stream(t), 1 << 16)
    return "s.vmdk", "vmdk", ["map", "convert"]


def vmdk_plain_with_algorithm(t):
    patch(_sparse(t), [(77, "<H", 1)])
    return "m.vmdk", "vmdk", ["map", "convert"]


def vmdk_stream_grain_too_long(t):
    """A grain whose data inflates past the grain size fails the read (EINVAL)."""
    path = _stream(t)
    data = bytearray(path.read_bytes())
    grain = zlib.compress(bytes(128 * 1024))  # twice the 64 KiB grain
    at = data.find(zlib.compress(b"\x41" * 65536)[:8]) - 12
    assert at > 0
    data[at + 8:at + 12] = struct.pack("<I", len(grain))
    data[at + 12:at + 12 + len(grain)] = grain
    path.write_bytes(bytes(data))
    return "s.vmdk", "vmdk", ["map", "convert"]


def qcow_l1_entry_max(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow", "q.qcow", "4M")
    qemu(t, "qemu-io", "-f", "qcow", "-c", "write -P 0x41 0 64k", "q.qcow")
    l1 = struct.unpack(">Q", (t / "q.qcow").read_bytes()[40:48])[0]
    patch(t / "q.qcow", [(l1, ">Q", 2**64 - 1)])
    return "q.qcow", "qcow", ["map", "convert"]


def qcow_l1_entry_past_limit(t):
    """An L2 table the block layer cannot address (BDRV_MAX_LENGTH): EIO, not zeroes."""
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow", "q.qcow", "4M")
    l1 = struct.unpack(">Q", (t / "q.qcow").read_bytes()[40:48])[0]
    patch(t / "q.qcow", [(l1, ">Q", 2**63 - 2**30 - 4096 + 512)])
    return "q.qcow", "qcow", ["map", "convert"]


def qcow_data_unaligned(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow", "q.qcow", "4M")
    qemu(t, "qemu-io", "-f", "qcow", "-c", "write -P 0x41 0 64k", "q.qcow")
    data = (t / "q.qcow").read_bytes()
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0]
    entry = struct.unpack(">Q", data[l2:l2 + 8])[0]
    patch(t / "q.qcow", [(l2, ">Q", entry + 8)])
    return "q.qcow", "qcow", ["convert"]


def _qed(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "qed", "e.qed", "4M")
    qemu(t, "qemu-io", "-f", "qed", "-c", "write -P 0x41 0 64k", "-c", "write -P 0x42 1M 64k", "e.qed")
    return t / "e.qed"


def qed_short_by_a_sector(t):
    path = _qed(t)
    path.write_bytes(path.read_bytes()[:-512])
    return "e.qed", "qed", ["check", "map", "convert"]


def qed_bytes_appended(t):
    path = _qed(t)
    path.write_bytes(path.read_bytes() + b"\x5a" * 1000)
    return "e.qed", "qed", ["check", "map", "convert"]


def _vhdx_header(t, **fields):
    """A vhdx whose two headers carry ``fields`` (offsets in the header), checksums redone."""
    from qimg_vhdx.structs import crc_with_zero_field

    qemu(t, "qemu-img", "create", "-q", "-f", "vhdx", "x.vhdx", "8M")
    path = t / "x.vhdx"
    data = bytearray(path.read_bytes())
    at = {"log_version": (64, "<H"), "log_length": (68, "<I"), "log_offset": (72, "<Q")}
    for base in (64 * 1024, 128 * 1024):
        for k, v in fields.items():
            off, fmt = at[k]
            data[base + off:base + off + struct.calcsize(fmt)] = struct.pack(fmt, v)
        hdr = bytes(data[base:base + 4096])
        data[base + 4:base + 8] = struct.pack("<I", crc_with_zero_field(hdr))
    path.write_bytes(bytes(data))
    return "x.vhdx", "vhdx", ["info", "check"]


def vhdx_log_offset_unaligned(t):
    return _vhdx_header(t, log_offset=MiB + 4096)


def vhdx_log_offset_in_header_section(t):
    return _vhdx_header(t, log_offset=0)


def vhdx_log_version(t):
    return _vhdx_header(t, log_version=1)


def vhdx_log_over_bat(t):
    return _vhdx_header(t, log_offset=2 * MiB)


def _qcow2_backed(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "raw", "base.raw", "4M")
    qemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 0 1M", "base.raw")
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "b.qcow2", "4M")
    qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x44 1M 64k", "b.qcow2")
    return t / "b.qcow2"


def qcow2_backing_name_with_nul(t):
    """A backing file name one byte longer, ending in NUL: a C string to QEMU."""
    path = _qcow2_backed(t)
    size = struct.unpack(">I", path.read_bytes()[16:20])[0]
    patch(path, [(16, ">I", size + 1)])
    return "b.qcow2", "qcow2", ["info", "check", "map", "convert"]


def qcow2_backing_format_of_nuls(t):
    """A backing format extension of NULs: an empty C string, the backing file is probed."""
    path = _qcow2_backed(t)
    data = path.read_bytes()
    at = data.index(struct.pack(">II", 0xE2792ACA, 3)) + 8
    patch(path, [(at, "3s", b"\0\0\0")])
    return "b.qcow2", "qcow2", ["info", "check", "map", "convert"]


def qcow2_no_refcount_table(t):
    """refcount_table_clusters 0: refused on open, but check opens it (BDRV_O_CHECK)."""
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "r.qcow2", "4M")
    qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 64k", "r.qcow2")
    patch(t / "r.qcow2", [(56, ">I", 0)])
    return "r.qcow2", "qcow2", ["info", "check", "map"]


def qcow2_size_below_a_sector(t):
    """A size field of 2 bytes: QEMU counts whole sectors, an empty disk (check's summary too)."""
    qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "z.qcow2", "4M")
    qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 64k", "z.qcow2")
    patch(t / "z.qcow2", [(24, ">Q", 2)])
    return "z.qcow2", "qcow2", ["info", "check", "map", "convert"]


def vdi_disk_size_odd_and_huge(t):
    qemu(t, "qemu-img", "create", "-q", "-f", "vdi", "d.vdi", "4M")
    patch(t / "d.vdi", [(368, "<Q", 0x1FFFFF80 * MiB + 1)])
    return "d.vdi", "vdi", ["info"]


def vpc_too_small(t):
    (t / "p.vpc").write_bytes(b"x" * 100)
    return "p.vpc", "vpc", ["info"]


CASES = {f.__name__: f for f in [
    vmdk_desc_size_over_header, vmdk_vmfs_with_offset, vmdk_split_extent_direct, vmdk_stub,
    vmdk_l1_size_too_big, vmdk_overhead_max, vmdk_overhead_2_40, vmdk_granularity, vmdk_version_4,
    vmdk_create_type_custom, vmdk_create_type_stream, vmdk_create_type_sparse, vmdk_flat_without_offset,
    vmdk_flat_negative_offset, vmdk_sparse_with_offset, vmdk_unknown_type_with_offset, vmdk_skipped_lines,
    vmdk_flat_offset_saturated, vmdk_stream_without_markers, vmdk_stream_without_algorithm,
    vmdk_stream_without_compressed_flag, vmdk_plain_with_algorithm, vmdk_stream_grain_too_long,
    qcow_l1_entry_max, qcow_l1_entry_past_limit, qcow_data_unaligned, qed_short_by_a_sector,
    qed_bytes_appended, vhdx_log_offset_unaligned, vhdx_log_offset_in_header_section, vhdx_log_version,
    vhdx_log_over_bat, vdi_disk_size_odd_and_huge, vpc_too_small, qcow2_backing_name_with_nul,
    qcow2_backing_format_of_nuls, qcow2_no_refcount_table, qcow2_size_below_a_sector,
]}


def _args(cmd: str, name: str, fmt: str) -> list[str]:
    return {
        "info": ["info", "-f", fmt, name],
        "check": ["check", "-f", fmt, name],
        "map": ["map", "--output=json", "-f", fmt, name],
        "convert": ["convert", "-f", fmt, "-O", "raw", name, "out.raw"],
    }[cmd]


def _oracle(version: str):
    if version == "7.2":
        return _need("qemu-img"), dict(os.environ)
    exe, env = need_qemu10("qemu-img")
    return exe, env


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_verdict_as_qemu(tmp_path, monkeypatch, case, version):
    exe, env = _oracle(version)
    monkeypatch.setenv("QIMG_COMPAT", version)
    name, fmt, commands = CASES[case](tmp_path)
    q_dir, m_dir = tmp_path / "q", tmp_path / "m"
    for d in (q_dir, m_dir):  # each tool on its own copy
        d.mkdir()
        for f in os.listdir(tmp_path):
            if (tmp_path / f).is_file():
                shutil.copy(tmp_path / f, d / f)
    for cmd in commands:
        args = _args(cmd, name, fmt)
        p = subprocess.run([exe, *args], capture_output=True, cwd=q_dir, env=env, timeout=60)
        q = (p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        r = run_qimg(*args, cwd=m_dir)
        m = (r.returncode, as_qemu(r.stdout), as_qemu(r.stderr))
        if version != "7.2" and cmd in ("info", "map"):
            # the layout of 10.0's info and map output is the compat profile's business: here
            # the verdict (exit code, messages) is compared
            m, q = (m[0], m[2]), (q[0], q[2])
        assert m == q, f"qimg {' '.join(args)}"
        if cmd == "convert" and q[0] == 0:
            assert (m_dir / "out.raw").read_bytes() == (q_dir / "out.raw").read_bytes()


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_bytes_from_the_image_print_as_qemu(tmp_path, version):
    """A createType that is not UTF-8 (bytes 0x7f, 0xff): qemu-img prints the bytes as they are;
    so does qimg (no escapes, no error while printing)."""
    exe, env = _oracle(version)
    name, fmt, _ = _flat_desc(tmp_path, ('createType="monolithicFlat"', 'createType="mono\x7f\xff\xffat"'))
    raw = (tmp_path / name).read_bytes().replace(b"\xc3\xbf", b"\xff").replace(b"\xc2\x7f", b"\x7f")
    (tmp_path / name).write_bytes(raw)
    assert b"mono\x7f\xff\xffat" in raw
    q = subprocess.run([exe, "info", "-f", fmt, name], capture_output=True, cwd=tmp_path, env=env)
    m = subprocess.run([sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qemu-img'; main()",
                        "info", "-f", fmt, name], capture_output=True, cwd=tmp_path,
                       env=dict(os.environ, QIMG_COMPAT=version))
    assert (m.returncode, m.stdout, m.stderr) == (q.returncode, q.stdout, q.stderr)
    assert b"\xff\xffat'" in q.stderr
