"""The vdi plugin against qemu-img: create, read, write, block status, info, check, damage."""
from __future__ import annotations

import json
import os
import struct

import pytest
import qimg
from oracle_helpers import info_json, qemu_map, qemu_raw, qimg_map, qimg_read_all
from qimg.errors import QimgError

MiB = 1 << 20

# writes crossing 1 MiB blocks, partial blocks, rewrites and zero data
WRITES = [
    ("0x5a", 1 * MiB, 64 * 1024),
    ("0x11", 3 * MiB - 4096, 2 * MiB + 8192),
    ("0x22", 3 * MiB, 512),
    ("0x00", 6 * MiB + 4096, 4096),
]


def vdi_norm(data: bytes) -> bytes:
    """Blank the two random UUIDs of the header."""
    d = bytearray(data)
    d[392:424] = bytes(32)
    return bytes(d)


def pattern_args(writes) -> list[str]:
    args = []
    for pat, off, n in writes:
        args += ["-c", f"write -P {pat} {off} {n}"]
    return args


@pytest.mark.parametrize("static", ["off", "on"])
@pytest.mark.parametrize("size", ["0", "1", "1000", "1M", "3M", "5000000", "300M"])
def test_create_same_as_qemu(qemu_img, tmp_path, static, size):
    mine, theirs = str(tmp_path / "mine.vdi"), str(tmp_path / "theirs.vdi")
    r = qemu_img("create", "-q", "-f", "vdi", "-o", f"static={static}", theirs, size)
    assert r.returncode == 0, r.stderr
    qimg.create(mine, "vdi", None, f"size={size},static={static}")
    assert os.path.getsize(mine) == os.path.getsize(theirs)
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        # header and block map; the data area of a static image is a hole (map compares it)
        assert vdi_norm(a.read(MiB)) == vdi_norm(b.read(MiB))
    mi, ti = info_json(qemu_img, mine, "vdi"), info_json(qemu_img, theirs, "vdi")
    mi.pop("filename"), ti.pop("filename")
    assert mi == ti
    assert qemu_map(qemu_img, mine, "vdi") == qemu_map(qemu_img, theirs, "vdi")
    with qimg.open(mine, "vdi") as img:
        assert img.size == ti["virtual-size"]
        assert img.driver.info_extra() == {"cluster-size": ti["cluster-size"]}
    assert qimg_map(mine, "vdi") == qemu_map(qemu_img, mine, "vdi")


def test_create_size_limit(qemu_img, tmp_path):
    path = str(tmp_path / "big.vdi")
    for size, ok in (("0x1fffff8000001", False), ("0x20000000000", True)):
        r = qemu_img("create", "-q", "-f", "vdi", path, str(int(size, 16)))
        assert (r.returncode == 0) == ok
        if ok:
            qimg.create(path, "vdi", int(size, 16))
            with qimg.open(path, "vdi") as img:
                assert img.size == int(size, 16)
        else:
            with pytest.raises(QimgError) as e:
                qimg.create(path, "vdi", int(size, 16))
            assert r.stderr.strip() == f"qemu-img: {path}: {e.value.message}"


def test_create_help_options():
    import subprocess

    from qimg.options import options_help
    from qimg_vdi.driver import VdiFormat

    r = subprocess.run(["qemu-img", "create", "-f", "vdi", "-o", "help"], capture_output=True, text=True)
    assert options_help("vdi", VdiFormat.create_opts) == r.stdout.rstrip("\n")


@pytest.mark.parametrize("static", ["off", "on"])
def test_read_qemu_written(qemu_img, qemu_io, tmp_path, static):
    path = str(tmp_path / "q.vdi")
    assert qemu_img("create", "-q", "-f", "vdi", "-o", f"static={static}", path, "8M").returncode == 0
    r = qemu_io("-f", "vdi", *pattern_args(WRITES), path)
    assert r.returncode == 0, r.stderr
    assert qimg_read_all(path, "vdi") == qemu_raw(qemu_img, path, "vdi", tmp_path)
    assert qimg_map(path, "vdi") == qemu_map(qemu_img, path, "vdi")


