"""VHDX plugin against the qemu-img/qemu-io oracle: create, read, write, log replay, info."""
from __future__ import annotations

import json
import os
import shutil
import struct
import uuid

import crc32c
import format_checks
import pytest
import qimg
from qimg.errors import QimgError

MiB = 1 << 20


def _ok(run):
    assert run.returncode == 0, run.stderr
    return run


def parse_size(s: str) -> int:
    from qimg.units import parse_size as p

    return p(s)


def masked(path: str) -> bytes:
    """File bytes without what qemu-img randomises or versions: the creator string, the header
    GUIDs, sequence numbers and checksums, and the page 83 GUID."""
    with open(path, "rb") as f:
        d = bytearray(f.read(64 * MiB))
    d[8:520] = bytes(512)
    for off in (64 << 10, 128 << 10):
        d[off + 4:off + 64] = bytes(60)
    moff = struct.unpack_from("<Q", d, (192 << 10) + 16 + 32 + 16)[0]
    n = struct.unpack_from("<H", d, moff + 10)[0]
    for i in range(n):
        e = moff + 32 + 32 * i
        if uuid.UUID(bytes_le=bytes(d[e:e + 16])) == uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746"):
            o, ln = struct.unpack_from("<II", d, e + 16)
            d[moff + o:moff + o + ln] = bytes(ln)
    return bytes(d)


CREATE_VARIANTS = [
    ("", "10M"), ("block_state_zero=off", "10M"), ("block_size=1M", "10M"), ("block_size=2M", "100M"),
    ("log_size=2M", "10M"), ("log_size=1000k", "10M"), ("subformat=fixed", "10M"),
    ("subformat=fixed,block_state_zero=off", "10M"), ("subformat=fixed,block_size=1M", "3M"),
    ("", "2G"), ("", "101G"), ("", "33T"), ("", "1000"), ("block_size=512M", "10M"), ("block_size=512k", "10M"),
    ("log_size=1", "10M"), ("block_size=1", "3M"),
]


@pytest.mark.parametrize("opts,size", CREATE_VARIANTS)
def test_create_identical(tmp_path, qemu_img, opts, size):
    a, b = str(tmp_path / "q.vhdx"), str(tmp_path / "m.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", *(["-o", opts] if opts else []), a, size))
    qimg.create(b, "vhdx", parse_size(size), opts)
    assert os.path.getsize(a) == os.path.getsize(b)
    assert masked(a) == masked(b)
    same_info(qemu_img, b)
    assert "No errors were found" in _ok(qemu_img("check", b)).stdout


def same_info(qemu_img, path: str) -> None:
    from qimg.ops.info import image_info

    q = json.loads(_ok(qemu_img("info", "--output=json", "-U", path)).stdout)
    with qimg.open(path) as img:
        m = image_info(img)
    for d in (q, m):
        d.pop("actual-size", None)
    assert m == q


@pytest.mark.parametrize("opts,size", [("block_size=3M", "10M"), ("subformat=foo", "10M"), ("", "65T"),
                                       ("log_size=0", "10M"), ("log_size=5G", "10M")])
def test_create_errors(tmp_path, qemu_img, opts, size):
    path = str(tmp_path / "e.vhdx")
    r = qemu_img("create", "-q", "-f", "vhdx", *(["-o", opts] if opts else []), path, size)
    assert r.returncode == 1
    with pytest.raises(QimgError) as ei:
        qimg.create(path, "vhdx", parse_size(size), opts)
    assert r.stderr.strip() == f"qemu-img: {path}: {ei.value.message}"


CMDS = ["write -P 0x5a 1M 64k", "write -P 1 100k 10k", "write -z 4M 1M", "write -P 3 9M 1M", "write -P 4 3M-512 1k"]


def _cmds(cmds):
    return sum((["-c", c.replace("3M-512", str(3 * MiB - 512))] for c in cmds), [])


@pytest.mark.parametrize("opts", ["block_size=1M", "", "subformat=fixed,block_state_zero=off", "block_state_zero=off"])
def test_read_qemu_written(tmp_path, qemu_img, qemu_io, opts):
    path = str(tmp_path / "r.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", *(["-o", opts] if opts else []), path, "10M"))
    _ok(qemu_io("-f", "vhdx", *_cmds(CMDS), path))
    out = str(tmp_path / "r.raw")
    _ok(qemu_img("convert", "-O", "raw", path, out))
    with qimg.open(path) as img:
        assert img.pread(0, img.size) == open(out, "rb").read()
    same_map(qemu_img, path)
    same_info(qemu_img, path)


