"""On-disk structures of qcow2 (QEMU docs/interop/qcow2.rst).

Fixed-layout records are declarative :class:`qimg.records.Record` layouts (each one's
``.construct`` is the equivalent construct Struct); the big tables (L1, L2, refcounts) are arrays.
"""
from __future__ import annotations

from qimg.records import Record

QCOW_MAGIC = 0x514649FB

HeaderV2 = Record(
    ">",
    ("magic", "I"),
    ("version", "I"),
    ("backing_file_offset", "Q"),
    ("backing_file_size", "I"),
    ("cluster_bits", "I"),
    ("size", "Q"),
    ("crypt_method", "I"),
    ("l1_size", "I"),
    ("l1_table_offset", "Q"),
    ("refcount_table_offset", "Q"),
    ("refcount_table_clusters", "I"),
    ("nb_snapshots", "I"),
    ("snapshots_offset", "Q"),
    name="qcow2 header",
)
V2_HEADER_SIZE = 72

# version 3 fields that follow the v2 part
HeaderV3Tail = Record(
    ">",
    ("incompatible_features", "Q"),
    ("compatible_features", "Q"),
    ("autoclear_features", "Q"),
    ("refcount_order", "I"),
    ("header_length", "I"),
    name="qcow2 version 3 header",
)
V3_MIN_HEADER_SIZE = 104
# what QEMU 7.2 writes: the v3 fields plus compression_type and 7 bytes of padding
V3_HEADER_SIZE = 112

ExtHeader = Record(">", ("type", "I"), ("length", "I"), name="qcow2 header extension")

FeatureEntry = Record(">", ("type", "B"), ("bit", "B"), ("name", "46s"), name="qcow2 feature name table entry")

# header extension types
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# feature bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW

# the feature name table QEMU 7.2 writes (type 0 incompatible, 1 compatible, 2 autoclear)
FEATURE_NAMES = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
]

# table entry flags
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

# limits as QEMU enforces them
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_REFTABLE_SIZE = 8 << 20  # bytes
MAX_L1_SIZE = 32 << 20  # bytes
MAX_FILE_OFFSET = (1 << 56) - 1
MAX_SNAPSHOTS = 65536

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1


def chex(value: int) -> str:
    """A number as C's ``%#x`` prints it in QEMU's messages: ``0x2a``, but ``0`` for zero."""
    return f"{value:#x}" if value else "0"
