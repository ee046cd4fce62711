"""A test-side writer of Apple UDIF disk images (.dmg), following the format as hdiutil writes it.

No producer exists on Debian (hdiutil is macOS), so the tests build DMG files here and prove
qimg against qemu-img reading the very same file. Layout written::

    data fork: the chunks' stored bytes, table after table
    [resource fork]  classic Mac resource fork: 'blkx' resources (mish tables), 'plst', a map
    [XML plist]      plist whose resource-fork/blkx entries hold the same mish tables in <data>
    koly trailer     512 bytes, big-endian: fork offsets and lengths, checksums, sector count

A mish table (BLKXTable) is a 204-byte header (``mish``, version 1, first sector, sector count,
data offset, buffers needed, descriptor, reserved, UDIF checksum, chunk count) followed by
40-byte chunk entries (type, comment, sector number and count relative to the table, offset
relative to the data fork plus the table's data offset, stored length). Chunk types: zero
(0), raw (1), ignore (2), ADC (0x80000004), zlib (0x80000005), bzip2 (0x80000006), lzfse
(0x80000007), lzma (0x80000008), comment (0x7ffffffe), terminator (0xffffffff).
"""
from __future__ import annotations

import bz2
import plistlib
import struct
import zlib

SECTOR = 512

TYPES = {
    "zero": 0x00000000, "raw": 0x00000001, "ignore": 0x00000002, "adc": 0x80000004, "zlib": 0x80000005,
    "bzip2": 0x80000006, "lzfse": 0x80000007, "lzma": 0x80000008, "comment": 0x7FFFFFFE, "end": 0xFFFFFFFF,
}
#: kinds whose sectors read as zeroes whatever is stored
ZERO_KINDS = ("zero", "ignore")
#: kinds the writer cannot really compress: their bytes are junk (QEMU does not read them either)
JUNK_KINDS = ("adc", "lzfse", "lzma")

MISH_HEADER = struct.Struct(">4sIQQQII24sII128sI")
CHUNK = struct.Struct(">IIQQQQ")
KOLY = struct.Struct(">4sIIIQQQQQII16sII128sQQ120sII128sIQ12s")
assert MISH_HEADER.size == 204 and CHUNK.size == 40 and KOLY.size == 512


def _checksum(data: bytes) -> bytes:
    """A UDIF checksum field: type 2 (CRC-32), 32 bits, the value in the first word."""
    return struct.pack(">II", 2, 32), struct.pack(">I", zlib.crc32(data)).ljust(128, b"\0")


