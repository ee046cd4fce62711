"""Plugins as users get them: distributions installed into a fresh venv, found through the
``qimg`` entry-point group.

Each venv is made with ``venv --without-pip``. The demo plugin (tests/fixtures/qimg-demo-plugin,
a third-party distribution with its own pyproject.toml) is built by pip and installed with
``pip --python VENV install --no-deps``. qimg-core, qimg-cli and qimg-raw are the ones this test
run uses (editable or not), linked into the venv's site-packages with their dist-info (entry
points) and a ``qimg`` script. Third-party dependencies (pluggy, click, ...) come from this
environment through a folder of symlinks named by a ``.pth`` file: nothing is downloaded but
the demo plugin's build backend, and no other qimg distribution of this environment leaks in.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import as_qemu
from qimg.errors import QimgError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "fixtures" / "qimg-demo-plugin"
COMMANDS = ROOT / "cli" / "qimg_cli" / "commands"


def _dependency_closure(names: list[str]) -> set[str]:
    """Distribution names needed by ``names`` (transitively, no extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen or key.startswith("qimg"):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(key)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            m = re.match(r"[A-Za-z0-9._-]+", req)
            if m:
                todo.append(m.group(0))
    return seen


def _link_distributions(names: set[str], dest: Path, *, pth: bool = False) -> None:
    """Symlink the installed files (top-level modules, dist-info, with ``pth`` also the .pth files
    of editable installs) of distributions into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if (top.endswith(".pth") and not pth) or top == "__pycache__":
                continue
            src, dst = base / top, dest / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)


@pytest.fixture(scope="module")
def demo_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo plugin's wheel, built by pip from its pyproject.toml once for this module."""
    out = tmp_path_factory.mktemp("wheels")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(DEMO)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = out.glob("qimg_demo-*.whl")
    return whl


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runtime (and pytest) dependencies of the repository's distributions, as symlinks."""
    dest = tmp_path_factory.mktemp("deps")
    runtime = [*md.requires("qimg-core"), *md.requires("qimg-cli"), "pytest"]
    _link_distributions(_dependency_closure([re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in runtime]), dest)
    return dest


def make_venv(path: Path, deps_dir: Path, wheels: list[Path] = (),
              dists: tuple[str, ...] = ("qimg-core", "qimg-cli", "qimg-raw")) -> Path:
    """A fresh venv at ``path`` with this run's ``dists`` and ``wheels`` installed; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "qimg_test_deps.pth").write_text(str(deps_dir) + "\n")
    _link_distributions(set(dists), site, pth=True)
    script = path / "bin" / "qimg"
    script.write_text(f"#!{py}\nimport sys\nfrom qimg_cli.main import main\nsys.exit(main())\n")
    script.chmod(0o755)
    if wheels:
        p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                            "--no-index", *map(str, wheels)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    return py


def formats_line(help_text: str) -> str:
    """The ``Supported formats:`` line of ``qimg --help``."""
    lines = [ln for ln in help_text.splitlines() if ln.startswith("Supported formats:")]
    assert len(lines) == 1, help_text
    return lines[0]


def run(py: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the venv's ``qimg`` script."""
    cmd = [str(py.parent / "qimg"), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "QIMG_DISABLE_PLUGINS")}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)


def need_commands(*names: str) -> None:
    missing = [n for n in names if not (COMMANDS / f"{n}.py").exists()]
    if missing:
        pytest.skip(f"command module(s) not written yet: {', '.join(f'cli/qimg_cli/commands/{n}.py' for n in missing)}")


@pytest.fixture(scope="module")
def demo_venv(tmp_path_factory: pytest.TempPathFactory, demo_wheel: Path, deps_dir: Path) -> Path:
    return make_venv(tmp_path_factory.mktemp("demo") / "venv", deps_dir, [demo_wheel])


def test_help_lists_third_party_format(demo_venv: Path) -> None:
    r = run(demo_venv, "--help")
    assert r.returncode == 0, r.stderr
    assert formats_line(r.stdout) == "Supported formats: demo file host_device raw"  # raw also registers these


@pytest.fixture(scope="module")
def raw_venv(tmp_path_factory: pytest.TempPathFactory, deps_dir: Path) -> Path:
    return make_venv(tmp_path_factory.mktemp("rawonly") / "venv", deps_dir)


def test_core_cli_raw_alone_list_only_raw(raw_venv: Path) -> None:
    r = run(raw_venv, "--help")
    assert r.returncode == 0, r.stderr
    assert formats_line(r.stdout) == "Supported formats: file host_device raw"


