"""The vpc (VHD) plugin against qemu-img: create, read, write, block status, info, damage."""
from __future__ import annotations

import json
import os
import struct

import pytest
import qimg
from oracle_helpers import info_json, qemu_map, qemu_raw, qimg_map, qimg_read_all
from qimg.errors import QimgError

MiB = 1 << 20

# writes crossing VHD's 2 MiB blocks, overwriting, and zero data
WRITES = [
    ("0x5a", 1 * MiB, 64 * 1024),
    ("0x11", 5 * MiB - 4096, 2 * MiB + 8192),
    ("0x22", 5 * MiB, 512),
    ("0x00", 9 * MiB, 4096),
]


def vhd_norm(data: bytes) -> bytes:
    """Blank the fields of every footer copy that differ run to run: timestamp, checksum, UUID."""
    d = bytearray(data)
    offs = {len(d) - 512}
    if d[:8] == b"conectix":
        offs.add(0)
    for o in offs:
        d[o + 24 : o + 28] = bytes(4)
        d[o + 64 : o + 84] = bytes(20)
    return bytes(d)


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("force", ["off", "on"])
@pytest.mark.parametrize("size", ["0", "1000", "3M", "10M", "1G", "127G", "130G", "2040G"])
def test_create_same_as_qemu(qemu_img, tmp_path, subformat, force, size):
    opts = f"subformat={subformat},force_size={force}"
    mine, theirs = str(tmp_path / "mine.vhd"), str(tmp_path / "theirs.vhd")
    r = qemu_img("create", "-q", "-f", "vpc", "-o", opts, theirs, size)
    assert r.returncode == 0, r.stderr
    qimg.create(mine, "vpc", None, f"size={size},{opts}")
    assert os.path.getsize(mine) == os.path.getsize(theirs)
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        if subformat == "dynamic":
            assert vhd_norm(a.read()) == vhd_norm(b.read())
        else:  # the data area is a hole: compare the footers only
            a.seek(-512, 2)
            b.seek(-512, 2)
            assert vhd_norm(a.read()) == vhd_norm(b.read())
            assert a.tell() == b.tell()
    if subformat == "fixed" and size == "0":
        return  # qemu-img cannot open a 0-byte fixed VHD (footer at 0 looks dynamic); see below
    mi, ti = info_json(qemu_img, mine, "vpc"), info_json(qemu_img, theirs, "vpc")
    for k in ("filename",):
        mi.pop(k), ti.pop(k)
    assert mi == ti
    with qimg.open(mine, "vpc") as img:
        assert img.size == ti["virtual-size"]
        assert img.driver.info_extra() == ({"cluster-size": ti["cluster-size"]} if "cluster-size" in ti else {})


def test_fixed_zero_size_fails_like_qemu(qemu_img, tmp_path):
    path = str(tmp_path / "z.vhd")
    qimg.create(path, "vpc", 0, "subformat=fixed")
    r = qemu_img("info", "-f", "vpc", path)
    assert r.returncode != 0
    with pytest.raises(QimgError) as e:
        qimg.open(path, "vpc")
    assert f"qemu-img: {e.value.message}" == r.stderr.strip()


@pytest.mark.parametrize("size,err", [("2041G", True), ("2190433321472", True), ("2190433320960", False)])
def test_create_size_limit(qemu_img, tmp_path, size, err):
    path = str(tmp_path / "big.vhd")
    r = qemu_img("create", "-q", "-f", "vpc", path, size)
    assert (r.returncode != 0) == err
    if err:
        with pytest.raises(QimgError) as e:
            qimg.create(path, "vpc", None, f"size={size}")
        assert r.stderr.strip() == f"qemu-img: {path}: {e.value.message}"
    else:
        qimg.create(path, "vpc", None, f"size={size}")


def test_bad_subformat(qemu_img, tmp_path):
    path = str(tmp_path / "x.vhd")
    r = qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=Fixed", path, "1M")
    with pytest.raises(QimgError) as e:
        qimg.create(path, "vpc", 1 << 20, "subformat=Fixed")
    assert r.stderr.strip() == f"qemu-img: {path}: {e.value.message}"


