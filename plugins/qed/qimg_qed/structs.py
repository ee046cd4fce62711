"""QED on-disk header (docs/interop/qed_spec.txt); all fields little-endian."""
from qimg.records import Record

MAGIC = b"QED\0"
HEADER_SIZE = 64

F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04
KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE

Header = Record(
    "<",
    ("magic", "4s"),
    ("cluster_size", "I"),
    ("table_size", "I"),  # in clusters, for L1 and L2 tables
    ("header_size", "I"),  # in clusters
    ("features", "Q"),
    ("compat_features", "Q"),
    ("autoclear_features", "Q"),
    ("l1_table_offset", "Q"),
    ("image_size", "Q"),
    ("backing_filename_offset", "I"),
    ("backing_filename_size", "I"),
    name="QED header",
)