def same_map(qemu_img, path: str) -> None:
    q = json.loads(_ok(qemu_img("map", "--output=json", path)).stdout)
    with qimg.open(path) as img:
        mine = []
        for st in img.extents():
            mine.append({"start": sum(e["length"] for e in mine), "length": st.length, "depth": st.depth,
                         "present": True, "zero": False, "data": True})
    assert mine == q


@pytest.mark.parametrize("opts", ["block_size=1M", "subformat=fixed,block_state_zero=off", "block_state_zero=off"])
def test_write_like_qemu(tmp_path, qemu_img, qemu_io, opts):
    a, b = str(tmp_path / "q.vhdx"), str(tmp_path / "m.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", "-o", opts, a, "10M"))
    shutil.copy(a, b)
    _ok(qemu_io("-f", "vhdx", *_cmds(CMDS), a))
    with qimg.open(b, writable=True) as img:
        img.pwrite(MiB, b"\x5a" * 65536)
        img.pwrite(100 << 10, b"\x01" * 10240)
        img.write_zeroes(4 * MiB, MiB)
        img.pwrite(9 * MiB, b"\x03" * MiB)
        img.pwrite(3 * MiB - 512, b"\x04" * 1024)
    assert "No errors were found" in _ok(qemu_img("check", b)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", a, b)).stdout
    # same allocation: the BAT regions are equal, the files the same size
    assert os.path.getsize(a) == os.path.getsize(b)
    da, db = open(a, "rb").read(), open(b, "rb").read()
    assert da[2 * MiB:3 * MiB] == db[2 * MiB:3 * MiB]
    assert masked(a)[3 * MiB:] == masked(b)[3 * MiB:]


def test_random_writes_against_reference(tmp_path, qemu_img):
    import random

    rng = random.Random(11)
    size = 6 * MiB
    path = str(tmp_path / "r.vhdx")
    qimg.create(path, "vhdx", size, "block_size=1M")
    ref = bytearray(size)
    with qimg.open(path, writable=True) as img:
        for i in range(60):
            off = rng.randrange(size)
            n = min(rng.choice([1, 511, 4096, 70000, 1500000]), size - off)
            b = bytes([i + 1]) * n
            img.pwrite(off, b)
            ref[off:off + n] = b
        assert img.pread(0, size) == ref
    rawp = str(tmp_path / "ref.raw")
    with open(rawp, "wb") as f:
        f.write(ref)
    assert "No errors were found" in _ok(qemu_img("check", path)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", "-F", "raw", path, rawp)).stdout


# -- log replay ----------------------------------------------------------------------------------

def _crc_fix(buf: bytearray, start: int, length: int) -> None:
    buf[start + 4:start + 8] = bytes(4)
    buf[start + 4:start + 8] = struct.pack("<I", crc32c.crc32c(bytes(buf[start:start + length])))


def _dirty(src: str, dst: str, *, seq: int = 7) -> tuple[bytes, int]:
    """Copy a clean 10 MiB, 1 MiB-block image and give it a one-entry log that (1) makes block 0
    present at 8 MiB (a BAT sector), (2) writes a pattern into that block, (3) zeroes 4 KiB of it.
    Returns the log GUID and the expected byte at guest offset 0."""
    shutil.copy(src, dst)
    with open(dst, "rb") as f:
        img = bytearray(f.read())
    guid = uuid.uuid4().bytes_le
    bat_off = struct.unpack_from("<Q", img, (192 << 10) + 16 + 16)[0]
    bat_sector = bytearray(img[bat_off:bat_off + 4096])
    struct.pack_into("<Q", bat_sector, 0, 6 | (8 << 20))
    pattern = bytes([0xA7]) * 4096
    descs = [(b"desc", bat_sector, bat_off), (b"desc", pattern, 8 * MiB), (b"zero", 4096, 8 * MiB + 4096)]
    ndata = sum(1 for d in descs if d[0] == b"desc")
    length = 4096 + 4096 * ndata
    entry = bytearray(length)
    struct.pack_into("<4sIIIQII16sQQ", entry, 0, b"loge", 0, length, 0, seq, len(descs), 0, guid,
                     len(img), 9 * MiB)
    k = 0
    for i, (sig, payload, off) in enumerate(descs):
        p = 64 + 32 * i
        if sig == b"zero":
            struct.pack_into("<4sIQQQ", entry, p, b"zero", 0, payload, off, seq)
            continue
        struct.pack_into("<4sIQQQ", entry, p, b"desc", int.from_bytes(payload[-4:], "little"),
                         int.from_bytes(payload[:8], "little"), off, seq)
        s = 4096 * (1 + k)
        entry[s:s + 4] = b"data"
        struct.pack_into("<I", entry, s + 4, seq >> 32)
        entry[s + 8:s + 4092] = payload[8:4092]
        struct.pack_into("<I", entry, s + 4092, seq & 0xFFFFFFFF)
        k += 1
    _crc_fix(entry, 0, length)
    log_off = struct.unpack_from("<Q", img, (64 << 10) + 72)[0]
    img[log_off:log_off + length] = entry
    img.extend(bytes(max(0, 9 * MiB - len(img))))
    for h in (64 << 10, 128 << 10):
        img[h + 48:h + 64] = guid
        _crc_fix(img, h, 4096)
    with open(dst, "wb") as f:
        f.write(img[:len(img)])
    return guid, 0xA7


def test_log_replay_like_qemu(tmp_path, qemu_img):
    clean = str(tmp_path / "clean.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", clean, "10M"))
    q, m = str(tmp_path / "q.vhdx"), str(tmp_path / "m.vhdx")
    _dirty(clean, q)
    _dirty(clean, m)
    # read-only: both refuse (qemu-img appends a hint on how to replay)
    r = qemu_img("info", q)
    assert r.returncode == 1
    with pytest.raises(QimgError) as ei:
        qimg.open(m)
    assert r.stderr == f"qemu-img: {ei.value.message}\n".replace(m, q).replace("qimg check", "qemu-img check")
    # read-write: qemu-img check -r all replays, qimg replays on open
    _ok(qemu_img("check", "-r", "all", q))
    with qimg.open(m, writable=True) as img:
        assert img.pread(0, 4096) == bytes([0xA7]) * 4096
        assert img.pread(4096, 4096) == bytes(4096)
    assert "Images are identical" in _ok(qemu_img("compare", q, m)).stdout
    assert "No errors were found" in _ok(qemu_img("check", m)).stdout
    da, db = open(q, "rb").read(), open(m, "rb").read()
    assert len(da) == len(db)
    assert da[2 * MiB:] == db[2 * MiB:]  # BAT, metadata and payload byte for byte
    for off in (64 << 10, 128 << 10):  # the log GUID is cleared
        assert db[off + 48:off + 64] == bytes(16)


def test_log_with_bad_checksum_is_ignored(tmp_path, qemu_img):
    clean = str(tmp_path / "clean.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", clean, "10M"))
    q, m = str(tmp_path / "q.vhdx"), str(tmp_path / "m.vhdx")
    for p in (q, m):
        _dirty(clean, p)
        with open(p, "r+b") as f:
            f.seek(MiB + 100)
            f.write(b"\xff")
    r = qemu_img("info", q)
    with qimg.open(m) as img:
        assert img.pread(0, 4096) == bytes(4096)
    assert r.returncode == 0


