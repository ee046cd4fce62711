"""qimg-parallels: Parallels/Virtuozzo expandable images as QEMU's parallels format. Registers a
name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # QEMU's: "WithoutFreeSpace" or "WithouFreSpacExt", then version 2 (the core's table of
    # known formats, qimg.signatures, holds it)
    from qimg.signatures import score

    return score("parallels", head, filename)


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("parallels", "qimg_parallels.driver:ParallelsFormat", probe=probe,
                        description="Parallels/Virtuozzo expandable disk image")
