"""qimg-luks: LUKS1 volumes as QEMU's ``luks`` format. Registers a name, a probe and a lazy
driver path; the LUKS code itself is the core's (:mod:`qimg.luks`), shared with qcow2."""
from qimg.plugins import hookimpl

#: the first six bytes of a LUKS volume (any version); QEMU's luks format is version 1
MAGIC = b"LUKS\xba\xbe"
#: the big-endian version field after the magic
VERSION_1 = b"\x00\x01"


def probe(head: bytes, filename: str) -> int:
    # QEMU's probe: magic and version 1 (a LUKS2 volume probes as raw)
    return 100 if len(head) >= 8 and head[:6] == MAGIC and head[6:8] == VERSION_1 else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("luks", "qimg_luks.driver:LuksFormat", probe=probe,
                        description="LUKS1 encrypted volume (QEMU's luks)")
