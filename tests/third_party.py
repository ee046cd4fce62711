"""Images other producers made (tests/test_corpus.py): where they come from and how they are
unpacked.

- FreeBSD's mkimg test vectors: hexdumps (``hexdump -C``) committed under tests/corpus/mkimg
  (origin and licence in tests/corpus/README.md), turned back into images in the test.
- log2timeline/dfvfs's test_data (qcow2, vhd, vmdk, dmg): committed xz-compressed under
  tests/corpus/dfvfs (Apache-2.0).
- QEMU's own tests/qemu-iotests/sample_images (Hyper-V, Virtual PC, Disk2VHD, VMware, Parallels,
  fuzzed samples; bzip2-compressed, GPL, never committed here): fetched at run time from Debian's
  qemu source package of the 7.2 oracle by scripts/iotests' library (scripts/iotests_lib), which
  caches them under ~/.cache/qimg/iotests; unpacked (sparsely) once into ~/.cache/qimg/corpus.
  Without them the tests skip, and fail when the environment variable CI is set.
"""
from __future__ import annotations

import bz2
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
BLOCK = 64 << 10


def unhexdump(text: str) -> bytes:
    """The bytes of a ``hexdump -C`` listing ('*' repeats the previous line up to the next
    offset; the last line is the total length; '#' lines are comments)."""
    out = bytearray()
    prev = b""
    repeat = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "*":
            repeat = True
            continue
        fields = line.split("|", 1)[0].split()
        off = int(fields[0], 16)
        data = bytes(int(h, 16) for h in fields[1:])
        if repeat:
            n = (off - len(out)) // len(prev)
            out += prev * n
            repeat = False
        if len(out) != off:
            raise ValueError(f"hexdump offset {off:#x} does not follow {len(out):#x}")
        out += data
        prev = data
    return bytes(out)


def _write_sparse(dest: Path, chunks) -> None:
    """Write the chunks' bytes to ``dest`` (atomically), leaving all-zero blocks as holes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".unpack-")
    zero = bytes(BLOCK)
    try:
        with os.fdopen(fd, "wb") as f:
            pending = b""
            for chunk in chunks:
                pending += chunk
                while len(pending) >= BLOCK:
                    block, pending = pending[:BLOCK], pending[BLOCK:]
                    if block == zero:
                        f.seek(BLOCK, os.SEEK_CUR)
                    else:
                        f.write(block)
            f.write(pending)
            f.truncate(f.tell())
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def mkimg_images() -> list[Path]:
    return sorted((CORPUS / "mkimg").glob("*.hex"))


def mkimg_image(hexfile: Path, dest_dir: Path) -> Path:
    """The image of a committed mkimg hexdump, written into ``dest_dir``."""
    dest = dest_dir / hexfile.name[: -len(".hex")]
    _write_sparse(dest, [unhexdump(hexfile.read_text())])
    return dest


def dfvfs_images() -> list[Path]:
    return sorted((CORPUS / "dfvfs").glob("*.xz"))


def dfvfs_image(xzfile: Path, dest_dir: Path) -> Path:
    """The image of a committed dfvfs test file (xz-compressed), written into ``dest_dir``."""
    import lzma

    dest = dest_dir / xzfile.name[: -len(".xz")]
    _write_sparse(dest, [lzma.decompress(xzfile.read_bytes())])
    return dest


#: QEMU's sample images: name -> the format qemu-img reads it as ("" when it refuses it)
QEMU_SAMPLES = {
    "afl5.img": "qcow2",
    "afl9.vmdk": "vmdk",
    "d2v-zerofilled.vhd": "vpc",
    "empty.bochs": "bochs",
    "grub_mbr.raw": "raw",
    "hyperv2012r2-dynamic.vhd": "vpc",
    "iotest-dirtylog-10G-4M.vhdx": "vhdx",
    "iotest-dynamic-1G.vhdx": "vhdx",
    "iotest-version3.vmdk": "vmdk",
    "parallels-v1": "parallels",
    "parallels-v2": "parallels",
    "parallels-with-bitmap": "parallels",
    "simple-dmg.dmg": "dmg",
    "simple-pattern.cloop": "cloop",
    "test-disk2vhd.vhdx": "vhdx",
    "virtualpc-dynamic.vhd": "vpc",
}


def _missing(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set: QEMU's sample images are required)")
    pytest.skip(msg)


def _sample_sources() -> Path:
    """QEMU's sample_images folder of the 7.2 oracle's Debian source (fetched and cached by
    scripts/iotests_lib on first use)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from iotests_lib.sources import Fatal, fetch_sources, find_oracle
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    import fcntl

    lock_path = _corpus_cache() / ".fetch.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # one fetch at a time: the test workers (xdist) would otherwise run apt-get on the same lists
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            src = fetch_sources(find_oracle("7.2"))
        except Fatal as e:
            _missing(f"QEMU's sample images could not be fetched: {e}")
    d = src / "tests" / "qemu-iotests" / "sample_images"
    if not d.is_dir():
        _missing(f"no sample_images in {src}")
    return d


def _corpus_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base, "qimg", "corpus")


def qemu_sample(name: str) -> Path:
    """The unpacked sample image ``name`` (cached; never modify it: copy it first)."""
    dest = _corpus_cache() / "qemu-samples" / name
    if dest.exists():
        return dest
    src = _sample_sources() / f"{name}.bz2"
    if not src.is_file():
        _missing(f"QEMU's sample image {src} is missing")

    def chunks():
        with bz2.open(src, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    _write_sparse(dest, chunks())
    return dest


def vmdkstream_image(dest_dir: Path) -> Path:
    """A streamOptimized vmdk made by python3-vmdkstream (Red Hat's VMDKstream, as image
    builders use it for vSphere) from 6 MiB of text, zeroes and random bytes."""
    import random
    import shutil
    import subprocess

    python = shutil.which("python3", path="/usr/bin")
    ok = python and subprocess.run([python, "-c", "import VMDKstream"], capture_output=True).returncode == 0
    if not ok:
        _missing_tool("python3-vmdkstream (Debian package) is not installed")
    raw = dest_dir / "source.raw"
    data = bytearray(b"".join(b"vmdkstream line %08d\n" % i for i in range(6 << 16)))[: 6 << 20]
    data[1 << 20: 3 << 20] = bytes(2 << 20)
    data[4 << 20: (4 << 20) + 300_000] = random.Random(17).randbytes(300_000)
    raw.write_bytes(bytes(data[: (6 << 20) - 4096]))  # not a whole grain at the end
    out = dest_dir / "vmdkstream.vmdk"
    p = subprocess.run([python, "-m", "VMDKstream", str(raw), str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    raw.unlink()
    return out


def _missing_tool(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg + " but CI is set: the producers in scripts/test-packages are required")
    pytest.skip(msg)
