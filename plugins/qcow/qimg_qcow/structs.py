"""On-disk header of QCOW version 1 images (big-endian, 48 bytes).

The backing file name (not NUL-terminated) usually follows the header; the L1 table of
``ceil(size / 2^(cluster_bits + l2_bits))`` u64 entries (L2 table offsets, 0 = none) sits at
``l1_table_offset``. An L2 entry is a cluster offset, 0 for unallocated, or with bit 63 set a
compressed cluster: raw deflate data of ``(entry >> (63 - cluster_bits)) & (cluster_size - 1)``
bytes at ``entry & ((1 << (63 - cluster_bits)) - 1)``.
"""
from __future__ import annotations

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

MAGIC = b"QFI\xfb"
HEADER_SIZE = 48
CRYPT_NONE = 0
CRYPT_AES = 1
COMPRESSED = 1 << 63

Header = Struct(
    "magic" / Bytes(4),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "mtime" / Int32ub,
    "size" / Int64ub,
    "cluster_bits" / Int8ub,
    "l2_bits" / Int8ub,
    "padding" / Int16ub,
    "crypt_method" / Int32ub,
    "l1_table_offset" / Int64ub,
)
