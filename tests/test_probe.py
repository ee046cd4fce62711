"""Probing picks the format qemu-img picks: QEMU's probes, its 512-byte buffer and its driver order.

QEMU gives each driver the file's first 512 bytes (zeroes past the end of a shorter file; an
empty file is raw) and keeps the first best score in its own driver order. Every magic sits at
byte 0 except vdi's (byte 64), so the only ties are "X + vdi" polyglots, and qemu-img 7.2 and
10.0 settle them differently. The oracle decides which driver it chose: the probed ``info``
output equals the ``-f`` one of exactly that driver.
"""
from __future__ import annotations

import os
import struct
import subprocess

import pytest
from conftest import _need, need_qemu10
from qimg.plugins import get_registry

VDI_SIGNATURE = struct.pack("<I", 0xBEDA107F)

#: first bytes of each format (what its QEMU probe looks for)
MAGICS = {
    "qcow": b"QFI\xfb\0\0\0\x01",
    "qcow2": b"QFI\xfb\0\0\0\x03",
    "qed": b"QED\0",
    "vpc": b"conectix",
    "vhdx": b"vhdxfile",
    "vmdk": b"KDMV\x01\0\0\0",
    "vmdk-cowd": b"COWD",
    "parallels": b"WithoutFreeSpace",
    "luks": b"LUKS\xba\xbe\0\x01",
    "bochs": b"Bochs Virtual HD Image\0",
}
CANDIDATES = ("raw", "qcow", "qcow2", "qed", "vdi", "vpc", "vhdx", "vmdk", "parallels", "luks", "bochs",
              "cloop", "dmg")


def _polyglot(magic: bytes) -> bytes:
    b = bytearray(4096)
    b[:len(magic)] = magic
    b[64:68] = VDI_SIGNATURE
    return bytes(b)


def _vmdk_text_polyglot() -> bytes:
    """A comment line holding the vdi signature at byte 64, then ``version=1``."""
    b = bytearray(4096)
    b[0:80] = b"#" + b"x" * 63 + VDI_SIGNATURE + b"z" * 11 + b"\n"
    b[80:90] = b"version=1\n"
    return bytes(b)


FILES = {f"{name}+vdi": _polyglot(m) for name, m in MAGICS.items()}
FILES["vmdk-text+vdi"] = _vmdk_text_polyglot()
# short files: QEMU's probes see them padded with zeroes to 512 bytes
FILES.update({f"short-{name}": m + b"\x01" * 4 for name, m in MAGICS.items()})
FILES["short-vmdk-text"] = b"# Disk DescriptorFile\nversion=1\n"
FILES["blank-line-vmdk-text"] = b"# Disk DescriptorFile\n\nversion=1\ncreateType=\"monolithicFlat\"\n"
FILES["spaces-vmdk-text"] = b"   \r\n# c\nversion=2\r\n"
FILES["one-byte"] = b"Q"
FILES["empty"] = b""


def _runner(version: str):
    if version == "7.2":
        return _need("qemu-img"), dict(os.environ)
    return need_qemu10("qemu-img")


def _qemu_choice(exe: str, env: dict, path: str) -> str | None:
    """The driver qemu-img probed: the one whose ``-f`` output equals the probed output."""
    def info(*f: str) -> tuple[int, str, str]:
        p = subprocess.run([exe, "info", *f, path], capture_output=True, env=env)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    probed = info()
    if probed[0] == 0 and "file format: raw" in probed[1]:
        return "raw"
    hits = []
    for fmt in CANDIDATES:
        if info("-f", fmt) == probed:
            hits.append(fmt)
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_probe_picks_qemus_format(tmp_path, monkeypatch, name, version):
    exe, env = _runner(version)
    path = tmp_path / f"{name}.img"
    path.write_bytes(FILES[name])
    want = _qemu_choice(exe, env, str(path))
    if want is None or want not in get_registry().formats:
        pytest.skip(f"qemu-img's choice ({want}) is not a format of this installation")
    monkeypatch.setenv("QIMG_COMPAT", version)
    got = get_registry().probe(FILES[name][:512], str(path))
    assert got is not None and got.name == want


def test_every_format_probes_as_itself(tmp_path):
    """Images qemu-img makes of every installed format probe as that format."""
    reg = get_registry()
    for fmt in reg.format_names():
        path = tmp_path / f"x.{fmt}"
        p = subprocess.run([_need("qemu-img"), "create", "-q", "-f", fmt, str(path), "1M"], capture_output=True)
        if p.returncode != 0 or reg.formats[fmt].probe is None:
            continue
        head = path.read_bytes()[:512]
        assert reg.probe(head, str(path)).name == fmt
