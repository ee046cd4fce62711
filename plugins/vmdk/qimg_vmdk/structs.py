"""VMDK on-disk structures (VMware "Virtual Disk Format 5.0"); all fields little-endian."""
from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SECTOR = 512

FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

GD_AT_END = 0xFFFFFFFFFFFFFFFF
COMPRESSION_DEFLATE = 1

MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

#: the hosted sparse extent header (one sector)
SparseHeader = Struct(
    "magic" / Bytes(4),
    "version" / Int32ul,
    "flags" / Int32ul,
    "capacity" / Int64ul,  # sectors
    "grain_size" / Int64ul,  # sectors
    "desc_offset" / Int64ul,  # sectors
    "desc_size" / Int64ul,  # sectors
    "num_gtes_per_gt" / Int32ul,
    "rgd_offset" / Int64ul,  # sectors
    "gd_offset" / Int64ul,  # sectors
    "overhead" / Int64ul,  # sectors
    "unclean_shutdown" / Int8ul,
    "nl_check" / Bytes(4),  # "\n", " ", "\r", "\n": detects text-mode transfers
    "compress_algorithm" / Int16ul,
    "pad" / Bytes(433),
)

#: stream-optimized marker: a grain (size > 0, val = LBA) or metadata (size == 0, type)
Marker = Struct(
    "val" / Int64ul,
    "size" / Int32ul,
    "type" / Int32ul,
)
GRAIN_MARKER_SIZE = 12
NL_CHECK = b"\n \r\n"
