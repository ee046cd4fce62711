"""qimg-null: QEMU's null block drivers ``null-co`` and ``null-aio`` as protocols (``null-co://``,
``driver=null-co,size=...``). Registers the names and a lazy class path."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    # QEMU has two drivers that differ only in how they complete requests (coroutine, AIO)
    registry.add_protocol("null-co", "qimg_null.protocol:NullCoProtocol", prefixes=("null-co",))
    registry.add_protocol("null-aio", "qimg_null.protocol:NullAioProtocol", prefixes=("null-aio",))
