"""Packaging and the newcomer's path: the README's two set-up lines are what CI runs, the meta
distribution names every package of the repository, the README explains every dependency, and
scripts/test fails a run that collected no test."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_setup_lines() -> list[str]:
    """The commands of the first ```sh block under the README's "## Set up" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Set up", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "README's Set up section has no ```sh block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def ci_lines() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_readme_has_exactly_two_setup_lines() -> None:
    lines = readme_setup_lines()
    assert len(lines) == 2, lines
    install, test = lines
    assert "pip install ." in install and "qimg --help" in install
    assert test.startswith("scripts/test")


def test_ci_runs_the_readme_lines_literally() -> None:
    ci = ci_lines()
    install, test = readme_setup_lines()
    assert install in ci, f".ci/run does not run README's install line: {install!r}"
    assert test in ci, f".ci/run does not run README's test line: {test!r}"
    # order: strict mode, the oracle, then install, then the tests
    for needed in ("set -euo pipefail", "apt-get update", "apt-get install -y qemu-utils"):
        assert needed in ci, needed
    order = [ci.index(x) for x in ("set -euo pipefail", "apt-get update", "apt-get install -y qemu-utils",
                                   install, test)]
    assert order == sorted(order)
    assert (ROOT / ".ci" / "run").read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(ROOT / ".ci" / "run", os.X_OK) and os.access(ROOT / "scripts" / "test", os.X_OK)
    # the rest of the Debian packages come from the one list scripts/test installs from too
    assert any("scripts/test-packages" in ln for ln in ci)
    text = (ROOT / "scripts" / "test").read_text()
    assert "scripts/test-packages" in text and "scripts/oracle-10" in text


def test_package_list_reads_as_bare_package_names() -> None:
    """The line both scripts read scripts/test-packages with yields names apt accepts
    (a trailing comment once left blanks in them and apt-get refused the whole list)."""
    for script in (ROOT / ".ci" / "run", ROOT / "scripts" / "test"):
        line = next(ln for ln in script.read_text().splitlines()
                    if "mapfile -t PKGS" in ln and "scripts/test-packages" in ln)
        out = subprocess.run(["bash", "-c", line + '; printf "%s\\n" "${PKGS[@]}"'], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert out and "qemu-utils" in out, (script, out)
        for name in out:
            assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name), (script, name)


def test_oracle_10_comes_from_the_machines_own_mirror() -> None:
    """scripts/oracle-10 reads the mirror from debian.sources and names no registry host."""
    text = (ROOT / "scripts" / "oracle-10").read_text()
    assert "/etc/apt/sources.list.d/debian.sources" in text
    assert "bookworm-backports" in text and "dpkg -x" in text and "apt-get download" in text
    assert not re.search(r"https?://", text), "scripts/oracle-10 must not name a mirror"


def test_scripts_test_runs_pytest_on_two_workers_and_refuses_no_tests() -> None:
    text = (ROOT / "scripts" / "test").read_text()
    assert '-m pytest -n 2 "$@"' in text
    assert '"$rc" = 5' in text


def _toml(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_meta_distribution_names_every_package() -> None:
    meta = _toml(ROOT / "pyproject.toml")["project"]
    refs = {}
    for dep in meta["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+) @ \{root:uri\}/(\S+)", dep)
        assert m, f"meta dependency {dep!r} is not a {{root:uri}} direct reference"
        refs[m.group(2)] = m.group(1)
    expected = ["core", "cli"] + sorted(f"plugins/{p.parent.name}" for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    assert sorted(refs) == sorted(expected), "root pyproject.toml must reference core, cli and every plugin"
    for path, name in refs.items():
        assert _toml(ROOT / path / "pyproject.toml")["project"]["name"] == name, path


def test_every_plugin_registers_through_the_qimg_group() -> None:
    for pp in (ROOT / "plugins").glob("*/pyproject.toml"):
        project = _toml(pp)["project"]
        eps = project.get("entry-points", {}).get("qimg", {})
        assert eps, f"{pp} has no [project.entry-points.qimg]"
        assert project["name"] == f"qimg-{pp.parent.name}"


def _names(reqs: list[str]) -> list[str]:
    return [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in reqs]


def test_readme_explains_every_dependency() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Dependencies", 1)[1].split("\n## ", 1)[0]
    runtime = [n for pp in ("core", "cli") for n in _names(_toml(ROOT / pp / "pyproject.toml")["project"]["dependencies"])
               if not n.startswith("qimg")]
    for pp in (ROOT / "plugins").glob("*/pyproject.toml"):
        runtime += [n for n in _names(_toml(pp)["project"].get("dependencies", [])) if not n.startswith("qimg")]
    test = _names(_toml(ROOT / "pyproject.toml")["project"]["optional-dependencies"]["test"])
    for name in {*runtime, *test}:
        assert f"`{name}`" in section, f"README's Dependencies section does not say why {name} is needed"


def test_tox_envs() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tox.ini")
    assert "pytest -n 2" in cfg["testenv:test"]["commands"]
    assert "[test]" in cfg["testenv:test"]["commands_pre"]
    lint = cfg["testenv:lint"]["commands"].split()
    for d in ("core", "cli", "plugins", "tests", "bench"):
        assert d in lint and (ROOT / d).is_dir(), d


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="scripts/test is run against a venv here")
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="would install qemu-utils")
def test_scripts_test_fails_when_no_test_ran(tmp_path: Path) -> None:
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    p = subprocess.run([str(ROOT / "scripts" / "test"), "-p", "no:cacheprovider", "-k", "no_such_test_anywhere",
                        "--basetemp", str(tmp_path / "bt"), "tests/test_packaging.py"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAILED: pytest collected no test" in p.stderr
