"""The core's own plugin: the ``file`` protocol."""
from __future__ import annotations

from .plugins import _register_builtin_protocols, hookimpl

# defined in qimg.plugins, which registers it (as "qimg.builtin") without importing this module;
# this module is that plugin in pluggy's form, for tests/test_startup.py's reference PluginManager
qimg_register_protocols = hookimpl(_register_builtin_protocols)
