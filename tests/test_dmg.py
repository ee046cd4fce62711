"""The dmg plugin (read-only) against qemu-img 7.2 and 10.0, on UDIF images built by the
test-side writer (tests/dmg_writer.py; hdiutil is macOS-only): XML plist and resource fork
tables, several tables with their own data offsets, every chunk type, odd trailers, hostile
trailers and tables, and every writing command refused as qemu-img refuses it.

Debian's qemu-img is built without bzip2 and lzfse: it warns at open and fails to read such
chunks. qimg reads bzip2 chunks (Python's bz2, as an upstream qemu-img built with libbz2) and
treats lzfse as Debian's does; bzip2 images are checked against the data they were made from.
Debian's 7.2 also prints ``qemu: module block-block-dmg-bz2 not found, do you want to install
qemu-block-extra package?`` (and the same for lzfse) on every dmg it opens: a packaging notice
qimg has no reason to print, cut from qemu-img's stderr before comparing.
"""
from __future__ import annotations

import functools
import os
import random
import struct

import pytest
import qimg as lib
from conftest import Run
from dmg_writer import chunked, dmg_image
from qimg.errors import QimgError
from ro_checks import check_reads_as_qemu, check_writes_refused, compare_runs

SECTOR = 512
MiB = 1 << 20


@pytest.fixture
def qemu_dmg(qemu_img):
    """qemu-img 7.2 without Debian's module notices on stderr."""
    def run(*args: str) -> Run:
        r = qemu_img(*args)
        r.stderr = "".join(ln for ln in r.stderr.splitlines(keepends=True) if not ln.startswith("qemu: module "))
        return r

    return run


