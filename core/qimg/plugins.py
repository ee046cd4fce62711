"""The plugin manager: built lazily, on first use, never at import time.

Plugins come from the entry-point group ``qimg``; the core's own ``file`` protocol is
registered the same way (``qimg.builtin``). ``QIMG_DISABLE_PLUGINS`` (comma-separated entry
point names) blocks plugins before they load, like tox's ``set_blocked``.
"""
from __future__ import annotations

import os

import pluggy

from . import hookspecs
from .registry import Registry

hookimpl = pluggy.HookimplMarker("qimg")

_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_extra_specs: list[object] = []


def add_hookspecs(module: object) -> None:
    """Let a layer above the core (the CLI) add its own hook specifications."""
    _extra_specs.append(module)
    if _pm is not None:
        _pm.add_hookspecs(module)


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("qimg")
        pm.add_hookspecs(hookspecs)
        for spec in _extra_specs:
            pm.add_hookspecs(spec)
        for name in filter(None, os.environ.get("QIMG_DISABLE_PLUGINS", "").split(",")):
            pm.set_blocked(name.strip())
        from . import builtin

        pm.register(builtin, "qimg.builtin")
        # what pm.load_setuptools_entrypoints("qimg") does, without importlib.metadata's cost
        from .entrypoints import entry_points, load

        for name, value in entry_points("qimg"):
            if pm.has_plugin(name) or pm.is_blocked(name):
                continue
            try:
                module = load(value)
            except Exception as e:  # noqa: BLE001 - a broken plugin is a clean one-line error
                from .errors import QimgError

                raise QimgError(f"Could not load plugin '{name}' ({value}): {type(e).__name__}: {e} "
                                f"(QIMG_DISABLE_PLUGINS={name} skips it)") from None
            pm.register(module, name=name)
        pm.check_pending()
        _pm = pm
    return _pm


def get_registry() -> Registry:
    """The registry of formats and protocols, filled by every plugin's hooks once."""
    global _registry
    if _registry is None:
        pm = get_plugin_manager()
        reg = Registry()
        for impl in pm.hook.qimg_register_formats.get_hookimpls():
            reg.current_plugin = impl.plugin_name
            impl.function(registry=reg)
        for impl in pm.hook.qimg_register_protocols.get_hookimpls():
            reg.current_plugin = impl.plugin_name
            impl.function(registry=reg)
        reg.current_plugin = ""
        _registry = reg
    return _registry


def reset() -> None:
    """Forget loaded plugins (tests that install plugins at run time)."""
    global _pm, _registry
    _pm = None
    _registry = None
