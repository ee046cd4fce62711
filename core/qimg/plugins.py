"""Plugins: the registry of formats and protocols, and pluggy's plugin manager, built lazily.

Plugins come from the entry-point group ``qimg``; the core's own ``file`` protocol is
registered the same way (``qimg.builtin``). ``QIMG_DISABLE_PLUGINS`` (comma-separated entry
point names) blocks plugins before they load, like tox's ``set_blocked``.

Plugins are pluggy plugins, but importing pluggy (with ``typing`` and ``inspect``) costs more
than a whole ``qimg info`` may take. So :data:`hookimpl` and :data:`qimg.hookspecs.hookspec`
are small markers that set exactly the attributes pluggy's ``HookimplMarker("qimg")`` and
``HookspecMarker("qimg")`` set (pluggy reads them as its own), and :func:`get_registry` reads
the registration hooks of plain plugin modules itself, in pluggy's order and with pluggy's
checks. Anything beyond the plain case (hook wrappers, a hookimpl pluggy would refuse, a plugin
that is not a module, a plugin manager already built) is left to pluggy's
:class:`PluginManager` (:func:`get_plugin_manager`), which stays the reference: the light
reader only ever answers when pluggy would give the same answer.
"""
from __future__ import annotations

import os
import sys

from .registry import Registry

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    import pluggy

PROJECT = "qimg"


class HookimplMarker:
    """``pluggy.HookimplMarker`` without importing pluggy: marks hook implementations."""

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
    """``pluggy.HookspecMarker`` without importing pluggy: marks hook specifications."""

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

_pm: pluggy.PluginManager | None = None
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
    if _pm is not None:
        _pm.add_hookspecs(_spec_module(module))


def _register_builtin_protocols(registry) -> None:
    """The core's own plugin (:mod:`qimg.builtin`, ``qimg_register_protocols``): ``file``."""
    registry.add_protocol("file", "qimg.protocol:FileProtocol", prefixes=("file",))


def _blocked_names() -> set[str]:
    return {name.strip() for name in filter(None, os.environ.get("QIMG_DISABLE_PLUGINS", "").split(","))}


def _load_plugin(name: str, value: str) -> object:
    from .entrypoints import load

    try:
        return load(value)
    except Exception as e:  # noqa: BLE001 - a broken plugin is a clean one-line error
        from .errors import QimgError

        raise QimgError(f"Could not load plugin '{name}' ({value}): {type(e).__name__}: {e} "
                        f"(QIMG_DISABLE_PLUGINS={name} skips it)") from None


#: hooks a layer above the core specifies (the CLI's commands): a plugin implementing one stays
#: usable through the library alone (the spec is added when that layer is installed, else the
#: implementation is never called, as an optional hook)
_SPECS_ELSEWHERE = {"qimg_register_commands": "qimg_cli.hookspecs"}


def _specs_from_elsewhere(pm: pluggy.PluginManager) -> None:
    for hook, module in _SPECS_ELSEWHERE.items():
        caller = getattr(pm.hook, hook, None)
        if caller is None or caller.has_spec():
            continue
        try:
            spec = _spec_module(module)
        except ImportError:
            for impl in caller.get_hookimpls():
                impl.optionalhook = True
            continue
        pm.add_hookspecs(spec)
        add_hookspecs(spec)  # (recorded: the plugin manager is being built)


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        import pluggy

        from . import hookspecs

        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        for spec in _extra_specs:
            pm.add_hookspecs(_spec_module(spec))
        for name in _blocked_names():
            pm.set_blocked(name)
        from . import builtin

        pm.register(builtin, "qimg.builtin")
        # what pm.load_setuptools_entrypoints("qimg") does, without importlib.metadata's cost
        from .entrypoints import entry_points

        for name, value in entry_points(PROJECT):
            if pm.has_plugin(name) or pm.is_blocked(name):
                continue
            pm.register(_load_plugin(name, value), name=name)
        _specs_from_elsewhere(pm)
        pm.check_pending()
        _pm = pm
    return _pm


# -- the registry without a plugin manager -------------------------------------------------------
class _Fallback(Exception):
    """The light reader met something only pluggy should judge."""


def _positional_names(func: object) -> tuple[str, ...]:
    """pluggy's ``varnames(func)[0]`` for a plain module-level function; _Fallback otherwise."""
    import types

    if type(func) is not types.FunctionType or hasattr(func, "__wrapped__"):
        raise _Fallback
    qualname = func.__qualname__.rsplit("<locals>.", 1)[-1]
    if "." in qualname:  # defined in a class: pluggy's self/cls rules apply
        raise _Fallback
    code = func.__code__
    args = code.co_varnames[: code.co_argcount]
    if func.__defaults__:
        args = args[: -len(func.__defaults__)]
    return args