def pattern(size: int, seed: int = 5) -> bytes:
    """Random, text and zero stretches, whole sectors."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        n = rnd.choice((512, 4096, 100 * 512, 700 * 512))
        kind = rnd.randrange(3)
        out += rnd.randbytes(n) if kind == 0 else (b"dmg %d " % rnd.randrange(99)) * (n // 6) + bytes(n % 6) \
            if kind == 1 else bytes(n)
    return bytes(out[:size])


def zero_where(data: bytes, layout) -> bytes:
    """``data`` with the ranges of zero chunks zeroed (a writer's zero chunk stores nothing)."""
    out = bytearray(data)
    s = 0
    for table in layout:
        for kind, n in table:
            if kind == "zero":
                out[s * SECTOR:(s + n) * SECTOR] = bytes(n * SECTOR)
            s += n
    return bytes(out)


def build(tmp_path, size=3 * MiB, kinds=("zlib", "raw", "zero", "ignore"), per_chunk=256, tables=3,
          name="disk.dmg", seed=5, **kw) -> tuple[str, bytes]:
    layout = chunked(size // SECTOR, list(kinds), per_chunk, tables)
    data = zero_where(pattern(size, seed), layout)
    img, expect = dmg_image(data, layout, **kw)
    path = tmp_path / name
    path.write_bytes(img)
    return str(path), expect


VARIANTS = {
    "xml": dict(),
    "resource-fork": dict(fork="rsrc"),
    "both-forks": dict(fork="both"),
    "table-data-offsets": dict(data_offsets=True),
    "no-comments": dict(comments=False),
    "trailing-300": dict(trailing=300),
    "trailing-511": dict(trailing=511),
    "one-table": dict(tables=1),
    "many-tables": dict(tables=17, per_chunk=64),
    "big-chunks": dict(per_chunk=2048, size=5 * MiB),
    "single-sectors": dict(per_chunk=1, size=64 * 1024),
    "odd-size": dict(size=3 * MiB + 7 * SECTOR),
    "zlib-only": dict(kinds=("zlib",)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_layouts_read_as_qemu(qemu_dmg, qemu_img_10, tmp_path, name):
    path, expect = build(tmp_path, **VARIANTS[name])
    check_reads_as_qemu(qemu_dmg, path, "dmg", tmp_path, expect=expect)
    check_reads_as_qemu(qemu_img_10, path, "dmg", tmp_path, ten=True, expect=expect, full=False)


def test_probed_by_name_only(qemu_dmg, tmp_path):
    """As QEMU: a name ending in .dmg probes dmg (score 2, over raw), the same bytes under
    another name are raw, and an empty .dmg file is raw."""
    path, _ = build(tmp_path)
    other = tmp_path / "disk.img"
    other.write_bytes(open(path, "rb").read())
    empty = tmp_path / "empty.dmg"
    empty.write_bytes(b"")
    compare_runs(qemu_dmg, [["info", path], ["info", str(other)], ["info", "--output=json", str(empty)],
                            ["map", "--output=json", str(empty)]], False)
    with lib.open(path) as img:
        assert img.format == "dmg"


def test_unaligned_reads(tmp_path):
    path, expect = build(tmp_path, kinds=("zlib", "raw", "bzip2", "zero", "ignore"), per_chunk=37)
    with lib.open(path) as img:
        assert img.size == len(expect)
        rnd = random.Random(1)
        for _ in range(200):
            off = rnd.randrange(len(expect))
            n = min(rnd.randrange(1, 70000), len(expect) - off)
            assert img.pread(off, n) == expect[off:off + n], (off, n)


@pytest.mark.parametrize("kinds", [("bzip2",), ("bzip2", "zlib", "raw", "zero")], ids=["bzip2", "mixed"])
def test_bzip2_chunks(qemu_dmg, tmp_path, kinds):
    """qimg reads bzip2 chunks; Debian's qemu-img (no dmg-bz2 module) warns and fails on them,
    and agrees on everything it can tell without reading them."""
    path, expect = build(tmp_path, kinds=kinds)
    out = tmp_path / "out.raw"
    for args in (["info", path], ["info", "--output=json", path], ["map", "--output=json", path]):
        r = qemu_dmg(*args)
        assert r.returncode == 0
        assert r.stderr == "qemu-img: warning: dmg-bzip2 module is missing, accessing bzip2 compressed blocks " \
                           "will result in I/O errors\n"
        mine = compare_mine(args)
        assert (mine.returncode, mine.stdout, mine.stderr) == (0, r.stdout, "")
    assert qemu_dmg("convert", "-O", "raw", path, str(out)).returncode == 1
    mine = compare_mine(["convert", "-O", "raw", path, str(out)])
    assert (mine.returncode, mine.stderr) == (0, "")
    assert out.read_bytes() == expect


def compare_mine(args: list[str]) -> Run:
    from ro_checks import qimg_batch

    return qimg_batch([args])[0]


@pytest.mark.parametrize("kind", ["lzfse", "adc", "lzma"])
def test_unreadable_chunk_types(qemu_dmg, qemu_img_10, tmp_path, kind):
    """lzfse (no bounded decoder in Python: as qemu-img without its module), ADC and lzma
    (unknown to QEMU): the same warning at open, the same read errors."""
    path, _ = build(tmp_path, kinds=("zlib", kind, "raw"))
    check_reads_as_qemu(qemu_dmg, path, "dmg", tmp_path)
    check_reads_as_qemu(qemu_img_10, path, "dmg", tmp_path, ten=True, full=False)


def test_writes_refused(qemu_dmg, qemu_img_10, tmp_path):
    path, _ = build(tmp_path)
    check_writes_refused(qemu_dmg, path, "dmg", tmp_path)
    check_writes_refused(qemu_img_10, path, "dmg", tmp_path, ten=True)
    with pytest.raises(QimgError, match="^Could not open '.*': Image is read-only$"):
        lib.open(path, writable=True)


@functools.lru_cache(maxsize=1)
def _hostile() -> dict[str, bytes]:
    data = pattern(MiB, seed=11)
    layout = chunked(len(data) // SECTOR, ["zlib", "raw", "zero"], 256, 3)
    data = zero_where(data, layout)
    base, _ = dmg_image(data, layout)
    big = bytes((131072 + 1) * SECTOR)
    xml = dmg_image(data, layout)[0]
    return {
        "data-fork-after-trailer": dmg_image(data, layout, koly={"data_fork_offset": len(base)})[0],
        "no-tables": dmg_image(data, layout, koly={"xml_length": 0})[0],
        "sector-count-negative": dmg_image(data, layout, total_sectors=1 << 63)[0],
        "sector-count-too-large": dmg_image(data, layout, total_sectors=1 << 54)[0],
        "sector-count-short": dmg_image(data, layout, total_sectors=1000)[0],
        "sector-count-long": dmg_image(data, layout, total_sectors=3000)[0],
        "xml-too-long": dmg_image(data, layout, koly={"xml_length": 17 << 20})[0],
        "xml-after-trailer": dmg_image(data, layout, koly={"xml_offset": len(base)})[0],
        "xml-unclosed-data": xml.replace(b"</data>", b"</datx>", 1),
        "xml-all-unclosed": xml.replace(b"</data>", b"</datx>"),
        "resource-fork-cut": dmg_image(data, layout, fork="rsrc", koly={"rsrc_length": 10})[0],
        "resource-fork-after-trailer": dmg_image(data, layout, fork="rsrc", koly={"rsrc_offset": len(base)})[0],
        "chunk-sectors-too-many": dmg_image(big, [[("zlib", 131073)]])[0],
        "zero-chunk-huge": dmg_image(big, [[("zero", 131073)]])[0],
        "koly-missing": bytes(5000),
        "shorter-than-sector": b"x" * 100,
        "one-sector": b"x" * 512,
        "koly-only": base[-512:],
        "truncated": base[: len(base) // 2] + base[-512:],
    }


HOSTILE = ("data-fork-after-trailer", "no-tables", "sector-count-negative", "sector-count-too-large",
           "sector-count-short", "sector-count-long", "xml-too-long", "xml-after-trailer", "xml-unclosed-data",
           "xml-all-unclosed", "resource-fork-cut", "resource-fork-after-trailer", "chunk-sectors-too-many",
           "zero-chunk-huge", "koly-missing", "shorter-than-sector", "one-sector", "koly-only", "truncated")


def test_hostile_list_is_complete():
    assert sorted(HOSTILE) == sorted(_hostile())


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile(qemu_dmg, tmp_path, name):
    path = tmp_path / "h.dmg"
    path.write_bytes(_hostile()[name])
    check_reads_as_qemu(qemu_dmg, str(path), "dmg", tmp_path, full=False)


def test_no_chunks_at_all(qemu_dmg, tmp_path):
    """XML whose tables cannot be found (a NUL ends QEMU's search): info agrees; reading
    crashes qemu-img 7.2 (a binary search over no chunks reads a NULL array) and is an I/O
    error in qimg."""
    data = pattern(MiB)
    layout = chunked(len(data) // SECTOR, ["zlib"], 256, 1)
    img = dmg_image(data, layout)[0].replace(b"<dict>", b"<d\0ct>", 2)
    path = tmp_path / "h.dmg"
    path.write_bytes(img)
    compare_runs(qemu_dmg, [["info", str(path)], ["map", "--output=json", str(path)]], False)
    mine = compare_mine(["convert", "-O", "raw", str(path), str(tmp_path / "o.raw")])
    assert (mine.returncode, mine.stderr) == (1, "qimg: error while reading at byte 0: Input/output error\n")


def test_memory_is_bounded(tmp_path):
    """A resource claiming more chunks than qimg keeps (QEMU keeps any number) is refused
    before it is read: the file is sparse, 60 MiB long, a few KiB on disk."""
    from dmg_writer import KOLY, MISH_HEADER

    count = 204 + 40 * ((1 << 20) + 10)
    path = tmp_path / "many.dmg"
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 256, 256 + 4 + count, 4 + count, 0).ljust(256, b"\0"))
        f.write(struct.pack(">I", count) + MISH_HEADER.pack(b"mish", 1, 0, 1, 0, 0, 0, bytes(24), 0, 0, bytes(128), 1))
        koly_at = 60 * MiB
        f.seek(koly_at)
        f.write(KOLY.pack(b"koly", 4, 512, 1, 0, 0, 0, 0, 256 + 4 + count, 1, 1, bytes(16), 0, 0, bytes(128),
                          0, 0, bytes(120), 0, 0, bytes(128), 1, 1, bytes(12)))
    with pytest.raises(QimgError, match="more than 1048576 chunks"):
        lib.open(str(path))
    assert os.stat(path).st_blocks * 512 < MiB
