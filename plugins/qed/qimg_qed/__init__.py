"""qimg-qed: the QED format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # "QED\0" followed by the rest of a 64-byte header
    return 100 if len(head) >= 64 and head[:4] == b"QED\0" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("qed", "qimg_qed.driver:QedFormat", probe=probe, description="QEMU Enhanced Disk")
