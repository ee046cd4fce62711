"""qimg-quorum: QEMU's quorum driver as a protocol (``driver=quorum,vote-threshold=N,children.0...``).
Registers the name and a lazy class path."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("quorum", "qimg_quorum.protocol:QuorumProtocol")
