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
from conftest import need_qemu10

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_version_line(profile) -> None:
    from qimg import __version__
    from qimg.compat import PROFILES

    version = ".".join(map(str, PROFILES[profile]))
    for prog, name in (("qimg", "qimg"), ("/usr/local/bin/qemu-img", "qemu-img"), ("./qemu-img", "qemu-img"),
                       ("./my-img", "qemu-img"), ("/usr/bin/qimg-10", "qimg")):
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
        # 7.2 spells its own name out (qemu-img, under any name but qimg's); 10.0 quotes argv[0]
        fixed = "qimg" if name == "qimg" else "qemu-img"
        hint = (f"Try '{fixed} --help' for more information" if profile == "7.2"
                else f"Try '{prog} info --help' for more info")
        assert r.stderr == f"{name}: Expecting one image file name\n{hint}\n"
        # a second error line names it too (qemu's error_report per line)
        r = run_qimg("create", "-f", "raw", str(tmp_path / "x"), "1.5", prog=prog, profile="7.2")
        assert r.stderr.splitlines()[1].startswith(f"{name}: kilobytes, megabytes"), r.stderr
        # help texts and the version line: qemu-img, whatever the name (qimg under its own)
        r = run_qimg("--help", prog=prog, profile=profile)
        assert ("qemu-img" in r.stdout) == (fixed == "qemu-img")
        assert f"  {fixed} [standard options]" in r.stdout or f"usage: {fixed} [standard options]" in r.stdout
        assert run_qimg("--version", prog=prog, profile=profile).stdout.startswith(f"{fixed} version ")


def test_help_is_qemu_imgs_under_its_name(tmp_path, oracle) -> None:
    """Named qemu-img, the help texts equal qemu-img's but for the build and the formats."""
    r = run_qimg("--help", prog=oracle_path(oracle), profile=oracle)
    theirs = run_qemu("--help")
    assert "qimg" not in r.stdout.split("\n", 1)[1]
    assert strip_formats(r.stdout.splitlines()) == strip_formats(theirs.stdout.splitlines())


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_dirty_vhdx_hint_names_the_program(profile, tmp_path) -> None:
    """The vhdx log-replay hint spells qemu-img's name out (qimg under its own name), as
    qemu-img does under any name; the error line's prefix is the name as invoked."""
    from test_vhdx import _dirty

    exe = oracle_path(profile)
    env = dict(os.environ) if profile == "7.2" else need_qemu10("qemu-img")[1]
    clean, img = tmp_path / "clean.vhdx", tmp_path / "x.vhdx"
    subprocess.run([exe, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(clean), "10M"], check=True, env=env)
    _dirty(str(clean), str(img))
    (tmp_path / "my-img").symlink_to(exe)
    theirs = subprocess.run(["my-img", "info", "x.vhdx"], executable=tmp_path / "my-img", capture_output=True,
                            text=True, env=env, cwd=tmp_path)
    assert "\nqemu-img check -r all 'x.vhdx'" in theirs.stderr, theirs.stderr
    for prog in ("my-img", "qimg"):
        mine = run_qimg("info", "x.vhdx", prog=prog, profile=profile, cwd=tmp_path)
        assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr.replace("my-img", prog).replace(
            "qemu-img check", "qimg check" if prog == "qimg" else "qemu-img check"))


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


# -- invoked by PATH lookup, by relative and absolute path, through a link: as qemu-img ------------

#: (how the program is invoked, folder it runs in): {bin}: a folder on PATH holding the program
#: as qemu-img and as my-img (links); {alt}: a folder off PATH with the same links
INVOCATIONS = [
    ("qemu-img", ""), ("my-img", ""), ("./bin/qemu-img", ""), ("bin/my-img", ""), ("../bin/qemu-img", "sub"),
    ("{alt}/qemu-img", ""), ("{alt}/my-img", ""),
]
#: argument lists whose messages name the program (error prefix, usage hints, getopt's words)
NAMING_CASES = [["info"], ["info", "--bogus", "x"], ["info", "-Z", "x"], ["-Zx"], ["-Z"], [], ["info", "-f"],
                ["info", "nothere.img"], ["create", "-f", "raw", "x.raw", "1.5"], ["map", "--output=x", "y"],
                ["check", "-r", "x", "y"], ["--version"]]


def _invoke(target: Path, how: str, args: list[str], root: Path, env: dict) -> tuple[int, str, str]:
    for d in ("bin", "alt"):
        (root / d).mkdir(exist_ok=True)
        for name in ("qemu-img", "my-img"):
            link = root / d / name
            if link.is_symlink() and os.readlink(link) != str(target):
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(target)
    (root / "sub").mkdir(exist_ok=True)
    env = {**env, "PATH": f"{root / 'bin'}:{os.environ.get('PATH', os.defpath)}", "LC_ALL": "C"}
    cmd, where = how
    p = subprocess.run([cmd.format(alt=root / "alt"), *args], capture_output=True, text=True, env=env,
                       cwd=root / where if where else root)
    out = p.stdout.partition(" version ")[0] if args == ["--version"] else p.stdout  # the name it gives
    return p.returncode, out, p.stderr.replace(str(root), "ROOT")


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_invoked_name_as_qemu_img_sees_it(profile, qemu_img_launcher, tmp_path) -> None:
    """qimg's installed script (a #! script: the interpreter gets the path PATH lookup found)
    against the profile's qemu-img (a C program: argv[0] as given), each invoked the same way:
    by PATH lookup under its name and under another, by relative and absolute path, through
    links. Error prefixes, usage hints and getopt's words quote the same names."""
    if profile == "7.2":
        exe, env = oracle_path("7.2"), dict(os.environ)
    else:
        exe, env = need_qemu10("qemu-img")
    env.pop("QIMG_COMPAT", None)
    mine_env = {**os.environ, "QIMG_COMPAT": profile}
    for how in INVOCATIONS:
        for args in NAMING_CASES:
            root_q, root_m = tmp_path / "q" / "work", tmp_path / "m" / "work"
            root_q.mkdir(parents=True, exist_ok=True)
            root_m.mkdir(parents=True, exist_ok=True)
            theirs = _invoke(Path(exe), how, args, root_q, env)
            mine = _invoke(qemu_img_launcher, how, args, root_m, mine_env)
            assert mine == theirs, (how, args)
