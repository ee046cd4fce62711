"""qimg-qcow2: the qcow2 format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl

QCOW_MAGIC = b"QFI\xfb"


def probe(head: bytes, filename: str) -> int:
    # qcow (v1) shares the magic; qcow2 claims versions 2 and 3 only
    if len(head) >= 8 and head[:4] == QCOW_MAGIC and int.from_bytes(head[4:8], "big") >= 2:
        return 100
    return 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("qcow2", "qimg_qcow2.driver:Qcow2Format", probe=probe,
                        description="QEMU copy-on-write image, version 2/3")
