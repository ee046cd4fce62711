"""qimg-cloop: the cloop plugin (read-only). Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl

#: the shell preamble create_compressed_fs writes: QEMU probes for exactly this (V2.0)
MAGIC_V2 = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def probe(head: bytes, filename: str) -> int:
    # score 2 as QEMU: above raw, below any format with a binary magic
    return 2 if head.startswith(MAGIC_V2) else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("cloop", "qimg_cloop.driver:CloopFormat", probe=probe,
                        description="cloop compressed loopback volume (read-only)")
