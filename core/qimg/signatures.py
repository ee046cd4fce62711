"""What every format qemu-img probes looks like, known to the core without its plugin.

A distribution may install only some plugins (qimg-core, qimg-raw, qimg-qcow2, ...). Without
this table, a VMDK probed where qimg-vmdk is absent would fall to raw's last-resort guess and
``convert`` would copy its 64 KiB of metadata as a "disk". Probing (``qimg.api.probe_format``)
therefore asks :func:`check_absent` after the installed plugins have scored the file: when a
format whose plugin is not installed would win, as QEMU's probe would pick it, opening fails
with one line naming the format and the distribution to install.

Each entry mirrors QEMU's ``bdrv_probe`` of that driver, score included (100 for a magic
number, 2 for dmg's file name and cloop's shell preamble, raw's 1 below everything), on the
same bytes: the first 512 bytes of the file, zero padded as QEMU's probe buffer. Nothing is
imported and nothing more is read: a check is a few byte comparisons (the whole table runs in
microseconds). QEMU does not probe by trailers, so neither does this table: a fixed VHD (its
footer only at the end) or a dmg not named ``*.dmg`` reads as raw in qemu-img, with every
plugin installed or not.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from .registry import FormatEntry, Registry

PROBE_SIZE = 512


def _qcow2(h: bytes, name: str) -> int:
    return 100 if h[:4] == b"QFI\xfb" and int.from_bytes(h[4:8], "big") >= 2 else 0


def _qcow(h: bytes, name: str) -> int:
    return 100 if h[:4] == b"QFI\xfb" and int.from_bytes(h[4:8], "big") == 1 else 0


def _qed(h: bytes, name: str) -> int:
    return 100 if h[:4] == b"QED\0" else 0


def _vdi(h: bytes, name: str) -> int:
    return 100 if h[64:68] == b"\x7f\x10\xda\xbe" else 0


def _vpc(h: bytes, name: str) -> int:
    # dynamic VHDs start with a copy of the footer; QEMU looks nowhere else
    return 100 if h[:8] == b"conectix" else 0


def _vhdx(h: bytes, name: str) -> int:
    return 100 if h[:8] == b"vhdxfile" else 0


def _vmdk(h: bytes, name: str) -> int:
    """QEMU's vmdk_probe: a sparse extent's magic, or a text descriptor: comment lines and
    blank lines (spaces only) before a ``version=1``/``2``/``3`` line."""
    if h[:4] in (b"KDMV", b"COWD"):
        return 100
    p, end = 0, len(h)
    while p < end:
        c = h[p]
        if c == 0x23:  # '#': a comment line
            nl = h.find(b"\n", p)
            p = end if nl < 0 else nl + 1
            continue
        if c == 0x20:  # spaces then (CR)LF only: a blank line
            while p < end and h[p] == 0x20:
                p += 1
            if p < end and h[p] == 0x0D:
                p += 1
            if p == end or h[p] != 0x0A:
                return 0
            p += 1
            continue
        for v in (b"version=1", b"version=2", b"version=3"):
            if h.startswith(v + b"\n", p) or h.startswith(v + b"\r\n", p):
                return 100
        return 0
    return 0


def _luks(h: bytes, name: str) -> int:
    # LUKS version 1 only: QEMU reads LUKS2 headers as raw
    return 100 if h[:6] == b"LUKS\xba\xbe" and h[6:8] == b"\x00\x01" else 0


def _parallels(h: bytes, name: str) -> int:
    return 100 if h[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt") and h[16:20] == b"\x02\0\0\0" else 0


def _dmg(h: bytes, name: str) -> int:
    # the UDIF trailer is at the end of the file: QEMU probes the name only
    return 2 if name and len(name) > 4 and name.endswith(".dmg") else 0


def _bochs(h: bytes, name: str) -> int:
    if (h.startswith(b"Bochs Virtual HD Image\0") and h[32:40] == b"Redolog\0" and h[48:56] == b"Growing\0"
            and h[64:68] in (b"\x00\x00\x02\x00", b"\x00\x00\x01\x00")):
        return 100
    return 0


_CLOOP_V2 = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def _cloop(h: bytes, name: str) -> int:
    return 2 if h.startswith(_CLOOP_V2) else 0


#: format -> (distribution that provides it, QEMU's probe of it), in QEMU's driver order
KNOWN: dict[str, tuple[str, Callable[[bytes, str], int]]] = {
    "qcow2": ("qimg-qcow2", _qcow2),
    "qcow": ("qimg-qcow", _qcow),
    "qed": ("qimg-qed", _qed),
    "vdi": ("qimg-vdi", _vdi),
    "vpc": ("qimg-vpc", _vpc),
    "vhdx": ("qimg-vhdx", _vhdx),
    "vmdk": ("qimg-vmdk", _vmdk),
    "luks": ("qimg-luks", _luks),
    "parallels": ("qimg-parallels", _parallels),
    "dmg": ("qimg-dmg", _dmg),
    "bochs": ("qimg-bochs", _bochs),
    "cloop": ("qimg-cloop", _cloop),
}


def score(fmt: str, head: bytes, filename: str) -> int:
    """QEMU's probe score of ``fmt`` (a name of :data:`KNOWN`) for a file's first bytes and
    name; the plugins of these formats probe with it, so installed or not they score alike."""
    return KNOWN[fmt][1](head[:PROBE_SIZE].ljust(PROBE_SIZE, b"\0"), filename)


def detect(head: bytes, filename: str, formats: object = KNOWN) -> tuple[str, int]:
    """The best-scoring known format for a file's first bytes and name (``("", 0)``: none),
    among ``formats`` (names of :data:`KNOWN`)."""
    h = head[:PROBE_SIZE].ljust(PROBE_SIZE, b"\0")
    best, best_score = "", 0
    for name in formats:
        score = KNOWN[name][1](h, filename)
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def absent_message(filename: str, fmt: str) -> str:
    """The error for an image of a format whose plugin is not installed."""
    return (f"Could not open '{filename}': image format '{fmt}' detected, but its plugin is not installed "
            f"(pip install {KNOWN[fmt][0]})")


def check_absent(registry: Registry, head: bytes, filename: str, winner: FormatEntry | None) -> None:
    """Refuse a file that QEMU would probe as a format whose plugin is not installed, rather
    than let an installed one (raw above all) have it; ``winner`` is the installed formats' pick."""
    absent = [name for name in KNOWN if name not in registry.formats]
    if not absent:
        return
    fmt, score = detect(head, filename, absent)
    if not score:
        return
    mine = 0
    if winner is not None and winner.probe is not None:
        mine = winner.probe(head, filename)
    if score > mine:
        from .errors import QimgError

        raise QimgError(absent_message(filename, fmt))
