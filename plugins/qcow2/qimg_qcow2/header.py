"""The qcow2 header and its extensions: parse (with QEMU's checks on the extension area) and
encode exactly as QEMU 7.2 lays out the first cluster."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from qimg.errors import QimgError

from . import structs as S


@dataclass
class Header:
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = S.V3_HEADER_SIZE
    compression_type: int = 0
    # extension state
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    crypto_header: bytes | None = None
    bitmaps_ext: bytes | None = None
    unknown_exts: list[tuple[int, bytes]] = field(default_factory=list)
    # names from the image's feature table: {(type, bit): name}
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)


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


def parse_extensions(h: Header, cluster: bytes, end: int) -> None:
    """Read the extensions between ``header_length`` and ``end`` (backing name offset or cluster end)."""
    pos = h.header_length
    while pos + 8 <= end:
        ext = S.ExtHeader.parse(cluster[pos : pos + 8])
        pos += 8
        if ext.type == S.EXT_END:
            return
        if ext.length > end - pos:
            raise QimgError("qcow2_read_extension: ERROR: Invalid extension length")
        data = cluster[pos : pos + ext.length]
        if ext.type == S.EXT_BACKING_FORMAT:
            if ext.length >= 16:
                raise QimgError(f"ERROR: ext_backing_format: len={ext.length} too large (>=16)")
            h.backing_format = data.decode("utf-8", "replace")
        elif ext.type == S.EXT_FEATURE_TABLE:
            for i in range(0, len(data) - 47, 48):
                fe = S.FeatureEntry.parse(data[i : i + 48])
                h.feature_names[(fe.type, fe.bit)] = fe.name.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif ext.type == S.EXT_CRYPTO:
            if ext.length != 16:
                raise QimgError(f"Unable to read CRYPTO header extension: length {ext.length} != 16")
            h.crypto_header = bytes(data)
        elif ext.type == S.EXT_BITMAPS:
            h.bitmaps_ext = bytes(data)
        elif ext.type == S.EXT_DATA_FILE:
            h.data_file = data.decode("utf-8", "replace")
        else:
            h.unknown_exts.append((ext.type, bytes(data)))
        pos += (ext.length + 7) & ~7


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
