"""On-disk header of QCOW version 1 images (big-endian, 48 bytes).

The backing file name (not NUL-terminated) usually follows the header; the L1 table of
``ceil(size / 2^(cluster_bits + l2_bits))`` u64 entries (L2 table offsets, 0 = none) sits at
``l1_table_offset``. An L2 entry is a cluster offset, 0 for unallocated, or with bit 63 set a
compressed cluster: raw deflate data of ``(entry >> (63 - cluster_bits)) & (cluster_size - 1)``
bytes at ``entry & ((1 << (63 - cluster_bits)) - 1)``.
"""
from __future__ import annotations

from qimg.records import Record

MAGIC = b"QFI\xfb"
HEADER_SIZE = 48
CRYPT_NONE = 0
CRYPT_AES = 1
COMPRESSED = 1 << 63

Header = Record(
    ">",
    ("magic", "4s"),
    ("version", "I"),
    ("backing_file_offset", "Q"),
    ("backing_file_size", "I"),
    ("mtime", "I"),
    ("size", "Q"),
    ("cluster_bits", "B"),
    ("l2_bits", "B"),
    ("padding", "H"),
    ("crypt_method", "I"),
    ("l1_table_offset", "Q"),
    name="qcow header",
)
