"""On-disk structures of Apple UDIF disk images (.dmg), big-endian.

The image ends with the 512-byte ``koly`` trailer: where the data fork, the resource fork and
the XML property list are, and the guest's sector count. The block tables ("blkx" resources,
each a ``mish`` header followed by 40-byte chunk entries) are found in the resource fork or,
base64-encoded in ``<data>`` elements, in the XML plist. A chunk maps ``sector_count`` guest
sectors from ``sector_number`` (plus the table's first sector) to ``length`` stored bytes at
``offset`` (plus the data fork's offset and the table's data offset).
"""
from __future__ import annotations

from qimg.records import Record

Checksum = Record(">", ("type", "I"), ("bits", "I"), ("data", "128s"), name="UDIF checksum")

Koly = Record(
    ">",
    ("signature", "4s"),  # "koly"
    ("version", "I"),  # 4
    ("header_size", "I"),  # 512
    ("flags", "I"),
    ("running_data_fork_offset", "Q"),
    ("data_fork_offset", "Q"),  # 0x18
    ("data_fork_length", "Q"),
    ("rsrc_fork_offset", "Q"),  # 0x28
    ("rsrc_fork_length", "Q"),  # 0x30
    ("segment_number", "I"),
    ("segment_count", "I"),
    ("segment_id", "16s"),
    ("data_checksum", Checksum),
    ("xml_offset", "Q"),  # 0xd8
    ("xml_length", "Q"),  # 0xe0
    (None, "120x"),
    ("master_checksum", Checksum),
    ("image_variant", "I"),
    ("sector_count", "Q"),  # 0x1ec
    (None, "12x"),
    name="UDIF trailer",
)

Mish = Record(
    ">",
    ("signature", "4s"),  # "mish"
    ("version", "I"),
    ("sector_number", "Q"),  # first guest sector of the table
    ("sector_count", "Q"),
    ("data_offset", "Q"),  # 0x18: added to every chunk's offset
    ("buffers_needed", "I"),
    ("block_descriptors", "I"),
    (None, "24x"),
    ("checksum", Checksum),
    ("chunk_count", "I"),  # QEMU counts the entries from the table's size instead
    name="mish block table",
)

Chunk = Record(
    ">",
    ("type", "I"),
    ("comment", "I"),
    ("sector_number", "Q"),
    ("sector_count", "Q"),
    ("offset", "Q"),
    ("length", "Q"),
    name="mish chunk entry",
)

#: the start of a classic resource fork: where its data and map are
ResourceHeader = Record(
    ">",
    ("data_offset", "I"),
    ("map_offset", "I"),
    ("data_length", "I"),
    ("map_length", "I"),
    name="resource fork header",
)

assert Koly.sizeof() == 512 and Mish.sizeof() == 204 and Chunk.sizeof() == 40
KOLY_SIZE = 512
MISH_SIZE = 204
CHUNK_SIZE = 40
