"""VMDK plugin against the qemu-img/qemu-io oracle: create, read, write, block status, info."""
from __future__ import annotations

import json
import os
import random
import re
import struct

import format_checks
import pytest
import qimg
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO
from qimg.errors import QimgError

MiB = 1 << 20


def _ok(run):
    assert run.returncode == 0, run.stderr
    return run


def normalized(path: str) -> bytes:
    """File bytes with the descriptor's random CID blanked (qemu-img picks a new one each time)
    and what follows the descriptor's terminating NUL dropped."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"KDMV":
        doff, dsize = struct.unpack_from("<QQ", data, 28)
        a, b = doff * 512, (doff + dsize) * 512
        text = data[a:b].split(b"\0", 1)[0]
        return data[:a] + re.sub(rb"(?m)^CID=[0-9a-f]+$", b"CID=", text) + b"|" + data[b:]
    # a descriptor file: QEMU's CID rewrite ends the text with a NUL and leaves the old bytes
    # after it, so a new CID shorter than the old one leaves a stale tail (both tools do it)
    return re.sub(rb"(?m)^CID=[0-9a-f]+$", b"CID=", data.split(b"\0", 1)[0])


def qimg_map(path: str) -> list[dict]:
    out: list[dict] = []
    with qimg.open(path) as img:
        for st in img.extents():
            e = {"start": 0, "length": st.length, "depth": st.depth, "present": bool(st.flags & ALLOCATED),
                 "zero": bool(st.flags & ZERO) or not st.flags & DATA, "data": bool(st.flags & DATA)}
            if st.flags & OFFSET_VALID:
                e["offset"] = st.host_offset
            if out:
                p = out[-1]
                e["start"] = p["start"] + p["length"]
                same = all(p.get(k) == e.get(k) for k in ("depth", "present", "zero", "data"))
                contiguous = ("offset" not in p and "offset" not in e) or (
                    "offset" in p and "offset" in e and p["offset"] + p["length"] == e["offset"])
                if same and contiguous:
                    p["length"] += e["length"]
                    continue
            out.append(e)
    for e in out:  # the depth of unallocated runs is the map command's business
        if not e["present"]:
            e.pop("depth")
    return out


def qemu_map(qemu_img, path: str) -> list[dict]:
    out = json.loads(_ok(qemu_img("map", "--output=json", path)).stdout)
    for e in out:
        if not e["present"]:
            e.pop("depth")
    return out


def _data_runs(fd: int, size: int):
    """Data extents of a (sparse) host file, by SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size) - start
        pos = end


def same_content(qemu_img, path: str, tmp_path) -> None:
    """qimg's guest view equals ``qemu-img convert -O raw`` without reading GiBs of holes:
    every data run of the sparse raw copy and every data run qimg reports are compared."""
    out = str(tmp_path / "content.raw")
    _ok(qemu_img("convert", "-O", "raw", path, out))
    with qimg.open(path) as img, open(out, "rb") as f:
        assert os.path.getsize(out) == img.size
        runs = list(_data_runs(f.fileno(), img.size))
        pos = 0
        for st in img.extents():
            if st.flags & DATA and not st.flags & ZERO:
                runs.append((pos, st.length))
            pos += st.length
        for start, n in runs:
            for off in range(start, start + n, 16 * MiB):
                k = min(16 * MiB, start + n - off)
                assert img.pread(off, k) == os.pread(f.fileno(), k, off), f"differs in [{off}, {off + k})"


def extent_files(path: str) -> list[str]:
    folder = os.path.dirname(path)
    base = os.path.basename(path)[:-5]
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(base + "-"))