def test_create_help_options():
    import subprocess

    from qimg.options import options_help
    from qimg_vpc.driver import VpcFormat

    r = subprocess.run(["qemu-img", "create", "-f", "vpc", "-o", "help"], capture_output=True, text=True)
    assert options_help("vpc", VpcFormat.create_opts) == r.stdout.rstrip("\n")


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_read_qemu_written(qemu_img, qemu_io, tmp_path, subformat):
    path = str(tmp_path / "q.vhd")
    assert qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", path, "10M").returncode == 0
    args = []
    for pat, off, n in WRITES:
        args += ["-c", f"write -P {pat} {off} {n}"]
    r = qemu_io("-f", "vpc", *args, path)
    assert r.returncode == 0, r.stderr
    assert qimg_read_all(path, "vpc") == qemu_raw(qemu_img, path, "vpc", tmp_path)
    assert qimg_map(path, "vpc") == qemu_map(qemu_img, path, "vpc")


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qimg_writes_like_qemu(qemu_img, qemu_io, tmp_path, subformat):
    """The same writes through qimg and qemu-io give the same file (apart from footer stamps)."""
    mine, theirs = str(tmp_path / "mine.vhd"), str(tmp_path / "theirs.vhd")
    ref = tmp_path / "ref.raw"
    assert qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", theirs, "10M").returncode == 0
    qimg.create(mine, "vpc", 10 * MiB, f"subformat={subformat}")
    args = []
    with qimg.open(mine, "vpc", writable=True) as img:
        expect = bytearray(img.size)
        for pat, off, n in WRITES:
            img.pwrite(off, bytes([int(pat, 16)]) * n)
            expect[off : off + n] = bytes([int(pat, 16)]) * n
            args += ["-c", f"write -P {pat} {off} {n}"]
    assert qemu_io("-f", "vpc", *args, theirs).returncode == 0
    ref.write_bytes(expect)
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        assert vhd_norm(a.read()) == vhd_norm(b.read())
    r = qemu_img("compare", "-f", "vpc", "-F", "raw", mine, str(ref))
    assert r.returncode == 0 and "Images are identical" in r.stdout, r.stdout + r.stderr
    assert qimg_read_all(mine, "vpc") == bytes(expect)
    assert qimg_map(mine, "vpc") == qemu_map(qemu_img, mine, "vpc")


def test_write_zeroes_and_reopen(qemu_img, tmp_path):
    path = str(tmp_path / "z.vhd")
    qimg.create(path, "vpc", 6 * MiB)
    with qimg.open(path, "vpc", writable=True) as img:
        img.pwrite(0, b"\x77" * (3 * MiB))
        img.write_zeroes(MiB, MiB)
        img.write_zeroes(4 * MiB, MiB)  # unallocated: stays unallocated
        size = img.size
    expect = b"\x77" * MiB + bytes(MiB) + b"\x77" * MiB
    expect += bytes(size - len(expect))
    assert qemu_raw(qemu_img, path, "vpc", tmp_path) == expect
    assert qimg_read_all(path, "vpc") == expect
    assert qimg_map(path, "vpc") == qemu_map(qemu_img, path, "vpc")


def test_probe(tmp_path):
    dyn, fixed = str(tmp_path / "d.vhd"), str(tmp_path / "f.vhd")
    qimg.create(dyn, "vpc", MiB)
    qimg.create(fixed, "vpc", MiB, "subformat=fixed")
    with qimg.open(dyn) as img:
        assert img.format == "vpc"
    with qimg.open(fixed) as img:  # like qemu-img: a fixed VHD probes as raw
        assert img.format != "vpc"


def test_force_size_calc_option(tmp_path):
    path = str(tmp_path / "w.vhd")
    qimg.create(path, "vpc", 10 * MiB)
    with open(path, "r+b") as f:  # a Hyper-V style image: size from current_size
        patch_footer(f, {28: b"win ", 48: struct.pack(">Q", 10 * MiB + 512)})
    with qimg.open(path, "vpc") as img:
        assert img.size == 10 * MiB + 512
    with qimg.open(path, "vpc", options={"force_size_calc": "chs"}) as img:
        assert img.size == 10514432
    with pytest.raises(QimgError, match="Invalid size calculation mode: 'none'"):
        qimg.open(path, "vpc", options={"force_size_calc": "none"})


