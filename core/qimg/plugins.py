"""Plugins: the registry of formats and protocols, read from the plugins' hooks once.

Plugins come from the entry-point group ``qimg``; the core's own ``file`` protocol is
registered the same way (``qimg.builtin``). ``QIMG_DISABLE_PLUGINS`` (comma-separated entry
point names) blocks plugins before they load, like tox's ``set_blocked``.

This module is qimg's one plugin host, a small substitute for pluggy's ``PluginManager``, and the
only one: pluggy is not imported at run time. Why: importing pluggy (with ``typing`` and
``inspect``) took ~17 ms on the reference machine, more than half of a whole ``qimg info`` of a
raw image (~30 ms), and qimg calls two registration hooks once per process, which needs none of
pluggy's machinery (wrappers, historic hooks, results). What it keeps of pluggy is its plugin
format, so a plugin written for pluggy works unchanged:

- :data:`hookimpl` and :class:`HookspecMarker` set exactly the attributes pluggy's
  ``HookimplMarker("qimg")``/``HookspecMarker("qimg")`` set (a plugin may use pluggy's markers);
- implementations are listed in the order of pluggy's ``get_hookimpls()`` (``tryfirst``/
  ``trylast``, then registration order), ``specname`` and ``optionalhook`` mean what they mean to pluggy, and
  a hook implementation pluggy would refuse (unknown hook, arguments the hook does not provide)
  is refused with a one-line error naming the plugin.

What pluggy offers beyond that is refused, clearly, rather than half-supported: a plugin is a
module (not a class or instance), a hook implementation is a plain function, hook wrappers are
not supported. tests/test_startup.py checks this reader against pluggy's ``PluginManager`` (the
library stays the reference, as a test dependency) on the installed plugins and on made-up
ones: same hooks, same order, same plugin names, and a refusal wherever pluggy refuses.
"""
from __future__ import annotations

import os
import sys

from .registry import Registry

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

PROJECT = "qimg"


class HookimplMarker:
    """``pluggy.HookimplMarker``'s equivalent: marks hook implementations."""
    __slots__ = ("project_name",)

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name

    def __call__(self, function: Callable | None = None, hookwrapper: bool = False, optionalhook: bool = False,
                 tryfirst: bool = False, trylast: bool = False, specname: str | None = None,
                 wrapper: bool = False):
        def setattr_hookimpl_opts(func: Callable) -> Callable:
            opts = {"wrapper": wrapper, "hookwrapper": hookwrapper, "optionalhook": optionalhook,
                    "tryfirst": tryfirst, "trylast": trylast, "specname": specname}
            setattr(func, self.project_name + "_impl", opts)
            return func

        return setattr_hookimpl_opts if function is None else setattr_hookimpl_opts(function)


class HookspecMarker:
    """``pluggy.HookspecMarker``'s equivalent: marks hook specifications."""

    __slots__ = ("project_name",)

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name

    def __call__(self, function: Callable | None = None, firstresult: bool = False, historic: bool = False,
                 warn_on_impl: Warning | None = None, warn_on_impl_args: dict | None = None):
        def setattr_hookspec_opts(func: Callable) -> Callable:
            if historic and firstresult:
                raise ValueError("cannot have a historic firstresult hook")
            opts = {"firstresult": firstresult, "historic": historic, "warn_on_impl": warn_on_impl,
                    "warn_on_impl_args": warn_on_impl_args}
            setattr(func, self.project_name + "_spec", opts)
            return func

        return setattr_hookspec_opts if function is None else setattr_hookspec_opts(function)


hookimpl = HookimplMarker(PROJECT)

_registry: Registry | None = None
_extra_specs: list[object] = []

#: the hooks the registry calls
_REGISTRY_HOOKS = ("qimg_register_formats", "qimg_register_protocols")

#: the core's hooks and their arguments (what :mod:`qimg.hookspecs` declares; a test keeps
#: both equal), so reading the registry imports no spec module
_CORE_SPECS: dict[str, tuple[str, ...]] = {
    "qimg_register_formats": ("registry",),
    "qimg_register_protocols": ("registry",),
}

