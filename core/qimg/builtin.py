"""The core's own plugin: the ``file`` protocol."""
from __future__ import annotations

from .plugins import _register_builtin_protocols, hookimpl

# defined in qimg.plugins, which registers it without importing this module when it reads
# the registry itself; pluggy's plugin manager registers this module as "qimg.builtin"
qimg_register_protocols = hookimpl(_register_builtin_protocols)
