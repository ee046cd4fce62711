"""qimg-vpc: the VHD (Virtual PC) format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # a dynamic VHD starts with a copy of its footer; fixed VHDs (footer only at the end) are not probed
    return 100 if head[:8] == b"conectix" else 0


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("vpc", "qimg_vpc.driver:VpcFormat", probe=probe,
                        description="Virtual PC / VHD disk image")
