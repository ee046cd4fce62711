"""VMDK on-disk structures (VMware "Virtual Disk Format 5.0"); all fields little-endian."""
from qimg.records import Record

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
SparseHeader = Record(
    "<",
    ("magic", "4s"),
    ("version", "I"),
    ("flags", "I"),
    ("capacity", "Q"),  # sectors
    ("grain_size", "Q"),  # sectors
    ("desc_offset", "Q"),  # sectors
    ("desc_size", "Q"),  # sectors
    ("num_gtes_per_gt", "I"),
    ("rgd_offset", "Q"),  # sectors
    ("gd_offset", "Q"),  # sectors
    ("overhead", "Q"),  # sectors
    ("unclean_shutdown", "B"),
    ("nl_check", "4s"),  # "\n", " ", "\r", "\n": detects text-mode transfers
    ("compress_algorithm", "H"),
    ("pad", "433s"),
    name="VMDK sparse extent header",
)

#: stream-optimized marker: a grain (size > 0, val = LBA) or metadata (size == 0, type)
Marker = Record(
    "<",
    ("val", "Q"),
    ("size", "I"),
    ("type", "I"),
    name="VMDK marker",
)
GRAIN_MARKER_SIZE = 12
NL_CHECK = b"\n \r\n"