CREATE_VARIANTS = [
    ("", "10M"), ("adapter_type=lsilogic", "3G"), ("adapter_type=buslogic", "1G"), ("adapter_type=legacyESX", "1G"),
    ("compat6=on", "1G"), ("hwversion=12", "100M"), ("toolsversion=10240", "1M"), ("zeroed_grain=on", "5G"),
    ("subformat=streamOptimized", "10M"), ("subformat=monolithicFlat", "1M"), ("subformat=twoGbMaxExtentSparse", "5G"),
    ("subformat=twoGbMaxExtentFlat", "5G"), ("", "1000"), ("subformat=streamOptimized,zeroed_grain=on", "10M"),
    ("subformat=twoGbMaxExtentSparse,zeroed_grain=on,adapter_type=buslogic", "3G"),
    ("subformat=monolithicFlat", "0"), ("subformat=twoGbMaxExtentSparse", "0"), ("adapter_type=ide", "300G"), ("subformat=monolithicFlat,adapter_type=ide", "70000"),
]


@pytest.mark.parametrize("opts,size", CREATE_VARIANTS)
def test_create_identical(tmp_path, qemu_img, opts, size):
    from qimg.units import parse_size

    (tmp_path / "q").mkdir()
    (tmp_path / "m").mkdir()
    a, b = str(tmp_path / "q" / "d.vmdk"), str(tmp_path / "m" / "d.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", *(["-o", opts] if opts else []), a, size))
    qimg.create(b, "vmdk", parse_size(size), opts)
    assert normalized(a) == normalized(b)
    ea, eb = extent_files(a), extent_files(b)
    assert [os.path.basename(x) for x in ea] == [os.path.basename(x) for x in eb]
    for x, y in zip(ea, eb, strict=True):
        assert os.path.getsize(x) == os.path.getsize(y)
        if os.path.getsize(x) < 64 * MiB:
            assert open(x, "rb").read() == open(y, "rb").read()
    if size != "0" or "subformat" not in opts:  # qemu-img cannot open extent-less images
        same_info(qemu_img, b)


def same_info(qemu_img, path: str) -> None:
    from qimg.ops.info import image_info

    q = json.loads(_ok(qemu_img("info", "--output=json", "-U", path)).stdout)
    with qimg.open(path) as img:
        m = image_info(img)
    for d in (q, m):
        d.pop("actual-size", None)
    assert m == q


def test_create_backing(tmp_path, qemu_img):
    base = str(tmp_path / "base.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", base, "4M"))
    a, b = str(tmp_path / "a.vmdk"), str(tmp_path / "b.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", a))
    qimg.create(b, "vmdk", None, backing_file="base.vmdk", backing_fmt="vmdk")
    assert normalized(a).replace(b'"a.vmdk"', b'"b.vmdk"') == normalized(b)
    same_info(qemu_img, b)
    with qimg.open(b) as img:
        assert img.backing is not None and img.backing.format == "vmdk"
        assert img.driver.format_specific_info()["parent-cid"] == img.backing.driver.cid


@pytest.mark.parametrize("opts,backing", [
    ("adapter_type=foo", None), ("subformat=x", None), ("compat6=on,hwversion=7", None),
    ("subformat=monolithicFlat", "vmdk"), ("", "raw"), ("subformat=twoGbMaxExtentFlat,zeroed_grain=on", None),
])
def test_create_errors(tmp_path, qemu_img, opts, backing):
    path = str(tmp_path / "e.vmdk")
    args = ["-o", opts] if opts else []
    kw = {}
    if backing:
        base = str(tmp_path / f"base.{backing}")
        _ok(qemu_img("create", "-q", "-f", backing, base, "1M"))
        args += ["-b", base, "-F", backing]
        kw = {"backing_file": base, "backing_fmt": backing}
    r = qemu_img("create", "-q", "-f", "vmdk", *args, path, "1M")
    assert r.returncode == 1
    with pytest.raises(QimgError) as ei:
        qimg.create(path, "vmdk", MiB, opts, **kw)
    assert r.stderr.strip().splitlines()[0] == f"qemu-img: {path}: {ei.value.message}"


QEMU_IO_CMDS = ["write -P 0x5a 1M 64k", "write -P 1 64k 64k", "write -z 4M 128k", "write -P 3 2047M 2M",
                "write -z 2049M 64k", "write -P 4 100k 1000"]


@pytest.mark.parametrize("opts", ["", "zeroed_grain=on", "subformat=twoGbMaxExtentSparse",
                                  "subformat=monolithicFlat", "subformat=twoGbMaxExtentFlat"])
