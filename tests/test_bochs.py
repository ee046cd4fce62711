"""The bochs plugin (read-only) against qemu-img 7.2 and 10.0: images made by bximage (Debian's
bochs tools) and by a test-side writer (tests/ro_writers.py: version 1 and 2 headers, extent
sizes bximage never uses, slots out of order, stale data behind clear bitmap bits), hostile
headers, and every writing command refused as qemu-img refuses it."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import qimg as lib
from qimg.errors import QimgError
from ro_checks import check_reads_as_qemu, check_writes_refused
from ro_writers import bochs_image, bochs_patch

MiB = 1 << 20


def need_bximage() -> str:
    exe = shutil.which("bximage")
    if exe is None:
        msg = "bximage (Debian package bximage) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the producer is required")
        pytest.skip(msg)
    return exe


def pattern(size: int, seed: int = 1) -> bytes:
    """Data with whole zero sectors, zero extents and partly written extents."""
    out = bytearray(size)
    rnd = __import__("random").Random(seed)
    for _ in range(size // 8192):
        off = rnd.randrange(0, size // 512) * 512
        n = rnd.choice((512, 1024, 4096, 20000))
        out[off:off + n] = rnd.randbytes(min(n, size - off))
    out[size // 3:size // 3 + 64 * 1024] = bytes(64 * 1024)
    return bytes(out)


def bximage(*args: str) -> None:
    p = subprocess.run([need_bximage(), "-q", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("size", ["10M", "130M"])
def test_bximage_empty(qemu_img, qemu_img_10, tmp_path, size):
    path = str(tmp_path / "empty.img")
    bximage("-func=create", f"-hd={size}", "-imgmode=growing", path)
    data = check_reads_as_qemu(qemu_img, path, "bochs", tmp_path)
    assert not any(data)
    check_reads_as_qemu(qemu_img_10, path, "bochs", tmp_path, ten=True)


@pytest.mark.parametrize("size", [MiB, 3 * MiB + 512 * 7])
def test_bximage_converted(qemu_img, qemu_img_10, tmp_path, size):
    src = tmp_path / "src.raw"
    data = pattern(size)
    src.write_bytes(data)
    path = str(tmp_path / "disk.img")
    bximage("-func=convert", "-imgmode=growing", str(src), path)
    check_reads_as_qemu(qemu_img, path, "bochs", tmp_path, expect=data)
    check_reads_as_qemu(qemu_img_10, path, "bochs", tmp_path, ten=True, expect=data)
    with lib.open(path) as img:
        assert img.format == "bochs"
        assert img.pread(0, size) == data
        # unaligned reads inside and across extents and sectors
        for off, n in ((1, 511), (511, 2), (32767, 3), (size - 700, 700), (4000, 200000)):
            assert img.pread(off, n) == data[off:off + n]


@pytest.mark.parametrize("kw", [dict(), dict(version=1), dict(extent=512), dict(extent=4096, reverse=True),
                                dict(extent=8 * MiB), dict(keep_zero_sectors=True, extent=65536),
                                dict(garbage=False, header=4096)],
                         ids=["v2", "v1", "extent512", "reverse", "extent8M", "zero-sectors", "header4k"])
def test_writer_variants(qemu_img, qemu_img_10, tmp_path, kw):
    data = pattern(2 * MiB + 4096, seed=len(kw))
    path = tmp_path / "w.bochs"
    path.write_bytes(bochs_image(data, **kw))
    check_reads_as_qemu(qemu_img, str(path), "bochs", tmp_path, expect=data)
    check_reads_as_qemu(qemu_img_10, str(path), "bochs", tmp_path, ten=True, expect=data, full=False)


def test_writes_refused(qemu_img, qemu_img_10, tmp_path):
    path = tmp_path / "w.bochs"
    path.write_bytes(bochs_image(pattern(MiB)))
    check_writes_refused(qemu_img, str(path), "bochs", tmp_path)
    check_writes_refused(qemu_img_10, str(path), "bochs", tmp_path, ten=True)
    with pytest.raises(QimgError, match="^Could not open '.*': Image is read-only$"):
        lib.open(str(path), writable=True)
    with pytest.raises(QimgError, match="Format driver 'bochs' does not support image creation"):
        lib.create(str(tmp_path / "n.bochs"), "bochs", MiB)


def _hostile() -> dict[str, bytes]:
    data = pattern(MiB, seed=7)
    base = bochs_image(data)
    stale = bytearray(base)
    stale[512:516] = (0x7FFFFFF0).to_bytes(4, "little")  # a slot far past the end of the file
    return {
        "bad-magic": bochs_patch(base, magic=b"Bochs Virtual HD Imagx"),
        "magic-without-nul": bochs_patch(base, magic=b"Bochs Virtual HD Image" + b"x" * 10),
        "undoable": bochs_patch(base, subtype=b"Undoable"),
        "version-3": bochs_patch(base, version=0x30000),
        "catalog-too-large": bochs_patch(base, catalog=0x100001),
        "catalog-max": bochs_patch(base, catalog=0x100000),
        "catalog-too-small": bochs_patch(base, catalog=1),
        "catalog-empty": bochs_patch(base, catalog=0, disk=0),
        "catalog-past-eof": bochs_patch(base, header=1 << 20),
        "catalog-offset-wraps": bochs_patch(base, header=0xFFFFFFF0),
        "extent-256": bochs_patch(base, extent=256),
        "extent-0": bochs_patch(base, extent=0),
        "extent-not-power-of-2": bochs_patch(base, extent=1536),
        "extent-16M": bochs_patch(base, extent=16 << 20),
        "bitmap-0": bochs_patch(base, bitmap=0),
        "bitmap-huge": bochs_patch(base, bitmap=0xFFFFFFFF),
        "disk-odd": bochs_patch(base, disk=MiB - 100),
        "disk-huge": bochs_patch(base, disk=(1 << 64) - 1),
        "slot-past-eof": bytes(stale),
        "truncated": base[:600],
        "header-only": base[:512],
        "shorter-than-header": base[:100],
    }


HOSTILE = _hostile()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers(qemu_img, tmp_path, name):
    path = tmp_path / "h.bochs"
    path.write_bytes(HOSTILE[name])
    check_reads_as_qemu(qemu_img, str(path), "bochs", tmp_path, full=False)


def test_hostile_memory_is_bounded(tmp_path):
    """The largest catalog QEMU accepts is 4 MiB; a header claiming more is refused before any read."""
    path = tmp_path / "h.bochs"
    path.write_bytes(bochs_patch(bochs_image(bytes(MiB)), catalog=0xFFFFFFFF))
    with pytest.raises(QimgError, match="Catalog size is too large"):
        lib.open(str(path), "bochs")