def test_core_cli_raw_alone_reject_demo(raw_venv: Path, tmp_path: Path, qemu_img) -> None:
    need_commands("create")
    r = run(raw_venv, "create", "-f", "demo", str(tmp_path / "x"), "1M")
    q = qemu_img("create", "-f", "demo", str(tmp_path / "x"), "1M")  # qemu-img has no demo either
    assert (r.returncode, as_qemu(r.stderr)) == (q.returncode, q.stderr) == (1, q.stderr)
    assert "Unknown file format 'demo'" in r.stderr


def test_demo_create_options_help(demo_venv: Path, qemu_img) -> None:
    need_commands("create")
    r = run(demo_venv, "create", "-f", "demo", "-o", "help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Supported demo options:\n")
    # demo declares exactly raw's one create option, so qemu-img's raw text is the reference
    q = qemu_img("create", "-f", "raw", "-o", "help")
    assert r.stdout.replace("Supported demo options:", "Supported raw options:") == q.stdout


def test_demo_create_info_convert(demo_venv: Path, tmp_path: Path) -> None:
    need_commands("create", "info", "convert")
    img = tmp_path / "a.demo"
    r = run(demo_venv, "create", "-f", "demo", str(img), "3M")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Formatting '{img}', fmt=demo size=3145728")
    head = img.read_bytes()[:16]
    assert head[:8] == b"QIMGDEMO" and int.from_bytes(head[8:], "little") == 3 << 20

    # put data in through the library of that venv
    code = ("import qimg, sys\n"
            "with qimg.open(sys.argv[1], 'demo', writable=True) as i:\n"
            "    i.pwrite(12345, b'demo data' * 1000); i.pwrite((3 << 20) - 4, b'end!')\n")
    p = subprocess.run([str(demo_venv), "-c", code, str(img)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    expected = bytearray(3 << 20)
    expected[12345 : 12345 + 9000] = b"demo data" * 1000
    expected[-4:] = b"end!"

    r = run(demo_venv, "info", str(img))  # probed, no -f
    assert r.returncode == 0, r.stderr
    assert "file format: demo\n" in r.stdout
    assert "virtual size: 3 MiB (3145728 bytes)\n" in r.stdout

    out = tmp_path / "out.raw"
    r = run(demo_venv, "convert", "-O", "raw", str(img), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == bytes(expected)

    back = tmp_path / "back.demo"
    r = run(demo_venv, "convert", "-f", "raw", "-O", "demo", str(out), str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes()[:8] == b"QIMGDEMO"
    assert back.read_bytes()[512:] == bytes(expected)


def test_demo_plugin_runs_conformance_suite(demo_venv: Path, tmp_path: Path) -> None:
    """The demo plugin's own tests: ``pytest`` with qimg.testing, inside its venv."""
    p = subprocess.run([str(demo_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                        "--rootdir", str(DEMO), "--basetemp", str(tmp_path / "bt"), str(DEMO / "tests")],
                       capture_output=True, text=True, cwd=DEMO)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"(\d+) passed", p.stdout)
    assert m and int(m.group(1)) >= 6, p.stdout


def test_duplicate_format_name_is_an_error(tmp_path: Path, demo_venv: Path) -> None:
    """Two distributions registering one format name: the CLI says so, without a traceback."""
    site = Path(subprocess.run([str(demo_venv), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    extra = tmp_path / "dup"
    (extra / "qimg_dup").mkdir(parents=True)
    (extra / "qimg_dup" / "__init__.py").write_text(
        "from qimg.plugins import hookimpl\n\n"
        "@hookimpl\n"
        "def qimg_register_formats(registry):\n"
        "    registry.add_format('demo', 'qimg_dup:Nothing')\n")
    info = extra / "qimg_dup-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qimg-dup\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[qimg]\ndup = qimg_dup\n")
    pth = site / "qimg_dup_test.pth"
    pth.write_text(str(extra) + "\n")
    try:
        r = run(demo_venv, "--help")
    finally:
        pth.unlink()
    assert r.returncode == 1
    assert r.stderr == "qimg: Format 'demo' is registered twice (by demo and dup)\n"


def test_duplicate_format_name_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry refuses a second registration of a name (pluggy would hide it)."""
    import types

    from qimg import entrypoints, plugins

    dup = types.ModuleType("qimg_test_dup_raw")

    @plugins.hookimpl
    def qimg_register_formats(registry):
        registry.add_format("raw", "qimg_raw.driver:RawFormat")

    dup.qimg_register_formats = qimg_register_formats
    monkeypatch.setitem(sys.modules, dup.__name__, dup)
    installed = entrypoints.entry_points
    monkeypatch.setattr(entrypoints, "entry_points", lambda group: [*installed(group), ("dup-raw", dup.__name__)])
    plugins.reset()
    try:
        with pytest.raises(QimgError, match=r"Format 'raw' is registered twice \(by raw and dup-raw\)"):
            plugins.get_registry()
    finally:
        monkeypatch.undo()
        plugins.reset()
    assert "raw" in plugins.get_registry().format_names()
