"""qimg-vmdk: the VMDK format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # a sparse extent ("KDMV"/"COWD" magic) or a text descriptor
    if head[:4] in (b"KDMV", b"COWD"):
        return 100
    if head.startswith(b"# Disk DescriptorFile") or (b"\ncreateType=" in head and b"version=" in head):
        return 100
    return 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vmdk", "qimg_vmdk.driver:VmdkFormat", probe=probe, description="VMware virtual disk")
