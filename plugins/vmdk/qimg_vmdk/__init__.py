"""qimg-vmdk: the VMDK format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # QEMU's: a sparse extent ("KDMV"/"COWD" magic) or a text descriptor whose first line
    # after comments and blank lines is version=1, 2 or 3 (the core's table, qimg.signatures)
    from qimg.signatures import score

    return score("vmdk", head, filename)


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vmdk", "qimg_vmdk.driver:VmdkFormat", probe=probe, description="VMware virtual disk")
