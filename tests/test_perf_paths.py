"""The fast paths added for start-up and qcow2 check speed behave exactly as the general ones:

- no built-in command imports click, standard options or not (click serves plugins' commands);
- the entry-point scan of qimg.entrypoints finds what importlib.metadata finds;
- qcow2 check's whole-table walk gives qemu-img's report for images with fragmented, zero,
  compressed and unallocated clusters over several L2 tables.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import as_qemu

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


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fast")
    raw = d / "disk.raw"
    raw.write_bytes(b"\1" * 65536 + bytes(65536))
    q = d / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "8M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 64k 192k", str(q)], check=True, capture_output=True)
    return {"raw": str(raw), "qcow2": str(q), "missing": str(d / "nope.qcow2")}


def test_builtin_commands_do_not_import_click(tmp_path: Path, images: dict[str, str]) -> None:
    out = tmp_path / "mods.json"
    for cmd in (["info", images["raw"]], ["map", images["qcow2"]], ["check", images["qcow2"]],
                ["-T", "nothing", "info", images["raw"]], ["--untrusted", "map", images["raw"]], ["info", "-h"],
                ["--help"], ["compare", images["raw"], images["raw"]], ["measure", "--size", "1M"]):
        p = subprocess.run([sys.executable, "-c", CODE, *cmd], capture_output=True, text=True,
                           env={**os.environ, "QIMG_MODULES_OUT": str(out)})
        assert p.returncode == 0, p.stderr
        mods = json.loads(out.read_text())
        assert "click" not in mods, cmd
        assert "importlib.metadata" not in mods, cmd


def test_entry_point_scan_matches_importlib_metadata() -> None:
    import importlib.metadata as md

    from qimg.entrypoints import _scan, entry_points

    want = [(ep.name, ep.value) for dist in md.distributions() for ep in dist.entry_points if ep.group == "qimg"]
    assert _scan("qimg") == want
    assert entry_points("qimg") == want
    assert ("qcow2", "qimg_qcow2") in want


_ZIP_AND_FINDER = r"""
import importlib.metadata as md, pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(tmp / "plugins.zip", "w") as z:
    z.writestr("qimg_zipped-1.0.dist-info/METADATA", "Name: qimg-zipped\nVersion: 1.0\n")
    z.writestr("qimg_zipped-1.0.dist-info/entry_points.txt", "[qimg]\nzipped = qimg_zipped\n")
    z.writestr("qimg_zipped/__init__.py", "")
meta = tmp / "found" / "qimg_found-1.0.dist-info"
meta.mkdir(parents=True)
(meta / "METADATA").write_text("Name: qimg-found\nVersion: 1.0\n")
(meta / "entry_points.txt").write_text("[qimg]\nfound = qimg_found:mod\n")

class Finder:  # a finder that supplies a distribution the path does not hold
    @classmethod
    def find_spec(cls, *a, **k):
        return None

    @classmethod
    def find_distributions(cls, context=md.DistributionFinder.Context()):
        return [md.PathDistribution(meta)]

sys.path.insert(0, str(tmp / "plugins.zip"))
sys.meta_path.insert(0, Finder)
from qimg.entrypoints import entry_points
want = [(ep.name, ep.value) for d in md.distributions() for ep in d.entry_points if ep.group == "qimg"]
got = entry_points("qimg")
assert got == want, (got, want)
assert got[0] == ("found", "qimg_found:mod") and ("zipped", "qimg_zipped") in got, got
"""


def test_entry_point_scan_zip_archives_and_other_finders(tmp_path: Path) -> None:
    """A zip archive on sys.path and a meta path finder supplying distributions: read as
    importlib.metadata reads them, in its order, by the one reader (no fallback to it)."""
    p = subprocess.run([sys.executable, "-c", _ZIP_AND_FINDER, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_entry_point_parsing() -> None:
    from qimg.entrypoints import _parse_group

    text = "[console_scripts]\nqimg = x:y\n\n[qimg]\n# comment\nfoo = pkg.mod:attr [extra]\n ; other\nbar=pkg\n[other]\nbaz = z\n"
    assert list(_parse_group(text, "qimg")) == [("foo", "pkg.mod:attr [extra]"), ("bar", "pkg")]


def _check_both(qemu_img, qimg, path: str) -> None:
    for extra in ([], ["--output=json"]):
        want = qemu_img("check", *extra, path)
        got = qimg("check", *extra, path)
        assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == (want.returncode, want.stdout, want.stderr)


def test_check_fragmented_multi_table(tmp_path: Path, qemu_img, qemu_io, qimg) -> None:
    """Clusters written backwards (every one a fragment), across three L2 tables (4k clusters:
    one table maps 2 MiB), with zero, compressed and discarded clusters among them."""
    img = str(tmp_path / "frag.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "7M").returncode == 0
    cmds = [f"write -P {i % 250 + 1} {off} 4k" for i, off in enumerate(range(6 << 20, 0, -(20 << 10)))]
    cmds += ["write -z 8k 8k", "write -c -P 3 4M 8k", "discard 5M 40k", "write -z -u 3M 4k"]
    args = [a for c in cmds for a in ("-c", c)]
    r = qemu_io("-f", "qcow2", *args, img)
    assert r.returncode == 0, r.stderr
    _check_both(qemu_img, qimg, img)


def test_check_contiguous_and_leaky(tmp_path: Path, qemu_img, qemu_io, qimg) -> None:
    """A plain contiguous image (the whole-table walk only), then the same with a leaked cluster
    (refcount block entry raised): the counts and the leak report agree with qemu-img."""
    img = tmp_path / "plain.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "16M").returncode == 0
    assert qemu_io("-f", "qcow2", "-c", "write -P 9 0 3M", "-c", "write -P 8 9M 1M", str(img)).returncode == 0
    _check_both(qemu_img, qimg, str(img))
    # bump the refcount of the last data cluster (16-bit refcounts, first refcount block)
    data = img.read_bytes()
    rt_off = int.from_bytes(data[48:56], "big")
    rb_off = int.from_bytes(data[rt_off:rt_off + 8], "big")
    nclusters = len(data) // 65536
    k = nclusters - 1
    pos = rb_off + 2 * k
    with open(img, "r+b") as f:
        f.seek(pos)
        f.write((int.from_bytes(data[pos:pos + 2], "big") + 1).to_bytes(2, "big"))
    _check_both(qemu_img, qimg, str(img))
