"""The qcow2 header and its extensions: parse (with QEMU's checks on the extension area) and
encode exactly as QEMU 7.2 lays out the first cluster."""
from __future__ import annotations

import struct

from qimg.errors import QimgError
from qimg.limits import request_ok
from qimg.values import Value

from . import structs as S

#: Header's fields and defaults, in order (``repr`` and ``==`` follow it)
_FIELDS = (
    ("version", 3), ("backing_file_offset", 0), ("backing_file_size", 0), ("cluster_bits", 16),
    ("size", 0), ("crypt_method", 0), ("l1_size", 0), ("l1_table_offset", 0),
    ("refcount_table_offset", 0), ("refcount_table_clusters", 0), ("nb_snapshots", 0),
    ("snapshots_offset", 0), ("incompatible_features", 0), ("compatible_features", 0),
    ("autoclear_features", 0), ("refcount_order", 4), ("header_length", S.V3_HEADER_SIZE),
    ("compression_type", 0),
    # extension state
    ("backing_file", None), ("backing_format", None), ("data_file", None), ("crypto_header", None),
    ("bitmaps_ext", None),
)


class Header(Value):
    """The parsed header and extensions (a plain value class: no dataclasses at start-up)."""

    __slots__ = tuple(name for name, _ in _FIELDS) + ("unknown_exts", "feature_names")
    _fields = __slots__

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    refcount_order: int
    header_length: int
    compression_type: int
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    crypto_header: bytes | None
    bitmaps_ext: bytes | None
    unknown_exts: list[tuple[int, bytes]]
    #: names from the image's feature table: {(type, bit): name}
    feature_names: dict[tuple[int, int], str]

    def __init__(self, *, unknown_exts: list[tuple[int, bytes]] | None = None,
                 feature_names: dict[tuple[int, int], str] | None = None, **values: object) -> None:
        for name, default in _FIELDS:
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"Header() got unexpected keyword argument(s) {', '.join(values)}")
        self.unknown_exts = [] if unknown_exts is None else unknown_exts
        self.feature_names = {} if feature_names is None else feature_names


def parse_fixed(buf: bytes) -> Header:
    """The fixed part; ``buf`` holds at least 72 bytes. Field checks are the driver's job."""
    h2 = S.HeaderV2.parse(buf[: S.V2_HEADER_SIZE])
    h = Header(version=h2.version, backing_file_offset=h2.backing_file_offset,
               backing_file_size=h2.backing_file_size, cluster_bits=h2.cluster_bits, size=h2.size,
               crypt_method=h2.crypt_method, l1_size=h2.l1_size, l1_table_offset=h2.l1_table_offset,
               refcount_table_offset=h2.refcount_table_offset,
               refcount_table_clusters=h2.refcount_table_clusters, nb_snapshots=h2.nb_snapshots,
               snapshots_offset=h2.snapshots_offset)
    if h.version == 2:
        h.refcount_order = 4
        h.header_length = S.V2_HEADER_SIZE
    elif len(buf) >= S.V3_MIN_HEADER_SIZE:
        t = S.HeaderV3Tail.parse(buf[S.V2_HEADER_SIZE : S.V3_MIN_HEADER_SIZE])
        h.incompatible_features = t.incompatible_features
        h.compatible_features = t.compatible_features
        h.autoclear_features = t.autoclear_features
        h.refcount_order = t.refcount_order
        h.header_length = t.header_length
        if h.header_length > S.V3_MIN_HEADER_SIZE and len(buf) > S.V3_MIN_HEADER_SIZE:
            h.compression_type = buf[S.V3_MIN_HEADER_SIZE]
    return h


def check_table_requests(h: Header, cluster_size: int) -> None:
    """The L1 and refcount tables as QEMU's block layer reads them at open: a table that passes
    the header checks (bounded by INT64_MAX) but ends past BDRV_MAX_LENGTH fails its request."""
    if h.l1_size and not request_ok(h.l1_table_offset, h.l1_size * 8):
        raise QimgError("Could not read L1 table: Input/output error")
    if not request_ok(h.refcount_table_offset, h.refcount_table_clusters * cluster_size):
        raise QimgError("Could not initialize refcount handling: Input/output error")


