"""The core's own plugin: the ``file`` protocol."""
from __future__ import annotations

from .plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("file", "qimg.protocol:FileProtocol", prefixes=("file",))
