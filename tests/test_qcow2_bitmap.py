"""qcow2 persistent dirty bitmaps: qimg's bitmap module against qemu-img in both directions."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import qimg
from qimg_qcow2 import bitmap as B
from qimg_qcow2 import bitmapops as BO


@pytest.fixture
def img(tmp_path, qemu_img, qemu_io):
    p = tmp_path / "b.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(p), "16M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 200k", str(p)).returncode == 0
    return p


def qemu_bitmaps(qemu_img, path) -> list[dict]:
    r = qemu_img("info", "--output=json", "-U", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["format-specific"]["data"].get("bitmaps", [])


def qimg_bitmaps(path) -> list[dict]:
    with qimg.open(str(path), "qcow2") as im:
        return B.bitmap_info(im.driver)


def bits(path, name) -> bytes:
    with qimg.open(str(path), "qcow2") as im:
        bm = next(b for b in B.read_bitmaps(im.driver) if b.name == name)
        return bytes(B.read_data(im.driver, bm))


def set_bit_indexes(data: bytes) -> list[int]:
    return [i * 8 + k for i, b in enumerate(data) if b for k in range(8) if b >> k & 1]


def assert_clean(qemu_img, path):
    r = qemu_img("check", str(path))
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr


def run(fn, path, *args, **kw):
    with qimg.open(str(path), "qcow2", writable=True) as im:
        return fn(im.driver, *args, **kw)


def test_qemu_made_bitmaps_listed_and_read(img, qemu_img, qemu_io):
    assert qemu_img("bitmap", "--add", str(img), "a").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "512k", "--disable", str(img), "b").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "4k", str(img), "c").returncode == 0
    assert qemu_io("-c", "write -P 3 2M 100k", "-c", "write -P 4 9M 4k", str(img)).returncode == 0
    assert qimg_bitmaps(img) == qemu_bitmaps(qemu_img, img)
    # 64 KiB granularity: chunks 32, 33 (2M..2M+100k) and 144 (9M)
    assert set_bit_indexes(bits(img, "a")) == [32, 33, 144]
    assert set_bit_indexes(bits(img, "b")) == []
    assert set_bit_indexes(bits(img, "c")) == [*range(512, 537), 2304]
    # an in-use bitmap is listed with both flags, in qemu-img's order
    raw = bytearray(img.read_bytes())
    ext = raw.index(bytes.fromhex("23852875"))
    dir_off = struct.unpack(">Q", raw[ext + 24:ext + 32])[0]
    struct.pack_into(">I", raw, dir_off + 12, 3)
    img.write_bytes(bytes(raw))
    got = qimg_bitmaps(img)
    assert got == qemu_bitmaps(qemu_img, img)
    assert got[0]["flags"] == ["in-use", "auto"]


def test_qimg_added_bitmaps_visible_to_qemu(img, qemu_img, qemu_io, tmp_path):
    run(BO.bitmap_add, img, "one")
    run(BO.bitmap_add, img, "two", 1 << 20, disabled=True)
    run(BO.bitmap_add, img, "three", 512)
    assert qemu_bitmaps(qemu_img, img) == qimg_bitmaps(img) == [
        {"flags": ["auto"], "name": "one", "granularity": 65536},
        {"flags": [], "name": "two", "granularity": 1 << 20},
        {"flags": ["auto"], "name": "three", "granularity": 512},
    ]
    assert_clean(qemu_img, img)
    # qemu writes through the qimg-made (empty) tables, then qimg reads qemu's bits
    assert qemu_io("-c", "write -P 5 5M 64k", str(img)).returncode == 0
    assert_clean(qemu_img, img)
    assert set_bit_indexes(bits(img, "one")) == [80]
    assert set_bit_indexes(bits(img, "two")) == []


def test_default_granularity_follows_cluster_size(tmp_path, qemu_img):
    for cs in ("512", "2M"):
        a, b = tmp_path / f"a{cs}.qcow2", tmp_path / f"b{cs}.qcow2"
        for p in (a, b):
            assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", str(p), "4M").returncode == 0
        assert qemu_img("bitmap", "--add", str(a), "x").returncode == 0
        run(BO.bitmap_add, b, "x")
        assert qemu_bitmaps(qemu_img, a) == qemu_bitmaps(qemu_img, b)


@pytest.mark.parametrize("op, args", [
    ("add", ["-g", "1000", "x"]), ("add", ["-g", "256", "x"]), ("add", ["a"]),
    ("remove", ["nosuch"]), ("clear", ["nosuch"]), ("enable", ["nosuch"]),
])
def test_errors_match(img, qemu_img, op, args):
    assert qemu_img("bitmap", "--add", str(img), "a").returncode == 0
    name = args[-1]
    r = qemu_img("bitmap", f"--{op}", *args[:-1], str(img), name)
    assert r.returncode == 1
    want = r.stderr.strip().split("failed: ", 1)[1]
    fn = {"add": BO.bitmap_add, "remove": BO.bitmap_remove, "clear": BO.bitmap_clear,
          "enable": BO.bitmap_enable}[op]
    extra = [int(args[1])] if op == "add" and len(args) == 3 else []
    with pytest.raises(qimg.QimgError) as exc:
        run(fn, img, name, *extra)
    assert exc.value.message == want


def test_remove_clear_enable_disable_like_qemu(img, qemu_img, qemu_io, tmp_path):
    for name in ("a", "b", "c"):
        assert qemu_img("bitmap", "--add", str(img), name).returncode == 0
    assert qemu_io("-c", "write -P 3 3M 64k", str(img)).returncode == 0
    ref = tmp_path / "ref.qcow2"
    shutil.copy(img, ref)
    assert qemu_img("bitmap", "--remove", str(ref), "a").returncode == 0
    assert qemu_img("bitmap", "--clear", str(ref), "b").returncode == 0
    assert qemu_img("bitmap", "--disable", str(ref), "c").returncode == 0
    run(BO.bitmap_remove, img, "a")
    run(BO.bitmap_clear, img, "b")
    run(BO.bitmap_disable, img, "c")
    assert qimg_bitmaps(img) == qemu_bitmaps(qemu_img, img) == qemu_bitmaps(qemu_img, ref)
    assert bits(img, "b") == bits(ref, "b") and not any(bits(img, "b"))
    assert bits(img, "c") == bits(ref, "c") and any(bits(img, "c"))
    assert_clean(qemu_img, img)
    run(BO.bitmap_enable, img, "c")
    assert qemu_bitmaps(qemu_img, img)[1]["flags"] == ["auto"]
    run(BO.bitmap_remove, img, "b")
    run(BO.bitmap_remove, img, "c")
    assert qemu_bitmaps(qemu_img, img) == []
    assert_clean(qemu_img, img)


def test_merge_across_images_and_granularities(img, qemu_img, qemu_io, tmp_path):
    assert qemu_img("bitmap", "--add", "-g", "1M", str(img), "big").returncode == 0
    assert qemu_io("-c", "write -P 3 2M 100k", str(img)).returncode == 0
    other = tmp_path / "o.qcow2"
    ref = tmp_path / "r.qcow2"
    for p in (other, ref):
        assert qemu_img("create", "-q", "-f", "qcow2", str(p), "16M").returncode == 0
        assert qemu_img("bitmap", "--add", str(p), "small").returncode == 0
    assert qemu_img("bitmap", "--merge", "big", "-b", str(img), "-F", "qcow2", str(ref), "small").returncode == 0
    with qimg.open(str(img), "qcow2") as src, qimg.open(str(other), "qcow2", writable=True) as dst:
        BO.bitmap_merge(dst.driver, "small", src.driver, "big")
    assert bits(other, "small") == bits(ref, "small")
    assert set_bit_indexes(bits(other, "small")) == list(range(32, 48))
    assert_clean(qemu_img, other)
    # a qimg-written bitmap read back by qemu: merge it into a fresh qemu bitmap
    assert qemu_img("bitmap", "--add", str(other), "copy").returncode == 0
    assert qemu_img("bitmap", "--merge", "small", str(other), "copy").returncode == 0
    assert bits(other, "copy") == bits(ref, "small")


def test_copy_bitmaps_like_convert(img, qemu_img, qemu_io, tmp_path):
    assert qemu_img("bitmap", "--add", str(img), "a").returncode == 0
    assert qemu_img("bitmap", "--add", "--disable", "-g", "128k", str(img), "b").returncode == 0
    assert qemu_io("-c", "write -P 3 1M 300k", str(img)).returncode == 0
    assert qemu_img("bitmap", "--enable", str(img), "b").returncode == 0
    assert qemu_io("-c", "write -P 3 8M 1k", str(img)).returncode == 0
    assert qemu_img("bitmap", "--disable", str(img), "b").returncode == 0
    ref = tmp_path / "ref.qcow2"
    assert qemu_img("convert", "--bitmaps", "-O", "qcow2", str(img), str(ref)).returncode == 0
    dst = tmp_path / "dst.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(dst), "16M").returncode == 0
    with qimg.open(str(img), "qcow2") as s, qimg.open(str(dst), "qcow2", writable=True) as d:
        BO.copy_bitmaps(s.driver, d.driver)
    assert qemu_bitmaps(qemu_img, dst) == qemu_bitmaps(qemu_img, ref)
    for name in ("a", "b"):
        assert bits(dst, name) == bits(ref, name)
    assert_clean(qemu_img, dst)


def test_copy_refuses_inconsistent_unless_skipped(img, qemu_img, tmp_path):
    assert qemu_img("bitmap", "--add", str(img), "bad").returncode == 0
    assert qemu_img("bitmap", "--add", str(img), "good").returncode == 0
    raw = bytearray(img.read_bytes())
    ext = raw.index(bytes.fromhex("23852875"))
    dir_off = struct.unpack(">Q", raw[ext + 24:ext + 32])[0]
    struct.pack_into(">I", raw, dir_off + 12, 3)
    img.write_bytes(bytes(raw))
    out = tmp_path / "o.qcow2"
    r = qemu_img("convert", "--bitmaps", "-O", "qcow2", str(img), str(out))
    assert r.returncode == 1
    assert qemu_img("create", "-q", "-f", "qcow2", str(out), "16M").returncode == 0
    with qimg.open(str(img), "qcow2") as s:
        assert BO.check_inconsistent(s.driver) == ["bad"]
        with qimg.open(str(out), "qcow2", writable=True) as d, pytest.raises(qimg.QimgError) as exc:
            BO.copy_bitmaps(s.driver, d.driver)
        assert "qemu-img: " + exc.value.message.replace("\n", "\n", 1) + "\n" == r.stderr
        warned = []
        with qimg.open(str(out), "qcow2", writable=True) as d:
            BO.copy_bitmaps(s.driver, d.driver, skip_broken=True, warn=warned.append)
    ref = tmp_path / "ref.qcow2"
    r = qemu_img("convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", str(img), str(ref))
    assert r.returncode == 0
    assert r.stderr == "".join(f"qemu-img: warning: {w}\n" for w in warned)
    assert qemu_bitmaps(qemu_img, out) == qemu_bitmaps(qemu_img, ref)


@pytest.mark.parametrize("skip", [False, True])
def test_cli_convert_inconsistent_bitmaps_like_qemu(img, qemu_img, qimg, tmp_path, skip):
    """Inconsistent bitmaps are found (or skipped, with a warning) in QEMU's order, the
    directory's last first, and refused before the target is created (iotests
    tests/qemu-img-bitmaps)."""
    from conftest import as_qemu

    for name in ("b2", "b0", "b4", "b5"):
        assert qemu_img("bitmap", "--add", str(img), name).returncode == 0
    raw = bytearray(img.read_bytes())
    ext = raw.index(bytes.fromhex("23852875"))
    pos = struct.unpack(">Q", raw[ext + 24:ext + 32])[0]
    for name in ("b2", "b0", "b4", "b5"):  # mark b2 and b0 in use (as a crash leaves them)
        name_size = struct.unpack(">H", raw[pos + 18:pos + 20])[0]
        if name in ("b2", "b0"):
            struct.pack_into(">I", raw, pos + 12, 3)
        pos += (24 + name_size + 7) & ~7
    img.write_bytes(bytes(raw))
    args = ["convert", "--bitmaps", *(["--skip-broken-bitmaps"] if skip else []), "-O", "qcow2", str(img)]
    want = qemu_img(*args, str(tmp_path / "theirs.qcow2"))
    got = qimg(*args, str(tmp_path / "mine.qcow2"))
    assert (got.returncode, as_qemu(got.stderr)) == (want.returncode, want.stderr)
    assert (tmp_path / "theirs.qcow2").exists() == (tmp_path / "mine.qcow2").exists() == skip
    if skip:
        assert (tmp_path / "theirs.qcow2").read_bytes() == (tmp_path / "mine.qcow2").read_bytes()


def test_writes_tracked_in_enabled_bitmaps(img, qemu_img, qemu_io, tmp_path):
    """qimg's writes set the same bits qemu's writes do; bitmaps are in-use while open."""
    assert qemu_img("bitmap", "--add", str(img), "on").returncode == 0
    assert qemu_img("bitmap", "--add", "--disable", str(img), "off").returncode == 0
    ref = tmp_path / "ref.qcow2"
    shutil.copy(img, ref)
    assert qemu_io("-c", "write -P 6 3M 200k", "-c", "write -z 10M 64k", str(ref)).returncode == 0
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.pwrite(3 << 20, b"\x06" * (200 << 10))
        assert qemu_bitmaps(qemu_img, img)[0]["flags"] == ["in-use", "auto"]
        im.write_zeroes(10 << 20, 64 << 10)
    assert qemu_bitmaps(qemu_img, img) == qemu_bitmaps(qemu_img, ref)
    assert bits(img, "on") == bits(ref, "on")
    assert bits(img, "off") == bits(ref, "off")
    assert_clean(qemu_img, img)


def test_check_counts_bitmap_clusters(img, qemu_img, qemu_io, tmp_path):
    assert qemu_img("bitmap", "--add", str(img), "a").returncode == 0
    assert qemu_io("-c", "write -P 3 2M 100k", str(img)).returncode == 0
    raw = bytearray(img.read_bytes())
    ext = raw.index(bytes.fromhex("23852875"))
    dir_off = struct.unpack(">Q", raw[ext + 24:ext + 32])[0]
    table = struct.unpack(">Q", raw[dir_off:dir_off + 8])[0]
    data = struct.unpack(">Q", raw[table:table + 8])[0]
    rt = struct.unpack(">Q", raw[48:56])[0]
    rb = struct.unpack(">Q", raw[rt:rt + 8])[0]
    for cluster in (dir_off >> 16, table >> 16, data >> 16):
        struct.pack_into(">H", raw, rb + 2 * cluster, 2)
    img.write_bytes(bytes(raw))
    want = qemu_img("check", "--output=json", str(img))
    with qimg.open(str(img), "qcow2") as im:
        res = im.driver.check(set())
    assert res.messages == want.stderr.splitlines()
    assert res.leaks == json.loads(want.stdout)["leaks"] == 3


@pytest.mark.parametrize("args", [["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=4k"],
                                  ["-O", "qcow2", "-o", "compat=0.10"], ["-O", "raw"],
                                  ["-O", "qcow2", "--output=json"]])
def test_measure_bitmaps_size(img, qemu_img, qimg, args):
    from conftest import as_qemu

    assert qemu_img("bitmap", "--add", str(img), "a").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "512", str(img), "a-much-longer-bitmap-name").returncode == 0
    want = qemu_img("measure", *args, str(img))
    got = qimg("measure", *args, str(img))
    if "cluster_size=4k" in args:
        # only the bitmaps line is this module's business
        want.stdout = want.stdout.splitlines()[-1]
        got.stdout = got.stdout.splitlines()[-1]
    assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == (want.returncode, want.stdout, want.stderr)


@pytest.mark.parametrize("args", [["-O", "raw"], ["-O", "qcow2", "-o", "cluster_size=64k"],
                                  ["--output=json", "-O", "qcow2", "-o", "cluster_size=2M"],
                                  ["-O", "qcow2", "-o", "compat=0.10"]])
def test_measure_huge_bitmaps(tmp_path, qemu_img, qimg, args):
    """A 2 TiB image with a 512-byte granularity bitmap (512 MiB of bitmap, QEMU's limit) opens
    and measures as with qemu-img (iotests 190)."""
    from conftest import as_qemu

    p = tmp_path / "h.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", str(p), "2T").returncode == 0
    assert qemu_img("bitmap", "--add", "--granularity", "512", "-f", "qcow2", str(p), "b1").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "2M", "-f", "qcow2", str(p), "b2").returncode == 0
    want = qemu_img("measure", *args, "-f", "qcow2", str(p))
    got = qimg("measure", *args, "-f", "qcow2", str(p))
    assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == (want.returncode, want.stdout, want.stderr)


@pytest.mark.parametrize("case", ["v2", "long_name", "huge_granularity", "too_much_space"])
def test_cli_add_errors_like_qemu(tmp_path, qemu_img, qimg, case):
    import re

    from conftest import as_qemu

    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    opts = ["-o", "compat=0.10"] if case == "v2" else []
    for p in (a, b):
        assert qemu_img("create", "-q", "-f", "qcow2", *opts, str(p), "4T" if case == "too_much_space" else "1M"
                        ).returncode == 0
    args = {"v2": ["x"], "long_name": ["n" * 1024], "huge_granularity": ["-g", "4G", "x"],
            "too_much_space": ["-g", "512", "x"]}[case]
    want = qemu_img("bitmap", "--add", *args[:-1], str(a), args[-1])
    got = qimg("bitmap", "--add", *args[:-1], str(b), args[-1])
    node = re.compile(r"#block\d+")  # QEMU's generated node name
    assert got.returncode == want.returncode == 1
    assert node.sub("#block", as_qemu(got.stderr)) == node.sub("#block", want.stderr)
    assert qimg_bitmaps(b) == []


@pytest.mark.parametrize("new_size", ["8M", "24M"])
def test_bitmaps_resize_like_qemu(tmp_path, qemu_img, qemu_io, new_size):
    """bitmaps_resize re-expresses the bitmaps for a new disk size as qemu-img resize does."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(a), "16M").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "512", str(a), "fine").returncode == 0
    assert qemu_img("bitmap", "--add", str(a), "coarse").returncode == 0
    assert qemu_io("-c", "write -P 1 1M 64k", "-c", "write -P 2 15M 1M", str(a)).returncode == 0
    shutil.copy(a, b)
    assert qemu_img("resize", "--shrink", str(a), new_size).returncode == 0
    size = int(new_size[:-1]) << 20
    with qimg.open(str(b), "qcow2", writable=True) as im:
        d = im.driver
        old = d.size
        if size > old:
            from qimg_qcow2.snapshot import _grow_l1

            _grow_l1(d, d.size_to_l1(size))
        d.header.size = size
        d.file.pwrite(24, struct.pack(">Q", size))
        BO.bitmaps_resize(d, old, size)
    assert qemu_bitmaps(qemu_img, b) == qemu_bitmaps(qemu_img, a)
    for name in ("fine", "coarse"):
        assert bits(b, name) == bits(a, name)
    assert_clean(qemu_img, b)


@pytest.fixture
def two_bitmaps(tmp_path, qemu_img, qemu_io):
    p = tmp_path / "two.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(p), "64M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 100k", str(p)).returncode == 0
    assert qemu_img("bitmap", "--add", str(p), "b0").returncode == 0
    assert qemu_img("bitmap", "--add", "-g", "4k", str(p), "b1").returncode == 0
    assert qemu_io("-c", "write -P 2 1M 30k", str(p)).returncode == 0
    return p


OPEN_DAMAGE = {
    # name: (where, offset, struct format, value or function of the old value)
    "ext_nb_plus": ("ext", 0, ">I", lambda v: v + 1),
    "ext_nb_minus": ("ext", 0, ">I", lambda v: v - 1),
    "ext_nb_zero": ("ext", 0, ">I", lambda v: 0),
    "ext_reserved": ("ext", 4, ">I", lambda v: 1),
    "ext_dirsize": ("ext", 8, ">Q", lambda v: v + 8),
    "ext_diroff_unaligned": ("ext", 16, ">Q", lambda v: v + 8),
    "ext_diroff_eof": ("ext", 16, ">Q", lambda v: 1 << 40),
    "table_offset_unaligned": ("dir", 0, ">Q", lambda v: v + 8),
    "table_offset_eof": ("dir", 0, ">Q", lambda v: 1 << 40),
    "table_size": ("dir", 8, ">I", lambda v: v + 1),
    "flags_unknown": ("dir", 12, ">I", lambda v: v | 8),
    "flags_in_use": ("dir", 12, ">I", lambda v: v | 1),
    "granularity": ("dir", 17, ">B", lambda v: 8),
    "name_size_zero": ("dir", 18, ">H", lambda v: 0),
    "extra_data": ("dir", 20, ">I", lambda v: 8),
    "entry_reserved": ("table", 0, ">Q", lambda v: v | 2),
    "entry_all_ones": ("table", 0, ">Q", lambda v: 1),
    "autoclear_cleared": ("header", 88, ">Q", lambda v: 0),
}


@pytest.mark.parametrize("case", sorted(OPEN_DAMAGE))
def test_open_validation_like_qemu(two_bitmaps, qemu_img, qimg, case):
    """Damaged bitmap metadata: ``info`` and ``check`` fail or warn exactly as qemu-img does."""
    from conftest import as_qemu

    raw = bytearray(two_bitmaps.read_bytes())
    ext = raw.index(bytes.fromhex("23852875")) + 8
    dir_off = struct.unpack(">Q", raw[ext + 16:ext + 24])[0]
    table = struct.unpack(">Q", raw[dir_off:dir_off + 8])[0]
    where, off, fmt, fn = OPEN_DAMAGE[case]
    pos = {"ext": ext, "dir": dir_off, "table": table, "header": 0}[where] + off
    struct.pack_into(fmt, raw, pos, fn(struct.unpack_from(fmt, raw, pos)[0]))
    two_bitmaps.write_bytes(bytes(raw))
    for cmd in ("info", "check"):
        want = qemu_img(cmd, str(two_bitmaps))
        got = qimg(cmd, str(two_bitmaps))
        assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == \
            (want.returncode, want.stdout, want.stderr), cmd
        if want.returncode:
            break  # the open failed: check fails the same way


@pytest.mark.parametrize("op", [["--clear"], ["--enable"], ["--disable"], ["--merge", "ok"], ["--remove"]])
def test_cli_ops_on_inconsistent_bitmap(img, qemu_img, qimg, tmp_path, op):
    from conftest import as_qemu

    assert qemu_img("bitmap", "--add", str(img), "bad").returncode == 0
    assert qemu_img("bitmap", "--add", str(img), "ok").returncode == 0
    raw = bytearray(img.read_bytes())
    ext = raw.index(bytes.fromhex("23852875"))
    dir_off = struct.unpack(">Q", raw[ext + 24:ext + 32])[0]
    struct.pack_into(">I", raw, dir_off + 12, 3)  # "bad": in-use + auto
    img.write_bytes(bytes(raw))
    a, b = tmp_path / "qemu.qcow2", tmp_path / "qimg.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    want = qemu_img("bitmap", *op, str(a), "bad")
    got = qimg("bitmap", *op, str(b), "bad")
    assert (got.returncode, as_qemu(got.stderr).replace(str(b), str(a))) == (want.returncode, want.stderr)
    assert qemu_bitmaps(qemu_img, a) == qemu_bitmaps(qemu_img, b)


@pytest.mark.parametrize("args", [["--shrink", "2M"], ["8M"]], ids=["shrink", "grow"])
def test_cli_resize_with_bitmaps_makes_qemus_file(tmp_path, qemu_img, qemu_io, qimg, args):
    """resize of an image whose bitmap directory is the file's last, partial cluster: the bitmaps
    are stored anew at close (the old directory freed), and a shrink cuts the file only where
    QEMU does (never growing it to the last cluster in use): the same bytes as qemu-img's."""
    src = tmp_path / "s.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(src), "4M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 64k", "-c", "write -P 2 2M 64k", str(src)).returncode == 0
    assert qemu_img("bitmap", "--add", str(src), "t0").returncode == 0
    assert qemu_img("bitmap", "--add", "--disable", str(src), "t1").returncode == 0
    assert qemu_io("-c", "write -P 6 3M 64k", str(src)).returncode == 0
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(src, q)
    shutil.copy(src, m)
    want, got = qemu_img("resize", str(q), *args), qimg("resize", str(m), *args)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
    assert m.read_bytes() == q.read_bytes()
    assert qemu_bitmaps(qemu_img, m) == qemu_bitmaps(qemu_img, q)
    assert_clean(qemu_img, m)
