"""Start-up stays lazy: ``qimg --help`` and ``qimg info``/``map``/``check`` import no heavy
library (construct, cryptography, zstandard, crc32c's package, pluggy, click) and none of the
modules that cost more to import than such a command may take in all (dataclasses, inspect,
typing, threading, uuid, importlib.metadata), and no format driver they do not use. The modules
loaded are read from ``sys.modules`` when the process exits. These are module-set assertions,
never timings (docs/performance.md has the numbers).

The plugin registry is read without pluggy's PluginManager when every plugin is plain
(:mod:`qimg.plugins`); the second half of this module checks that the light reader gives
pluggy's answer (hooks, order, plugin names) and hands every other case to pluggy.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("construct", "cryptography", "zstandard", "crc32c", "pluggy", "click", "botocore", "boto3")
#: modules (or packages) no info/map/check of a small image imports
SLOW = ("dataclasses", "inspect", "typing", "threading", "uuid", "importlib.metadata", "zipfile", "email",
        "ast", "json")
FORMATS = ("raw", "qcow2", "qcow", "qed", "vdi", "vpc", "vhdx", "vmdk")

CODE = """
import atexit, os, sys
def _dump():
    with open(os.environ["QIMG_MODULES_OUT"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(_dump)
from qimg_cli.main import main
sys.argv[0] = "qimg"
main()
"""


def modules_after(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "modules.txt"
    env = dict(os.environ, QIMG_MODULES_OUT=str(out))
    p = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, env=env)
    return p, out.read_text().split("\n")


def heavy(mods: list[str]) -> list[str]:
    return [m for m in mods if m.split(".")[0] in HEAVY]


def slow(mods: list[str]) -> list[str]:
    return [m for m in mods if any(m == s or m.startswith(s + ".") for s in SLOW)]


def drivers(mods: list[str]) -> list[str]:
    """Modules of format plugins beyond their tiny ``__init__`` (drivers, structs, ...)."""
    return [m for m in mods if m.startswith("qimg_") and not m.startswith("qimg_cli") and "." in m]


def test_help_is_lazy(tmp_path: Path) -> None:
    p, mods = modules_after(tmp_path, "--help")
    assert p.returncode == 0, p.stderr
    assert "Supported formats:" in p.stdout
    assert "qimg_raw" in mods, "the raw plugin's registration was not even loaded"
    assert [m for m in heavy(mods) if m.split(".")[0] != "click"] == []
    assert drivers(mods) == []
    assert not [m for m in mods if m.startswith("qimg_cli.commands.")]


def test_info_raw_loads_only_the_raw_driver(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    p, mods = modules_after(tmp_path, "info", str(img))  # probed: every plugin's probe runs
    assert p.returncode == 0, p.stderr
    assert "file format: raw" in p.stdout
    assert heavy(mods) == []
    assert [m for m in drivers(mods) if not m.startswith("qimg_raw.")] == []
    assert "qimg_raw.driver" in mods


@pytest.mark.parametrize("fmt", FORMATS)
def test_info_of_each_format_is_lean(tmp_path: Path, fmt: str, qemu_img) -> None:
    """``qimg info`` of a small image made by qemu-img: its own driver only, no construct
    (headers are qimg.records), no dataclasses/typing/inspect, no pluggy, no click."""
    if importlib_find(f"qimg_{fmt}") is None:
        pytest.skip(f"the {fmt} plugin is not installed")
    img = tmp_path / f"small.{fmt}"
    q = qemu_img("create", "-q", "-f", fmt, str(img), "64M")
    assert q.returncode == 0, q.stderr
    p, mods = modules_after(tmp_path, "info", str(img))  # probed, as users run it
    assert p.returncode == 0, p.stderr
    assert f"file format: {fmt}\n" in p.stdout
    assert heavy(mods) == []
    assert slow(mods) == []
    assert f"qimg_{fmt}.driver" in mods
    assert [m for m in drivers(mods) if not m.startswith(f"qimg_{fmt}.")] == []
    assert "qimg_cli.hookspecs" not in mods and "qimg.hookspecs" not in mods  # no spec module read
    assert not {"qimg.library", "qimg.results", "qimg.progress"} & set(mods)  # the library API stays lazy


@pytest.mark.parametrize("fmt", ("bochs", "cloop", "dmg"))
def test_info_of_read_only_formats_is_lean(tmp_path: Path, fmt: str) -> None:
    """The formats qemu-img only reads (images from tests/ro_writers.py): the same rules."""
    if importlib_find(f"qimg_{fmt}") is None:
        pytest.skip(f"the {fmt} plugin is not installed")
    sys.path.insert(0, str(Path(__file__).parent))
    import ro_writers

    img = tmp_path / f"small.{fmt}"
    img.write_bytes(ro_writers.VALID[fmt]())
    for args in (("info", str(img)), ("map", "-f", fmt, str(img)), ("info", "--output=json", str(img))):
        p, mods = modules_after(tmp_path, *args)
        assert p.returncode in (0, 1), p.stderr  # map of these: "File contains ... compressed clusters"
        assert heavy(mods) == [] and slow(mods) == [], args
        assert f"qimg_{fmt}.driver" in mods
        assert [m for m in drivers(mods) if not m.startswith(f"qimg_{fmt}.")] == []


@pytest.mark.parametrize("args", [("map",), ("map", "--output=json"), ("info", "--output=json"), ("check",)])
def test_qcow2_map_check_json_are_lean(tmp_path: Path, args: tuple[str, ...], qemu_img) -> None:
    if importlib_find("qimg_qcow2") is None:
        pytest.skip("the qcow2 plugin is not installed")
    img = tmp_path / "small.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "64M").returncode == 0
    p, mods = modules_after(tmp_path, *args, str(img))
    assert p.returncode == 0, p.stderr
    assert heavy(mods) == []
    assert slow(mods) == []
    assert "threading" not in mods and "importlib.metadata" not in mods


@pytest.mark.parametrize("args", [
    ("convert", "-O", "qcow2", "{src}", "{dst}"), ("convert", "-O", "raw", "{src}", "{dst}"),
    ("compare", "{src}", "{src}"), ("dd", "if={src}", "of={dst}", "-O", "raw"),
    ("convert", "-Z"),
])
def test_copy_commands_run_without_click(tmp_path: Path, args: tuple[str, ...], qemu_img) -> None:
    """convert, compare, dd (and commit, rebase, bench) parse their own arguments: no click,
    no pluggy, no dataclasses or typing on their way (only the copy engine's threads)."""
    if importlib_find("qimg_qcow2") is None:
        pytest.skip("the qcow2 plugin is not installed")
    src = tmp_path / "small.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(src), "64M").returncode == 0
    p, mods = modules_after(tmp_path, *(a.format(src=src, dst=tmp_path / "out.img") for a in args))
    assert p.returncode == (1 if "-Z" in args else 0), p.stderr
    assert heavy(mods) == []
    assert [m for m in slow(mods) if m != "threading"] == []


def importlib_find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


# -- the plugin registry without pluggy ------------------------------------------------------------
pluggy = pytest.importorskip("pluggy")
from qimg import entrypoints, hookspecs, plugins  # noqa: E402
from qimg.errors import QimgError  # noqa: E402

REGISTRY_HOOKS = ("qimg_register_formats", "qimg_register_protocols")


@pytest.fixture
def clean_plugins(monkeypatch: pytest.MonkeyPatch):
    """Plugin state of this process forgotten before and after (the test's plugins vanish)."""
    monkeypatch.delenv("QIMG_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def use_plugins(monkeypatch: pytest.MonkeyPatch, *mods: tuple[str, types.ModuleType]) -> None:
    """Make ``mods`` (entry point name, module) the only entry points of the group ``qimg``."""
    entries = []
    for name, mod in mods:
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        entries.append((name, mod.__name__))
    monkeypatch.setattr(entrypoints, "entry_points", lambda group: list(entries))


def plugin(name: str, **funcs) -> types.ModuleType:
    mod = types.ModuleType(f"qimg_test_plugin_{name}")
    for attr, f in funcs.items():
        setattr(mod, attr, f)
    return mod


def formats_impl(fmt: str, **marker):
    def qimg_register_formats(registry) -> None:
        registry.add_format(fmt, "nowhere:Nothing")

    return plugins.hookimpl(**marker)(qimg_register_formats) if marker else plugins.hookimpl(qimg_register_formats)


def pluggy_answer() -> dict[str, list[tuple[str, object]]]:
    """What pluggy's PluginManager makes of the same plugins (the reference): the hook
    implementations in ``get_hookimpls()`` order, as the registry reads them. Raises what
    pluggy raises for a plugin it refuses."""
    pm = pluggy.PluginManager("qimg")
    pm.add_hookspecs(hookspecs)
    for spec in plugins._extra_specs:
        pm.add_hookspecs(plugins._spec_module(spec))
    for name in plugins._blocked_names():
        pm.set_blocked(name)
    from qimg import builtin

    pm.register(builtin, "qimg.builtin")
    for name, value in entrypoints.entry_points("qimg"):
        if pm.has_plugin(name) or pm.is_blocked(name):
            continue
        pm.register(entrypoints.load(value), name=name)
    for hook, module in plugins._SPECS_ELSEWHERE.items():
        caller = getattr(pm.hook, hook, None)
        if caller is None or caller.has_spec():
            continue
        try:
            pm.add_hookspecs(plugins._spec_module(module))
        except ImportError:
            for impl in caller.get_hookimpls():
                impl.optionalhook = True
    pm.check_pending()
    out = {}
    for h in REGISTRY_HOOKS:
        out[h] = [(i.plugin_name, plugins._register_builtin_protocols if i.plugin_name == "qimg.builtin" else i.function)
                  for i in getattr(pm.hook, h).get_hookimpls()]
    return out


def test_installed_plugins_read_alike(clean_plugins) -> None:
    light = plugins._read_hookimpls()
    assert light == pluggy_answer()
    names = [n for n, _ in light["qimg_register_formats"]]
    assert "raw" in names and ("qimg.builtin", plugins._register_builtin_protocols) in light["qimg_register_protocols"]


def test_order_and_options_as_pluggy(clean_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    use_plugins(monkeypatch,
                ("first", plugin("first", qimg_register_formats=formats_impl("a", tryfirst=True))),
                ("plain", plugin("plain", qimg_register_formats=formats_impl("b"))),
                ("last", plugin("last", qimg_register_formats=formats_impl("c", trylast=True))),
                ("named", plugin("named", other=formats_impl("d", specname="qimg_register_formats"))),
                ("optional", plugin("optional", qimg_not_a_hook=plugins.hookimpl(optionalhook=True)(lambda x: None))))
    light = plugins._read_hookimpls()
    assert light == pluggy_answer()
    assert [n for n, _ in light["qimg_register_formats"]] == ["last", "plain", "named", "first"]
    reg = plugins.get_registry()
    assert reg.format_names() == ["a", "b", "c", "d"] and reg.formats["a"].plugin == "first"


def test_blocked_and_repeated_names(clean_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = plugin("a", qimg_register_formats=formats_impl("a")), plugin("b", qimg_register_formats=formats_impl("b"))
    use_plugins(monkeypatch, ("a", a), ("b", b), ("a", plugin("a2", qimg_register_formats=formats_impl("x"))))
    monkeypatch.setenv("QIMG_DISABLE_PLUGINS", "b, qimg.builtin")
    light = plugins._read_hookimpls()
    assert light == pluggy_answer()
    assert [n for n, _ in light["qimg_register_formats"]] == ["a"] and light["qimg_register_protocols"] == []


@pytest.mark.parametrize("case", ["unknown hook", "extra argument", "wrapper", "same module twice", "method",
                                  "not a module"])
def test_refusals(clean_plugins, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """What pluggy refuses, the host refuses (one line, naming the plugin); what pluggy accepts
    but this host does not support (wrappers, methods, objects as plugins) is refused as such,
    never half-read."""
    good = plugin("good", qimg_register_formats=formats_impl("good"))
    pluggy_refuses = case in ("unknown hook", "extra argument", "same module twice")
    if case == "unknown hook":
        odd = plugin("odd", qimg_register_format=plugins.hookimpl(lambda registry: None))  # a typo
        words = "Plugin 'odd' implements unknown hook 'qimg_register_format'"
    elif case == "extra argument":
        odd = plugin("odd", qimg_register_formats=plugins.hookimpl(lambda registry, cli: None))
        words = "Plugin 'odd' hook 'qimg_register_formats' asks for argument(s) cli the hook does not provide (registry)"
    elif case == "wrapper":
        def qimg_register_formats(registry):
            yield

        odd = plugin("odd", qimg_register_formats=plugins.hookimpl(wrapper=True)(qimg_register_formats))
        words = "Plugin 'odd' hook 'qimg_register_formats': hook wrappers are not supported"
    elif case == "same module twice":
        odd = good
        words = "Plugin 'odd' is the module plugin 'good' is already"
    elif case == "method":
        class Holder:
            @plugins.hookimpl
            def qimg_register_formats(self, registry):
                registry.add_format("m", "nowhere:Nothing")

        odd = plugin("odd", qimg_register_formats=Holder().qimg_register_formats)
        words = "Plugin 'odd' hook implementation 'qimg_register_formats' is a method, not a plain function"
    else:
        class Obj:
            @plugins.hookimpl
            def qimg_register_formats(self, registry):
                registry.add_format("m", "nowhere:Nothing")

        odd = Obj()
        words = "Plugin 'odd' is a Obj, not a module (qimg's plugins are modules)"
    if case == "not a module":
        entries = [("good", good.__name__), ("odd", "qimg_test_obj_plugin:odd")]
        monkeypatch.setitem(sys.modules, good.__name__, good)
        holder = types.ModuleType("qimg_test_obj_plugin")
        holder.odd = odd
        monkeypatch.setitem(sys.modules, "qimg_test_obj_plugin", holder)
        monkeypatch.setattr(entrypoints, "entry_points", lambda group: list(entries))
    else:
        use_plugins(monkeypatch, ("good", good), ("odd", odd))
    with pytest.raises(QimgError) as e:
        plugins.get_registry()
    assert e.value.message == words + " (QIMG_DISABLE_PLUGINS=odd skips it)"
    if pluggy_refuses:
        with pytest.raises(Exception):  # noqa: B017 - whatever pluggy raises
            pluggy_answer()
    else:
        pluggy_answer()  # pluggy would take it: the refusal is this host's limit, said as such
    monkeypatch.setenv("QIMG_DISABLE_PLUGINS", "odd")
    assert "good" in plugins.get_registry().formats  # the hint in the message works


def test_cli_hook_known_without_importing_its_module(clean_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin adding commands does not stop the registry (the CLI's spec is read on demand)."""
    monkeypatch.setattr(plugins, "_extra_specs", ["qimg_cli.hookspecs"])
    monkeypatch.delitem(sys.modules, "qimg_cli.hookspecs", raising=False)
    use_plugins(monkeypatch, ("plain", plugin("plain", qimg_register_formats=formats_impl("p"))))
    plugins._read_hookimpls()
    assert "qimg_cli.hookspecs" not in sys.modules  # nobody implements an unknown hook
    use_plugins(monkeypatch, ("cmds", plugin("cmds", qimg_register_commands=plugins.hookimpl(lambda cli: None))))
    light = plugins._read_hookimpls()
    assert light == pluggy_answer()
    assert "qimg_cli.hookspecs" in sys.modules
    assert plugins.hookimpls("qimg_register_commands")[0][0] == "cmds"


def test_broken_plugin_is_one_line(clean_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entrypoints, "entry_points", lambda group: [("broken", "qimg_no_such_module_here")])
    with pytest.raises(QimgError) as e:
        plugins.get_registry()
    assert e.value.message == ("Could not load plugin 'broken' (qimg_no_such_module_here): ModuleNotFoundError: "
                               "No module named 'qimg_no_such_module_here' (QIMG_DISABLE_PLUGINS=broken skips it)")


def test_markers_are_pluggys() -> None:
    """The markers set exactly what pluggy's set, so pluggy reads qimg's plugins as its own."""
    for kwargs in ({}, {"tryfirst": True}, {"trylast": True, "optionalhook": True}, {"specname": "x"},
                   {"wrapper": True}, {"hookwrapper": True}):
        def f(registry):
            pass

        def g(registry):
            pass

        plugins.HookimplMarker("qimg")(**kwargs)(f)
        pluggy.HookimplMarker("qimg")(**kwargs)(g)
        assert f.qimg_impl == g.qimg_impl
    for kwargs in ({}, {"firstresult": True}, {"historic": True}):
        def s(registry):
            pass

        def t(registry):
            pass

        plugins.HookspecMarker("qimg")(**kwargs)(s)
        pluggy.HookspecMarker("qimg")(**kwargs)(t)
        assert s.qimg_spec == t.qimg_spec
    with pytest.raises(ValueError):
        plugins.HookspecMarker("qimg")(firstresult=True, historic=True)(s)


def test_core_specs_match_hookspecs() -> None:
    """The host's copy of the core's hooks is what qimg.hookspecs declares."""
    assert plugins._CORE_SPECS == plugins._spec_args([hookspecs])
    pm = pluggy.PluginManager("qimg")
    pm.add_hookspecs(hookspecs)
    for name, args in plugins._CORE_SPECS.items():
        assert getattr(pm.hook, name).spec.argnames == args


def test_records_and_registry_load_without_construct() -> None:
    code = ("import sys, qimg.records, qimg.plugins\n"
            "qimg.plugins.get_registry()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('construct', 'pluggy', 'typing', 'dataclasses')]\n"
            "assert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_installed_launcher_imports_no_re(tmp_path: Path) -> None:
    """`qimg` is installed as a plain wheel script (cli/scripts/qimg), not pip's console-script
    wrapper, whose first line imports `re`: `info` of a raw image then imports no `re` at all."""
    launcher = Path(sys.executable).parent / "qimg"
    if not launcher.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{launcher} is not installed")
        pytest.skip("qimg is not installed beside this Python")
    assert launcher.read_text().startswith("#!"), "the launcher is a script"
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    p = subprocess.run([str(launcher), "info", str(img)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "file format: raw" in p.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "qimg_raw.driver" in imported
    assert "re" not in imported and "typing" not in imported


@pytest.mark.parametrize("cli_installed", [True, False])
def test_a_plugin_with_commands_works_through_the_library(clean_plugins, monkeypatch: pytest.MonkeyPatch,
                                                          cli_installed: bool) -> None:
    """A plugin implementing the CLI's hook (qimg_register_commands) next to its formats: the
    library alone (no CLI loaded, so no spec for that hook yet) still gets its formats; without
    the CLI installed at all the command hook is never called (docs/plugins.md's example)."""
    monkeypatch.setattr(plugins, "_extra_specs", [])
    if not cli_installed:
        monkeypatch.setattr(plugins, "_SPECS_ELSEWHERE", {"qimg_register_commands": "qimg_no_such_cli.hookspecs"})
    mod = plugin("cmds", qimg_register_formats=formats_impl("withcmd"),
                 qimg_register_commands=plugins.hookimpl(lambda cli: None))
    use_plugins(monkeypatch, ("cmds", mod))
    assert "withcmd" in plugins.get_registry().formats