#: hooks a layer above the core specifies (the CLI's commands): a plugin implementing one stays
#: usable through the library alone (the spec module is imported when a plugin implements the
#: hook; when that layer is not installed, the implementation is never called, as an optional hook)
_SPECS_ELSEWHERE = {"qimg_register_commands": "qimg_cli.hookspecs"}


def _spec_name(spec: object) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def _spec_module(spec: object) -> object:
    if isinstance(spec, str):
        from .registry import import_module

        return import_module(spec)
    return spec


def add_hookspecs(module: object) -> None:
    """Let a layer above the core (the CLI) add its own hook specifications: a module, or a
    module's name (imported only when a plugin implements a hook the core does not know)."""
    name = _spec_name(module)
    for i, known in enumerate(_extra_specs):
        if _spec_name(known) == name:
            if not isinstance(module, str):
                _extra_specs[i] = module
            return
    _extra_specs.append(module)


def _register_builtin_protocols(registry) -> None:
    """The core's own plugin (:mod:`qimg.builtin`, ``qimg_register_protocols``): ``file``."""
    registry.add_protocol("file", "qimg.protocol:FileProtocol", prefixes=("file",))


def _blocked_names() -> set[str]:
    return {name.strip() for name in filter(None, os.environ.get("QIMG_DISABLE_PLUGINS", "").split(","))}


def _plugin_error(name: str, what: str):
    from .errors import QimgError

    return QimgError(f"Plugin '{name}' {what} (QIMG_DISABLE_PLUGINS={name} skips it)")


def _load_plugin(name: str, value: str) -> object:
    from .entrypoints import load

    try:
        return load(value)
    except Exception as e:  # noqa: BLE001 - a broken plugin is a clean one-line error
        from .errors import QimgError

        raise QimgError(f"Could not load plugin '{name}' ({value}): {type(e).__name__}: {e} "
                        f"(QIMG_DISABLE_PLUGINS={name} skips it)") from None


def _positional_names(func) -> tuple[str, ...]:
    """pluggy's ``varnames(func)[0]`` for a plain module-level function."""
    code = func.__code__
    args = code.co_varnames[: code.co_argcount]
    if func.__defaults__:
        args = args[: -len(func.__defaults__)]
    return args


def _spec_args(namespaces: list[object]) -> dict[str, tuple[str, ...]]:
    """Hook name -> the argument names its specification accepts."""
    out: dict[str, tuple[str, ...]] = {}
    for ns in namespaces:
        for name, func in sorted(vars(ns).items()):
            if isinstance(getattr(func, PROJECT + "_spec", None), dict) and hasattr(func, "__code__"):
                code = func.__code__
                out[name] = code.co_varnames[: code.co_argcount]
    return out


class _Specs:
    """Hook name -> spec argument names: the core's, then the added spec modules' (a module
    given by name is imported only when a plugin implements a hook not known so far)."""

    def __init__(self) -> None:
        self.args = dict(_CORE_SPECS)
        self.pending = [m for m in _extra_specs if isinstance(m, str)]
        self.args.update(_spec_args([m for m in _extra_specs if not isinstance(m, str)]))

    def get(self, hook: str) -> tuple[str, ...] | None:
        if hook not in self.args and self.pending:
            self.args.update(_spec_args([_spec_module(m) for m in self.pending]))
            self.pending = []
        if hook not in self.args and hook in _SPECS_ELSEWHERE:
            try:
                self.args.update(_spec_args([_spec_module(_SPECS_ELSEWHERE[hook])]))
            except ImportError:
                return None  # that layer is not installed: the hook is never called
        return self.args.get(hook)


_DEFAULTS = {"tryfirst": False, "trylast": False, "wrapper": False, "hookwrapper": False,
             "optionalhook": False, "specname": None}


