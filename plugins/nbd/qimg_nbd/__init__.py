"""qimg-nbd: the NBD protocol plugin. Registers the protocol names only; the client
(``qimg_nbd.protocol`` with ``handshake``, ``tls``, ``transmission`` and ``wire``) loads when an
NBD name is opened."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    # QEMU registers the same driver under three protocol names
    registry.add_protocol("nbd", "qimg_nbd.protocol:NBDProtocol", prefixes=("nbd", "nbd+tcp", "nbd+unix"))
