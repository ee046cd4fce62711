"""On-disk structures of VHD (Microsoft "Virtual Hard Disk Image Format Specification" 1.0).

All fields are big-endian. The footer (512 bytes) ends every image and, for dynamic disks,
is also copied to offset 0; the dynamic disk header (1024 bytes) follows at the footer's
``data_offset``. Both carry a checksum: the one's complement of the byte sum of the
structure with the checksum field taken as zero.
"""
from __future__ import annotations

from qimg.records import Record

FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024
FOOTER_CHECKSUM_AT = 64
DYN_CHECKSUM_AT = 36

COOKIE = b"conectix"
DYN_COOKIE = b"cxsparse"

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4

Footer = Record(
    ">",
    ("cookie", "8s"),
    ("features", "I"),
    ("version", "I"),
    ("data_offset", "Q"),
    ("timestamp", "I"),  # seconds since 2000-01-01 00:00:00 UTC
    ("creator_app", "4s"),
    ("creator_version", "I"),
    ("creator_os", "4s"),
    ("original_size", "Q"),
    ("current_size", "Q"),
    ("cylinders", "H"),
    ("heads", "B"),
    ("sectors", "B"),  # per track
    ("disk_type", "I"),
    ("checksum", "I"),
    ("unique_id", "16s"),
    ("saved_state", "B"),
    (None, "427x"),
    name="VHD footer",
)

ParentLocator = Record(
    ">",
    ("platform_code", "4s"),
    ("data_space", "I"),
    ("data_length", "I"),
    (None, "4x"),
    ("data_offset", "Q"),
    name="VHD parent locator",
)

DynHeader = Record(
    ">",
    ("cookie", "8s"),
    ("data_offset", "Q"),  # unused, all ones
    ("table_offset", "Q"),  # absolute offset of the block allocation table
    ("version", "I"),
    ("max_table_entries", "I"),
    ("block_size", "I"),
    ("checksum", "I"),
    ("parent_unique_id", "16s"),
    ("parent_timestamp", "I"),
    (None, "4x"),
    ("parent_name", "512s"),  # UTF-16BE
    ("parent_locators", (ParentLocator, 8)),
    (None, "256x"),
    name="VHD dynamic disk header",
)


def checksum(raw: bytes | bytearray | memoryview, at: int) -> int:
    """VHD checksum of a structure whose 4-byte checksum field is at ``at``."""
    raw = bytes(raw)
    return ~(sum(raw) - sum(raw[at : at + 4])) & 0xFFFFFFFF


def build_with_checksum(struct: Record, values: dict, at: int) -> bytes:
    """Build a structure and fill its checksum field."""
    raw = bytearray(struct.build({**values, "checksum": 0}))
    raw[at : at + 4] = checksum(raw, at).to_bytes(4, "big")
    return bytes(raw)
