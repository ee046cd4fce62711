"""Test-side writers of the formats QEMU only reads: Bochs growing images and cloop volumes.

They follow the formats' layouts (bximage's and create_compressed_fs's output, the variants
QEMU accepts that those tools do not make) so tests can build images with chosen quirks and
check qimg against qemu-img reading the very same file. The DMG writer is tests/dmg_writer.py.
"""
from __future__ import annotations

import struct
import zlib

SECTOR = 512


# -- bochs -------------------------------------------------------------------------------------
def bochs_image(data: bytes, *, extent: int = 32768, version: int = 2, keep_zero_sectors: bool = False,
                garbage: bool = True, reverse: bool = False, header: int = 512) -> bytes:
    """A Bochs redolog "growing" image holding ``data`` (whole sectors).

    Extents with any non-zero sector get a slot (in order, or in reverse order with
    ``reverse``); each stored sector has its bitmap bit set. With ``garbage``, sectors whose bit
    is clear hold junk (a reader must show zeroes there); ``keep_zero_sectors`` stores zero
    sectors of allocated extents too. ``version`` 1 puts the disk size where the 1.0 header
    has it (no reserved word). :func:`bochs_patch` changes header fields for hostile tests.
    """
    assert len(data) % SECTOR == 0 and extent >= SECTOR
    per_extent = extent // SECTOR
    n_extents = -(-len(data) // extent)
    bitmap = -(-per_extent // 8)
    bitmap_blocks = -(-bitmap // SECTOR)
    used = [i for i in range(n_extents) if any(data[i * extent:(i + 1) * extent])]
    if reverse:
        used.reverse()
    entries = [0xFFFFFFFF] * n_extents
    slots = []
    for slot, idx in enumerate(used):
        entries[idx] = slot
        chunk = data[idx * extent:(idx + 1) * extent].ljust(extent, b"\0")
        bits = bytearray(bitmap_blocks * SECTOR)
        body = bytearray(extent)
        for s in range(per_extent):
            sec = chunk[s * SECTOR:(s + 1) * SECTOR]
            if any(sec) or keep_zero_sectors:
                bits[s // 8] |= 1 << (s % 8)
                body[s * SECTOR:(s + 1) * SECTOR] = sec
            elif garbage:
                body[s * SECTOR:(s + 1) * SECTOR] = bytes([0xEE]) * SECTOR
        slots.append(bytes(bits) + bytes(body))
    head = bytearray(header)
    fields = struct.pack("<32s16s16sIIIII", b"Bochs Virtual HD Image", b"Redolog", b"Growing", version << 16,
                         header, n_extents, bitmap, extent)
    fields += struct.pack("<Q", len(data)) if version == 1 else struct.pack("<IQ", 0, len(data))
    head[:len(fields)] = fields
    return bytes(head) + struct.pack(f"<{n_extents}I", *entries) + b"".join(slots)


#: (offset, struct code) of the header fields; ``disk`` is where version 2 keeps it
BOCHS_FIELDS = {"magic": (0, "32s"), "type": (32, "16s"), "subtype": (48, "16s"), "version": (64, "<I"),
                "header": (68, "<I"), "catalog": (72, "<I"), "bitmap": (76, "<I"), "extent": (80, "<I"),
                "disk_v1": (84, "<Q"), "disk": (88, "<Q")}


def bochs_patch(image: bytes, **fields: object) -> bytes:
    """``image`` with header fields replaced (names of :data:`BOCHS_FIELDS`)."""
    out = bytearray(image)
    for name, value in fields.items():
        off, code = BOCHS_FIELDS[name]
        struct.pack_into(code, out, off, value)
    return bytes(out)


# -- cloop -------------------------------------------------------------------------------------
CLOOP_V2 = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
CLOOP_V4 = b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def cloop_image(data: bytes, *, block_size: int = 65536, preamble: bytes = CLOOP_V2, level: int = 9,
                n_blocks: int | None = None) -> bytes:
    """A cloop volume, header first (V2.0 layout: 128-byte preamble, block size and count
    big-endian, n+1 absolute big-endian offsets, zlib blocks); the last block is zero padded."""
    count = -(-len(data) // block_size)
    head = preamble.ljust(128, b"\0") + struct.pack(">II", block_size, count if n_blocks is None else n_blocks)
    pos = len(head) + 8 * (count + 1)
    offsets, blocks = [pos], []
    for i in range(count):
        blk = zlib.compress(data[i * block_size:(i + 1) * block_size].ljust(block_size, b"\0"), level)
        blocks.append(blk)
        pos += len(blk)
        offsets.append(pos)
    return head + struct.pack(f">{count + 1}Q", *offsets) + b"".join(blocks)


# -- a small valid image of each (tests/hostile.py smashes and truncates them) ----------------
def _sample_data(size: int = 4 << 20) -> bytes:
    out = bytearray(size)
    out[0:65536] = b"A" * 65536
    out[1 << 20:(1 << 20) + 131072] = b"B" * 131072
    out[(2 << 20) + 512:(2 << 20) + 4096] = bytes(range(256)) * 14
    return bytes(out)


def _dmg_sample() -> bytes:
    import dmg_writer

    data = _sample_data()
    # no bzip2: Debian's qemu-img (the oracle of tests/test_hostile.py) cannot read it
    layout = dmg_writer.chunked(len(data) // SECTOR, ["zlib", "raw", "zero", "ignore"], 2048, 2)
    out = bytearray(data)
    s = 0
    for table in layout:  # zero chunks store nothing: their sectors read as zeroes
        for kind, n in table:
            if kind == "zero":
                out[s * SECTOR:(s + n) * SECTOR] = bytes(n * SECTOR)
            s += n
    return dmg_writer.dmg_image(bytes(out), layout)[0]


VALID = {
    "bochs": lambda: bochs_image(_sample_data()),
    "cloop": lambda: cloop_image(_sample_data()),
    "dmg": _dmg_sample,
}