def _spec_args(namespaces: list[object]) -> dict[str, tuple[str, ...]]:
    """Hook name -> the argument names its specification accepts (positional and keyword)."""
    import types

    out: dict[str, tuple[str, ...]] = {}
    for ns in namespaces:
        if not isinstance(ns, types.ModuleType) or "__dir__" in vars(ns):
            raise _Fallback
        for name in sorted(vars(ns)):
            func = vars(ns)[name]
            opts = getattr(func, PROJECT + "_spec", None) if type(func) is types.FunctionType else None
            if not isinstance(opts, dict):
                if isinstance(func, (staticmethod, classmethod, types.MethodType)):
                    raise _Fallback
                continue
            if opts.get("warn_on_impl") or opts.get("warn_on_impl_args") or opts.get("historic"):
                raise _Fallback
            if name in out:
                raise _Fallback
            code = func.__code__
            out[name] = code.co_varnames[: code.co_argcount]
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


def _module_impls(module: object, specs: _Specs) -> list[tuple[str, Callable, dict]]:
    """(hook name, function, options) of a plugin module's hookimpls, as pluggy's register
    checks them; _Fallback wherever pluggy would refuse or could differ."""
    import types

    if not isinstance(module, types.ModuleType) or "__dir__" in vars(module):
        raise _Fallback
    out = []
    attrs = vars(module)
    for attr in sorted(attrs):
        value = attrs[attr]
        if type(value) is not types.FunctionType:
            if isinstance(value, (staticmethod, classmethod, types.MethodType)):
                raise _Fallback  # hookable by pluggy: let it decide
            continue
        opts = getattr(value, PROJECT + "_impl", None)
        if opts is None:
            continue
        if not isinstance(opts, dict):
            continue  # pluggy ignores such a marker too
        opts = {"tryfirst": False, "trylast": False, "wrapper": False, "hookwrapper": False,
                "optionalhook": False, "specname": None, **opts}
        if opts["wrapper"] or opts["hookwrapper"]:
            raise _Fallback
        hook = opts["specname"] or attr
        spec = specs.get(hook)
        if spec is None:
            if not opts["optionalhook"]:
                raise _Fallback  # pluggy's check_pending refuses an unknown hook
            continue
        if set(_positional_names(value)) - set(spec):
            raise _Fallback  # pluggy's argument check refuses it
        out.append((hook, value, opts))
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
        return self.args.get(hook)


def _light_hookimpls(hooks: tuple[str, ...] = _REGISTRY_HOOKS) -> dict[str, list[tuple[str, Callable]]] | None:
    """The implementations of ``hooks`` (default: the registry's) in pluggy's call-list order,
    as ``{hook: [(plugin name, function)]}``, or None when pluggy must decide."""
    try:
        specs = _Specs()
        blocked = _blocked_names()
        impls: dict[str, list[tuple[str, Callable, dict]]] = {}
        registered: dict[str, object] = {}
        defaults = {"tryfirst": False, "trylast": False, "wrapper": False, "hookwrapper": False,
                    "optionalhook": False, "specname": None}

        def register(name: str, module: object) -> None:
            if any(module is m for m in registered.values()):
                raise _Fallback  # pluggy: "already registered under a different name"
            found = _module_impls(module, specs)
            registered[name] = module
            for hook, func, opts in found:
                _add_impl(impls.setdefault(hook, []), (name, func, opts))

        if "qimg.builtin" not in blocked:
            # qimg.builtin's one hookimpl, without importing that module
            registered["qimg.builtin"] = None
            _add_impl(impls.setdefault("qimg_register_protocols", []),
                      ("qimg.builtin", _register_builtin_protocols, defaults))
        from .entrypoints import entry_points

        for name, value in entry_points(PROJECT):
            if name in registered or name in blocked:
                continue
            module = _load_plugin(name, value)
            if module is None:
                continue  # pluggy ignores a None plugin
            if name == "qimg.builtin" or module is sys.modules.get("qimg.builtin"):
                raise _Fallback
            register(name, module)
    except _Fallback:
        return None
    return {hook: [(name, func) for name, func, _ in impls.get(hook, [])] for hook in hooks}


def hookimpls(hook: str) -> list[tuple[str, Callable]]:
    """``[(plugin name, function)]`` implementing ``hook`` (one the core or an added spec module
    declares), in pluggy's call-list order: read without pluggy when every plugin is plain."""
    found = _light_hookimpls((hook,)) if _pm is None else None
    if found is not None:
        return found[hook]
    caller = getattr(get_plugin_manager().hook, hook, None)
    return [] if caller is None else [(impl.plugin_name, impl.function) for impl in caller.get_hookimpls()]


def get_registry() -> Registry:
    """The registry of formats and protocols, filled by every plugin's hooks once."""
    global _registry
    if _registry is None:
        found = _light_hookimpls() if _pm is None else None
        if found is None:
            pm = get_plugin_manager()
            found = {hook: [(impl.plugin_name, impl.function) for impl in getattr(pm.hook, hook).get_hookimpls()]
                     for hook in _REGISTRY_HOOKS}
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
    global _pm, _registry
    _pm = None
    _registry = None
