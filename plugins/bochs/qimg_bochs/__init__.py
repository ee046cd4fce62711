"""qimg-bochs: the Bochs growing-image plugin (read-only). Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl

# the three NUL-terminated strings QEMU compares with strcmp, at their offsets in the header
_MAGIC = b"Bochs Virtual HD Image\0"
_TYPE = b"Redolog\0"
_SUBTYPE = b"Growing\0"
_VERSIONS = (b"\x00\x00\x02\x00", b"\x00\x00\x01\x00")  # 2.0 and 1.0, little-endian


def probe(head: bytes, filename: str) -> int:
    # "Bochs Virtual HD Image", type "Redolog", subtype "Growing", version 1 or 2; QEMU probes
    # 512 bytes, zeroes past the end of a shorter file
    head = head[:512].ljust(512, b"\0")
    if head.startswith(_MAGIC) and head[32:40] == _TYPE and head[48:56] == _SUBTYPE and head[64:68] in _VERSIONS:
        return 100
    return 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("bochs", "qimg_bochs.driver:BochsFormat", probe=probe,
                        description="Bochs growing disk image (read-only)")
