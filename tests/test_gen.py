"""What is generated from the option tables, and ships with the CLI: the man page qimg(1), the
bash completion (they complete commands, options, the installed formats and files),
and ``python -m qimg``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from qimg_cli import gen
from qimg_cli.tables import NAMES, SUMMARIES, command

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI (scripts/test-packages)")
        pytest.skip(f"{tool} is not installed")
    return path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), **extra}


# -- the man page --------------------------------------------------------------------------------

def test_man_page_renders_and_lists_every_command_and_option(tmp_path) -> None:
    page = tmp_path / "qimg.1"
    page.write_text(gen.man_page("9.9"))
    _need("groff")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr  # no roff warnings
    p = subprocess.run(["groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-u", str(page)], capture_output=True, text=True)
    text = p.stdout
    assert "QIMG(1)" in text and "qimg 9.9" in text and "QIMG_COMPAT" in text
    flat = " ".join(text.split())
    for name in NAMES:
        assert f"qimg {name}" in flat, name
        assert SUMMARIES[name] in flat
        for o in command(name).options:
            for n in gen.names_in(o, "10.0"):
                assert n in flat, (name, n)
    # every option is described (qemu-img's help text, or the table's about= where it has none)
    for c in [gen.global_options(), *gen.commands()]:
        for o in c.options:
            assert o.key == "help" or gen._text(o), (c.name, o.key)
    # a 10.0-only name says so
    assert "-b, --backing-chain (QIMG_COMPAT=7.2: --backing-chain)" in flat


# -- bash ----------------------------------------------------------------------------------------

def _bash(script: Path, words: list[str], profile: str = "10.0") -> list[str]:
    code = (f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
            "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_qimg\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run([_need("bash"), "--norc", "-c", code], capture_output=True, text=True,
                       env=_env(QIMG_COMPAT=profile))
    assert p.returncode == 0, p.stderr
    return [ln for ln in p.stdout.split("\n") if ln]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "qimg"
    path.write_text(gen.bash_completion())
    return path


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_bash_completes_commands_options_formats_and_files(bash_script, tmp_path, profile) -> None:
    from qimg.plugins import get_registry

    assert _bash(bash_script, ["qimg", ""], profile) == list(NAMES)
    assert _bash(bash_script, ["qimg", "co"], profile) == ["commit", "compare", "convert"]
    assert _bash(bash_script, ["qimg", "-"], profile) == ["-h", "--help", "-V", "--version", "-T", "--trace",
                                                          "--untrusted"]
    assert _bash(bash_script, ["qimg", "info", "--f"], profile) == ["--format", "--force-share"]
    assert _bash(bash_script, ["qimg", "-T", "x", "info", "--ba"], profile) == ["--backing-chain"]
    formats = get_registry().driver_names()
    assert _bash(bash_script, ["qimg", "info", "-f", ""], profile) == formats
    assert _bash(bash_script, ["qimg", "convert", "-O", "qc"], profile) == [f for f in formats if f.startswith("qc")]
    assert _bash(bash_script, ["qimg", "check", "--output", ""], profile) == ["human", "json"]
    assert _bash(bash_script, ["qimg", "dd", "i"], profile) == ["if="]
    (tmp_path / "disk.img").write_bytes(b"")
    assert _bash(bash_script, ["qimg", "info", str(tmp_path / "di")], profile) == [str(tmp_path / "disk.img")]
    assert _bash(bash_script, ["qimg", "dd", f"if={tmp_path}/di"], profile) == [f"if={tmp_path}/disk.img"]


# -- zsh -----------------------------------------------------------------------------------------

#: completes a command line in an interactive zsh (zpty) with the completion system loaded from
#: $1, and prints each match compadd receives (a compadd wrapper); $2: the line. TAB runs a
#: widget that completes, then prints a marker: the output is read up to it (no timing)
_ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PROMPT=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "compadd () { if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd \"\$@\"; return \$?; fi; typeset -a __hits; builtin compadd -A __hits \"\$@\"; local h; for h in \$__hits; do print -r -- \"<C>\$h\"; done; }"
zpty -w z "_cap_tab() { zle complete-word; print -r -- '<DONE''>'; }; zle -N _cap_tab; bindkey '^I' _cap_tab"
zpty -w z "print -r -- '<READY''>'"
local line
while zpty -r z line; do [[ $line == *'<READY>'* ]] && break; done
zpty -w -n z "$2"$'\t'
while zpty -r z line; do
  [[ $line == *'<DONE>'* ]] && break
  [[ $line == *'<C>'* ]] && print -r -- "${${line#*<C>}%%$'\r'}"
done
zpty -d z
"""


@pytest.fixture(scope="module")
def zsh_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zsh")
    (folder / "_qimg").write_text(gen.zsh_completion())
    (folder / "capture.zsh").write_text(_ZSH_CAPTURE)
    return folder


