"""A third-party corpus: images neither qemu-img nor qimg made, read by both (issue 17).

Sources (tests/third_party.py, tests/corpus/README.md): FreeBSD mkimg's test vectors (committed
hexdumps), log2timeline/dfvfs's test data (qcow2, vhd, vmdk, dmg; committed xz-compressed)
and QEMU's own sample images (Hyper-V, Virtual PC, Disk2VHD, VMware, Parallels, DMG,
cloop, bochs and fuzzed samples; fetched at run time, never committed), and a streamOptimized
vmdk made here by python3-vmdkstream. Images made by other Debian producers are also in
test_bochs.py (bximage), test_cloop.py (create_compressed_fs) and test_luks.py (cryptsetup).

For each image, against each oracle (qemu-img 7.2 and 10.0, qimg in the matching profile):
info (human, JSON, probed and with -f), check, map and measure (human and JSON), compare with
qemu-img's raw copy, and convert to raw, byte for byte; all with the same exit code, stdout and
stderr as qemu-img. Then (virtual sizes up to 1 GiB; all with QIMG_CORPUS_FULL=1) qimg converts the image into every format it writes, and qemu-img
checks each output and compares it with the image; qimg converts each back to raw, compared
with qemu-img's raw copy.
"""
from __future__ import annotations

import os

import pytest
from cli_support import as_oracle, oracle_path, run_qemu_version, run_qimg
from third_party import (
    QEMU_SAMPLES,
    dfvfs_image,
    dfvfs_images,
    mkimg_image,
    mkimg_images,
    qemu_sample,
    vmdkstream_image,
)

#: what qimg writes and qemu-img checks back (luks needs a secret: test_luks.py)
WRITABLE = ("raw", "qcow2", "qcow", "qed", "vdi", "vpc", "vhdx", "vmdk", "parallels")
#: formats whose check qemu-img cannot run ("This image format does not support checks")
NO_CHECK = {"raw", "qcow", "vpc"}
#: the round trip runs on images up to this virtual size by default (qemu-img's own compare of
#: a sparse 127 GiB image with a qcow, vdi, vmdk or vhdx copy takes minutes); QIMG_CORPUS_FULL=1
#: runs it on every image
ROUND_TRIP_MAX = 1 << 30
#: byte-compare raw outputs in Python up to this size; larger ones through qemu-img compare
SMALL = 64 << 20

MKIMG_FORMAT = {"qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "vhdf": "vpc", "vhdx": "vhdx",
                "vmdk": "vmdk", "vmdks": "vmdk", "raw": "raw"}

CASES = [pytest.param(("mkimg", p), id=f"mkimg-{p.name[:-4]}") for p in mkimg_images()] + \
        [pytest.param(("dfvfs", p), id=f"dfvfs-{p.name[:-3]}") for p in dfvfs_images()] + \
        [pytest.param(("qemu", n), id=f"qemu-{n}") for n in QEMU_SAMPLES] + \
        [pytest.param(("vmdkstream", None), id="vmdkstream")]


def _image(case, folder):
    """(name in folder, format) of a corpus case."""
    kind, what = case
    if kind == "mkimg":
        path = mkimg_image(what, folder)
        return path.name, MKIMG_FORMAT[path.name.rsplit(".", 1)[1]]
    if kind == "dfvfs":
        path = dfvfs_image(what, folder)
        return path.name, {"qcow2": "qcow2", "vhd": "vpc", "vmdk": "vmdk", "dmg": "dmg"}[path.name.rsplit(".", 1)[1]]
    if kind == "vmdkstream":
        return vmdkstream_image(folder).name, "vmdk"
    os.symlink(qemu_sample(what), folder / what)
    return what, QEMU_SAMPLES[what]