def patch_footer(f, patches: dict[int, bytes], *, dyn: dict[int, bytes] | None = None, raw: dict | None = None):
    """Patch footer fields (both copies) and dynamic header fields, fixing the footer checksum."""
    data = bytearray(f.read())
    for off, b in (raw or {}).items():
        data[off : off + len(b)] = b
    for off, b in (dyn or {}).items():
        data[512 + off : 512 + off + len(b)] = b
    foot = bytearray(data[-512:])
    for off, b in patches.items():
        foot[off : off + len(b)] = b
    foot[64:68] = bytes(4)
    foot[64:68] = struct.pack(">I", ~sum(foot) & 0xFFFFFFFF)
    data[-512:] = foot
    if data[:8] == b"conectix":
        data[:512] = foot
    f.seek(0)
    f.write(data)
    f.truncate()


DAMAGE = {
    "footer-checksum": dict(raw={64: b"\0\0\0\1", 2048 + 64: b"\0\0\0\1"}),
    "block-size-not-power": dict(dyn={32: struct.pack(">I", 3000)}),
    "block-size-small": dict(dyn={32: struct.pack(">I", 256)}),
    "table-too-small": dict(dyn={28: struct.pack(">I", 2)}),
    "table-huge": dict(dyn={28: struct.pack(">I", 0x7FFFFFFF)}),
    "header-magic": dict(dyn={0: b"cxspars_"}),
    "bat-past-eof": dict(raw={1536: struct.pack(">I", 100000)}),
    "table-offset-past-eof": dict(dyn={16: struct.pack(">Q", 1 << 40)}),
    "table-offset-huge": dict(dyn={16: struct.pack(">Q", (1 << 64) - 1024)}),
    "data-offset-past-eof": dict(footer={16: struct.pack(">Q", 1 << 40)}),
    "data-offset-huge": dict(footer={16: struct.pack(">Q", (1 << 64) - 1)}),
    "too-large": dict(footer={0x38: struct.pack(">HBB", 0xFFFF, 16, 255), 48: struct.pack(">Q", 3 << 40)}),
    "max-geometry-current-size": dict(footer={0x38: struct.pack(">HBB", 0xFFFF, 16, 255)}),
    "differencing-type": dict(footer={60: struct.pack(">I", 4)}),
    "no-cookie": dict(raw={0: b"conectiX"}),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_images_like_qemu(qemu_img, tmp_path, case):
    path = str(tmp_path / "bad.vhd")
    qimg.create(path, "vpc", 10 * MiB)
    d = DAMAGE[case]
    with open(path, "r+b") as f:
        if "raw" in d:
            data = bytearray(f.read())
            for off, b in d["raw"].items():
                data[off : off + len(b)] = b
            f.seek(0)
            f.write(data)
        else:
            patch_footer(f, d.get("footer", {}), dyn=d.get("dyn"))
    r = qemu_img("info", "--output=json", "-f", "vpc", path)
    try:
        with qimg.open(path, "vpc") as img:
            data = img.pread(0, img.size)
    except QimgError as e:
        assert r.returncode != 0
        assert r.stderr.strip() == f"qemu-img: {e.message}"
        assert "\n" not in e.message
    else:
        assert r.returncode == 0, r.stderr
        assert img.size == json.loads(r.stdout)["virtual-size"]
        assert data == qemu_raw(qemu_img, path, "vpc", tmp_path)


def test_qimg_info_cli(qimg, qemu_img, tmp_path):
    """``qimg info`` on a qimg-made image equals ``qemu-img info`` on a qemu-img-made one."""
    mine, theirs = str(tmp_path / "a.vhd"), str(tmp_path / "a2.vhd")
    import qimg as lib

    lib.create(mine, "vpc", 5 * MiB)
    qemu_img("create", "-q", "-f", "vpc", theirs, "5M")
    r = qimg("info", "--output=json", mine)
    if r.returncode != 0 and "Command not found: info" in r.stderr:
        pytest.skip("qimg info is not available yet")
    assert r.returncode == 0, r.stderr
    mi = json.loads(r.stdout)
    ti = info_json(qemu_img, theirs, "vpc")
    for d in [mi, ti] + [c["info"] for c in mi.get("children", []) + ti.get("children", [])]:
        d.pop("filename", None), d.pop("actual-size", None)
    assert mi == ti


@pytest.mark.parametrize("args", [["3M"], ["-o", "subformat=fixed,force_size=on", "3M"],
                                  ["-o", "force_size=on,subformat=fixed", "3M"], ["-o", "subformat=bad", "1M"]])
def test_cli_create(qimg, qemu_img, tmp_path, args):
    mine, theirs = str(tmp_path / "m.vhd"), str(tmp_path / "t.vhd")
    r = qimg("create", "-f", "vpc", mine, *args)
    if "Command not found: create" in r.stderr:
        pytest.skip("qimg create is not available yet")
    t = qemu_img("create", "-f", "vpc", theirs, *args)
    assert (r.returncode, r.stdout.replace(mine, theirs), r.stderr.replace(mine, theirs)) == \
        (t.returncode, t.stdout, t.stderr.replace("qemu-img:", "qimg:"))
    if t.returncode == 0:
        with open(mine, "rb") as a, open(theirs, "rb") as b:
            a.seek(-512, 2)
            b.seek(-512, 2)
            assert vhd_norm(a.read()) == vhd_norm(b.read())


@pytest.mark.parametrize("block_size", [512 * 1024, 8 * MiB])
def test_other_block_sizes_both_directions(qemu_img, qemu_io, tmp_path, block_size):
    """Images from other tools may use other block sizes (and bitmaps of several sectors)."""
    mine, theirs = str(tmp_path / "mine.vhd"), str(tmp_path / "theirs.vhd")
    qimg.create(mine, "vpc", 10 * MiB)
    entries = -(-10514432 // block_size)
    dyn = {32: struct.pack(">I", block_size), 28: struct.pack(">I", entries)}
    with open(mine, "r+b") as f:
        patch_footer(f, {}, dyn=dyn)
    with open(mine, "rb") as f:
        (tmp_path / "theirs.vhd").write_bytes(f.read())
    with qimg.open(mine, "vpc", writable=True) as img:
        for pat, off, n in WRITES:
            img.pwrite(off, bytes([int(pat, 16)]) * n)
    args = []
    for pat, off, n in WRITES:
        args += ["-c", f"write -P {pat} {off} {n}"]
    assert qemu_io("-f", "vpc", *args, theirs).returncode == 0
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    assert qimg_read_all(theirs, "vpc") == qemu_raw(qemu_img, theirs, "vpc", tmp_path)
    assert qimg_map(theirs, "vpc") == qemu_map(qemu_img, theirs, "vpc")
    with qimg.open(theirs, "vpc") as img:
        assert img.driver.info_extra() == {"cluster-size": block_size}


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
@pytest.mark.parametrize("creator", [b"vpc ", b"qemu", b"d2v ", b"vs  ", b"*img"])
def test_size_from_creator_as_qemu(qimg, qemu_img, tmp_path, subformat, creator):
    """Which creators' images take their size from CHS and which from current_size: 7.2 uses
    CHS but for a list of creators, 10.0 current_size but for Virtual PC's and QEMU's (issue
    17: FreeBSD mkimg's fixed VHDs, creator "*img", are 5 MiB in 10.0, 4.98 MiB in 7.2)."""
    path = tmp_path / "v.vhd"
    assert qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", str(path), "5M").returncode == 0
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for off in [size - 512] + ([0] if subformat == "dynamic" else []):
            f.seek(off)
            footer = bytearray(f.read(512))
            footer[28:32] = creator
            footer[48:56] = struct.pack(">Q", 5 << 20)  # current_size != the CHS size
            footer[64:68] = bytes(4)
            footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
            f.seek(off)
            f.write(footer)
    mine, theirs = qimg("info", "-f", "vpc", str(path)), qemu_img("info", "-f", "vpc", str(path))
    assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout)
