"""qimg-dmg: the Apple disk image plugin (read-only). Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # QEMU's: the name alone (the UDIF trailer is at the end of the file), score 2: above raw,
    # below any format with a magic number (the core's table of known formats, qimg.signatures)
    from qimg.signatures import score

    return score("dmg", head, filename)


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("dmg", "qimg_dmg.driver:DmgFormat", probe=probe,
                        description="Apple UDIF disk image (read-only)")
