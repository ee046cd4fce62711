"""qimg-rbd: the ``rbd`` protocol (QEMU's rbd driver: images in a Ceph cluster). Registers the
name and prefix only; the driver and Ceph's bindings (``rados``, ``rbd``) load when an rbd:
image is opened."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("rbd", "qimg_rbd.protocol:RbdProtocol", prefixes=("rbd",))
