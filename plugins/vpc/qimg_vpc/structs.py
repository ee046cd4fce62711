"""On-disk structures of VHD (Microsoft "Virtual Hard Disk Image Format Specification" 1.0).

All fields are big-endian. The footer (512 bytes) ends every image and, for dynamic disks,
is also copied to offset 0; the dynamic disk header (1024 bytes) follows at the footer's
``data_offset``. Both carry a checksum: the one's complement of the byte sum of the
structure with the checksum field taken as zero.
"""
from __future__ import annotations

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024
FOOTER_CHECKSUM_AT = 64
DYN_CHECKSUM_AT = 36

COOKIE = b"conectix"
DYN_COOKIE = b"cxsparse"

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4

Footer = Struct(
    "cookie" / Bytes(8),
    "features" / Int32ub,
    "version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,       # seconds since 2000-01-01 00:00:00 UTC
    "creator_app" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors" / Int8ub,          # per track
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    Padding(427),
)

ParentLocator = Struct(
    "platform_code" / Bytes(4),
    "data_space" / Int32ub,
    "data_length" / Int32ub,
    Padding(4),
    "data_offset" / Int64ub,
)

DynHeader = Struct(
    "cookie" / Bytes(8),
    "data_offset" / Int64ub,     # unused, all ones
    "table_offset" / Int64ub,    # absolute offset of the block allocation table
    "version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / Int32ub,
    "parent_unique_id" / Bytes(16),
    "parent_timestamp" / Int32ub,
    Padding(4),
    "parent_name" / Bytes(512),  # UTF-16BE
    "parent_locators" / ParentLocator[8],
    Padding(256),
)


def checksum(raw: bytes | bytearray | memoryview, at: int) -> int:
    """VHD checksum of a structure whose 4-byte checksum field is at ``at``."""
    raw = bytes(raw)
    return ~(sum(raw) - sum(raw[at : at + 4])) & 0xFFFFFFFF


def build_with_checksum(struct: Struct, values: dict, at: int) -> bytes:
    """Build a structure and fill its checksum field."""
    raw = bytearray(struct.build({**values, "checksum": 0}))
    raw[at : at + 4] = checksum(raw, at).to_bytes(4, "big")
    return bytes(raw)
