"""On-disk layouts of Parallels expandable images (QEMU's docs/interop/parallels), little-endian.

``header (64 bytes) | BAT (u32 per cluster) | ... data area from data_off``. A BAT entry is the
cluster's offset in sectors ("WithoutFreeSpace") or in clusters ("WithouFreSpacExt"), 0 for
an unallocated cluster. ``ext_off`` (sectors) names a Format Extension cluster: a magic, an MD5
of the rest of the cluster, then features (dirty bitmaps) until an all-zero end marker.
"""
from __future__ import annotations

from qimg.records import Record

HEADER_SIZE = 64
SECTOR = 512
#: ``inuse`` while an image is open read-write (the "dirty" flag)
INUSE_MAGIC = 0x746F6E59
#: QEMU's create: heads and sectors per cylinder of the (unused) geometry
HEADS = 16
SEC_IN_CYL = 32
DEFAULT_CLUSTER_SIZE = 1 << 20

Header = Record(
    "<",
    ("magic", "16s"),
    ("version", "I"),
    ("heads", "I"),
    ("cylinders", "I"),
    ("tracks", "I"),  # cluster size in sectors
    ("bat_entries", "I"),
    ("nb_sectors", "Q"),  # only the low 32 bits count in "WithoutFreeSpace" images
    ("inuse", "I"),
    ("data_off", "I"),  # sectors
    ("flags", "I"),
    ("ext_off", "Q"),  # sectors
    name="Parallels header",
)
assert Header.size == HEADER_SIZE

EXT_MAGIC = 0xAB234CEF23DCEA87
FEATURE_END = 0
FEATURE_DIRTY_BITMAP = 0x20385FAE252CB34A

ExtHeader = Record("<", ("magic", "Q"), ("check_sum", "16s"), name="Parallels Format Extension header")

FeatureHeader = Record(
    "<",
    ("magic", "Q"),
    ("flags", "Q"),
    ("data_size", "I"),
    (None, "4x"),
    name="Parallels feature header",
)

BitmapFeature = Record(
    "<",
    ("size", "Q"),  # sectors: must be the disk's
    ("id", "16s"),  # a UUID: the bitmap's name
    ("granularity", "I"),  # sectors per bit
    ("l1_size", "I"),  # u64 entries follow: 0 all clear, 1 all set, else a cluster offset in sectors
    name="Parallels dirty bitmap feature",
)
