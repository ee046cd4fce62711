"""On-disk header of VirtualBox VDI images (version 1.1), little-endian.

``text banner[64] | signature | version | header (0x180 bytes) | padding`` fill the first
sector; the block map (one u32 per 1 MiB block: index of the block in the data area, or
0xffffffff unallocated / 0xfffffffe discarded, both reading as zeroes) starts at
``offset_bmap`` and the blocks at ``offset_data``.
"""
from __future__ import annotations

from qimg.records import Record

HEADER_SIZE = 512
SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
TEXT = b"<<< QEMU VM Virtual Disk Image >>>\n"

TYPE_DYNAMIC = 1
TYPE_STATIC = 2

Geometry = Record(
    "<",
    ("cylinders", "I"),
    ("heads", "I"),
    ("sectors", "I"),
    ("sector_size", "I"),
    name="VDI geometry",
)

Header = Record(
    "<",
    ("text", "64s"),
    ("signature", "I"),
    ("version", "I"),  # major << 16 | minor
    ("header_size", "I"),  # bytes from here to the end of the v1.1 fields: 0x180
    ("image_type", "I"),
    ("image_flags", "I"),
    ("description", "256s"),
    ("offset_bmap", "I"),
    ("offset_data", "I"),
    ("legacy_geometry", Geometry),
    ("unused", "I"),
    ("disk_size", "Q"),
    ("block_size", "I"),
    ("block_extra", "I"),
    ("blocks_in_image", "I"),
    ("blocks_allocated", "I"),
    ("uuid_image", "16s"),
    ("uuid_last_snap", "16s"),  # VirtualBox's "modification" UUID
    ("uuid_link", "16s"),
    ("uuid_parent", "16s"),
    ("lchs_geometry", Geometry),
    (None, "40x"),
    name="VDI header",
)

assert Header.sizeof() == HEADER_SIZE
