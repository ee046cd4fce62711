"""The library API (``qimg.info``, ``qimg.convert``, ... docs/library.md): typed results that
equal what qemu-img reports for the same images, images qemu-img accepts, errors that are the
matching built-in exceptions with qemu-img's message, and the image as a Python file."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import qimg
from qimg.results import Allocation


def qjson(qemu_img, *args: str):
    r = qemu_img(*args, "--output=json")
    assert r.returncode in (0, 2, 3), r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def chain(tmp_path: Path, qemu_img, qemu_io) -> Path:
    """base.qcow2 <- top.qcow2 made by qemu-img, data in both layers."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(base), "8M").returncode == 0
    assert qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 4M 512k", str(base)).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top)).returncode == 0
    assert qemu_io("-c", "write -P 0x33 512k 1M", "-c", "write -z 4M 64k", str(top)).returncode == 0
    return top


def test_every_command_has_a_function() -> None:
    for name in ("open", "open_file", "create", "info", "check", "convert", "compare", "commit", "rebase", "resize",
                 "measure", "map"):
        assert callable(getattr(qimg, name)) and (name in qimg.__all__) == (name not in ("open", "map")), name
    star: dict = {}
    exec("from qimg import *", star)
    assert "open" not in star and "map" not in star and "convert" in star  # built-ins stay
    for name in ("ImageInfo", "CheckReport", "MapEntry", "Measurement", "Comparison", "Progress"):
        assert dataclasses.is_dataclass(getattr(qimg, name)), name
    assert issubclass(qimg.Allocation, __import__("enum").IntFlag)
    assert (Path(qimg.__file__).parent / "py.typed").is_file()


def test_info_as_qemu_img(chain: Path, qemu_img) -> None:
    info = qimg.info(chain, backing_chain=True)
    expected = qjson(qemu_img, "info", "--backing-chain", str(chain))
    assert [i.data for i in info.chain] == expected  # qemu-img lists the chain flat
    assert info.format == "qcow2" and info.virtual_size == 8 << 20 and info.cluster_size == 65536
    assert info.backing_filename == "base.qcow2" and info.backing_format == "qcow2"
    assert info.backing is not None and info.backing.filename == str(chain.parent / "base.qcow2")
    assert info.format_specific is not None and info.format_specific["compat"] == "1.1"
    assert qimg.info(str(chain)).backing is None  # only what was asked for
    with qimg.open(chain) as img:  # an open image: the same facts
        assert qimg.info(img).to_dict() == qjson(qemu_img, "info", str(chain))


def test_map_as_qemu_img(chain: Path, qemu_img) -> None:
    entries = qimg.map(chain)
    expected = qjson(qemu_img, "map", str(chain))
    got = [e.to_dict() for e in entries]
    if expected and "compressed" not in expected[0]:  # qemu-img 7.2 has no such key
        for g in got:
            del g["compressed"]
    assert got == expected
    assert entries[0].start == 0 and entries[-1].end == 8 << 20
    e = next(e for e in entries if e.depth == 1 and e.data)
    assert e.flags == Allocation.DATA | Allocation.ALLOCATED | Allocation.OFFSET_VALID
    assert e.filename == str(chain.parent / "base.qcow2")
    part = qimg.map(chain, start=1 << 20, length=1 << 20)
    assert part[0].start == 1 << 20 and sum(e.length for e in part) == 1 << 20


def test_check_as_qemu_img(chain: Path, tmp_path: Path, qemu_img) -> None:
    report = qimg.check(chain)
    assert report.ok and report.exit_code == 0
    assert report.to_dict() == qjson(qemu_img, "check", str(chain))
    raw = tmp_path / "x.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(NotImplementedError) as e:  # qemu-img: exit status 63
        qimg.check(raw, fmt="raw")
    assert isinstance(e.value, qimg.NotSupported) and str(e.value) == "This image format does not support checks"


