"""On-disk header of VirtualBox VDI images (version 1.1), little-endian.

``text banner[64] | signature | version | header (0x180 bytes) | padding`` fill the first
sector; the block map (one u32 per 1 MiB block: index of the block in the data area, or
0xffffffff unallocated / 0xfffffffe discarded, both reading as zeroes) starts at
``offset_bmap`` and the blocks at ``offset_data``.
"""
from __future__ import annotations

from construct import Bytes, Int32ul, Int64ul, Padding, Struct

HEADER_SIZE = 512
SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
TEXT = b"<<< QEMU VM Virtual Disk Image >>>\n"

TYPE_DYNAMIC = 1
TYPE_STATIC = 2

Geometry = Struct(
    "cylinders" / Int32ul,
    "heads" / Int32ul,
    "sectors" / Int32ul,
    "sector_size" / Int32ul,
)

Header = Struct(
    "text" / Bytes(64),
    "signature" / Int32ul,
    "version" / Int32ul,          # major << 16 | minor
    "header_size" / Int32ul,      # bytes from here to the end of the v1.1 fields: 0x180
    "image_type" / Int32ul,
    "image_flags" / Int32ul,
    "description" / Bytes(256),
    "offset_bmap" / Int32ul,
    "offset_data" / Int32ul,
    "legacy_geometry" / Geometry,
    "unused" / Int32ul,
    "disk_size" / Int64ul,
    "block_size" / Int32ul,
    "block_extra" / Int32ul,
    "blocks_in_image" / Int32ul,
    "blocks_allocated" / Int32ul,
    "uuid_image" / Bytes(16),
    "uuid_last_snap" / Bytes(16),  # VirtualBox's "modification" UUID
    "uuid_link" / Bytes(16),
    "uuid_parent" / Bytes(16),
    "lchs_geometry" / Geometry,
    Padding(40),
)

assert Header.sizeof() == HEADER_SIZE
