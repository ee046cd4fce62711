"""qimg-vdi: the VirtualBox VDI format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # the signature 0xbeda107f (little-endian) follows the 64-byte text banner
    return 100 if head[64:68] == b"\x7f\x10\xda\xbe" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vdi", "qimg_vdi.driver:VdiFormat", probe=probe,
                        description="VirtualBox VDI disk image")