@pytest.mark.parametrize("static", ["off", "on"])
def test_qimg_writes_like_qemu(qemu_img, qemu_io, tmp_path, static):
    """The same writes through qimg and qemu-io give the same file (apart from the UUIDs)."""
    mine, theirs = str(tmp_path / "mine.vdi"), str(tmp_path / "theirs.vdi")
    ref = tmp_path / "ref.raw"
    assert qemu_img("create", "-q", "-f", "vdi", "-o", f"static={static}", theirs, "8M").returncode == 0
    qimg.create(mine, "vdi", 8 * MiB, f"static={static}")
    with qimg.open(mine, "vdi", writable=True) as img:
        expect = bytearray(img.size)
        for pat, off, n in WRITES:
            img.pwrite(off, bytes([int(pat, 16)]) * n)
            expect[off : off + n] = bytes([int(pat, 16)]) * n
    assert qemu_io("-f", "vdi", *pattern_args(WRITES), theirs).returncode == 0
    ref.write_bytes(expect)
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        assert vdi_norm(a.read()) == vdi_norm(b.read())
    r = qemu_img("check", "-f", "vdi", mine)
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout + r.stderr
    r = qemu_img("compare", "-f", "vdi", "-F", "raw", mine, str(ref))
    assert r.returncode == 0 and "Images are identical" in r.stdout, r.stdout + r.stderr
    assert qimg_read_all(mine, "vdi") == bytes(expect)
    assert qimg_map(mine, "vdi") == qemu_map(qemu_img, mine, "vdi")
    with qimg.open(mine, "vdi") as img:
        res = img.driver.check(set())
        assert (res.corruptions, res.messages) == (0, [])


