"""qcow2 validation as QEMU validates: header extensions on open, table entries when used.

Each image is made by qemu-img/qemu-io, then edited; ``info`` (open), and ``convert``/``map``
(every table entry read) must give qemu-img 7.2's and 10.0's messages and exit codes, and a
refused image must be refused before any file it names (backing file, data file) is opened.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from conftest import Run, _need, need_qemu10

L1, L2 = 0x30000, 0x40000
COPIED = 1 << 63
EXT_BITMAPS, EXT_CRYPTO, EXT_BACKING_FORMAT = 0x23852875, 0x0537BE77, 0xE2792ACA


def _run(args: list[str], env: dict | None = None, timeout: float = 60) -> Run:
    p = subprocess.run(args, capture_output=True, env=env, timeout=timeout)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def _tools(v10: bool) -> tuple[list[str], dict | None]:
    if v10:
        exe, env = need_qemu10("qemu-img")
        return [exe], env
    return [_need("qemu-img")], None


QIMG = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"]


def _both(args: list[str], v10: bool = False, timeout: float = 60) -> tuple[Run, Run]:
    tool, env = _tools(v10)
    return _run(tool + args, env, timeout), _run(QIMG + args, timeout=timeout)


def _norm(text: str) -> str:
    return text.replace("qemu-img:", "PROG:").replace("qimg:", "PROG:").strip()


def _create(path, opts: str = "", size: str = "64M") -> str:
    path = str(path)
    args = [_need("qemu-img"), "create", "-q", "-u", "-f", "qcow2", *(["-o", opts] if opts else []), path, size]
    assert subprocess.run(args, capture_output=True).returncode == 0
    return path


def _io(path: str, *cmds: str) -> None:
    args = [_need("qemu-io")]
    for c in cmds:
        args += ["-c", c]
    assert subprocess.run([*args, path], capture_output=True).returncode == 0


def _poke(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _exts(path: str, exts: list[tuple], end_marker: bool = True) -> None:
    """Replace the header extensions (at 112) by ``(type, data[, declared length])`` items."""
    out = b""
    for e in exts:
        kind, data = e[0], e[1]
        length = e[2] if len(e) > 2 else len(data)
        out += struct.pack(">II", kind, length) + data + bytes(-len(data) % 8)
    if end_marker:
        out += bytes(8)
    _poke(path, 112, out + bytes(max(0, 1024 - 112 - len(out))))


def _ext_offset(path: str, kind: int) -> int:
    with open(path, "rb") as f:
        head = f.read(65536)
    pos = 112
    while True:
        k, length = struct.unpack(">II", head[pos : pos + 8])
        if k == kind:
            return pos
        assert k, "extension not found"
        pos += 8 + (length + 7) // 8 * 8


def _autoclear_bitmaps(path: str) -> None:
    _poke(path, 88, struct.pack(">Q", 1))


def _luks(path) -> str:
    """A LUKS-encrypted image, made by qimg (qemu-img's key-derivation benchmark is unreliable
    on a loaded machine; only the header extension matters here)."""
    path = str(path)
    args = [*QIMG, "create", "-q", "--object", "secret,id=s0,data=pw", "-f", "qcow2", "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", path, "64M"]
    r = _run(args)
    assert r.returncode == 0, r.stderr
    return path


def _open_case(name: str, p: str) -> None:
    if name == "ext-too-large":
        _create(p)
        _exts(p, [(0x12345678, b"abc", 0x10000)], end_marker=False)
    elif name == "ext-one-byte-too-large":
        _create(p)
        _exts(p, [(0x12345678, b"abc", 65536 - 112 - 8 + 1)], end_marker=False)
    elif name == "ext-header-cut-by-backing-name":
        _create(p)
        _poke(p, 112, b"\x12\x34\x56\x78" + bytes(8))
        _poke(p, 8, struct.pack(">QI", 116, 4))  # the backing name starts 4 bytes into it
        _poke(p, 116, b"abcd")
    elif name == "ext-too-large-and-l1-too-small":
        _create(p)
        _exts(p, [(0x12345678, b"abc", 0x10000)], end_marker=False)
        _poke(p, 36, struct.pack(">I", 0))  # the table checks come first
    elif name == "backing-format-16":
        _create(p)
        _exts(p, [(EXT_BACKING_FORMAT, b"q" * 16)])
    elif name == "crypto-without-luks":
        _create(p)
        _exts(p, [(EXT_CRYPTO, bytes(16))])
    elif name == "crypto-size":
        _luks(p)
        _poke(p, _ext_offset(p, EXT_CRYPTO) + 4, struct.pack(">I", 8))
    elif name == "crypto-unaligned":
        _luks(p)
        pos = _ext_offset(p, EXT_CRYPTO)
        with open(p, "rb") as f:
            f.seek(pos + 8)
            off = struct.unpack(">Q", f.read(8))[0]
        _poke(p, pos + 8, struct.pack(">Q", off + 512))
    elif name.startswith("bitmaps-"):
        _create(p)
        payload = {
            "bitmaps-length": bytes(16),
            "bitmaps-reserved": struct.pack(">IIQQ", 1, 5, 24, 0x50000),
            "bitmaps-too-many": struct.pack(">IIQQ", 65536, 0, 24, 0x50000),
            "bitmaps-none": struct.pack(">IIQQ", 0, 0, 24, 0x50000),
            "bitmaps-unaligned": struct.pack(">IIQQ", 1, 0, 24, 0x50200),
            "bitmaps-directory-size": struct.pack(">IIQQ", 1, 0, (64 << 20) + 1, 0x50000),
        }[name]
        _exts(p, [(EXT_BITMAPS, payload)])
        _autoclear_bitmaps(p)
    elif name == "subcluster-128":
        _create(p, "extended_l2=on,cluster_size=16k")
        _poke(p, 20, struct.pack(">I", 12))
    else:  # pragma: no cover
        raise AssertionError(name)


OPEN_CASES = ["ext-too-large", "ext-one-byte-too-large", "ext-header-cut-by-backing-name",
              "ext-too-large-and-l1-too-small", "backing-format-16", "crypto-without-luks", "crypto-size",
              "crypto-unaligned", "bitmaps-length", "bitmaps-reserved", "bitmaps-too-many", "bitmaps-none",
              "bitmaps-unaligned", "bitmaps-directory-size", "subcluster-128"]


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
@pytest.mark.parametrize("case", OPEN_CASES)
def test_open_refuses_as_qemu(tmp_path, case, v10):
    p = str(tmp_path / "img.qcow2")
    _open_case(case, p)
    q, i = _both(["info", p], v10)
    assert q.returncode == 1
    assert (i.returncode, _norm(i.stderr)) == (q.returncode, _norm(q.stderr))


@pytest.mark.parametrize("named", ["backing", "data-file"])
def test_refused_image_opens_no_named_file(tmp_path, named):
    """A planted backing or data file name (here a FIFO, whose open would block) is never
    opened when the image is refused, by either tool."""
    fifo = str(tmp_path / "planted")
    os.mkfifo(fifo)
    p = str(tmp_path / "img.qcow2")
    if named == "backing":
        _create(p, f"backing_file={fifo},backing_fmt=raw")
    else:
        _create(p, f"data_file={tmp_path / 'data.raw'}")
        # name the FIFO as the data file (the extension is rewritten in place, same length)
        pos = _ext_offset(p, 0x44415441)
        name = fifo.encode().ljust(len(str(tmp_path / "data.raw")), b"\0")[: len(str(tmp_path / "data.raw"))]
        _poke(p, pos + 8, name)
    _poke(p, 112, struct.pack(">II", 0x12345678, 0x10000))  # and the extensions are broken
    for args in (["info", p], ["convert", "-O", "raw", p, str(tmp_path / "o.raw")], ["check", p]):
        q, i = _both(args, timeout=30)
        assert q.returncode == i.returncode == 1, args
        assert "Header extension too large" in i.stderr
        assert _norm(i.stderr) == _norm(q.stderr)


def _read_case(name: str, p: str) -> None:
    if name == "v2-zero-flag-allocated":
        _create(p, "compat=0.10")
        _io(p, "write -P 7 0 64k")
        _poke(p, L2, struct.pack(">Q", COPIED | 0x50000 | 1))
    elif name == "v2-zero-flag":
        _create(p, "compat=0.10")
        _io(p, "write -P 7 0 64k")
        _poke(p, L2 + 8, struct.pack(">Q", 1))
    elif name == "extl2-allocated-subcluster-of-unallocated-cluster":
        _create(p, "extended_l2=on")
        _io(p, "write -P 7 0 64k")
        _poke(p, L2 + 16, struct.pack(">QQ", 0, 1))
    elif name == "extl2-subcluster-allocated-and-zero":
        _create(p, "extended_l2=on")
        _io(p, "write -P 7 0 64k")
        _poke(p, L2 + 8, struct.pack(">Q", (1 << 32) | 1))
    elif name == "extl2-compressed-with-bitmap":
        _create(p, "extended_l2=on")
        _io(p, "write -c -P 7 0 64k")
        _poke(p, L2 + 8, struct.pack(">Q", 5))
    elif name == "l2-reserved-bits":
        _create(p)
        _io(p, "write -P 7 0 64k")
        _poke(p, L2, struct.pack(">Q", COPIED | 0x50000 | 2))
    elif name == "l2-table-past-eof":
        _create(p)
        _io(p, "write -P 7 0 64k")
        _poke(p, L1, struct.pack(">Q", COPIED | 0x7FFF0000))
    elif name == "data-past-eof":
        _create(p)
        _io(p, "write -P 7 0 64k")
        _poke(p, L2, struct.pack(">Q", COPIED | 0x7FFF0000))
    elif name == "unaligned-zero-cluster":
        _create(p)
        _io(p, "write -P 7 0 64k")
        _poke(p, L2, struct.pack(">Q", COPIED | 0x52A00 | 1))
    else:  # pragma: no cover
        raise AssertionError(name)


READ_CASES = ["v2-zero-flag-allocated", "v2-zero-flag", "extl2-allocated-subcluster-of-unallocated-cluster",
              "extl2-subcluster-allocated-and-zero", "extl2-compressed-with-bitmap", "l2-reserved-bits",
              "l2-table-past-eof", "data-past-eof", "unaligned-zero-cluster"]


@pytest.mark.parametrize("v10", [False, True], ids=["7.2", "10.0"])
@pytest.mark.parametrize("case", READ_CASES)
def test_table_entries_are_checked_as_qemu(tmp_path, case, v10):
    p = str(tmp_path / "img.qcow2")
    _read_case(case, p)
    tool, env = _tools(v10)
    q = _run(tool + ["convert", "-O", "raw", p, str(tmp_path / "q.raw")], env)
    i = _run(QIMG + ["convert", "-O", "raw", p, str(tmp_path / "i.raw")])
    assert (i.returncode, _norm(i.stderr)) == (q.returncode, _norm(q.stderr))
    if q.returncode == 0:
        assert (tmp_path / "q.raw").read_bytes() == (tmp_path / "i.raw").read_bytes()
    if not v10:  # (10.0's JSON map has a "compressed" key)
        q, i = _both(["map", "--output=json", p], v10)
        assert (i.returncode, i.stdout, _norm(i.stderr)) == (q.returncode, q.stdout, _norm(q.stderr))
