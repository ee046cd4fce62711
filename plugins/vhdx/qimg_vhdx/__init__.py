"""qimg-vhdx: the VHDX format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    return 100 if head[:8] == b"vhdxfile" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vhdx", "qimg_vhdx.driver:VhdxFormat", probe=probe, description="Microsoft VHDX")
