"""docs/plugins.md works as written: its example distribution (qimg-demo: the demo format, the
slice protocol, the formats command) is extracted from the page's own text, built by pip and
installed into a fresh venv where qimg's distributions were pip-installed from this checkout,
then driven through the page's steps: ``qimg --help``, ``create``, ``info``, ``convert`` both
ways, a slice: name, the plugin's command, and the plugin's own tests (qimg's conformance suite).

The runtime dependencies of qimg's distributions (pluggy, construct, click, zstandard, pytest...)
are the ones this test run uses, linked into the venv, so pip fetches nothing but the build
backend (hatchling, from PyPI or pip's cache) for qimg's distributions and the plugin. Measured on
the shared 2-core test machine under load: about 95 s (venv 20 s, qimg's four distributions 46 s,
the plugin 16 s, its tests 7 s); the steps are timed and printed (``-s``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
#: the distribution's folder name on the page: a block whose first line is "# qimg-demo/PATH"
PREFIX = "qimg-demo/"


def guide_files(text: str) -> dict[str, str]:
    """The files of the guide's example distribution: every fenced block whose first line is
    ``# qimg-demo/PATH``; blocks naming the same file are joined in page order."""
    files: dict[str, list[str]] = {}
    for body in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        first, _, rest = body.partition("\n")
        m = re.fullmatch(r"# " + re.escape(PREFIX) + r"(\S+)", first.strip())
        if m:
            files.setdefault(m.group(1), []).append(rest)
    return {path: "\n".join(parts) for path, parts in files.items()}


def guide_commands(text: str) -> list[str]:
    """The shell steps of "Build, install and try it" (the first ```sh block), comments dropped."""
    block = re.search(r"## Build, install and try it.*?```sh\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_guide_names_every_file() -> None:
    files = guide_files(GUIDE.read_text())
    assert set(files) == {"pyproject.toml", "qimg_demo/__init__.py", "qimg_demo/structs.py", "qimg_demo/driver.py",
                          "qimg_demo/protocol.py", "conftest.py", "tests/test_demo.py"}
    for path, code in files.items():
        if path.endswith(".py"):
            compile(code, path, "exec")
    toml = files["pyproject.toml"]
    assert "[build-system]" in toml and re.search(r'^version = "', toml, re.M)
    steps = guide_commands(GUIDE.read_text())
    assert "pip install ./qimg-demo pytest" in steps and any(s.startswith("qimg convert") for s in steps)


def _deps_pth(site: Path) -> None:
    """Link the runtime dependencies of qimg's distributions (as this run has them) into ``site``."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_plugins
    finally:
        sys.path.pop(0)
    import importlib.metadata as md

    runtime = [*(r for d in ("qimg-core", "qimg-cli", "qimg-raw", "qimg-qcow2") for r in md.requires(d) or ()
                 if "extra ==" not in r), "pytest"]
    names = test_plugins._dependency_closure([re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in runtime])
    deps = site.parent / "qimg-guide-deps"
    deps.mkdir()
    test_plugins._link_distributions(names, deps)
    (site / "qimg_guide_deps.pth").write_text(str(deps) + "\n")


def test_plugin_guide_builds_installs_and_runs(tmp_path: Path, qemu_img) -> None:
    text = GUIDE.read_text()
    work = tmp_path / "work"
    demo = work / "qimg-demo"
    for path, code in guide_files(text).items():
        (demo / path).parent.mkdir(parents=True, exist_ok=True)
        (demo / path).write_text(code)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    _deps_pth(site)
    times["venv"] = time.monotonic() - t0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "QIMG_DISABLE_PLUGINS")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)

    def sh(line: str, cwd: Path = work) -> subprocess.CompletedProcess:
        # the guide's paths are relative to a checkout of qimg and to the plugin's parent folder
        line = re.sub(r"(?<=\s)\./(core|cli|plugins/\w+)\b", lambda m: str(ROOT / m.group(1)), line)
        t = time.monotonic()
        p = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        times[line[:40]] = time.monotonic() - t
        assert p.returncode == 0, f"{line}\n{p.stdout}\n{p.stderr}"
        return p

    out: dict[str, str] = {}
    for step in guide_commands(text):
        if step.startswith("python3 -m venv"):
            continue  # made above (with the dependencies linked in)
        out[step] = sh(step).stdout
    print("plugin guide steps, seconds:", {k: round(v, 1) for k, v in times.items()})

    help_line = next(v for k, v in out.items() if k.startswith("qimg --help"))
    assert help_line.startswith("Supported formats:") and " demo " in help_line and " slice" in help_line
    created = next(v for k, v in out.items() if k.startswith("qimg create -f demo"))
    assert created == "Formatting 'disk.demo', fmt=demo size=67108864\n"
    info = next(v for k, v in out.items() if k == "qimg info disk.demo")
    assert "file format: demo\nvirtual size: 64 MiB (67108864 bytes)\n" in info
    sliced = next(v for k, v in out.items() if k.startswith("qimg info slice:"))
    assert "image: slice:512:1048576:disk.demo\nfile format: raw\nvirtual size: 1 MiB" in sliced
    formats = next(v for k, v in out.items() if k.startswith("qimg formats"))
    assert "demo\tdemo\tqimg demo format" in formats and "qcow2\tqcow2\t" in formats
    tests = next(v for k, v in out.items() if "pytest" in k and k.startswith("("))
    assert re.search(r"\d+ passed", tests) and "failed" not in tests

    # data through the plugin, checked by qemu-img: demo -> qcow2 -> demo keeps every byte
    data = bytes(range(256)) * 4096
    code = ("import qimg, sys\nwith qimg.open(sys.argv[1], writable=True) as img:\n"
            "    img.pwrite(3 << 20, sys.stdin.buffer.read())\n")
    p = subprocess.run([str(py), "-c", code, "disk.demo"], input=data, cwd=work, env=env, capture_output=True)
    assert p.returncode == 0, p.stderr
    sh("qimg convert -O qcow2 disk.demo disk.qcow2 && qimg convert -O demo disk.qcow2 copy.demo")
    expected = work / "expected.raw"
    with open(expected, "wb") as f:
        f.truncate(64 << 20)
        f.seek(3 << 20)
        f.write(data)
    r = qemu_img("compare", "-F", "raw", str(work / "disk.qcow2"), str(expected))
    assert r.returncode == 0, r.stdout + r.stderr
    assert qemu_img("check", str(work / "disk.qcow2")).returncode == 0
    assert (work / "copy.demo").read_bytes()[512:] == expected.read_bytes()
    assert (work / "copy.demo").read_bytes()[:8] == b"QIMGDEMO"