def test_check_finds_and_repairs_leaks(tmp_path: Path, qemu_img, qemu_io) -> None:
    import struct

    img = tmp_path / "leak.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "4M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 64k", str(img)).returncode == 0
    with open(img, "r+b") as f:  # a cluster past the end, counted by the refcount block: a leak
        f.seek(48)
        (rt,) = struct.unpack(">Q", f.read(8))
        f.seek(rt)
        (rb,) = struct.unpack(">Q", f.read(8))
        end = f.seek(0, 2)
        f.seek(rb + 2 * (end // 65536))
        f.write(struct.pack(">H", 1))
        f.seek(end)
        f.write(bytes(65536))
    expected = qjson(qemu_img, "check", str(img))
    report = qimg.check(img)
    assert report.to_dict() == expected and report.leaks == 1 and not report.ok and report.exit_code == 3
    assert report.messages and "Leaked cluster" in report.messages[0]  # the CLI prints them on stderr
    fixed = qimg.check(img, repair="leaks")
    assert fixed.leaks_fixed == 1 and fixed.ok and fixed.exit_code == 0
    assert qemu_img("check", str(img)).returncode == 0
    with pytest.raises(ValueError, match="expecting 'leaks' or 'all'"):
        qimg.check(img, repair="everything")


def test_convert_with_progress(chain: Path, tmp_path: Path, qemu_img) -> None:
    out = tmp_path / "out.qcow2"
    seen: list[qimg.Progress] = []
    qimg.convert(chain, out, out_fmt="qcow2", options={"cluster_size": 16384, "lazy_refcounts": True},
                 progress=seen.append)
    assert qemu_img("compare", str(chain), str(out)).returncode == 0
    assert qemu_img("check", "-q", str(out)).returncode == 0
    info = qjson(qemu_img, "info", str(out))
    assert info["cluster-size"] == 16384 and info["format-specific"]["data"]["lazy-refcounts"] is True
    assert seen and seen[-1].phase == "done" and seen[-1].fraction == 1.0
    assert all(p.operation == "convert" for p in seen)
    dones = [p.done for p in seen]
    assert dones == sorted(dones) and seen[-1].done == seen[-1].total > 0
    # several sources are concatenated; an open image is used as it is
    two = tmp_path / "two.raw"
    with qimg.open(chain) as img:
        qimg.convert([img, chain], two)
        assert not img.closed
    assert two.stat().st_size == 16 << 20
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(two), str(chain)).returncode == 1  # sizes differ


def test_compare_as_qemu_img(chain: Path, tmp_path: Path, qemu_img, qemu_io) -> None:
    copy = tmp_path / "copy.raw"
    assert qemu_img("convert", "-O", "raw", str(chain), str(copy)).returncode == 0
    same = qimg.compare(chain, copy, fmt2="raw")
    assert same and same.identical and same.offset is None and same.message == "Images are identical."
    assert qemu_io("-f", "raw", "-c", "write -P 0x44 3000000 10", str(copy)).returncode == 0
    diff = qimg.compare(chain, copy, fmt2="raw")
    q = qemu_img("compare", "-F", "raw", str(chain), str(copy))
    assert not diff and q.returncode == 1 and diff.message == q.stdout.strip()
    assert diff.offset == 3000000 // 512 * 512


def test_commit_rebase_resize(chain: Path, tmp_path: Path, qemu_img) -> None:
    expected = tmp_path / "expected.raw"
    assert qemu_img("convert", "-O", "raw", str(chain), str(expected)).returncode == 0
    seen: list[qimg.Progress] = []
    qimg.commit(chain, progress=seen.append)
    assert seen[-1].phase == "done" and {p.operation for p in seen} == {"commit"}
    base = chain.parent / "base.qcow2"
    assert qemu_img("compare", "-F", "raw", str(base), str(expected)).returncode == 0
    # rebase onto nothing: the data of the old backing file is copied in
    qimg.rebase(chain, None)
    assert qimg.info(chain).backing_filename is None
    assert qemu_img("compare", "-F", "raw", str(chain), str(expected)).returncode == 0
    assert qimg.resize(chain, "+1M") == 9 << 20
    assert qimg.resize(chain, 10 << 20) == 10 << 20
    with pytest.raises(ValueError, match="--shrink"):
        qimg.resize(chain, "1M")
    assert qjson(qemu_img, "info", str(chain))["virtual-size"] == 10 << 20
    assert qemu_img("check", "-q", str(chain)).returncode == 0


def test_measure_as_qemu_img(chain: Path, qemu_img) -> None:
    m = qimg.measure("qcow2", source=chain)
    q = qjson(qemu_img, "measure", "-O", "qcow2", str(chain))
    assert (m.required, m.fully_allocated) == (q["required"], q["fully-allocated"])
    m = qimg.measure("qcow2", size=1 << 30, options={"cluster_size": "2M"})
    q = qjson(qemu_img, "measure", "-O", "qcow2", "-o", "cluster_size=2M", "--size", "1G")
    assert (m.required, m.fully_allocated) == (q["required"], q["fully-allocated"])


def test_errors_are_builtin_exceptions_with_qemu_img_messages(tmp_path: Path, qemu_img) -> None:
    missing = tmp_path / "missing.qcow2"
    q = qemu_img("info", str(missing))
    with pytest.raises(FileNotFoundError) as e:
        qimg.info(missing)
    assert isinstance(e.value, qimg.QimgError) and e.value.errno == errno.ENOENT
    assert "qemu-img: " + str(e.value) == q.stderr.strip()
    with pytest.raises(FileNotFoundError):
        qimg.open(missing)
    with pytest.raises(ValueError) as v:
        qimg.create(tmp_path / "x.img", "nosuchformat", 1 << 20)
    q = qemu_img("create", "-f", "nosuchformat", str(tmp_path / "y.img"), "1M")
    assert isinstance(v.value, qimg.QimgError) and q.stderr.strip().endswith(": " + str(v.value))
    with pytest.raises(ValueError, match="Parameter 'cluster_size'"):
        qimg.create(tmp_path / "x.qcow2", "qcow2", 1 << 20, {"cluster_size": "lots"})
    with pytest.raises(qimg.QimgError, match="to be a regular file"):
        qimg.info(tmp_path)
    if os.geteuid() != 0:  # root reads every file
        locked = tmp_path / "locked.qcow2"
        qimg.create(locked, "qcow2", 1 << 20)
        locked.chmod(0)
        with pytest.raises(PermissionError):
            qimg.info(locked)


def test_image_is_a_file(chain: Path, tmp_path: Path, qemu_img, qemu_io) -> None:
    expected = tmp_path / "expected.raw"
    assert qemu_img("convert", "-O", "raw", str(chain), str(expected)).returncode == 0
    want = expected.read_bytes()
    with qimg.open(chain) as img:
        assert [i.filename for i in img.chain] == [str(chain), str(chain.parent / "base.qcow2")]
        assert img.chain() == img.chain  # earlier versions' method call still works
        f = img.as_file()
        assert isinstance(f, io.RawIOBase) and f.readable() and f.seekable() and not f.writable()
        out = io.BytesIO()
        shutil.copyfileobj(f, out, 1 << 20)
        assert out.getvalue() == want
        assert f.seek(-10, io.SEEK_END) == len(want) - 10 and f.read(100) == want[-10:] and f.read(1) == b""
        buf = bytearray(4096)
        f.seek(600 * 1024)
        assert f.readinto(buf) == 4096 and f.tell() == 600 * 1024 + 4096 and bytes(buf) == want[600 * 1024:604 * 1024]
        f.seek(0)
        assert hashlib.sha256(io.BufferedReader(f).read()).digest() == hashlib.sha256(want).digest()
        statuses = list(img.extents())
        assert all(isinstance(s.allocation, Allocation) for s in statuses)
        assert any(s.allocation & Allocation.ZERO for s in statuses)
    # tarfile reads the disk's bytes from the image file
    tar = tmp_path / "disk.tar"
    with qimg.open_file(chain) as f, tarfile.open(tar, "w") as t:
        ti = tarfile.TarInfo("disk.raw")
        ti.size = qimg.info(chain).virtual_size
        t.addfile(ti, f)
    with tarfile.open(tar) as t:
        assert t.extractfile("disk.raw").read() == want
    # writes through the file land where qemu-io reads them
    with qimg.open_file(chain, mode="r+b") as f:
        f.seek(5 << 20)
        assert f.write(b"\xab" * 1000) == 1000
        f.seek(-1, io.SEEK_END)
        with pytest.raises(OSError) as e:
            f.write(b"xy")  # past the end of the disk
        assert e.value.errno == errno.ENOSPC
    assert f.closed
    r = qemu_io("-c", f"read -P 0xab {5 << 20} 1000", str(chain))
    assert r.returncode == 0 and "read 1000/1000" in r.stdout, r.stdout + r.stderr
    with qimg.open(chain) as img, pytest.raises(io.UnsupportedOperation):
        img.as_file().write(b"x")


def test_progress_callback_feeds_the_json_stream(chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``QIMG_PROGRESS_FD``: what the callback gets, also as JSON lines on the descriptor."""
    r, w = os.pipe()
    try:
        monkeypatch.setenv("QIMG_PROGRESS_FD", str(w))
        seen: list[qimg.Progress] = []
        qimg.convert(chain, tmp_path / "out.raw", progress=seen.append)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            lines = [json.loads(x) for x in f.read().splitlines()]
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert lines[-1] == {"operation": "convert", "phase": "done", "bytes_done": seen[-1].done,
                         "bytes_total": seen[-1].total}
    assert {(x["operation"], x["phase"]) for x in lines} <= {("convert", "copy"), ("convert", "done")}
    assert [x["bytes_done"] for x in lines] == sorted(x["bytes_done"] for x in lines)


def test_define_object_secrets_and_tls(tmp_path, qemu_img) -> None:
    """qimg.define_object takes qemu-img's --object syntax: an image the library encrypts with a
    secret reads back in qemu-img with the same passphrase; a bad definition is qemu-img's
    message; forget_objects drops them."""
    img = tmp_path / "enc.qcow2"
    qimg.forget_objects()
    try:
        qimg.define_object("secret,id=s0,data=pw")
        qimg.create(str(img), "qcow2", 1 << 20, {"encrypt.format": "luks", "encrypt.key-secret": "s0",
                                                 "encrypt.iter-time": 10})
        with qimg.open(str(img), writable=True, options={"encrypt.key-secret": "s0"}) as d:
            d.pwrite(4096, b"\x5a" * 8192)
        r = qemu_img("convert", "--object", "secret,id=s0,data=pw", "--image-opts",
                     f"driver=qcow2,file.filename={img},encrypt.key-secret=s0", "-O", "raw", str(tmp_path / "out.raw"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out.raw").read_bytes() == bytes(4096) + b"\x5a" * 8192 + bytes((1 << 20) - 12288)
        with pytest.raises(qimg.QimgError, match="attempt to add duplicate property 's0'"):
            qimg.define_object("tls-creds-anon,id=s0")
        with pytest.raises(qimg.QimgError, match=r"Unable to access credentials .*/ca-cert.pem"):
            qimg.define_object(f"tls-creds-x509,id=t0,dir={tmp_path}")
        qimg.forget_objects()
        with pytest.raises(qimg.QimgError, match="No secret with id 's0'"):
            qimg.open(str(img), options={"encrypt.key-secret": "s0"})
    finally:
        qimg.forget_objects()
