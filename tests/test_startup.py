"""Start-up stays lazy: ``qimg --help`` and ``qimg info`` of a raw image import no heavy library
(construct, cryptography, zstandard) and no format driver they do not use. The modules loaded
are read from ``sys.modules`` when the process exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("construct", "cryptography", "zstandard", "crc32c")

CODE = """
import atexit, json, os, sys
def _dump():
    with open(os.environ["QIMG_MODULES_OUT"], "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(_dump)
from qimg_cli.main import main
sys.argv[0] = "qimg"
main()
"""


def modules_after(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "modules.json"
    env = dict(os.environ, QIMG_MODULES_OUT=str(out))
    p = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, env=env)
    return p, json.loads(out.read_text())


def heavy(mods: list[str]) -> list[str]:
    return [m for m in mods if m.split(".")[0] in HEAVY]


def drivers(mods: list[str]) -> list[str]:
    """Modules of format plugins beyond their tiny ``__init__`` (drivers, structs, ...)."""
    return [m for m in mods if m.startswith("qimg_") and not m.startswith("qimg_cli") and "." in m]


def test_help_is_lazy(tmp_path: Path) -> None:
    p, mods = modules_after(tmp_path, "--help")
    assert p.returncode == 0, p.stderr
    assert "Supported formats:" in p.stdout
    assert "qimg_raw" in mods, "the raw plugin's registration was not even loaded"
    assert heavy(mods) == []
    assert drivers(mods) == []
    assert not [m for m in mods if m.startswith("qimg_cli.commands.")]


def test_info_raw_loads_only_the_raw_driver(tmp_path: Path) -> None:
    if not (ROOT / "cli" / "qimg_cli" / "commands" / "info.py").exists():
        pytest.skip("cli/qimg_cli/commands/info.py is not written yet")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    p, mods = modules_after(tmp_path, "info", str(img))  # probed: every plugin's probe runs
    assert p.returncode == 0, p.stderr
    assert "file format: raw" in p.stdout
    assert heavy(mods) == []
    assert [m for m in drivers(mods) if not m.startswith("qimg_raw.")] == []
    assert "qimg_raw.driver" in mods