def parse_extensions(h: Header, cluster: bytes, end: int, strict: bool = True) -> None:
    """Read the extensions from ``header_length`` to ``end`` (the backing name's offset or the
    cluster's end) with QEMU's checks (qcow2_read_extensions). ``cluster`` holds the first
    cluster and 8 bytes more; ``strict`` False: stop quietly at the first error (QEMU's pass
    that only looks for the feature name table)."""
    pos = h.header_length
    while pos < end:
        ext = S.ExtHeader.parse(cluster[pos : pos + 8].ljust(8, b"\0"))
        pos += 8
        try:
            if pos > end or ext.length > end - pos:
                raise QimgError("Header extension too large")
            if ext.type == S.EXT_END:
                return
            _extension(h, ext.type, ext.length, cluster[pos : pos + ext.length])
        except QimgError:
            if strict:
                raise
            return
        pos += (ext.length + 7) & ~7


def _extension(h: Header, kind: int, length: int, data: bytes) -> None:
    if kind == S.EXT_BACKING_FORMAT:
        if length >= 16:
            raise QimgError(f"ERROR: ext_backing_format: len={length} too large (>=16)")
        # a C string in QEMU: it ends at the first NUL (empty: the backing file is probed)
        h.backing_format = bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace") or None
    elif kind == S.EXT_FEATURE_TABLE:
        # as QEMU reads it: a partial last entry is zero-padded, the table ends at the first
        # entry without a name, and the first entry of a bit names it (in table order)
        table = bytes(data) + bytes(-len(data) % 48)
        for i in range(0, len(table), 48):
            fe = S.FeatureEntry.parse(table[i : i + 48])
            name = fe.name.split(b"\0", 1)[0]
            if not name:
                break
            h.feature_names.setdefault((fe.type, fe.bit), name.decode("utf-8", "replace"))
    elif kind == S.EXT_CRYPTO:
        if h.crypt_method != S.CRYPT_LUKS:
            raise QimgError("CRYPTO header extension only expected with LUKS encryption method")
        if length != 16:
            raise QimgError(f"CRYPTO header extension size {length}, but expected size 16")
        offset = struct.unpack(">Q", data[:8])[0]
        if offset % (1 << h.cluster_bits):
            raise QimgError(f"Encryption header offset '{offset}' is not a multiple of cluster size "
                            f"'{1 << h.cluster_bits}'")
        h.crypto_header = bytes(data)
    elif kind == S.EXT_BITMAPS:
        h.bitmaps_ext = bytes(data)
    elif kind == S.EXT_DATA_FILE:
        h.data_file = data.decode("utf-8", "replace")
    else:
        h.unknown_exts.append((kind, bytes(data)))


