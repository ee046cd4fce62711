"""The program's name as invoked (argv[0]): ``qimg`` or ``qemu-img`` in every message, help text
and the ``--version`` line, and the optional ``qemu-img`` launcher (the qimg-qemu-img
distribution, or a link) that a distribution can choose to install."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import oracle_path, run_qemu, run_qimg, strip_formats

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_version_line(profile) -> None:
    from qimg import __version__
    from qimg.compat import PROFILES

    version = ".".join(map(str, PROFILES[profile]))
    for prog, name in (("qimg", "qimg"), ("/usr/local/bin/qemu-img", "qemu-img"), ("./qemu-img", "qemu-img")):
        r = run_qimg("--version", prog=prog, profile=profile)
        assert r.returncode == 0
        assert r.stdout.splitlines()[0] == f"{name} version {version} (qimg {__version__})"
        year = "2022" if profile == "7.2" else "2025"
        assert r.stdout.splitlines()[1] == f"Copyright (c) 2003-{year} Fabrice Bellard and the QEMU Project developers"


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_messages_name_the_program_as_invoked(profile, tmp_path) -> None:
    for prog, name in (("qimg", "qimg"), ("/opt/x/qemu-img", "qemu-img"), ("my-img", "my-img")):
        r = run_qimg("info", str(tmp_path / "missing"), prog=prog, profile=profile)
        assert r.stderr.startswith(f"{name}: Could not open "), r.stderr
        r = run_qimg("info", prog=prog, profile=profile)
        hint = (f"Try '{name} --help' for more information" if profile == "7.2"
                else f"Try '{prog} info --help' for more info")  # 10.0 quotes argv[0] itself
        assert r.stderr == f"{name}: Expecting one image file name\n{hint}\n"
        # a second error line names it too (qemu's error_report per line)
        r = run_qimg("create", "-f", "raw", str(tmp_path / "x"), "1.5", prog=prog, profile="7.2")
        assert r.stderr.splitlines()[1].startswith(f"{name}: kilobytes, megabytes"), r.stderr
        # help texts: qemu-img's own name is the invoked one
        r = run_qimg("--help", prog=prog, profile=profile)
        assert "qemu-img" not in r.stdout.replace(f"{name}", "") or name == "qemu-img"
        assert f"  {name} [standard options]" in r.stdout or f"usage: {name} [standard options]" in r.stdout


def test_help_is_qemu_imgs_under_its_name(tmp_path, oracle) -> None:
    """Named qemu-img, the help texts equal qemu-img's but for the build and the formats."""
    r = run_qimg("--help", prog=oracle_path(oracle), profile=oracle)
    theirs = run_qemu("--help")
    assert "qimg" not in r.stdout.split("\n", 1)[1]
    assert strip_formats(r.stdout.splitlines()) == strip_formats(theirs.stdout.splitlines())


def test_dirty_vhdx_hint_names_the_program(tmp_path) -> None:
    """The vhdx log-replay hint (qemu-img's own words name it) follows the program's name."""
    from qimg.compat import program, set_program

    old = program()
    try:
        set_program("qemu-img")
        assert program() == "qemu-img"
    finally:
        set_program(old)
    src = (ROOT / "plugins" / "vhdx" / "qimg_vhdx" / "driver.py").read_text()
    assert "{program()} check -r all" in src and "qimg check -r all" not in src


@pytest.fixture(scope="module")
def qemu_img_launcher(tmp_path_factory) -> Path:
    """The qimg-qemu-img distribution built by pip and installed (its script only) beside this
    run's Python, which has qimg itself."""
    out = tmp_path_factory.mktemp("launcher")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "wheels"),
                        str(ROOT / "qemu-img")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = (out / "wheels").glob("qimg_qemu_img-*.whl")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(out / "site"), str(whl)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    script = out / "site" / "bin" / "qemu-img"
    assert script.exists(), list((out / "site").rglob("*"))
    assert script.read_text().startswith("#!"), "installed as a script with the interpreter's #! line"
    return script


def test_launcher_runs_qimg_as_qemu_img(qemu_img_launcher, tmp_path) -> None:
    from qimg import __version__

    env = {**os.environ, "QIMG_COMPAT": "10.0"}
    r = subprocess.run([str(qemu_img_launcher), "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"qemu-img version 10.0.2 (qimg {__version__})"
    r = subprocess.run([str(qemu_img_launcher), "create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "1M"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(qemu_img_launcher), "info", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.startswith("qemu-img: Could not open "), r.stderr
    # a link named qemu-img to the qimg script works the same (the documented symlink step)
    qimg_script = Path(sys.executable).parent / "qimg"
    if qimg_script.exists():
        link = tmp_path / "bin" / "qemu-img"
        link.parent.mkdir()
        link.symlink_to(qimg_script)
        r = subprocess.run([str(link), "--version"], capture_output=True, text=True, env=env)
        assert r.stdout.splitlines()[0] == f"qemu-img version 10.0.2 (qimg {__version__})", r.stderr