# -- hostile headers ------------------------------------------------------------------------------

def _poke(src: str, dst: str, off: int, data: bytes, fix_region_crc: bool = False) -> None:
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(off)
        f.write(data)


@pytest.mark.parametrize("off,data", [
    (0x10000, b"X"), (0x20000, b"X"), (0x30000, b"X"), (0x40000, b"X"), (0x300000, b"X"),
    (0x300000 + 0x10000, b"\x00\x00\x30\x00"), (0x300000 + 0x10000, b"\x00\x00\x00\x20"),
    (0x300000 + 0x10004, b"\x02"), (0x300000 + 0x10020, b"\x00\x04"), (0x300000 + 0x1000F, b"\x01"),
    (0x200000, b"\x06\x00\xf0\x00"), (0x200000, b"\x06\x00\x70\x00"), (0x200000, b"\x06\x00\x00\x00"),
    (0x200000, b"\x07"), (0x200000, b"\x03"), (0x300000 + 0x2C, b"\x00\x00\x01"), (0x300000 + 0x0A, b"\xff\xff"),
])
def test_corrupt_images(tmp_path, qemu_img, off, data):
    good, bad = str(tmp_path / "g.vhdx"), str(tmp_path / "h.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", good, "10M"))
    _poke(good, bad, off, data)
    r = qemu_img("info", "--output=json", "-f", "vhdx", bad)
    try:
        with qimg.open(bad, "vhdx") as img:
            # a disk size QEMU accepts may be huge (it has no limit): read what a test can hold
            size = img.size
            got = img.pread(0, min(size, 64 * MiB))
            ok = True
    except QimgError as e:
        ok = False
        assert "\n" not in e.message
    if r.returncode == 0 and ok and size <= 64 * MiB:
        out = str(tmp_path / "o.raw")
        if qemu_img("convert", "-f", "vhdx", "-O", "raw", bad, out).returncode == 0:
            assert got == open(out, "rb").read()
    if r.returncode != 0 and "after end of file" in r.stderr:
        assert not ok


