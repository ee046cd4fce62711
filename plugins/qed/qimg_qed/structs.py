"""QED on-disk header (docs/interop/qed_spec.txt); all fields little-endian."""
from construct import Bytes, Int32ul, Int64ul, Struct

MAGIC = b"QED\0"
HEADER_SIZE = 64

F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04
KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE

Header = Struct(
    "magic" / Bytes(4),
    "cluster_size" / Int32ul,
    "table_size" / Int32ul,  # in clusters, for L1 and L2 tables
    "header_size" / Int32ul,  # in clusters
    "features" / Int64ul,
    "compat_features" / Int64ul,
    "autoclear_features" / Int64ul,
    "l1_table_offset" / Int64ul,
    "image_size" / Int64ul,
    "backing_filename_offset" / Int32ul,
    "backing_filename_size" / Int32ul,
)
