"""qimg-qed: the QED format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # "QED\0"; QEMU probes 512 bytes, zeroes past the end of a shorter file
    return 100 if head[:4] == b"QED\0" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("qed", "qimg_qed.driver:QedFormat", probe=probe, description="QEMU Enhanced Disk")
