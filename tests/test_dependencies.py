"""Every distribution declares what it imports, and nothing else (docs/packaging.md).

The imports are read from the source (every module of the distribution's package and its
scripts): a module outside the standard library imported unconditionally must be in
``dependencies``; one imported inside ``try: ... except ImportError`` (an optional feature that
says what is missing) must be declared too, in ``dependencies`` or an extra; and every name in
``dependencies`` must be imported somewhere. Imports inside functions count: they are lazy, not
optional. The repository's meta-distribution (the root pyproject.toml) only gathers the others.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: modules that are an extra of their distribution: what they import is declared by that extra
#: (``pip install qimg-core[testing]``), not by every install
EXTRA_MODULES = {"core/qimg/testing.py": "testing"}
#: import names that differ from their distribution's name
IMPORT_TO_DIST = {"qimg": "qimg-core", "qimg_cli": "qimg-cli", "yaml": "pyyaml"}
#: modules a distribution may import without declaring them because no package index has them:
#: the system provides them (the rbd plugin says which packages when they are missing)
SYSTEM_ONLY = {
    "rados": "Ceph's librados bindings (Debian python3-rados; not on PyPI)",
    "rbd": "Ceph's librbd bindings (Debian python3-rbd; not on PyPI)",
}


def distributions() -> dict[str, Path]:
    """Every distribution of the repository but the meta-distribution: name -> folder."""
    out = {}
    for toml in [ROOT / "core" / "pyproject.toml", ROOT / "cli" / "pyproject.toml",
                 ROOT / "qemu-img" / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]:
        out[tomllib.loads(toml.read_text())["project"]["name"]] = toml.parent
    return out


def dist_of(module: str) -> str:
    if module in IMPORT_TO_DIST:
        return IMPORT_TO_DIST[module]
    if module.startswith("qimg_"):
        return "qimg-" + module[5:]
    return module.replace("_", "-").lower()


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in the body of a ``try`` that handles ImportError."""
    child, cur = node, parents.get(node)
    while cur is not None:
        if isinstance(cur, ast.Try) and child in cur.body:
            for h in cur.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        child, cur = cur, parents.get(cur)
    return False


def imports(folder: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(required, optional): distribution -> files importing it, for a distribution's folder."""
    sources = [p for p in folder.rglob("*.py") if "tests" not in p.relative_to(folder).parts
               and ".venv" not in p.parts]
    sources += [p for p in (folder / "scripts").glob("*") if p.is_file()]
    required: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sources:
        if path.name == "hatch_build.py":
            continue  # the build hook runs in the build environment (build-system.requires)
        tree = ast.parse(path.read_text(), str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in list(ast.walk(tree)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import " in node.value:
                try:  # Python code in a string, run by a subprocess (qimg.testing runs the CLI)
                    code = ast.parse(node.value)
                except SyntaxError:
                    continue
                for sub in ast.walk(code):
                    parents[sub] = parents.get(sub, node)
                nodes = [n for n in ast.walk(code) if isinstance(n, (ast.Import, ast.ImportFrom))]
            else:
                nodes = [node]
            for n in nodes:
                _note(n, parents, stdlib, path, required, optional, extra_of(path))
    return required, optional


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def extra_of(path: Path) -> str | None:
    """The extra whose module ``path`` is (its imports are that extra's), or None."""
    return EXTRA_MODULES.get(_rel(path))


def _note(node: ast.AST, parents: dict, stdlib: set[str], path: Path, required: dict, optional: dict,
          extra: str | None) -> None:
    """Record the third-party imports of one import statement."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
    else:
        return
    for name in names:
        top = name.split(".")[0]
        if top in stdlib:
            continue
        where = optional if extra is not None or _optional(node, parents) else required
        where.setdefault(dist_of(top), set()).add(_rel(path))


def declared(folder: Path) -> tuple[set[str], set[str], str]:
    """(dependencies, every extra's names, the distribution's own name), names normalised."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("_", "-") for r in reqs}

    extras = set()
    for reqs in project.get("optional-dependencies", {}).values():
        extras |= names(reqs)
    return names(project.get("dependencies", [])), extras, project["name"]


@pytest.mark.parametrize("dist", sorted(distributions()))
def test_declares_what_it_imports_and_nothing_else(dist: str) -> None:
    folder = distributions()[dist]
    deps, extras, name = declared(folder)
    required, optional = imports(folder)
    required.pop(name, None)
    optional.pop(name, None)
    for module in SYSTEM_ONLY:
        required.pop(module, None)
        optional.pop(module, None)
    missing = {d: sorted(f) for d, f in required.items() if d not in deps}
    assert not missing, f"{dist} imports these without declaring them in dependencies: {missing}"
    undeclared = {d: sorted(f) for d, f in optional.items() if d not in deps | extras}
    assert not undeclared, f"{dist} imports these (optionally) without declaring them in an extra: {undeclared}"
    stale = sorted(d for d in deps if d not in required and d not in optional)
    assert not stale, f"{dist} declares dependencies it never imports: {stale}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader finds top-level, lazy (in a function) and optional (try/except ImportError)
    imports, and skips the standard library and relative imports."""
    pkg = tmp_path / "qimg_x"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import os\nfrom . import sibling\nimport urllib3\n"
        "def f():\n    from construct import Struct\n"
        "try:\n    import qimg_cli.main\nexcept ImportError:\n    pass\n"
        "CODE = 'import sys; from paramiko import SSHClient'\n")
    required, optional = imports(tmp_path)
    assert set(required) == {"urllib3", "construct", "paramiko"} and set(optional) == {"qimg-cli"}


def test_the_meta_distribution_gathers_every_distribution() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in meta}
    assert names == set(distributions()) - {"qimg-qemu-img"}


def test_packaging_page_lists_every_distribution_and_its_dependencies() -> None:
    """docs/packaging.md's table: a row per distribution naming its folder and what it declares."""
    page = (ROOT / "docs" / "packaging.md").read_text()
    for dist, folder in distributions().items():
        row = next((ln for ln in page.splitlines() if ln.startswith(f"| `{dist}` (`{_rel(folder)}/`) |")), None)
        assert row is not None, f"docs/packaging.md has no row for {dist}"
        deps, _, _ = declared(folder)
        depends_on = row.rsplit("|", 2)[1]
        missing = [d for d in deps if f"`{d}`" not in depends_on]
        assert not missing, f"docs/packaging.md's row for {dist} does not name {missing}"
