"""qimg-bochs: the Bochs growing-image plugin (read-only). Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # QEMU's: "Bochs Virtual HD Image", type "Redolog", subtype "Growing", version 1 or 2 (the
    # core's table of known formats, qimg.signatures, holds it)
    from qimg.signatures import score

    return score("bochs", head, filename)


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("bochs", "qimg_bochs.driver:BochsFormat", probe=probe,
                        description="Bochs growing disk image (read-only)")
