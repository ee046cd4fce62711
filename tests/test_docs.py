"""The documentation keeps up with the code: every hook specification has an example in
docs/plugins.md, every built-in subcommand has a page, and docs' relative links resolve."""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def hookspecs() -> list[str]:
    import qimg.hookspecs
    import qimg_cli.hookspecs

    names = []
    for mod in (qimg.hookspecs, qimg_cli.hookspecs):
        for name, obj in inspect.getmembers(mod, inspect.isfunction):
            if hasattr(obj, "qimg_spec"):
                names.append(name)
    return names


def test_hookspecs_found() -> None:
    assert {"qimg_register_formats", "qimg_register_protocols", "qimg_register_commands"} <= set(hookspecs())


def test_every_hookspec_has_a_runnable_example() -> None:
    text = (DOCS / "plugins.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    missing = [n for n in hookspecs() if f"def {n}(" not in code]
    assert not missing, f"docs/plugins.md has no ```python example defining these hooks: {missing}"


def test_plugins_guide_examples_compile() -> None:
    text = (DOCS / "plugins.md").read_text()
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        compile(block, f"docs/plugins.md block {i}", "exec")


def test_every_builtin_command_has_a_page() -> None:
    from qimg_cli.main import BUILTIN_COMMANDS

    missing = sorted(f"docs/commands/{n}.md" for n in BUILTIN_COMMANDS if not (DOCS / "commands" / f"{n}.md").exists())
    assert not missing, "missing command pages: " + ", ".join(missing)


def test_index_links_the_pages() -> None:
    from qimg_cli.main import BUILTIN_COMMANDS

    index = (DOCS / "index.md").read_text()
    pages = ["plugins.md", "performance.md", "security.md", "architecture.md",
             *(p.relative_to(DOCS).as_posix() for p in (DOCS / "commands").glob("*.md")),
             *(f"commands/{n}.md" for n in BUILTIN_COMMANDS)]
    missing = sorted({p for p in pages if f"]({p})" not in index})
    assert not missing, f"docs/index.md does not link: {missing}"


def test_relative_links_resolve() -> None:
    broken = []
    for md in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)


@pytest.fixture
def guide_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The guide's example package (qimg_demo, extracted from docs/plugins.md by
    tests/test_plugin_guide.py's rules) importable in this process."""
    import sys

    from test_plugin_guide import guide_files

    root = tmp_path / "qimg-demo"
    for path, code in guide_files((DOCS / "plugins.md").read_text()).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(code)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "qimg_demo" or m.startswith("qimg_demo.")]:
        monkeypatch.delitem(sys.modules, name)
    import importlib

    yield importlib.import_module("qimg_demo")
    for name in [m for m in sys.modules if m == "qimg_demo" or m.startswith("qimg_demo.")]:
        del sys.modules[name]


def test_plugins_guide_examples_run(tmp_path: Path, guide_package) -> None:
    """The guide's hooks, driver and protocol in this process (tests/test_plugin_guide.py
    installs the whole distribution into a venv and runs the command line)."""
    import importlib

    import click
    from click.testing import CliRunner
    from qimg.image import Image
    from qimg.protocol import FileProtocol
    from qimg.registry import Registry

    mod = guide_package
    reg = Registry()
    mod.qimg_register_formats(registry=reg)
    entry = reg.format("demo")
    assert entry.probe(b"QIMGDEMO" + bytes(504), "x") == 100 and entry.probe(bytes(512), "x") == 0
    reg = Registry()
    mod.qimg_register_protocols(registry=reg)
    assert reg.protocol_for("slice:0:1M:x").name == "slice"
    _exercise_slice_protocol(importlib.import_module("qimg_demo.protocol").SliceProtocol, tmp_path)
    group = click.Group("qimg")
    mod.qimg_register_commands(cli=group)
    res = CliRunner().invoke(group, ["formats"])
    assert res.exit_code == 0 and "raw\t" in res.output
    cls = importlib.import_module("qimg_demo.driver").DemoFormat
    path = str(tmp_path / "doc.demo")
    cls.create(path, 1 << 20, {})
    img = Image(cls(FileProtocol(path, writable=True), filename=path, writable=True, options={}),
                format_name="demo", filename=path)
    with img:
        img.pwrite(1000, b"hello")
        assert img.size == 1 << 20 and img.pread(998, 9) == b"\0\0hello\0\0"


def _exercise_slice_protocol(cls, tmp_path: Path) -> None:
    """The guide's protocol plugin, registered in the live registry, through every way in:
    prefixed names, ``json:``, option mappings, the protocol as the driver, the CLI."""
    import qimg
    from cli_support import run_qimg
    from qimg.plugins import get_registry
    from qimg.registry import ProtocolEntry

    disk = tmp_path / "disk.img"
    data = bytes(range(256)) * 4096  # 1 MiB
    disk.write_bytes(bytes(1 << 20) + data + bytes(1 << 20))
    reg = get_registry()
    reg.protocols["slice"] = ProtocolEntry("slice", "qimg_demo.protocol:SliceProtocol", ("slice",), "docs", _cls=cls)
    try:
        name = f"slice:1M:1M:{disk}"
        with qimg.open(name) as img:
            assert img.format == "raw" and img.size == 1 << 20 and img.pread(0, 1 << 20) == data
        doc = f'json:{{"driver":"raw","file":{{"driver":"slice","path":"{disk}","offset":1048576}}}}'
        with qimg.open(doc) as img:
            assert img.size == 2 << 20 and img.pread(0, 16) == data[:16]
        with qimg.open({"driver": "slice", "path": str(disk), "offset": "1048592"}) as img:
            assert img.format == "slice" and img.pread(0, 16) == data[16:32]
        r = run_qimg("info", name)
        assert r.returncode == 0 and f"image: slice:1048576:1048576:{disk}" in r.stdout, r
        out = tmp_path / "out.raw"
        r = run_qimg("convert", "-O", "raw", doc, str(out))
        assert r.returncode == 0, r
        assert out.read_bytes() == data + bytes(1 << 20)
        r = run_qimg("info", "slicex:1")
        assert r.returncode == 1 and r.stderr == "qimg: Could not open 'slicex:1': Unknown protocol 'slicex'\n"
        r = run_qimg("info", "slice:1")
        assert r.returncode == 1 and "Slice names read slice:OFFSET:LENGTH:PATH" in r.stderr
    finally:
        del reg.protocols["slice"]


#: pages whose ```python blocks are run elsewhere (plugins.md: each block alone, above)
_RUN_ELSEWHERE = {"plugins.md"}
_RUNNER = r"""
import os, re, sys, warnings
page = sys.argv[1]
text = open(page).read()
ns = {"__name__": "__main__"}
for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
    exec(compile(block, f"{page} block {i}", "exec"), ns)
print("ran", i + 1, "blocks")
"""


def _python_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "```python\n" in p.read_text() and p.name not in _RUN_ELSEWHERE)


def test_library_page_has_examples() -> None:
    assert DOCS / "library.md" in _python_pages()


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_python_example_runs_as_written(page: Path, tmp_path: Path) -> None:
    """Every ```python block of a page runs, in order, in one namespace, in an empty folder
    (the page's examples build on each other, as a reader runs them). Other fences (```sh) are
    illustrations: they name servers and files a reader has."""
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("QIMG_PROGRESS_FD", None)
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", _RUNNER, str(page)], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"{page.name}: {r.stderr[-3000:]}"
    assert "ran" in r.stdout