def test_probe_and_lazy_import(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "p.vhdx")
    qimg.create(path, "vhdx", MiB)
    with qimg.open(path) as img:
        assert img.format == "vhdx"
    code = "import sys, qimg_vhdx; assert 'construct' not in sys.modules and 'crc32c' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


FMT = "vhdx"
CLI_VARIANTS = ["block_size=1M", "subformat=fixed", "block_state_zero=off"]


CLI_MATCH_VARIANTS = ["block_size=1M"]
@pytest.mark.parametrize("create_opts", CLI_MATCH_VARIANTS)
def test_cli_matches_qemu(tmp_path, qemu_img, qemu_io, qimg, create_opts):
    format_checks.cli_matches_qemu(FMT, tmp_path, qemu_img, qemu_io, qimg, create_opts)


@pytest.mark.parametrize("create_opts", CLI_VARIANTS)
def test_cli_convert_roundtrip(tmp_path, qemu_img, qimg, create_opts):
    format_checks.convert_roundtrip(FMT, tmp_path, qemu_img, qimg, create_opts)


def test_log_replay_cli_like_qemu(tmp_path, qemu_img, qimg):
    from conftest import as_qemu

    clean = str(tmp_path / "clean.vhdx")
    _ok(qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", clean, "10M"))
    d = tmp_path / "d"
    d.mkdir()
    img = str(d / "x.vhdx")
    for args in (["info"], ["check"], ["check", "-r", "all"], ["check", "--output=json"]):
        _dirty(clean, img)
        q = qemu_img(*args, img)
        _dirty(clean, img)
        m = qimg(*args, img)
        assert (m.returncode, as_qemu(m.stdout), as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr), args


def test_our_log_is_replayed_by_qemu(tmp_path, qemu_img):
    """BAT updates go through the log: a copy taken mid-session (log GUID set) and one whose BAT
    updates never reached the BAT are both repaired by qemu-img's log replay (and by qimg's)."""
    path = str(tmp_path / "w.vhdx")
    qimg.create(path, "vhdx", 10 * MiB, "block_size=1M")
    mid, torn, torn2 = (str(tmp_path / n) for n in ("mid.vhdx", "torn.vhdx", "torn2.vhdx"))
    with qimg.open(path, writable=True) as img:
        img.pwrite(0, b"\x11" * 5000)
        img.pwrite(5 * MiB + 7, b"\x22" * 3 * MiB)
        shutil.copy(path, mid)
    for p in (torn, torn2):
        shutil.copy(mid, p)
        with open(p, "r+b") as f:  # the BAT as it was before the session: the log must restore it
            f.seek(2 * MiB)
            f.write(bytes([2, 0, 0, 0, 0, 0, 0, 0]) * 10)
    r = qemu_img("info", mid)
    assert r.returncode == 1 and "contains a log that needs to be replayed" in r.stderr
    for p in (mid, torn):
        r = _ok(qemu_img("check", "-r", "all", p))
        assert "1 corruptions" in r.stdout
        assert "Images are identical" in _ok(qemu_img("compare", path, p)).stdout
    with qimg.open(torn2, writable=True) as img:
        assert img.pread(5 * MiB, 8) == b"\x00" * 7 + b"\x22"
    assert "Images are identical" in _ok(qemu_img("compare", path, torn2)).stdout
    with open(path, "rb") as f:  # closed cleanly: no log to replay
        d = f.read(256 << 10)
    assert d[(64 << 10) + 48:(64 << 10) + 64] == bytes(16) and d[(128 << 10) + 48:(128 << 10) + 64] == bytes(16)