def _zsh(folder: Path, line: str, profile: str = "10.0") -> list[str]:
    p = subprocess.run([_need("zsh"), "-f", str(folder / "capture.zsh"), str(folder), line], capture_output=True,
                       text=True, env=_env(QIMG_COMPAT=profile), timeout=60, cwd=folder)
    assert p.returncode == 0, p.stderr
    return [ln for ln in p.stdout.split("\n") if ln.strip()]


def test_zsh_script_loads(zsh_dir) -> None:
    p = subprocess.run([_need("zsh"), "-n", str(zsh_dir / "_qimg")], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr, p.stderr
    p = subprocess.run([_need("zsh"), "-f", "-c", f"fpath=({zsh_dir} $fpath); autoload -U compinit; compinit -u -D; "
                        "autoload -U +X _qimg && print -r -- $_comps[qimg]"], capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == (0, "_qimg\n", "")


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_zsh_completes_commands_options_formats_and_files(zsh_dir, profile) -> None:
    from qimg.plugins import get_registry

    formats = get_registry().driver_names()
    assert _zsh(zsh_dir, "qimg co", profile) == ["commit", "compare", "convert"]
    assert sorted(_zsh(zsh_dir, "qimg info --f", profile)) == ["--force-share", "--format"]
    assert sorted(_zsh(zsh_dir, "qimg -", profile)) == sorted(["-h", "--help", "-V", "--version", "-T", "--trace",
                                                                 "--untrusted"])
    assert sorted(_zsh(zsh_dir, "qimg info -f q", profile)) == sorted(f for f in formats if f.startswith("q"))
    assert sorted(_zsh(zsh_dir, "qimg convert -c -O v", profile)) == sorted(f for f in formats if f.startswith("v"))
    assert _zsh(zsh_dir, "qimg check --output ", profile) == ["human", "json"]
    assert _zsh(zsh_dir, "qimg dd i", profile) == ["if="]
    assert _zsh(zsh_dir, "qimg info capt", profile) == ["capture.zsh"]
    assert _zsh(zsh_dir, "qimg dd of=capt", profile) == ["capture.zsh"]


# -- what the wheel installs, python -m qimg -------------------------------------------------------

@pytest.fixture(scope="module")
def cli_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cliwheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT / "cli")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = out.glob("qimg_cli-*.whl")
    return whl


def test_wheel_installs_the_man_page_and_completions(cli_wheel) -> None:
    with zipfile.ZipFile(cli_wheel) as z:
        names = z.namelist()
        data = {n.split(".data/data/", 1)[1]: z.read(n).decode() for n in names if ".data/data/" in n}
    from importlib.metadata import version

    assert data["share/man/man1/qimg.1"] == gen.man_page(version("qimg-cli"))
    assert data["share/bash-completion/completions/qimg"] == gen.bash_completion()
    assert data["share/zsh/site-functions/_qimg"] == gen.zsh_completion()
    assert any(n.endswith(".data/scripts/qimg") for n in names)


def test_python_dash_m_qimg_runs_the_cli(tmp_path) -> None:
    p = subprocess.run([sys.executable, "-m", "qimg", "--version"], capture_output=True, text=True,
                       env=_env(QIMG_COMPAT="10.0"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("qimg version 10.0.2 (qimg ")
    p = subprocess.run([sys.executable, "-m", "qimg", "info"], capture_output=True, text=True,
                       env=_env(QIMG_COMPAT="10.0"))
    assert (p.returncode, p.stderr) == (1, "qimg: Expecting one image file name\nTry 'qimg info --help' for more info\n")


def test_python_dash_m_qimg_without_the_cli(tmp_path) -> None:
    """With qimg-cli missing, ``python -m qimg`` says what to install, in one line."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "qimg_cli.py").write_text("raise ModuleNotFoundError(\"No module named 'qimg_cli'\", name='qimg_cli')\n")
    p = subprocess.run([sys.executable, "-m", "qimg", "info", "x"], capture_output=True, text=True,
                       env=_env(PYTHONPATH=str(hide)))
    assert p.returncode == 1
    assert p.stderr.startswith("qimg: the command line is not installed: install the qimg-cli distribution")
    assert p.stderr.count("\n") == 1


# -- the command pages ------------------------------------------------------------------------------

def test_each_command_page_lists_its_options_from_the_table() -> None:
    """docs/commands/NAME.md's options section is the table's (``python -m qimg_cli.gen docs``
    rewrites it after a table changes)."""
    for cmd in gen.commands():
        page = (ROOT / "docs" / "commands" / f"{cmd.name}.md").read_text()
        assert gen.options_markdown(cmd) in page, f"{cmd.name}.md: run python -m qimg_cli.gen docs"
        assert gen.update_page(page, cmd) == page
