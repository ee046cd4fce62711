"""The cloop plugin (read-only) against qemu-img 7.2 and 10.0: volumes made by
create_compressed_fs (Debian's cloop-utils; block sizes, compression levels, its 7-zip deflate)
and by a test-side writer (tests/ro_writers.py: the cloop 4 preamble QEMU reads with -f cloop
only, odd block counts), hostile headers and tables, and every writing command refused as
qemu-img refuses it."""
from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import zlib

import pytest
import qimg as lib
from qimg.errors import QimgError
from ro_checks import check_reads_as_qemu, check_writes_refused, compare_runs
from ro_writers import CLOOP_V2, CLOOP_V4, cloop_image

MiB = 1 << 20


def need_create_compressed_fs() -> str:
    exe = shutil.which("create_compressed_fs")
    if exe is None:
        msg = "create_compressed_fs (Debian package cloop-utils) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the producer is required")
        pytest.skip(msg)
    return exe


def pattern(size: int, seed: int = 3) -> bytes:
    """Incompressible, compressible and zero stretches."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rnd.randrange(3)
        n = rnd.choice((700, 4096, 70000, 200000))
        out += rnd.randbytes(n) if kind == 0 else (b"text %d " % rnd.randrange(1000)) * (n // 8) if kind == 1 else bytes(n)
    return bytes(out[:size])


def make(tmp_path, data: bytes, *opts: str) -> str:
    src, out = tmp_path / "src.iso", tmp_path / "vol.cloop"
    src.write_bytes(data)
    p = subprocess.run([need_create_compressed_fs(), "-q", *opts, str(src), str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(out)


@pytest.mark.parametrize("opts", [(), ("-B", "512"), ("-B", "262144"), ("-L", "0"), ("-L", "-1"), ("-b",)],
                         ids=["default", "B512", "B256k", "L0", "7zip", "best"])
def test_create_compressed_fs(qemu_img, qemu_img_10, tmp_path, opts):
    data = pattern(MiB + 12345)
    path = make(tmp_path, data, *opts)
    out = check_reads_as_qemu(qemu_img, path, "cloop", tmp_path)
    assert out[:len(data)] == data and not any(out[len(data):])  # the last block is zero padded
    check_reads_as_qemu(qemu_img_10, path, "cloop", tmp_path, ten=True, full=False)
    with lib.open(path) as img:
        assert img.format == "cloop"
        for off, n in ((1, 511), (65535, 2), (100000, 300000), (len(data) - 10, 10)):
            assert img.pread(off, n) == data[off:off + n]


@pytest.mark.parametrize("kw", [dict(block_size=512), dict(block_size=64 * MiB), dict(level=0),
                                dict(preamble=CLOOP_V4), dict(preamble=b"")],
                         ids=["block512", "block64M", "stored", "v4-preamble", "no-preamble"])
def test_writer_variants(qemu_img, qemu_img_10, tmp_path, kw):
    """Layouts QEMU accepts that create_compressed_fs does not make; without the V2.0 preamble
    probing says raw (as qemu-img's), -f cloop reads it."""
    data = pattern(3 * MiB, seed=len(kw))
    path = tmp_path / "w.cloop"
    path.write_bytes(cloop_image(data, **kw))
    out = check_reads_as_qemu(qemu_img, str(path), "cloop", tmp_path)
    assert out[:len(data)] == data
    check_reads_as_qemu(qemu_img_10, str(path), "cloop", tmp_path, ten=True, full=False)


def test_writes_refused(qemu_img, qemu_img_10, tmp_path):
    path = tmp_path / "w.cloop"
    path.write_bytes(cloop_image(pattern(MiB)))
    check_writes_refused(qemu_img, str(path), "cloop", tmp_path)
    check_writes_refused(qemu_img_10, str(path), "cloop", tmp_path, ten=True)
    with pytest.raises(QimgError, match="^Could not open '.*': Image is read-only$"):
        lib.open(str(path), writable=True)


def _with_offsets(image: bytes, edits: dict[int, int]) -> bytes:
    out = bytearray(image)
    for i, value in edits.items():
        struct.pack_into(">Q", out, 136 + 8 * i, value)
    return bytes(out)


def _hostile() -> dict[str, bytes]:
    data = pattern(8 * 65536 + 100, seed=9)
    base = cloop_image(data)  # 9 blocks, 10 offsets
    head = bytearray(base)

    def header(block_size: int, n_blocks: int, rest: bytes = base[136:]) -> bytes:
        return CLOOP_V2.ljust(128, b"\0") + struct.pack(">II", block_size, n_blocks) + rest

    off = [struct.unpack_from(">Q", base, 136 + 8 * i)[0] for i in range(10)]
    bad_block = bytearray(base)
    bad_block[off[3] + 5:off[3] + 9] = b"\xff\xff\xff\xff"  # a corrupt zlib stream in block 3
    short_block = cloop_image(data[:65536])[:-1] + b""  # the last stream cut by one byte
    long_stream = zlib.compress(bytes(65536 + 512))
    long_block = CLOOP_V2.ljust(128, b"\0") + struct.pack(">IIQQ", 65536, 1, 152, 152 + len(long_stream)) + long_stream
    short_stream = zlib.compress(bytes(65536 - 512))
    short_out = CLOOP_V2.ljust(128, b"\0") + struct.pack(">IIQQ", 65536, 1, 152, 152 + len(short_stream)) + short_stream
    del head
    return {
        "block-size-odd": header(1000, 9),
        "block-size-zero": header(0, 9),
        "block-size-huge": header(128 * MiB, 9),
        "n-blocks-too-many": header(65536, 0x20000000),
        "table-too-large": header(512, 0x4000000),
        "table-largest": header(65536, 0x3FFFFFF, b""),
        "table-past-eof": base[:136 + 8 * 4],
        "no-blocks": header(65536, 0, struct.pack(">Q", 144)),
        "decreasing": _with_offsets(base, {4: off[2]}),
        "block-too-big": _with_offsets(base, {9: off[8] + 2 * 64 * MiB + 1}),
        "offsets-past-eof": _with_offsets(base, {8: off[8] + 10 * MiB, 9: off[8] + 11 * MiB}),
        "offset-flags": _with_offsets(base, {i: off[i] | (1 << 60) for i in range(5, 10)}),
        "offsets-beyond-2-63": _with_offsets(base, {i: (1 << 63) + off[i] for i in range(5, 10)}),
        "corrupt-stream": bytes(bad_block),
        "stream-cut": short_block,
        "stream-too-long": long_block,
        "stream-too-short": short_out,
        "size-wraps": header(64 * MiB, 0x100, base[136:]),
        "truncated-header": base[:130],
    }


HOSTILE = _hostile()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile(qemu_img, tmp_path, name):
    path = tmp_path / "h.cloop"
    path.write_bytes(HOSTILE[name])
    check_reads_as_qemu(qemu_img, str(path), "cloop", tmp_path, full=False)


def test_read_error_names_the_byte(qemu_img, tmp_path):
    """convert stops at the corrupt block with qemu-img's message; --salvage reads around it."""
    path = tmp_path / "h.cloop"
    path.write_bytes(HOSTILE["corrupt-stream"])
    out = str(tmp_path / "o.raw")
    compare_runs(qemu_img, [["convert", "-f", "cloop", "-O", "raw", str(path), out],
                            ["convert", "--salvage", "-f", "cloop", "-O", "raw", str(path), out],
                            ["compare", "-f", "cloop", "-F", "cloop", str(path), str(path)]], False)
