"""qimg_cli: the ``qimg`` command, a drop-in replacement for ``qemu-img``."""
