"""qimg-raw: the raw format plugin. Registers a name, a probe and a lazy driver path."""
from qimg.plugins import hookimpl


def probe(head: bytes, filename: str) -> int:
    # raw matches anything, with the lowest score: it wins only when no format claims the file
    return 1


@hookimpl
def qimg_register_formats(registry) -> None:
    registry.add_format("raw", "qimg_raw.driver:RawFormat", probe=probe, description="Raw disk image")
    # the file protocol as a format (``-f file``): never probed
    registry.add_format("file", "qimg_raw.file:FileFormat", description="The image file itself (protocol)")


@hookimpl
def qimg_register_protocols(registry) -> None:
    # QEMU's host_device: the file protocol for block and character devices (``-f host_device``,
    # ``driver=host_device``, ``host_device:/dev/sdb``)
    registry.add_protocol("host_device", "qimg_raw.hostdev:HostDeviceProtocol")