def _ext(kind: int, data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return struct.pack(">II", kind, len(data)) + data + bytes(pad)


def encode_header(h: Header, cluster_size: int) -> bytes:
    """The whole first cluster as QEMU's header update writes it."""
    h.header_length = S.V2_HEADER_SIZE if h.version == 2 else S.V3_HEADER_SIZE
    out = bytearray(S.HeaderV2.build(dict(
        magic=S.QCOW_MAGIC, version=h.version, backing_file_offset=0, backing_file_size=0,
        cluster_bits=h.cluster_bits, size=h.size, crypt_method=h.crypt_method, l1_size=h.l1_size,
        l1_table_offset=h.l1_table_offset, refcount_table_offset=h.refcount_table_offset,
        refcount_table_clusters=h.refcount_table_clusters, nb_snapshots=h.nb_snapshots,
        snapshots_offset=h.snapshots_offset)))
    if h.version >= 3:
        out += S.HeaderV3Tail.build(dict(
            incompatible_features=h.incompatible_features, compatible_features=h.compatible_features,
            autoclear_features=h.autoclear_features, refcount_order=h.refcount_order,
            header_length=h.header_length))
        out += bytes([h.compression_type]) + bytes(7)
    if h.backing_format:
        out += _ext(S.EXT_BACKING_FORMAT, h.backing_format.encode())
    if h.data_file:
        out += _ext(S.EXT_DATA_FILE, h.data_file.encode())
    if h.crypto_header is not None:
        out += _ext(S.EXT_CRYPTO, h.crypto_header)
    if h.version >= 3 and cluster_size > 4096:
        # QEMU 7.2 leaves the (optional) feature name table out of small clusters
        table = b"".join(S.FeatureEntry.build(dict(type=t, bit=b, name=n.encode().ljust(46, b"\0")))
                         for t, b, n in S.FEATURE_NAMES)
        out += _ext(S.EXT_FEATURE_TABLE, table)
    if h.bitmaps_ext is not None:
        out += _ext(S.EXT_BITMAPS, h.bitmaps_ext)
    for kind, data in h.unknown_exts:
        out += _ext(kind, data)
    out += bytes(8)
    if h.backing_file:
        name = h.backing_file.encode()
        h.backing_file_offset = len(out)
        h.backing_file_size = len(name)
        out += name
        struct.pack_into(">QI", out, 8, h.backing_file_offset, h.backing_file_size)
    else:
        h.backing_file_offset = h.backing_file_size = 0
    if len(out) > cluster_size:
        raise QimgError("Cannot update qcow2 header: header and extensions do not fit in one cluster")
    return bytes(out) + bytes(cluster_size - len(out))


def read_header(f, refuse_corrupt: bool) -> tuple[Header, bytes, int]:
    """Read and check the header as QEMU's qcow2_do_open does, in its order; return it with
    the first cluster (and 8 bytes more: an extension header may start in its last bytes) and
    the end of the extension area. ``refuse_corrupt``: a read-write open (not for a check)."""
    head = f.pread(0, S.V3_HEADER_SIZE)
    if len(head) < S.V2_HEADER_SIZE or head[:4] != b"QFI\xfb":
        raise QimgError("Image is not in qcow2 format")
    h = parse_fixed(head)
    if h.version < 2 or h.version > 3:
        raise QimgError(f"Unsupported qcow2 version {h.version}")
    if h.cluster_bits < S.MIN_CLUSTER_BITS or h.cluster_bits > S.MAX_CLUSTER_BITS:
        raise QimgError(f"Unsupported cluster size: 2^{h.cluster_bits}")
    cs = 1 << h.cluster_bits
    if h.version == 3:
        if len(head) < S.V3_MIN_HEADER_SIZE or h.header_length < S.V3_MIN_HEADER_SIZE:
            raise QimgError("qcow2 header too short")
        if h.header_length > cs:
            raise QimgError("qcow2 header exceeds cluster size")
        if h.header_length <= S.V3_MIN_HEADER_SIZE:
            h.compression_type = 0
    if h.backing_file_offset > cs:
        raise QimgError("Invalid backing file offset")
    # the first cluster and 8 bytes more (an extension header may start in its last bytes)
    cluster0 = f.pread(0, cs + 8)
    ext_end = h.backing_file_offset if h.backing_file_offset else cs
    unknown = h.incompatible_features & ~S.INCOMPAT_KNOWN
    if unknown:
        # as QEMU, the extensions are read for the feature names only, errors ignored
        parse_extensions(h, cluster0, ext_end, strict=False)
        parts = []
        # the feature name table's order: each incompatible bit by the first entry naming it
        for (kind, bit), name in h.feature_names.items():
            mask = 1 << (bit & 63)  # QEMU's 1ULL << bit, whose count x86 takes modulo 64
            if kind == 0 and unknown & mask:
                parts.append(name)
                unknown &= ~mask
        if unknown:
            parts.append(f"Unknown incompatible feature: {unknown:x}")
        raise QimgError("Unsupported qcow2 feature(s): " + ", ".join(parts), 1)
    if h.incompatible_features & S.INCOMPAT_CORRUPT and refuse_corrupt:
        raise QimgError("qcow2: Image is corrupt; cannot be opened read/write")
    if h.incompatible_features & S.INCOMPAT_EXTL2 and cs // 32 < 512:
        raise QimgError(f"Unsupported subcluster size: {cs // 32}")
    if h.refcount_order > 6:
        raise QimgError("Reference count entry width too large; may not exceed 64 bits")
    if h.crypt_method > 2:
        # printed as QEMU's int: the uint32 field read signed
        method = h.crypt_method - (1 << 32) if h.crypt_method >= 1 << 31 else h.crypt_method
        raise QimgError(f"Unsupported encryption method {method}")
    if h.compression_type > 1:
        raise QimgError(f"qcow2: unknown compression type: {h.compression_type}")
    if h.compression_type != 0 and not h.incompatible_features & S.INCOMPAT_COMPRESSION:
        raise QimgError("qcow2: Compression type incompatible feature bit must be set")
    if h.compression_type == 0 and h.incompatible_features & S.INCOMPAT_COMPRESSION:
        raise QimgError("qcow2: Compression type incompatible feature bit must not be set")
    return h, cluster0, ext_end