def test_write_zeroes(qemu_img, tmp_path):
    path = str(tmp_path / "z.vdi")
    qimg.create(path, "vdi", 4 * MiB)
    with qimg.open(path, "vdi", writable=True) as img:
        img.pwrite(0, b"\x77" * (2 * MiB))
        img.write_zeroes(MiB // 2, MiB)
        img.write_zeroes(3 * MiB, MiB)  # unallocated: stays unallocated
    expect = b"\x77" * (MiB // 2) + bytes(MiB) + b"\x77" * (MiB // 2) + bytes(2 * MiB)
    assert qemu_raw(qemu_img, path, "vdi", tmp_path) == expect
    assert qimg_read_all(path, "vdi") == expect
    assert qimg_map(path, "vdi") == qemu_map(qemu_img, path, "vdi")


def test_probe(tmp_path):
    path = str(tmp_path / "d.vdi")
    qimg.create(path, "vdi", MiB)
    with open(path, "r+b") as f:
        f.write(b"any banner text")  # probing looks only at the signature
    with qimg.open(path) as img:
        assert img.format == "vdi"


def patch(path: str, patches: list[tuple[int, bytes | int]]) -> None:
    with open(path, "r+b") as f:
        for off, data in patches:
            f.seek(off)
            f.write(struct.pack("<I", data) if isinstance(data, int) else data)


# offsets: 64 signature, 68 version, 340 offset_bmap, 344 offset_data, 360 sector size,
# 368 disk size, 376 block size, 384 blocks in image, 388 blocks allocated, 424/440 UUIDs
DAMAGE = {
    "signature": [(64, 0xBEDA1070)],
    "version": [(68, 0x00010000)],
    "version-2.1": [(68, 0x00020001)],
    "bmap-unaligned": [(340, 0x201)],
    "data-unaligned": [(344, 0x401)],
    "sector-size": [(360, 4096)],
    "block-size": [(376, 0x200000)],
    "disk-too-big": [(368, struct.pack("<Q", 5 * MiB))],
    "disk-odd": [(368, struct.pack("<Q", 4 * MiB - 100))],
    "disk-max": [(368, struct.pack("<Q", 0x20000000 << 20)), (64, 0x1234)],
    "too-many-blocks": [(384, 0x20000000)],
    "link-uuid": [(424, b"x" * 16)],
    "parent-uuid": [(440, b"x" * 16)],
    "header-size-and-type": [(72, 0x10), (76, 3)],
    "discarded-entry": [(512 + 4, 0xFFFFFFFE), (388, 0)],
    "banner": [(0, b"hello")],
    "entry-past-eof": [(512 + 8, 3), (388, 2)],
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_images_like_qemu(qemu_img, qemu_io, tmp_path, case):
    path = str(tmp_path / "bad.vdi")
    qimg.create(path, "vdi", 4 * MiB)
    with qimg.open(path, "vdi", writable=True) as img:
        img.pwrite(MiB, b"\x5a" * 65536)
    patch(path, DAMAGE[case])
    r = qemu_img("info", "--output=json", "-f", "vdi", path)
    try:
        with qimg.open(path, "vdi") as img:
            data = img.pread(0, img.size)
    except QimgError as e:
        assert r.returncode != 0
        assert r.stderr.strip() == f"qemu-img: {e.message}"
        assert "\n" not in e.message
    else:
        assert r.returncode == 0, r.stderr
        assert img.size == json.loads(r.stdout)["virtual-size"]
        assert data == qemu_raw(qemu_img, path, "vdi", tmp_path)
        assert qimg_map(path, "vdi") == qemu_map(qemu_img, path, "vdi")


def test_block_map_past_eof_reads_zeroes(qemu_img, tmp_path):
    """A block map past the end of the file reads as zeroes (every block at data index 0), as
    qemu-img reads it."""
    path = str(tmp_path / "bad.vdi")
    qimg.create(path, "vdi", 4 * MiB)
    patch(path, [(340, 1 << 30), (344, (1 << 30) + 512)])
    assert qimg_map(path, "vdi") == qemu_map(qemu_img, path, "vdi")
    assert qimg_read_all(path, "vdi") == qemu_raw(qemu_img, path, "vdi", tmp_path)


def _limited(limit: int):
    """preexec_fn: the child may map at most ``limit`` bytes of address space."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("output", ["human", "json"])
def test_largest_image_info_reads_the_header_alone(qimg, qemu_img, tmp_path, output):
    """iotest 084's "maximum size": a 1 KiB file whose header claims 512 TiB - 128 MiB
    (536870784 blocks, a 2 GiB block map) is as large as qemu-img opens; ``info`` answers from
    the header as qemu-img's does, within 1 GiB of address space (the map is read at its first
    use). Commands that walk the map refuse it in one line rather than hold 2 GiB."""
    path = str(tmp_path / "t.vdi")
    qemu_img("create", "-q", "-f", "vdi", path, "64M")
    patch(path, [(368, struct.pack("<Q", 0x1FFFFF8000000)), (384, 0x1FFFFF80)])
    t = qemu_img("info", f"--output={output}", "-f", "vdi", path)
    assert t.returncode == 0, t.stderr
    r = qimg("info", f"--output={output}", "-f", "vdi", path, preexec_fn=_limited(1 << 30))
    assert r.returncode == 0, r.stderr
    if output == "json":
        mine, theirs = json.loads(r.stdout), json.loads(t.stdout)
        for d in (mine, theirs):
            d.pop("actual-size", None)
            for c in d.get("children", []):
                c["info"].pop("actual-size", None)
        assert mine == theirs
    else:
        strip = lambda s: [x for x in s.splitlines() if "disk size" not in x]  # noqa: E731
        assert strip(r.stdout) == strip(t.stdout)
    for cmd in (["map"], ["check"], ["convert", "-O", "qcow2"]):
        extra = [str(tmp_path / "out.qcow2")] if cmd[0] == "convert" else []
        r = qimg(*cmd, "-f", "vdi", path, *extra, preexec_fn=_limited(1 << 30))
        assert r.returncode == 1, (cmd, r.stderr)
        assert r.stderr.count("\n") == 1 and "too many blocks 536870784" in r.stderr, (cmd, r.stderr)


# damaged block maps for check: (block map entries, blocks_allocated)
CHECK_CASES = {
    "clean": ([0xFFFFFFFF, 0, 0xFFFFFFFF, 1], 2),
    "duplicate": ([0xFFFFFFFF, 0, 0, 0xFFFFFFFF], 1),
    "duplicate-last": ([0xFFFFFFFF, 0, 0xFFFFFFFF, 0], 2),
    "too-large": ([0xFFFFFFFF, 0, 0xFFFFFFFF, 9], 2),
    "count-wrong": ([0xFFFFFFFF, 0, 0xFFFFFFFF, 1], 5),
    "discarded": ([0xFFFFFFFE, 0, 0xFFFFFFFF, 1], 2),
    "mixed": ([2, 0, 0, 1000], 3),
}


@pytest.mark.parametrize("case", sorted(CHECK_CASES))
def test_check_like_qemu(qemu_img, tmp_path, case):
    path = str(tmp_path / "c.vdi")
    qimg.create(path, "vdi", 4 * MiB)
    with qimg.open(path, "vdi", writable=True) as img:
        img.pwrite(MiB, b"\x5a" * 4096)
        img.pwrite(3 * MiB, b"\x33" * 4096)
    entries, allocated = CHECK_CASES[case]
    patch(path, [(388, allocated), (512, struct.pack("<4I", *entries))])
    r = qemu_img("check", "--output=json", "-f", "vdi", path)
    theirs = json.loads(r.stdout)
    with qimg.open(path, "vdi") as img:
        res = img.driver.check(set())
    assert res.corruptions == theirs.get("corruptions", 0)
    assert res.leaks == theirs.get("leaks", 0)
    assert res.check_errors == theirs["check-errors"]
    assert "\n".join(res.messages) == r.stderr.strip()
    assert (res.image_end_offset, res.total_clusters) == (None, None)


def test_check_repair_not_supported(qemu_img, tmp_path):
    path = str(tmp_path / "c.vdi")
    qimg.create(path, "vdi", MiB)
    r = qemu_img("check", "-r", "all", path)
    with qimg.open(path, "vdi", writable=True) as img:
        with pytest.raises(QimgError) as e:
            img.driver.check({"leaks", "errors"})
    assert (f"qemu-img: {e.value.message}", e.value.exit_code) == (r.stderr.strip(), r.returncode)


def test_qimg_cli_info_and_check(qimg, qemu_img, tmp_path):
    """``qimg info``/``check`` on a qimg-made image equal qemu-img's on a qemu-img-made one."""
    import qimg as lib

    mine, theirs = str(tmp_path / "a.vdi"), str(tmp_path / "b.vdi")
    lib.create(mine, "vdi", 5 * MiB)
    qemu_img("create", "-q", "-f", "vdi", theirs, "5M")
    for cmd in (["info", "--output=json"], ["check", "--output=json"], ["check"]):
        r = qimg(*cmd, mine)
        if r.returncode != 0 and f"Command not found: {cmd[0]}" in r.stderr:
            continue  # that command is not in the CLI yet
        t = qemu_img(*cmd, theirs)
        assert r.returncode == t.returncode, r.stderr
        assert r.stdout.replace(mine, theirs).replace('"actual-size": 4096', "") == \
            t.stdout.replace('"actual-size": 4096', "")


@pytest.mark.parametrize("args", [["3M"], ["-o", "static=on", "3M"], ["-o", "static=off", "0"]])
def test_cli_create(qimg, qemu_img, tmp_path, args):
    mine, theirs = str(tmp_path / "m.vdi"), str(tmp_path / "t.vdi")
    r = qimg("create", "-f", "vdi", mine, *args)
    if "Command not found: create" in r.stderr:
        pytest.skip("qimg create is not available yet")
    t = qemu_img("create", "-f", "vdi", theirs, *args)
    assert (r.returncode, r.stdout.replace(mine, theirs), r.stderr) == (t.returncode, t.stdout, t.stderr)
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        assert vdi_norm(a.read(MiB)) == vdi_norm(b.read(MiB))


def test_virtualbox_layout_both_directions(qemu_img, qemu_io, tmp_path):
    """VirtualBox's layout: its banner, the data area at 1 MiB, LCHS geometry filled in."""
    mine, theirs = str(tmp_path / "mine.vdi"), str(tmp_path / "theirs.vdi")
    qimg.create(mine, "vdi", 8 * MiB)
    patch(mine, [(0, b"<<< Oracle VM VirtualBox Disk Image >>>\n"), (344, MiB),
                 (456, struct.pack("<4I", 16, 16, 63, 512))])
    with open(mine, "rb") as f:
        (tmp_path / "theirs.vdi").write_bytes(f.read())
    with qimg.open(mine, "vdi", writable=True) as img:
        for pat, off, n in WRITES:
            img.pwrite(off, bytes([int(pat, 16)]) * n)
    assert qemu_io("-f", "vdi", *pattern_args(WRITES), theirs).returncode == 0
    with open(mine, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    assert qimg_read_all(theirs, "vdi") == qemu_raw(qemu_img, theirs, "vdi", tmp_path)
    assert qimg_map(theirs, "vdi") == qemu_map(qemu_img, theirs, "vdi")
