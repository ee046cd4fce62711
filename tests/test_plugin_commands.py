"""Commands that plugins add (``qimg_register_commands``): found by name, run through click (the
hook's contract), listed in qemu-img 10.0's ``--help``, and the only path that imports click."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from cli_support import run_qimg
from qimg import entrypoints, plugins
from qimg_cli import plugincmds

click = pytest.importorskip("click")


@pytest.fixture
def hello_plugin(monkeypatch: pytest.MonkeyPatch):
    """A plugin module adding ``qimg hello [--name N] [-x]`` next to the installed plugins."""
    mod = types.ModuleType("qimg_test_hello_plugin")

    @click.command("hello", help="Say hello from a plugin.\n\nMore text.")
    @click.option("--name", default="world")
    @click.option("-x", "shout", is_flag=True)
    def hello(name: str, shout: bool) -> None:
        text = f"hello {name}"
        click.echo(text.upper() if shout else text)

    def qimg_register_commands(cli) -> None:
        cli.add_command(hello)

    mod.qimg_register_commands = plugins.hookimpl(qimg_register_commands)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    real = entrypoints.entry_points
    monkeypatch.setattr(entrypoints, "entry_points",
                        lambda group: [*real(group), ("hello", mod.__name__)] if group == "qimg" else real(group))
    plugins.reset()
    plugincmds.reset()
    yield
    plugins.reset()
    plugincmds.reset()


def test_plugin_command_runs(hello_plugin) -> None:
    r = run_qimg("hello", "--name", "qimg", "-x")
    assert (r.returncode, r.stdout, r.stderr) == (0, "HELLO QIMG\n", "")
    r = run_qimg("-T", "nothing_matches*", "hello")
    assert (r.returncode, r.stdout) == (0, "hello world\n")


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_plugin_command_usage_errors_read_as_qemu_img(hello_plugin, profile) -> None:
    r = run_qimg("hello", "--nope", profile=profile)
    hint = "Try 'qimg --help' for more information" if profile == "7.2" else "Try 'qimg hello --help' for more info"
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"qimg: unrecognized option '--nope'\n{hint}\n")
    r = run_qimg("hello", "--name", profile=profile)
    assert r.returncode == 1 and r.stderr.startswith("qimg: missing argument for option '--name'\n")


def test_plugin_commands_listed_in_10_help(hello_plugin) -> None:
    r = run_qimg("--help", profile="10.0")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "  hello - Say hello from a plugin" in lines
    assert lines.index("  hello - Say hello from a plugin") == lines.index("  snapshot - List or manipulate snapshots within image") + 1


def test_unknown_command_without_plugins() -> None:
    r = run_qimg("hello")
    assert (r.returncode, r.stderr) == (1, "qimg: Command not found: hello\nTry 'qimg --help' for more information\n")


def test_builtin_help_needs_no_click_nor_pluggy(tmp_path) -> None:
    """With no plugin adding commands, ``--help`` (both profiles) imports neither click nor
    pluggy (the light plugin reader answers) nor any command module."""
    code = ("import sys\nfrom qimg_cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('click', 'pluggy') or m.startswith('qimg_cli.commands.')]\n"
            "assert not bad, bad\n")
    for profile in ("7.2", "10.0"):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "QIMG_COMPAT": profile})
        assert p.returncode == 0, p.stderr
