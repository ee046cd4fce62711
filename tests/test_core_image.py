"""The block layer, the public library API and the registry, on raw images."""
from __future__ import annotations

import os

import pytest
import qimg
from qimg.blockstatus import DATA, ZERO
from qimg.errors import QimgError
from qimg.options import BOOL, SIZE, Option, parse_options, split_options
from qimg.registry import Registry


def test_create_open_read_write(tmp_path):
    path = str(tmp_path / "a.raw")
    qimg.create(path, "raw", 1 << 20)
    assert os.path.getsize(path) == 1 << 20
    with qimg.open(path, writable=True) as img:
        assert img.format == "raw" and img.size == 1 << 20
        img.pwrite(4095, b"xyz")
        assert img.pread(4094, 5) == b"\0xyz\0"
        # reading past the end gives zeroes, never an error
        assert img.pread((1 << 20) - 2, 4) == b"\0" * 4
        with pytest.raises(QimgError):
            img.pwrite((1 << 20) - 1, b"ab")


def test_read_only_refuses_writes(tmp_path):
    path = str(tmp_path / "a.raw")
    qimg.create(path, "raw", 65536)
    with qimg.open(path) as img, pytest.raises(QimgError, match="read-only"):
        img.pwrite(0, b"x")


def test_extents_follow_holes(tmp_path):
    path = str(tmp_path / "a.raw")
    qimg.create(path, "raw", 4 << 20)
    with qimg.open(path, writable=True) as img:
        img.pwrite(1 << 20, b"\1" * 65536)
        img.flush()
        runs = [(s.flags & (DATA | ZERO), s.length) for s in img.extents()]
    assert sum(n for _, n in runs) == 4 << 20
    assert any(f & DATA for f, _ in runs) and any(f & ZERO for f, _ in runs)


def test_image_as_file(tmp_path):
    path = str(tmp_path / "a.raw")
    qimg.create(path, "raw", 8192)
    with qimg.open(path, writable=True) as img:
        f = img.as_file()
        f.seek(100)
        f.write(b"hello")
        f.seek(-8092, os.SEEK_END)
        assert f.read(5) == b"hello"
        f.seek(8190)
        assert f.read(10) == b"\0\0"


def test_missing_file_message(tmp_path):
    with pytest.raises(QimgError, match="Could not open '.*nope': No such file or directory"):
        qimg.open(str(tmp_path / "nope"))


def test_unknown_format():
    with pytest.raises(QimgError, match="Unknown file format 'nosuch'"):
        qimg.create("/nonexistent/x", "nosuch", 1)


def test_registry_refuses_duplicates_and_probes():
    reg = Registry()
    reg.add_format("a", "m:A", probe=lambda head, name: 1)
    reg.add_format("b", "m:B", probe=lambda head, name: 100 if head.startswith(b"BB") else 0)
    with pytest.raises(QimgError, match="registered twice"):
        reg.add_format("a", "m:A2")
    assert reg.probe(b"BBxx", "f").name == "b"
    assert reg.probe(b"xx", "f").name == "a"


def test_option_strings():
    assert split_options("a=1,b=x,,y,c") == [("a", "1"), ("b", "x,y"), ("c", None)]
    decl = [Option("size", SIZE, "s"), Option("flag", BOOL, "f")]
    assert parse_options("size=1M,flag", decl) == {"size": 1 << 20, "flag": True}
    assert parse_options("flag=off,size=2k", decl) == {"size": 2048, "flag": False}
    with pytest.raises(QimgError, match="Invalid parameter 'nope'"):
        parse_options("nope=1", decl)
    with pytest.raises(QimgError, match="expects 'on' or 'off'"):
        parse_options("flag=maybe", decl)


def test_broken_driver_path_is_one_clean_error():
    reg = Registry()
    reg.add_format("x", "qimg_no_such_module.driver:Cls")
    with pytest.raises(QimgError, match="Could not load the format driver 'x'"):
        reg.format("x").load()


def test_broken_plugin_entry_point_is_one_clean_error(tmp_path, qimg):
    """A registered plugin whose module cannot be imported: one line, exit 1, no traceback."""
    dist = tmp_path / "qimg_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qimg-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qimg]\nbroken = qimg_broken_missing_module\n")
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = qimg("--help", env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("qimg: Could not load plugin 'broken'")
    r = qimg("--help", env={**env, "QIMG_DISABLE_PLUGINS": "broken"})
    assert r.returncode == 0 and "Supported formats:" in r.stdout


def test_short_form_booleans_as_qemuopts():
    decl = [Option("size", SIZE, "s"), Option("flag", BOOL, "f")]
    assert parse_options("noflag", decl) == {"flag": False}
    assert parse_options("flag", decl) == {"flag": True}
    with pytest.raises(QimgError, match="Invalid parameter 'cow'"):
        parse_options("nocow", decl)
    with pytest.raises(QimgError, match="Parameter 'size' expects"):
        parse_options("nosize", decl)


@pytest.mark.parametrize("opt", ["nolazy_refcounts", "lazy_refcounts", "nocow", "nosize", "noextended_l2"])
def test_short_form_options_like_qemu_img(opt, tmp_path, qemu_img, qimg):
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    theirs = qemu_img("create", "-q", "-f", "qcow2", "-o", opt, a, "1M")
    mine = qimg("create", "-q", "-f", "qcow2", "-o", opt, b, "1M")
    assert mine.returncode == theirs.returncode
    assert mine.stderr.replace("qimg:", "qemu-img:").replace(b, a) == theirs.stderr
    if theirs.returncode == 0:
        assert open(a, "rb").read() == open(b, "rb").read()
