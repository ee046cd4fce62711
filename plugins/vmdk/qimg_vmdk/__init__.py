"""qimg-vmdk: the VMDK format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl

_VERSIONS = (b"version=1\n", b"version=2\n", b"version=3\n", b"version=1\r\n", b"version=2\r\n",
             b"version=3\r\n")


def probe(head: bytes, filename: str) -> int:
    """QEMU's vmdk_probe: a sparse extent ("KDMV"/"COWD"), or a text whose first line that is
    neither a comment nor blank (spaces, then an end of line) is ``version=1``, 2 or 3."""
    if len(head) < 4:
        return 0
    if head[:4] in (b"KDMV", b"COWD"):
        return 100
    p, end = 0, len(head)
    while p < end:
        c = head[p]
        if c == 0x23:  # '#': a comment line
            nl = head.find(b"\n", p)
            p = end + 1 if nl < 0 else nl + 1
            continue
        if c == 0x20:  # spaces, maybe a CR, then the end of the line: a blank line
            while p < end and head[p] == 0x20:
                p += 1
            if p < end and head[p] == 0x0D:
                p += 1
            if p == end or head[p] != 0x0A:
                return 0
            p += 1
            continue
        return 100 if head[p:p + 10] in _VERSIONS or head[p:p + 11] in _VERSIONS else 0
    return 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vmdk", "qimg_vmdk.driver:VmdkFormat", probe=probe, description="VMware virtual disk")