def test_read_qemu_written(tmp_path, qemu_img, qemu_io, opts):
    path = str(tmp_path / "r.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", *(["-o", opts] if opts else []), path, "3G"))
    _ok(qemu_io("-f", "vmdk", *sum((["-c", c] for c in QEMU_IO_CMDS), []), path))
    same_content(qemu_img, path, tmp_path)
    assert qimg_map(path) == qemu_map(qemu_img, path)
    same_info(qemu_img, path)


def test_read_stream_optimized(tmp_path, qemu_img):
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.truncate(10 * MiB)
        for off, v, n in [(MiB, 0x5A, 64 << 10), (100 << 10, 1, 10 << 10), (9 * MiB, 3, MiB), (5 * MiB + 7, 9, 3)]:
            f.seek(off)
            f.write(bytes([v]) * n)
    path = str(tmp_path / "s.vmdk")
    _ok(qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", src, path))
    with qimg.open(path) as img, open(src, "rb") as f:
        assert img.pread(0, img.size) == f.read()
    assert qimg_map(path) == qemu_map(qemu_img, path)
    same_info(qemu_img, path)


def _same_ops(tmp_path, qemu_img, qemu_io, opts, size, ops, backing=()):
    a, b = str(tmp_path / "q.vmdk"), str(tmp_path / "m.vmdk")
    args = (["-o", opts] if opts else []) + list(backing)
    _ok(qemu_img("create", "-q", "-f", "vmdk", *args, a, *([size] if size else [])))
    _ok(qemu_img("create", "-q", "-f", "vmdk", *args, b, *([size] if size else [])))
    cmds = []
    with qimg.open(b, writable=True) as img:
        for op, off, n, pat in ops:
            if op == "w":
                img.pwrite(off, bytes([pat]) * n)
                cmds.append(f"write -P {pat} {off} {n}")
            else:
                img.write_zeroes(off, n)
                cmds.append(f"write -z {off} {n}")
    _ok(qemu_io("-f", "vmdk", *sum((["-c", c] for c in cmds), []), a))
    assert normalized(a).replace(b'"q', b'"m') == normalized(b)
    for x, y in zip(extent_files(a), extent_files(b), strict=True):
        assert open(x, "rb").read() == open(y, "rb").read()
    assert "No errors were found" in _ok(qemu_img("check", b)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", a, b)).stdout
    return a, b


OPS = [("w", 0, 256 << 10, 1), ("z", 64 << 10, 64 << 10, 0), ("z", 200 << 10, 200 << 10, 0),
       ("w", 3 * MiB - 100, 300, 9), ("w", 0, 4096, 7), ("z", MiB, 128 << 10, 0), ("w", 5 * MiB + 5, 70 << 10, 8)]


@pytest.mark.parametrize("opts", ["", "zeroed_grain=on", "subformat=twoGbMaxExtentSparse", "subformat=monolithicFlat"])
def test_write_identical_to_qemu(tmp_path, qemu_img, qemu_io, opts):
    _same_ops(tmp_path, qemu_img, qemu_io, opts, "8M", OPS)


def test_write_across_split_extents(tmp_path, qemu_img, qemu_io):
    ops = [("w", (2 << 30) - 3000, 10000, 5), ("w", 100, 10, 6), ("z", (2 << 30) + MiB, 64 << 10, 0)]
    _same_ops(tmp_path, qemu_img, qemu_io, "subformat=twoGbMaxExtentSparse", "3G", ops)


def test_write_cow_backing(tmp_path, qemu_img, qemu_io):
    base = str(tmp_path / "base.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", base, "4M"))
    _ok(qemu_io("-f", "vmdk", "-c", "write -P 0x33 0 4M", base))
    ops = [("w", 100, 5000, 0x78), ("w", MiB - 10, 70 << 10, 0x79), ("z", 3 * MiB, 64 << 10, 0)]
    a, b = _same_ops(tmp_path, qemu_img, qemu_io, "", None, ops, backing=("-b", "base.vmdk", "-F", "vmdk"))
    same_content(qemu_img, b, tmp_path)


def test_write_stream_optimized(tmp_path, qemu_img):
    path = str(tmp_path / "s.vmdk")
    ref = bytearray(4 * MiB)
    qimg.create(path, "vmdk", len(ref), "subformat=streamOptimized")
    with qimg.open(path, writable=True) as img:
        img.pwrite(MiB, bytes([7]) * (128 << 10))
        ref[MiB:MiB + (128 << 10)] = bytes([7]) * (128 << 10)
        grain = bytes(range(256)) * 256
        img.write_compressed(3 * MiB, grain)
        ref[3 * MiB:3 * MiB + len(grain)] = grain
        with pytest.raises(QimgError, match="allocated cluster"):
            img.pwrite(MiB, bytes(64 << 10))
        # partial grains wait in memory: readable at once, written out when complete or on close
        img.pwrite(2 * MiB + 5, b"x" * 100)
        ref[2 * MiB + 5:2 * MiB + 105] = b"x" * 100
        img.pwrite(2 * MiB + 70000, b"y" * 100000)
        ref[2 * MiB + 70000:2 * MiB + 170000] = b"y" * 100000
        assert img.pread(2 * MiB, 256 << 10) == ref[2 * MiB:2 * MiB + (256 << 10)]
    rawp = str(tmp_path / "ref.raw")
    with open(rawp, "wb") as f:
        f.write(ref)
    assert "No errors were found" in _ok(qemu_img("check", path)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", "-F", "raw", path, rawp)).stdout
    assert qimg_map(path) == qemu_map(qemu_img, path)


@pytest.mark.parametrize("layout", ["one-small-grain", "two-grains", "random-last", "far-apart"])
def test_convert_stream_optimized_identical_to_qemu(tmp_path, qemu_img, qimg, layout):
    """convert -O vmdk -o subformat=streamOptimized writes QEMU's bytes: both grain tables
    (primary and redundant) and QEMU's file length (a grain past the last grain's start, or
    the end of its compressed bytes), apart from the random CID."""
    src = tmp_path / "src.raw"
    size = 200 * MiB if layout == "far-apart" else 2 * MiB
    rnd = bytes(random.Random(7).getrandbits(8) for _ in range(64 << 10))
    with open(src, "wb") as f:
        f.truncate(size)
        if layout == "one-small-grain":
            f.write(b"\7" * 4096)
        elif layout == "two-grains":
            f.write(b"\7" * (128 << 10))
        elif layout == "random-last":
            f.write(b"\7" * (64 << 10))
            f.seek(3 << 16)
            f.write(rnd)
        else:  # grains in different grain tables (32 MiB each), the last one random
            f.write(b"\1" * 512)
            f.seek(100 * MiB)
            f.write(rnd)
            f.seek(size - (64 << 10))
            f.write(b"\2" * 1000)
    outs = []
    for tool, where in ((qemu_img, "q"), (qimg, "m")):
        out = tmp_path / where / "out.vmdk"  # the same name: the descriptor names the file
        out.parent.mkdir()
        _ok(tool("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(src), str(out)))
        outs.append(normalized(str(out)))
    assert len(outs[0]) == len(outs[1])
    assert outs[0] == outs[1]


def test_write_compressed_plain_on_plain_sparse(tmp_path, qemu_img):
    """qemu-img convert -c to a monolithicSparse image writes the grains uncompressed."""
    path = str(tmp_path / "p.vmdk")
    qimg.create(path, "vmdk", MiB)
    grain = bytes(range(256)) * 256
    with qimg.open(path, writable=True) as img:
        img.write_compressed(65536, grain)
        st = img.block_status(65536, 65536)
        assert st.flags & OFFSET_VALID
    assert "No errors were found" in _ok(qemu_img("check", path)).stdout
    with qimg.open(path) as img:
        assert img.pread(65536, 65536) == grain


def test_random_writes_against_reference(tmp_path, qemu_img):
    import random

    rng = random.Random(3)
    size = 3 * MiB
    base = str(tmp_path / "base.vmdk")
    qimg.create(base, "vmdk", size)
    ref = bytearray(rng.randbytes(size))
    with qimg.open(base, writable=True) as img:
        img.pwrite(0, ref)
    path = str(tmp_path / "r.vmdk")
    qimg.create(path, "vmdk", size, "zeroed_grain=on", backing_file="base.vmdk", backing_fmt="vmdk")
    with qimg.open(path, writable=True) as img:
        for i in range(60):
            off = rng.randrange(size)
            n = min(rng.choice([1, 511, 4096, 70000, 200000]), size - off)
            if i % 4 == 3:
                img.write_zeroes(off, n)
                ref[off:off + n] = bytes(n)
            else:
                b = bytes([i + 1]) * n
                img.pwrite(off, b)
                ref[off:off + n] = b
        assert img.pread(0, size) == ref
    rawp = str(tmp_path / "ref.raw")
    with open(rawp, "wb") as f:
        f.write(ref)
    assert "No errors were found" in _ok(qemu_img("check", path)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", "-F", "raw", path, rawp)).stdout
    assert qimg_map(path) == qemu_map(qemu_img, path)


def _flat_descriptor(path: str, extent: str, sectors: int) -> None:
    with open(path, "w") as f:
        f.write('# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                f'\n# Extent description\nRW {sectors} FLAT "{extent}" 0\n\n# The Disk Data Base\n#DDB\n\n'
                'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n')


@pytest.mark.parametrize("where", ["abs", "dotdot"])
def test_extent_outside_folder(tmp_path, qemu_img, where):
    """CVE-2022-47951: a descriptor naming a host file. qemu-img follows it; untrusted mode refuses."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret\n" + bytes(1024 - 11))
    (tmp_path / "d").mkdir()
    desc = str(tmp_path / "d" / "evil.vmdk")
    _flat_descriptor(desc, str(secret) if where == "abs" else "../secret.txt", 2)
    out = str(tmp_path / "out.raw")
    _ok(qemu_img("convert", "-O", "raw", desc, out))
    with qimg.open(desc) as img:
        assert img.pread(0, 1024) == open(out, "rb").read()
    with qimg.open(desc, untrusted=True) as img:
        info = img.driver.format_specific_info()
        assert info["extents"][0]["format"] == "FLAT"
        with pytest.raises(QimgError, match="untrusted") as ei:
            img.pread(0, 1024)
        assert "\n" not in ei.value.message


def test_untrusted_monolithic_sparse_opens(tmp_path):
    path = str(tmp_path / "ok.vmdk")
    qimg.create(path, "vmdk", MiB)
    with qimg.open(path, writable=True) as img:
        img.pwrite(0, b"abc")
    with qimg.open(path, untrusted=True) as img:
        assert img.pread(0, 3) == b"abc"


def _poke(src: str, dst: str, off: int, data: bytes) -> None:
    with open(src, "rb") as f:
        buf = bytearray(f.read())
    buf[off:off + len(data)] = data
    with open(dst, "wb") as f:
        f.write(buf)


@pytest.mark.parametrize("off,data", [
    (4, struct.pack("<I", 9)), (44, struct.pack("<I", 4096)), (44, struct.pack("<I", 0)), (20, struct.pack("<Q", 0)),
    (20, struct.pack("<Q", 1 << 40)), (12, struct.pack("<Q", 1 << 60)), (56, struct.pack("<Q", 1 << 40)),
    (512, b"garbage\0"), (512 + 60, b"RW 20480 FOO"),
])
def test_corrupt_headers(tmp_path, qemu_img, off, data):
    good = str(tmp_path / "g.vmdk")
    bad = str(tmp_path / "h.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", good, "10M"))
    _poke(good, bad, off, data)
    r = qemu_img("info", "--output=json", bad)
    try:
        with qimg.open(bad, "vmdk") as img:
            img.pread(0, img.size)
            ok = True
    except QimgError as e:
        ok = False
        assert "\n" not in e.message
    if ok and r.returncode == 0:  # qimg may be stricter than qemu-img, never looser
        with qimg.open(bad, "vmdk") as img:
            assert img.size == json.loads(r.stdout)["virtual-size"]


def test_descriptor_errors(tmp_path, qemu_img):
    path = str(tmp_path / "f.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", path, "1M"))
    text = open(path).read()
    for old, new in [("f-flat.vmdk", "missing.vmdk"), ("RW 2048 FLAT", "RW 2048 FOO"),
                     ('createType="monolithicFlat"', 'createType="foo"')]:
        bad = str(tmp_path / "bad.vmdk")
        with open(bad, "w") as f:
            f.write(text.replace(old, new))
        r = qemu_img("info", bad)
        with pytest.raises(QimgError) as ei:
            qimg.open(bad)
        assert r.stderr.strip() == f"qemu-img: {ei.value.message}"


def test_probe_and_lazy_import(tmp_path):
    import subprocess
    import sys

    for sub in ("monolithicSparse", "monolithicFlat"):
        path = str(tmp_path / f"{sub}.vmdk")
        qimg.create(path, "vmdk", MiB, f"subformat={sub}")
        with qimg.open(path) as img:
            assert img.format == "vmdk"
    code = "import sys, qimg_vmdk; assert 'construct' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _vmware_stream(path: str, data: bytes) -> None:
    """A stream-optimized VMDK laid out as VMware writes it: grain directory at the end, footer."""
    import zlib

    grain, gtes = 65536, 512
    cap = len(data) // 512

    def header(gd: int) -> bytes:
        h = struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", 3, 0x30001, cap, 128, 1, 1, gtes, 0, gd, 128, 0,
                        b"\n \r\n", 1)
        return h + bytes(512 - len(h))

    desc = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="streamOptimized"\n'
            b'RW %d SPARSE "x.vmdk"\n' % cap)
    out = bytearray(header(0xFFFFFFFFFFFFFFFF) + desc + bytes(512 - len(desc)))
    out += bytes(128 * 512 - len(out))
    ngrains = (len(data) + grain - 1) // grain
    gt = [0] * ((ngrains + gtes - 1) // gtes * gtes)
    for g in range(ngrains):
        chunk = data[g * grain:(g + 1) * grain]
        if not any(chunk):
            continue
        comp = zlib.compress(chunk)
        gt[g] = len(out) // 512
        out += struct.pack("<QI", g * 128, len(comp)) + comp
        out += bytes(-len(out) % 512)
    gd = []
    for t in range(len(gt) // gtes):
        out += struct.pack("<QII", 4, 0, 1) + bytes(496)  # GT marker
        gd.append(len(out) // 512)
        out += struct.pack(f"<{gtes}I", *gt[t * gtes:(t + 1) * gtes])
    out += struct.pack("<QII", 1, 0, 2) + bytes(496)  # GD marker
    gd_sector = len(out) // 512
    out += struct.pack(f"<{len(gd)}I", *gd)
    out += bytes(-len(out) % 512)
    out += struct.pack("<QII", 1, 0, 3) + bytes(496)  # footer marker
    out += header(gd_sector)
    out += bytes(512)  # end-of-stream marker
    with open(path, "wb") as f:
        f.write(out)


def test_read_vmware_stream_with_footer(tmp_path, qemu_img):
    import random

    rng = random.Random(5)
    data = bytearray(40 * MiB)
    for off in (0, 3 * MiB + 65536, 33 * MiB):
        data[off:off + 200000] = rng.randbytes(200000)
    path = str(tmp_path / "x.vmdk")
    _vmware_stream(path, bytes(data))
    out = str(tmp_path / "x.raw")
    _ok(qemu_img("convert", "-O", "raw", path, out))
    assert open(out, "rb").read() == data
    with qimg.open(path) as img:
        assert img.pread(0, img.size) == data
    assert qimg_map(path) == qemu_map(qemu_img, path)
    same_info(qemu_img, path)
    with qimg.open(path, writable=True) as img, pytest.raises(QimgError):
        img.pwrite(10 * MiB, bytes(65536))


FMT = "vmdk"
CLI_VARIANTS = ["", "zeroed_grain=on", "subformat=streamOptimized", "subformat=twoGbMaxExtentSparse", "subformat=monolithicFlat"]


CLI_MATCH_VARIANTS = ["", "subformat=twoGbMaxExtentSparse"]
@pytest.mark.parametrize("create_opts", CLI_MATCH_VARIANTS)
def test_cli_matches_qemu(tmp_path, qemu_img, qemu_io, qimg, create_opts):
    format_checks.cli_matches_qemu(FMT, tmp_path, qemu_img, qemu_io, qimg, create_opts)


@pytest.mark.parametrize("create_opts", CLI_VARIANTS)
def test_cli_convert_roundtrip(tmp_path, qemu_img, qimg, create_opts):
    format_checks.convert_roundtrip(FMT, tmp_path, qemu_img, qimg, create_opts)


def test_check_truncated_like_qemu(tmp_path, qemu_img, qemu_io, qimg):
    from conftest import as_qemu

    path = str(tmp_path / "t.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", path, "4M"))
    _ok(qemu_io("-f", "vmdk", "-c", "write -P 1 0 256k", "-c", "write -P 2 1M 64k", path))
    os.truncate(path, 3 * 65536)
    for args in (["check"], ["check", "--output=json"]):
        q, m = qemu_img(*args, path), qimg(*args, path)
        assert (m.returncode, as_qemu(m.stdout), as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr)


def test_non_rw_extent_lines_are_skipped(tmp_path, qemu_img):
    """QEMU opens only RW extent lines: RDONLY and NOACCESS extents are not part of the disk."""
    path = str(tmp_path / "f.vmdk")
    _ok(qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", path, "1M"))
    text = open(path).read()
    extra = 'RDONLY 2048 FLAT "f-flat.vmdk" 0\nNOACCESS 4096 FLAT "f-flat.vmdk" 0\n'
    with open(path, "w") as f:
        f.write(text.replace("RW 2048", extra + "RW 2048"))
    q = json.loads(qemu_img("info", "--output=json", path).stdout)
    with qimg.open(path) as img:
        assert img.size == q["virtual-size"] == 1 << 20
    with open(path, "w") as f:
        f.write(text.replace("RW 2048", "RDONLY 2048"))
    with qimg.open(path) as img:  # no extent left: an empty disk, as QEMU opens it
        assert img.size == 0
        with pytest.raises(QimgError, match="no extents"):  # qemu-img info aborts on it
            img.driver.info_extra()


def test_many_extents_one_file(tmp_path, qemu_img):
    """A descriptor naming one file hundreds of times: opened once, read like qemu-img."""
    data = str(tmp_path / "data.bin")
    with open(data, "wb") as f:
        f.write(bytes(range(256)) * 8)
    lines = "".join(f'RW 1 FLAT "data.bin" {i % 4}\n' for i in range(300))
    path = str(tmp_path / "many.vmdk")
    with open(path, "w") as f:
        f.write('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n' + lines)
    out = str(tmp_path / "out.raw")
    _ok(qemu_img("convert", "-O", "raw", path, out))
    with qimg.open(path) as img:
        assert len(img.driver._own) == 1
        assert img.pread(0, img.size) == open(out, "rb").read()


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse"])
def test_convert_missing_backing_leaves_qemus_file(tmp_path, qemu_img, request, subformat):
    """qemu-img writes a sparse extent before it reads the backing file's CID: with a missing
    backing file the convert fails and leaves the image without its descriptor; so does qimg."""
    src = str(tmp_path / "s.raw")
    _ok(qemu_img("create", "-q", "-f", "raw", src, "5M"))
    outs = []
    for tool, name in ((qemu_img, "q.vmdk"), (request.getfixturevalue("qimg"), "m.vmdk")):
        args = ["convert", "-B", "nonex.vmdk", "-F", "vmdk", "-O", "vmdk", "-o", f"subformat={subformat}", src,
                str(tmp_path / name)]
        r = tool(*args)
        assert r.returncode == 1
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
