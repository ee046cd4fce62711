"""On-disk header of Bochs "redolog" images (bximage's growing mode), little-endian.

``magic[32] | type[16] | subtype[16] | version | header | catalog | bitmap | extent`` then, for
version 2.0, a reserved word before the 64-bit disk size; version 1.0 has the disk size right
after ``extent``. The strings are NUL-terminated. ``header`` bytes from the start the catalog
begins (``catalog`` u32 entries: index of the extent in the data area, 0xffffffff unallocated);
the data area follows the catalog, each extent as a bitmap (``bitmap`` bytes, one bit per
sector, rounded up to 512-byte blocks) then its ``extent`` bytes of sectors.
"""
from __future__ import annotations

from qimg.records import Record

HEADER_SIZE = 512
VERSION_1 = 0x00010000
VERSION_2 = 0x00020000
MAGIC = b"Bochs Virtual HD Image"
REDOLOG = b"Redolog"
GROWING = b"Growing"
#: a catalog entry of an extent that holds nothing
UNALLOCATED = 0xFFFFFFFF

_COMMON = (
    ("magic", "32s"),
    ("type", "16s"),
    ("subtype", "16s"),
    ("version", "I"),
    ("header", "I"),  # offset of the catalog (the header's size)
    ("catalog", "I"),  # catalog entries
    ("bitmap", "I"),  # bytes of each extent's sector bitmap
    ("extent", "I"),  # bytes of data in each extent
)

Header = Record("<", *_COMMON, ("reserved", "I"), ("disk", "Q"), (None, "416x"), name="Bochs header")
HeaderV1 = Record("<", *_COMMON, ("disk", "Q"), (None, "420x"), name="Bochs version 1 header")

assert Header.sizeof() == HeaderV1.sizeof() == HEADER_SIZE
