"""The qcow2 plugin's layout stays as docs/architecture.md draws it (issue 13): modules of at most
~700 lines, no import cycle among them, no private name (``_x``) used outside the module that
defines it, and no method that only imports a sibling's function and forwards to it.

Read from the source with ``ast``: nothing is imported or run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "plugins" / "qcow2" / "qimg_qcow2"
MAX_LINES = 700

def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PKG.glob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for sub in node.body:
                out.update(id(n) for n in ast.walk(sub))
    return out


def sibling_imports(name: str, tree: ast.Module, names: set[str]) -> dict[str, list[str]]:
    """The sibling modules ``name`` imports at run time (at the top or inside a function), each
    with the names it takes from it."""
    skip = _type_checking_nodes(tree)
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                target = mod.split(".")[0] if mod else None
            elif mod.startswith("qimg_qcow2"):
                target = mod.split(".")[1] if "." in mod else None
            else:
                continue
            if target is None:  # from . import x, y
                for a in node.names:
                    if a.name in names:
                        out.setdefault(a.name, []).append("*")
            elif target in names:
                out.setdefault(target, []).extend(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("qimg_qcow2.") and a.name.split(".")[1] in names:
                    out.setdefault(a.name.split(".")[1], []).append("*")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sibling"
              and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
            # driver.py's lazily imported methods: sibling("module", "function")
            if node.args[0].value in names:
                out.setdefault(node.args[0].value, []).append(node.args[1].value)
    out.pop(name, None)
    return out


def _defined_private(tree: ast.Module) -> set[str]:
    """Private names a module defines: its functions, classes and globals, and the attributes
    its classes set on ``self``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.add(node.attr)
    return {n for n in out if n.startswith("_")}


def _private(n: str) -> bool:
    return n.startswith("_") and not (n.startswith("__") and n.endswith("__"))


def foreign_privates(name: str, tree: ast.Module, names: set[str]) -> list[str]:
    """Uses of a private name this module does not define: imported from a sibling, or read or
    set on another object (``drv._x``)."""
    own = _defined_private(tree)
    bad = []
    for mod, taken in sibling_imports(name, tree, names).items():
        bad += [f"{name}: imports {mod}.{t}" for t in taken if _private(t)]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            bad.append(f"{name}:{node.lineno}: .{node.attr}")
    return bad


def forwarding_stubs(name: str, tree: ast.Module) -> list[str]:
    """Functions whose whole body imports a name and calls it (a docstring aside)."""
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = list(node.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if len(body) < 2 or not all(isinstance(s, ast.ImportFrom) for s in body[:-1]):
            continue
        imported = {a.asname or a.name for s in body[:-1] for a in s.names}
        last = body[-1]
        call = last.value if isinstance(last, (ast.Return, ast.Expr)) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in imported:
            bad.append(f"{name}:{node.lineno}: {node.name}")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_module_is_too_long() -> None:
    long = {p.name: n for p in PKG.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split by responsibility (docs/architecture.md): {long}"


def test_no_import_cycle() -> None:
    mods = modules()
    names = set(mods)
    graph = {n: set(sibling_imports(n, t, names)) for n, t in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in qimg_qcow2: {' -> '.join(cycle)}"


def test_no_private_name_across_modules() -> None:
    mods = modules()
    names = set(mods)
    bad = [b for n, t in mods.items() for b in foreign_privates(n, t, names)]
    assert bad == []


def test_no_forwarding_stubs() -> None:
    bad = [b for n, t in modules().items() for b in forwarding_stubs(n, t)]
    assert bad == []


@pytest.mark.parametrize("src, expect", [
    ("from .a import _x\n", ["m: imports a._x"]),
    ("def f(d):\n    return d._y\n", ["m:2: ._y"]),
    ("class C:\n    def f(self, d):\n        self._y = 1\n        return d._y\n", []),
])
def test_private_rule_itself(src: str, expect: list[str]) -> None:
    assert foreign_privates("m", ast.parse(src), {"a", "m"}) == expect


def test_stub_and_cycle_rules_themselves() -> None:
    stub = "def f(self, x):\n    '''doc'''\n    from .b import g\n\n    return g(self, x)\n"
    assert forwarding_stubs("m", ast.parse(stub)) == ["m:1: f"]
    assert forwarding_stubs("m", ast.parse("def f(self):\n    from .b import g\n    g(self)\n    return 1\n")) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
