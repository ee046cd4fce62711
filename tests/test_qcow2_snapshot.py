"""qcow2 internal snapshots: qimg's driver against qemu-img/qemu-io in both directions."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import qimg

MiB = 1 << 20


@pytest.fixture
def img(tmp_path, qemu_img, qemu_io):
    p = tmp_path / "s.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(p), "8M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 200k", "-c", "write -P 2 1M 64k", str(p)).returncode == 0
    return p


def qemu_snapshots(qemu_img, path) -> list[dict]:
    r = qemu_img("info", "--output=json", "-U", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout).get("snapshots", [])


def as_qemu_json(infos) -> list[dict]:
    out = []
    for s in infos:
        d = {"vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000, "name": s.name, "date-sec": s.date_sec,
             "date-nsec": s.date_nsec, "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000, "id": s.id,
             "vm-state-size": s.vm_state_size}
        if s.icount is not None:
            d["icount"] = s.icount
        out.append(d)
    return out


def assert_clean(qemu_img, path):
    r = qemu_img("check", str(path))
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr


def snapshot_data(qemu_img, path, tmp_path, name) -> bytes:
    out = tmp_path / f"snap-{name}.raw"
    r = qemu_img("convert", "-U", "-l", f"snapshot.name={name}", "-O", "raw", str(path), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def current_data(qemu_img, path, tmp_path) -> bytes:
    out = tmp_path / "cur.raw"
    assert qemu_img("convert", "-U", "-O", "raw", str(path), str(out)).returncode == 0
    return out.read_bytes()


def qimg_read_snapshot(path, snapshot_id=None, name=None) -> bytes:
    with qimg.open(str(path), "qcow2") as im:
        im.driver.snapshot_load_readonly(snapshot_id, name)
        return im.pread(0, im.size)


def test_qemu_made_snapshots_listed_and_read(img, qemu_img, qemu_io, tmp_path):
    assert qemu_img("snapshot", "-c", "first", str(img)).returncode == 0
    assert qemu_io("-c", "write -P 3 0 64k", "-c", "write -P 4 5M 100k", str(img)).returncode == 0
    assert qemu_img("snapshot", "-c", "second", str(img)).returncode == 0
    assert qemu_io("-c", "write -P 5 100k 300k", str(img)).returncode == 0
    with qimg.open(str(img), "qcow2") as im:
        infos = im.driver.snapshot_list()
    assert as_qemu_json(infos) == qemu_snapshots(qemu_img, img)
    first = snapshot_data(qemu_img, img, tmp_path, "first")
    second = snapshot_data(qemu_img, img, tmp_path, "second")
    assert first != second
    assert qimg_read_snapshot(img, name="first") == first
    assert qimg_read_snapshot(img, snapshot_id="2") == second
    assert qimg_read_snapshot(img, "2", "second") == second
    with pytest.raises(qimg.QimgError):
        qimg_read_snapshot(img, "1", "second")


def test_qimg_create_visible_to_qemu(img, qemu_img, qemu_io, tmp_path):
    before = current_data(qemu_img, img, tmp_path)
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_create("one")
        im.pwrite(0, b"\xaa" * 70000)  # copy-on-write of shared clusters
        im.driver.snapshot_create("two")
        im.driver.snapshot_create("one")  # names may repeat; ids never do
        infos = im.driver.snapshot_list()
    assert [s.id for s in infos] == ["1", "2", "3"]
    assert as_qemu_json(infos) == qemu_snapshots(qemu_img, img)
    assert all(s.icount == 0 and s.vm_state_size == 0 for s in infos)
    assert_clean(qemu_img, img)
    assert qemu_io("-c", "write -P 9 0 1M", str(img)).returncode == 0
    assert_clean(qemu_img, img)
    assert snapshot_data(qemu_img, img, tmp_path, "one") == before
    two = snapshot_data(qemu_img, img, tmp_path, "two")
    assert two[:70000] == b"\xaa" * 70000 and two[70000:] == before[70000:]


def test_qemu_check_identical_after_same_operations(img, qemu_img, tmp_path):
    """The same sequence done by qimg and by qemu-img leaves the same cluster layout."""
    a = tmp_path / "a.qcow2"
    b = tmp_path / "b.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    for args in (["-c", "x"], ["-c", "y"], ["-d", "x"], ["-c", "z"], ["-a", "y"]):
        assert qemu_img("snapshot", *args, str(a)).returncode == 0
    with qimg.open(str(b), "qcow2", writable=True) as im:
        d = im.driver
        d.snapshot_create("x")
        d.snapshot_create("y")
        d.snapshot_delete(None, "x")
        d.snapshot_create("z")
        d.snapshot_goto("y")
    ra = qemu_img("check", "--output=json", str(a))
    rb = qemu_img("check", "--output=json", str(b))
    assert ra.returncode == rb.returncode == 0
    ja, jb = json.loads(ra.stdout), json.loads(rb.stdout)
    ja.pop("filename")
    jb.pop("filename")
    assert ja == jb
    sa = [(s["id"], s["name"]) for s in qemu_snapshots(qemu_img, a)]
    sb = [(s["id"], s["name"]) for s in qemu_snapshots(qemu_img, b)]
    assert sa == sb == [("2", "y"), ("3", "z")]


def test_goto_restores_data(img, qemu_img, qemu_io, tmp_path):
    before = current_data(qemu_img, img, tmp_path)
    assert qemu_img("snapshot", "-c", "base", str(img)).returncode == 0
    assert qemu_io("-c", "write -P 7 0 2M", "-c", "write -z 1M 64k", str(img)).returncode == 0
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_goto("1")
        assert im.pread(0, im.size) == before
    assert_clean(qemu_img, img)
    assert current_data(qemu_img, img, tmp_path) == before
    # the snapshot survives and still reads the same
    assert snapshot_data(qemu_img, img, tmp_path, "base") == before
    with qimg.open(str(img), "qcow2", writable=True) as im, pytest.raises(qimg.QimgError):
        im.driver.snapshot_goto("nosuch")


def test_delete_by_id_and_name(img, qemu_img, qemu_io, tmp_path):
    for name in ("a", "b", "c"):
        assert qemu_img("snapshot", "-c", name, str(img)).returncode == 0
        assert qemu_io("-c", f"write -P {ord(name)} 0 64k", str(img)).returncode == 0
    c_data = snapshot_data(qemu_img, img, tmp_path, "c")
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_delete("2")
        im.driver.snapshot_delete(None, "a")
        with pytest.raises(qimg.QimgError):
            im.driver.snapshot_delete("nosuch")
    assert [(s["id"], s["name"]) for s in qemu_snapshots(qemu_img, img)] == [("3", "c")]
    assert_clean(qemu_img, img)
    assert snapshot_data(qemu_img, img, tmp_path, "c") == c_data
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_delete("c")
        assert im.driver.snapshot_list() == []
    assert_clean(qemu_img, img)
    raw = img.read_bytes()
    assert struct.unpack(">IQ", raw[60:72]) == (0, 0)


def test_unknown_extra_data_preserved(img, qemu_img, tmp_path):
    """Extra data a newer writer added survives a rewrite of the table by qimg."""
    assert qemu_img("snapshot", "-c", "old", str(img)).returncode == 0
    raw = bytearray(img.read_bytes())
    off = struct.unpack(">Q", raw[64:72])[0]
    extra_size = struct.unpack(">I", raw[off + 36:off + 40])[0]
    assert extra_size == 24
    head = raw[off:off + 40 + 24]
    id_name = raw[off + 64:off + 64 + 4]  # "1" + "old"
    struct.pack_into(">I", head, 36, 32)
    entry = bytes(head) + b"EXTRADAT" + bytes(id_name)
    raw[off:off + len(entry)] = entry
    img.write_bytes(bytes(raw))
    assert_clean(qemu_img, img)
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_create("new")
    raw = img.read_bytes()
    off = struct.unpack(">Q", raw[64:72])[0]
    assert struct.unpack(">I", raw[off + 36:off + 40])[0] == 32
    assert raw[off + 64:off + 72] == b"EXTRADAT"
    assert_clean(qemu_img, img)
    assert [(s["id"], s["name"]) for s in qemu_snapshots(qemu_img, img)] == [("1", "old"), ("2", "new")]


def test_old_style_entry_without_extra_data(img, qemu_img, qimg, tmp_path):
    """A table entry with no extra data: 32-bit vm_state_size, no icount, disk size = image size."""
    import qimg as qapi

    assert qemu_img("snapshot", "-c", "v2", str(img)).returncode == 0
    raw = bytearray(img.read_bytes())
    off = struct.unpack(">Q", raw[64:72])[0]
    head = bytearray(raw[off:off + 40])
    struct.pack_into(">I", head, 36, 0)
    struct.pack_into(">I", head, 32, 0)
    id_name = raw[off + 64:off + 64 + 3]
    raw[off:off + 64 + 3] = bytes(head) + bytes(id_name) + bytes(24)
    img.write_bytes(bytes(raw))
    with qapi.open(str(img), "qcow2") as im:
        infos = im.driver.snapshot_list()
    assert as_qemu_json(infos) == qemu_snapshots(qemu_img, img)
    assert infos[0].icount is None
    # check calls such an entry incomplete; -r all rewrites the table (24 bytes of extra data)
    from conftest import as_qemu

    a, b = tmp_path / "qemu.qcow2", tmp_path / "qimg.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    for args in ([], ["-r", "all"], []):
        want = qemu_img("check", *args, str(a))
        got = qimg("check", *args, str(b))
        assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == \
            (want.returncode, want.stdout, want.stderr), args
    assert qemu_snapshots(qemu_img, a) == qemu_snapshots(qemu_img, b)
    with qapi.open(str(b), "qcow2", writable=True) as im:
        im.driver.snapshot_create("new")
    assert_clean(qemu_img, b)
    assert [(s["id"], s["name"]) for s in qemu_snapshots(qemu_img, b)] == [("1", "v2"), ("2", "new")]


def test_check_with_snapshots_repairs(img, qemu_img, qemu_io, tmp_path):
    """Refcount damage on shared clusters: qimg repairs, qemu-img agrees it is clean."""
    assert qemu_img("snapshot", "-c", "s", str(img)).returncode == 0
    assert qemu_io("-c", "write -P 8 0 64k", str(img)).returncode == 0
    raw = bytearray(img.read_bytes())
    rt = struct.unpack(">Q", raw[48:56])[0]
    rb = struct.unpack(">Q", raw[rt:rt + 8])[0]
    struct.pack_into(">H", raw, rb + 2 * 6, 1)  # a data cluster shared with the snapshot
    img.write_bytes(bytes(raw))
    want = qemu_img("check", str(img))
    with qimg.open(str(img), "qcow2") as im:
        res = im.driver.check(set())
    assert res.messages == [ln for ln in want.stderr.splitlines() if ln]
    assert res.corruptions >= 1
    with qimg.open(str(img), "qcow2", writable=True, options={"check": True}) as im:
        res = im.driver.check({"leaks", "errors"})
    assert res.corruptions == 0
    assert_clean(qemu_img, img)


@pytest.mark.parametrize("new_size", ["5M", "20M"])
def test_goto_snapshot_of_another_size(img, qemu_img, qemu_io, tmp_path, new_size):
    """A snapshot taken before a resize brings its disk size back, as qemu-img -a does."""
    assert qemu_io("-c", "write -P 3 7M 1M", str(img)).returncode == 0
    assert qemu_img("snapshot", "-c", "s", str(img)).returncode == 0
    assert qemu_img("resize", "--shrink", str(img), new_size).returncode == 0
    assert qemu_io("-c", "write -P 4 0 1M", str(img)).returncode == 0
    ref = tmp_path / "ref.qcow2"
    shutil.copy(img, ref)
    assert qemu_img("snapshot", "-a", "s", str(ref)).returncode == 0
    with qimg.open(str(img), "qcow2", writable=True) as im:
        im.driver.snapshot_goto("s")
    assert qemu_img("compare", str(img), str(ref)).returncode == 0
    ja = json.loads(qemu_img("check", "--output=json", str(img)).stdout)
    jb = json.loads(qemu_img("check", "--output=json", str(ref)).stdout)
    ja.pop("filename")
    jb.pop("filename")
    assert ja == jb
    assert json.loads(qemu_img("info", "--output=json", str(img)).stdout)["virtual-size"] == 8 * MiB


def test_cli_snapshot_commands_like_qemu_img(img, qemu_img, qimg, qemu_io, tmp_path):
    """``qimg snapshot -c/-l/-a/-d`` and ``convert -l`` on one copy, qemu-img on another."""
    import re

    from conftest import as_qemu

    a = tmp_path / "a.qcow2"
    b = tmp_path / "b.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    steps = [["-c", "A"], ["-c", "B"], ["-c", "A"], ["-l"], ["-d", "A"], ["-a", "B"], ["-a", "nosuch"],
             ["-d", "nosuch"], ["-l"]]
    for i, step in enumerate(steps):
        want = qemu_img("snapshot", *step, str(a))
        got = qimg("snapshot", *step, str(b))
        dates = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        assert got.returncode == want.returncode, step
        assert dates.sub("D", as_qemu(got.stdout)) == dates.sub("D", want.stdout), step
        assert as_qemu(got.stderr).replace(str(b), str(a)) == want.stderr, step
        if i == 1:
            for p in (a, b):
                assert qemu_io("-c", "write -P 9 0 1M", str(p)).returncode == 0
    assert_clean(qemu_img, b)
    for snap in ("B", "snapshot.id=3"):
        outa, outb = tmp_path / "a.raw", tmp_path / "b.raw"
        assert qemu_img("convert", "-l", snap, "-O", "raw", str(a), str(outa)).returncode == 0
        assert qimg("convert", "-l", snap, "-O", "raw", str(b), str(outb)).returncode == 0
        assert outa.read_bytes() == outb.read_bytes()


def test_create_fails_like_qemu_with_1bit_refcounts(tmp_path, qemu_img, qemu_io, qimg):
    from conftest import as_qemu

    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    for p in (a, b):
        assert qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", str(p), "10M").returncode == 0
        assert qemu_io("-c", "write 0 64k", str(p)).returncode == 0
    want = qemu_img("snapshot", "-c", "s", str(a))
    got = qimg("snapshot", "-c", "s", str(b))
    assert (got.returncode, as_qemu(got.stderr)) == (want.returncode, want.stderr) == (1, want.stderr)
    ca, cb = qemu_img("check", str(a)), qemu_img("check", str(b))
    assert (ca.returncode, ca.stdout, ca.stderr) == (cb.returncode, cb.stdout, cb.stderr)


@pytest.mark.parametrize("field, fmt, value", [(0, ">Q", 0x90200), (8, ">I", 0x1000000), (0, ">Q", 0x9000000)])
def test_cli_goto_delete_with_broken_snapshot_l1(img, qemu_img, qimg, tmp_path, field, fmt, value):
    """Unaligned, oversized or past-EOF snapshot L1: the same messages, exit codes and result."""
    from conftest import as_qemu

    for name in ("s1", "s2"):
        assert qemu_img("snapshot", "-c", name, str(img)).returncode == 0
    raw = bytearray(img.read_bytes())
    so = struct.unpack(">Q", raw[64:72])[0]
    struct.pack_into(fmt, raw, so + field, value)
    img.write_bytes(bytes(raw))
    a, b = tmp_path / "qemu.qcow2", tmp_path / "qimg.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    for op in (["-a", "s1"], ["-d", "s1"]):
        want = qemu_img("snapshot", *op, str(a))
        got = qimg("snapshot", *op, str(b))
        assert (got.returncode, as_qemu(got.stderr)) == (want.returncode, want.stderr), op
    ca, cb = qemu_img("check", str(a)), qemu_img("check", str(b))
    assert (ca.returncode, ca.stdout, ca.stderr) == (cb.returncode, cb.stdout, cb.stderr)
