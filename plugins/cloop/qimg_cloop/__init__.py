"""qimg-cloop: the cloop plugin (read-only). Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # QEMU's: the V2.0 shell preamble create_compressed_fs writes, score 2 (above raw only);
    # the core's table of known formats, qimg.signatures, holds it
    from qimg.signatures import score

    return score("cloop", head, filename)


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("cloop", "qimg_cloop.driver:CloopFormat", probe=probe,
                        description="cloop compressed loopback volume (read-only)")