def _module_impls(name: str, module: object, specs: _Specs) -> list[tuple[str, Callable, dict]]:
    """(hook name, function, options) of a plugin module's hook implementations, with pluggy's
    checks; a one-line error for what pluggy refuses and for what this host does not support."""
    import types

    if not isinstance(module, types.ModuleType):
        raise _plugin_error(name, f"is a {type(module).__name__}, not a module (qimg's plugins are modules)")
    out = []
    for attr, value in sorted(vars(module).items()):
        opts = getattr(value, PROJECT + "_impl", None)
        if not isinstance(opts, dict):
            continue  # pluggy ignores a marker that is not its options dict too
        if type(value) is not types.FunctionType:
            raise _plugin_error(name, f"hook implementation '{attr}' is a {type(value).__name__}, "
                                      f"not a plain function")
        opts = {**_DEFAULTS, **opts}
        hook = opts["specname"] or attr
        if opts["wrapper"] or opts["hookwrapper"]:
            raise _plugin_error(name, f"hook '{hook}': hook wrappers are not supported")
        spec = specs.get(hook)
        if spec is None:
            if opts["optionalhook"] or hook in _SPECS_ELSEWHERE:
                continue
            raise _plugin_error(name, f"implements unknown hook '{hook}'")
        extra = [a for a in _positional_names(value) if a not in spec]
        if extra:
            raise _plugin_error(name, f"hook '{hook}' asks for argument(s) {', '.join(extra)} "
                                      f"the hook does not provide ({', '.join(spec)})")
        out.append((hook, value, opts))
    return out


def _add_impl(impls: list[tuple[str, Callable, dict]], item: tuple[str, Callable, dict]) -> None:
    """Insert as pluggy's HookCaller._add_hookimpl does for non-wrappers."""
    opts = item[2]
    if opts["trylast"]:
        impls.insert(0, item)
    elif opts["tryfirst"]:
        impls.append(item)
    else:
        i = len(impls) - 1
        while i >= 0 and impls[i][2]["tryfirst"]:
            i -= 1
        impls.insert(i + 1, item)


def _read_hookimpls(hooks: tuple[str, ...] = _REGISTRY_HOOKS) -> dict[str, list[tuple[str, Callable]]]:
    """Load every plugin and return the implementations of ``hooks`` as
    ``{hook: [(plugin name, function)]}``, in the order of pluggy's ``get_hookimpls()``
    (``trylast`` first, ``tryfirst`` last; the registry calls them in that order)."""
    specs = _Specs()
    blocked = _blocked_names()
    impls: dict[str, list[tuple[str, Callable, dict]]] = {}
    registered: dict[str, object] = {}
    if "qimg.builtin" not in blocked:
        # qimg.builtin's one hookimpl, without importing that module
        registered["qimg.builtin"] = None
        _add_impl(impls.setdefault("qimg_register_protocols", []),
                  ("qimg.builtin", _register_builtin_protocols, _DEFAULTS))
    from .entrypoints import entry_points

    for name, value in entry_points(PROJECT):
        if name in registered or name in blocked:
            continue  # as pluggy's load_setuptools_entrypoints: the first of a name wins
        module = _load_plugin(name, value)
        if module is None:
            continue  # pluggy ignores a None plugin
        for other, known in registered.items():
            if module is known or (other == "qimg.builtin" and module is sys.modules.get("qimg.builtin")):
                raise _plugin_error(name, f"is the module plugin '{other}' is already")
        registered[name] = module
        for hook, func, opts in _module_impls(name, module, specs):
            _add_impl(impls.setdefault(hook, []), (name, func, opts))
    return {hook: [(n, f) for n, f, _ in impls.get(hook, [])] for hook in hooks}


def hookimpls(hook: str) -> list[tuple[str, Callable]]:
    """``[(plugin name, function)]`` implementing ``hook`` (one the core or an added spec module
    declares), in the order of pluggy's ``get_hookimpls()``."""
    return _read_hookimpls((hook,))[hook]


def load_plugins() -> None:
    """Import every plugin (what registers their trace events, for ``-T help``)."""
    get_registry()


def get_registry() -> Registry:
    """The registry of formats and protocols, filled by every plugin's hooks once."""
    global _registry
    if _registry is None:
        found = _read_hookimpls()
        reg = Registry()
        for hook in _REGISTRY_HOOKS:
            for plugin_name, function in found[hook]:
                reg.current_plugin = plugin_name
                function(registry=reg)
        reg.current_plugin = ""
        _registry = reg
    return _registry


def reset() -> None:
    """Forget loaded plugins (tests that install plugins at run time)."""
    global _registry
    _registry = None
