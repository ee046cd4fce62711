"""qimg-qcow: the QCOW version 1 format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # magic "QFI\xfb" and version 1 (big-endian); qcow2 claims versions 2 and 3
    return 100 if head[:8] == b"QFI\xfb\x00\x00\x00\x01" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("qcow", "qimg_qcow.driver:QcowFormat", probe=probe,
                        description="QEMU copy-on-write image, version 1")
