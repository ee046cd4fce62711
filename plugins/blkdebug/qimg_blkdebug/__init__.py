"""qimg-blkdebug: QEMU's blkdebug error injection filter as a protocol (``blkdebug:CONFIG:IMAGE``,
``driver=blkdebug``). Registers the name and a lazy class path."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("blkdebug", "qimg_blkdebug.protocol:BlkdebugProtocol")