def _store(kind: str, raw: bytes) -> bytes:
    if kind == "zlib":
        return zlib.compress(raw, 6)
    if kind == "bzip2":
        return bz2.compress(raw, 9)
    if kind == "raw":
        return raw
    if kind in JUNK_KINDS:
        return b"\xa5" * max(1, len(raw) // 4)
    return b""


def mish_table(first_sector: int, chunks: list[tuple], data_offset: int = 0, descriptor: int = 0) -> bytes:
    """One BLKXTable from ``(kind, sector, count, offset, length)`` entries (sector relative to
    the table, offset relative to the data fork minus ``data_offset``)."""
    total = max((c[1] + c[2] for c in chunks), default=0)
    ctype, cvalue = _checksum(b"".join(CHUNK.pack(TYPES[c[0]], 0, *c[1:]) for c in chunks))
    head = MISH_HEADER.pack(b"mish", 1, first_sector, total, data_offset, 0x208, descriptor, bytes(24),
                            *struct.unpack(">II", ctype), cvalue, len(chunks))
    return head + b"".join(CHUNK.pack(TYPES[c[0]], 0, *c[1:]) for c in chunks)


def resource_fork(resources: dict[bytes, list[tuple[int, str, bytes]]]) -> bytes:
    """A classic resource fork: 256-byte header, the resources' data (each length-prefixed),
    then the resource map (type list, reference lists, names)."""
    data = bytearray()
    refs: dict[bytes, list[tuple[int, int, int]]] = {}
    names = bytearray()
    for rtype, items in resources.items():
        for rid, name, payload in items:
            off = len(data)
            data += struct.pack(">I", len(payload)) + payload
            name_off = len(names)
            enc = name.encode("mac_roman")[:255]
            names += bytes([len(enc)]) + enc
            refs.setdefault(rtype, []).append((rid, name_off, off))
    types = list(refs)
    type_list = bytearray(struct.pack(">H", len(types) - 1))
    ref_lists = bytearray()
    ref_base = 2 + 8 * len(types)
    for t in types:
        type_list += struct.pack(">4sHH", t, len(refs[t]) - 1, ref_base + len(ref_lists))
        for rid, name_off, off in refs[t]:
            ref_lists += struct.pack(">hHII", rid, name_off, off & 0xFFFFFF, 0)
    map_head = 28
    type_list_off = map_head
    name_list_off = type_list_off + len(type_list) + len(ref_lists)
    data_off = 256
    rmap = bytearray(16) + struct.pack(">IHHHH", 0, 0, 0, type_list_off, name_list_off)
    rmap += type_list + ref_lists + names
    head = struct.pack(">IIII", data_off, data_off + len(data), len(data), len(rmap))
    rmap[0:16] = head
    return head.ljust(256, b"\0") + bytes(data) + bytes(rmap)


def plist_xml(tables: list[tuple[str, bytes]], extra_plst: bool = True) -> bytes:
    """The XML property list hdiutil writes: resource-fork/blkx entries with the mish tables
    (and a 'plst' entry whose data is not a mish table)."""
    blkx = [{"Attributes": "0x0050", "CFName": name, "Data": table, "ID": str(i - 1), "Name": name}
            for i, (name, table) in enumerate(tables)]
    fork: dict = {"blkx": blkx}
    if extra_plst:
        fork["plst"] = [{"Attributes": "0x0050", "Data": bytes(0x28), "ID": "0", "Name": ""}]
    return plistlib.dumps({"resource-fork": fork}, fmt=plistlib.FMT_XML)


def dmg_image(data: bytes, layout: list[list[tuple[str, int]]], *, fork: str = "xml",
              comments: bool = True, data_offsets: bool = False, total_sectors: int | None = None,
              trailing: int = 0, koly: dict | None = None) -> tuple[bytes, bytes]:
    """A UDIF image of ``data`` (whole sectors) and the guest bytes a reader must see.

    ``layout``: one list per blkx table of ``(kind, sectors)`` chunks covering the disk in
    order (kinds of :data:`TYPES`; zero/ignore chunks store nothing and read as zeroes).
    ``fork``: "xml" (plist only, as hdiutil since 10.2), "rsrc" (resource fork only) or "both"
    (QEMU prefers the resource fork). ``data_offsets``: give each table a non-zero data offset
    (chunk offsets then count from it). ``trailing`` junk bytes after the trailer; ``koly``
    overrides trailer fields (offsets by name, for hostile images).
    """
    assert len(data) % SECTOR == 0
    fork_bytes = bytearray()
    tables: list[tuple[str, bytes]] = []
    expected = bytearray()
    sector = 0
    for t, chunks in enumerate(layout):
        first = sector
        table_base = len(fork_bytes) if data_offsets else 0
        entries = []
        rel = 0
        for kind, count in chunks:
            raw = data[sector * SECTOR:(sector + count) * SECTOR]
            stored = _store(kind, raw)
            off = len(fork_bytes) - table_base
            fork_bytes += stored
            if comments and kind not in ZERO_KINDS and rel == 0:
                entries.append(("comment", rel, 0, off, 0))
            entries.append((kind, rel, count, off, len(stored)))
            expected += bytes(len(raw)) if kind in ZERO_KINDS or kind in JUNK_KINDS else raw
            rel += count
            sector += count
        entries.append(("end", rel, 0, len(fork_bytes) - table_base, 0))
        tables.append((f"table {t} (Apple_HFS : {t + 1})", mish_table(first, entries, table_base, t)))
    assert sector * SECTOR == len(data), "the layout must cover the data exactly"
    out = bytearray(fork_bytes)
    data_fork_len = len(out)
    rsrc_off = rsrc_len = xml_off = xml_len = 0
    if fork in ("rsrc", "both"):
        rsrc = resource_fork({b"blkx": [(i - 1, name, table) for i, (name, table) in enumerate(tables)],
                              b"plst": [(0, "", bytes(0x28))]})
        rsrc_off, rsrc_len = len(out), len(rsrc)
        out += rsrc
    if fork in ("xml", "both"):
        xml = plist_xml(tables)
        xml_off, xml_len = len(out), len(xml)
        out += xml
    fields = {
        "data_fork_offset": 0, "data_fork_length": data_fork_len, "rsrc_offset": rsrc_off,
        "rsrc_length": rsrc_len, "xml_offset": xml_off, "xml_length": xml_len,
        "sector_count": len(data) // SECTOR if total_sectors is None else total_sectors,
        "version": 4, "header_size": 512, "signature": b"koly",
    }
    fields.update(koly or {})
    dtype, dvalue = _checksum(bytes(fork_bytes))
    mtype, mvalue = _checksum(b"".join(t[1] for t in tables))
    trailer = KOLY.pack(fields["signature"], fields["version"], fields["header_size"], 1, 0,
                        fields["data_fork_offset"], fields["data_fork_length"], fields["rsrc_offset"],
                        fields["rsrc_length"], 1, 1, bytes(range(16)), *struct.unpack(">II", dtype), dvalue,
                        fields["xml_offset"], fields["xml_length"], bytes(120), *struct.unpack(">II", mtype),
                        mvalue, 1, fields["sector_count"], bytes(12))
    out += trailer + b"\x00" * trailing
    return bytes(out), bytes(expected)


def chunked(total_sectors: int, kinds: list[str], per_chunk: int = 2048, tables: int = 1) -> list[list[tuple[str, int]]]:
    """A layout of ``tables`` tables over ``total_sectors`` sectors, chunks of ``per_chunk``
    sectors whose kinds cycle through ``kinds``."""
    bounds = [total_sectors * i // tables for i in range(tables + 1)]
    out, k = [], 0
    for a, b in zip(bounds, bounds[1:], strict=False):
        table = []
        s = a
        while s < b:
            n = min(per_chunk, b - s)
            table.append((kinds[k % len(kinds)], n))
            k += 1
            s += n
        out.append(table)
    return out