def _notices(text):
    """qemu-img's stderr without Debian 7.2's packaging notice for the dmg modules it lacks
    ('qemu: module block-block-dmg-bz2 not found, ...'; see test_dmg.py)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("qemu: module "))


def _same(profile, folder, *args):
    mine, theirs = as_oracle(profile, *args, cwd=folder)
    theirs.stderr = _notices(theirs.stderr)
    assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr), \
        f"{' '.join(args)}:\nqimg:     {mine!r}\nqemu-img: {theirs!r}"
    return theirs


def _same_bytes(profile, folder, a, b, what="", grown=False):
    """Raw files ``a`` and ``b`` hold the same bytes; with ``grown``, ``a`` may be longer with
    zeroes after ``b``'s end (a format that rounds the size up: vpc to its geometry)."""
    pa, pb = folder / a, folder / b
    if pa.stat().st_size <= SMALL and pb.stat().st_size <= SMALL:
        da, db = pa.read_bytes(), pb.read_bytes()
        if grown:
            assert not da[len(db):].strip(b"\0"), f"{what}: {a} has data past {b}'s end"
            da = da[:len(db)]
        assert da == db, f"{what}: {a} and {b} differ"
    else:
        if not grown:
            assert pa.stat().st_size == pb.stat().st_size, f"{what}: {a} and {b} differ in size"
        r = run_qemu_version(profile, "compare", "-q", "-f", "raw", "-F", "raw", a, b, cwd=folder)
        assert r.returncode == 0, f"{what}: {a} and {b} differ: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("case", CASES)
def test_reads_as_qemu_img(case, oracle, tmp_path):
    name, fmt = _image(case, tmp_path)
    f = ["-f", fmt]
    _same(oracle, tmp_path, "info", name)
    _same(oracle, tmp_path, "info", "--output=json", name)
    for args in (["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"],
                 ["map"], ["map", "--output=json"], ["measure", "-O", "qcow2"],
                 ["measure", "--output=json", "-O", "qcow2"]):
        _same(oracle, tmp_path, *args, *f, name)
    theirs = run_qemu_version(oracle, "convert", *f, "-O", "raw", name, "ref.raw", cwd=tmp_path)
    mine = run_qimg("convert", *f, "-O", "raw", name, "mine.raw", cwd=tmp_path, profile=oracle,
                    prog=oracle_path(oracle))
    assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, _notices(theirs.stderr))
    if theirs.returncode:
        return
    _same_bytes(oracle, tmp_path, "mine.raw", "ref.raw")
    _same(oracle, tmp_path, "compare", *f, "-F", "raw", name, "ref.raw")


@pytest.mark.parametrize("case", CASES)
def test_converts_into_every_format(case, oracle, tmp_path):
    name, fmt = _image(case, tmp_path)
    if run_qemu_version(oracle, "convert", "-f", fmt, "-O", "raw", name, "ref.raw", cwd=tmp_path).returncode:
        pytest.skip("qemu-img cannot read this image either (test_reads_as_qemu_img compares the errors)")
    if (tmp_path / "ref.raw").stat().st_size > ROUND_TRIP_MAX and not os.environ.get("QIMG_CORPUS_FULL"):
        pytest.skip("virtual size over 1 GiB: QIMG_CORPUS_FULL=1 runs the round trip")
    for out_fmt in WRITABLE:
        out = f"out.{out_fmt}"
        r = run_qimg("convert", "-f", fmt, "-O", out_fmt, name, out, cwd=tmp_path, profile=oracle)
        assert r.returncode == 0, (out_fmt, r)
        if out_fmt not in NO_CHECK:
            c = run_qemu_version(oracle, "check", "-f", out_fmt, out, cwd=tmp_path)
            assert c.returncode == 0, (out_fmt, c)
        c = run_qemu_version(oracle, "compare", "-f", fmt, "-F", out_fmt, name, out, cwd=tmp_path)
        assert c.returncode == 0, (out_fmt, c)
        r = run_qimg("convert", "-f", out_fmt, "-O", "raw", out, "back.raw", cwd=tmp_path, profile=oracle)
        assert r.returncode == 0, (out_fmt, r)
        _same_bytes(oracle, tmp_path, "back.raw", "ref.raw", out_fmt, grown=True)
        os.unlink(tmp_path / out)
        os.unlink(tmp_path / "back.raw")
