"""On-disk header of cloop volumes in the V2.0 layout, big-endian (what QEMU reads).

``preamble[128]`` (a shell script naming the format, ``#V2.0 Format``) then the block size and
the block count; ``n_blocks + 1`` absolute 64-bit offsets follow, block ``i`` being the zlib
stream at ``offsets[i] .. offsets[i + 1]`` that inflates to exactly ``block_size`` bytes.
(cloop 4's flag bits in the offsets and its footer layout are not part of this format: QEMU
reads neither.)
"""
from __future__ import annotations

from qimg.records import Record

Header = Record(
    ">",
    ("preamble", "128s"),
    ("block_size", "I"),
    ("n_blocks", "I"),
    name="cloop header",
)

HEADER_SIZE = Header.sizeof()
assert HEADER_SIZE == 136
