"""The profiles (qimg.compat): what qemu-img 10.0 prints and does differently from 7.2.

Each differential test runs twice (tests/conftest.py's ``oracle`` fixture): against qemu-img
7.2 with ``QIMG_COMPAT=7.2`` and against qemu-img 10.0 with ``QIMG_COMPAT=10.0``; images are
made by qemu-img 7.2 and qemu-io, commands that write run on copies. docs/compat.md lists the
differences these cases pin down.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import as_qemu, need_qemu10
from qimg import compat

MiB = 1 << 20
IO = shutil.which("qemu-io") or "qemu-io"
QEMU72 = shutil.which("qemu-img") or "qemu-img"


def make(*args: str, cwd) -> None:
    """A set-up step with qemu-img 7.2 (or qemu-io when the first word is qemu-io)."""
    tool, rest = (IO, args[1:]) if args[0] == "qemu-io" else (QEMU72, args)
    p = subprocess.run([tool, *rest], capture_output=True, cwd=cwd)
    assert p.returncode == 0, p.stderr


def same(qemu_img, qimg, *args: str, cwd=None) -> None:
    """Both tools, the same arguments, the same exit code, stdout and stderr."""
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        q, m = qemu_img(*args), qimg(*args)
    finally:
        os.chdir(here)
    assert (m.returncode, m.stdout, as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr), args


# -- the tables ---------------------------------------------------------------------------------

def test_tables_are_consistent():
    for feature, first in compat.FEATURES.items():
        assert first in compat.PROFILES, feature
    oldest = min(compat.PROFILES, key=compat.PROFILES.get)
    for key, wordings in compat.TEXTS.items():
        assert set(wordings) <= set(compat.PROFILES), key
        assert oldest in wordings, f"{key} has no wording for {oldest}"


def test_profile_is_read_at_each_call(monkeypatch):
    monkeypatch.setenv("QIMG_COMPAT", "7.2")
    assert not compat.has("info-child-nodes") and compat.version() == (7, 2, 0)
    monkeypatch.setenv("QIMG_COMPAT", "10.0")
    assert compat.has("info-child-nodes") and compat.version_string() == "10.0.2"
    monkeypatch.delenv("QIMG_COMPAT")
    assert compat.name() == compat.DEFAULT == "10.0"
    monkeypatch.setenv("QIMG_COMPAT", "9")
    with pytest.raises(compat.UnknownProfile):
        compat.name()


# -- info: child nodes, the snapshot table, LUKS, the file driver ---------------------------------

@pytest.fixture
def graph_images(tmp_path):
    """Images whose block graphs differ: vmdk descriptors with several extents, an odd-sized
    raw file, a qcow2 with an external data file, a backing chain."""
    d = tmp_path
    make("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "split.vmdk", "5G", cwd=d)
    make("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "flat.vmdk", "1M", cwd=d)
    make("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", "stream.vmdk", "1M", cwd=d)
    with open(d / "odd.raw", "wb") as f:
        f.write(b"x" * 1000)
    make("create", "-q", "-f", "qcow2", "-o", "data_file=df.data", "df.qcow2", "1M", cwd=d)
    make("create", "-q", "-f", "qcow2", "base.qcow2", "4M", cwd=d)
    make("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=d)
    return d


@pytest.mark.parametrize("args", [
    ["info", "split.vmdk"], ["info", "--output=json", "split.vmdk"], ["info", "flat.vmdk"],
    ["info", "--output=json", "flat.vmdk"], ["info", "stream.vmdk"], ["info", "odd.raw"],
    ["info", "--output=json", "odd.raw"], ["info", "df.qcow2"], ["info", "--output=json", "df.qcow2"],
    ["info", "--backing-chain", "top.qcow2"], ["info", "--backing-chain", "--output=json", "top.qcow2"],
    ["info", "-f", "file", "odd.raw"], ["info", "-f", "file", "--output=json", "odd.raw"],
    ["info", "--image-opts", "driver=qcow2,file.filename=top.qcow2"],
    ["info", "--output=json", "json:{\"driver\": \"raw\", \"offset\": 512, \"file\": {\"driver\": \"file\", "
     "\"filename\": \"odd.raw\"}}"],
    ["info", "-f", "raw", "/dev/null"], ["info", "-f", "raw", "--output=json", "/dev/null"],
])
def test_info_block_graph(graph_images, qemu_img, qimg, args):
    same(qemu_img, qimg, *args, cwd=graph_images)


def test_info_children_are_listed_newest_first(graph_images, qimg, oracle):
    r = qimg("info", "--output=json", str(graph_images / "split.vmdk"))
    info = json.loads(r.stdout)
    if oracle == "7.2":
        assert "children" not in info
        return
    names = [c["name"] for c in info["children"]]
    assert names == ["extents.2", "extents.1", "extents.0", "file"]
    assert info["children"][0]["info"]["filename"].endswith("split-s003.vmdk")


@pytest.mark.parametrize("name", ["first", "a-much-longer-snapshot-name"])
def test_snapshot_table(tmp_path, qemu_img, qimg, name):
    make("create", "-q", "-f", "qcow2", "s.qcow2", "1M", cwd=tmp_path)
    for _ in range(9):  # ten snapshots: a two-digit ID
        make("snapshot", "-c", name, "s.qcow2", cwd=tmp_path)
    make("snapshot", "-c", "x", "s.qcow2", cwd=tmp_path)
    for args in (["snapshot", "-l", "s.qcow2"], ["info", "s.qcow2"], ["info", "--output=json", "s.qcow2"]):
        same(qemu_img, qimg, *args, cwd=tmp_path)


def test_luks_info(tmp_path, qemu_img, qimg):
    sec = "secret,id=sec0,data=123456"
    opts = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    for _ in range(5):  # LUKS times its iterations: a busy machine fails that now and then
        p = subprocess.run([QEMU72, "create", "-q", "-f", "qcow2", "--object", sec, "-o", opts, "e.qcow2", "1M"],
                           capture_output=True, cwd=tmp_path)
        if p.returncode == 0:
            break
    assert p.returncode == 0, p.stderr
    same(qemu_img, qimg, "info", "e.qcow2", cwd=tmp_path)
    same(qemu_img, qimg, "info", "--output=json", "e.qcow2", cwd=tmp_path)


# -- map: compressed ----------------------------------------------------------------------------

@pytest.fixture
def compressed_images(tmp_path):
    d = tmp_path
    with open(d / "src.raw", "wb") as f:
        f.truncate(4 * MiB)
        for i, off in enumerate((0, MiB, 3 * MiB)):
            f.seek(off)
            f.write(bytes([i + 1]) * (256 << 10))
    make("convert", "-c", "-O", "qcow2", "src.raw", "c.qcow2", cwd=d)
    make("qemu-io", "-f", "qcow2", "-c", "write -P 9 64k 64k", "-c", "write -z 2M 128k", "c.qcow2", cwd=d)
    # (qemu-img 7.2 compresses into qcow one cluster at a time only: convert -c fails here)
    make("create", "-q", "-f", "qcow", "c.qcow", "4M", cwd=d)
    make("qemu-io", "-f", "qcow", *[a for off in (0, 4, 8, 16, 1032) for a in ("-c", f"write -c -P 1 {off}k 4k")],
         "-c", "write -P 3 12k 4k", "-c", "write -P 3 1M 4k", "c.qcow", cwd=d)
    make("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "c.vmdk", cwd=d)
    make("create", "-q", "-f", "qcow2", "-b", "c.qcow2", "-F", "qcow2", "over.qcow2", cwd=d)
    make("qemu-io", "-f", "qcow2", "-c", "write -P 7 1M 64k", "over.qcow2", cwd=d)
    return d


@pytest.mark.parametrize("image", ["c.qcow2", "c.qcow", "c.vmdk", "over.qcow2"])
@pytest.mark.parametrize("output", ["json", "human"])
def test_map_compressed(compressed_images, qemu_img, qimg, image, output):
    same(qemu_img, qimg, "map", f"--output={output}", image, cwd=compressed_images)
    same(qemu_img, qimg, "map", f"--output={output}", "--start-offset=64k", "--max-length=1M", image,
         cwd=compressed_images)


# -- messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "qed", "vmdk", "vpc"])
def test_snapshot_create_unsupported(tmp_path, qemu_img, qimg, fmt):
    make("create", "-q", "-f", fmt, f"a.{fmt}", "1M", cwd=tmp_path)
    for where in ("q", "m"):
        shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-{where}")
    q = qemu_img("snapshot", "-c", "s", str(tmp_path.parent / f"{tmp_path.name}-q" / f"a.{fmt}"))
    m = qimg("snapshot", "-c", "s", str(tmp_path.parent / f"{tmp_path.name}-m" / f"a.{fmt}"))
    assert (m.returncode, m.stdout, as_qemu(m.stderr).replace("-m/", "-q/")) == (q.returncode, q.stdout, q.stderr)


@pytest.mark.parametrize("args", [
    ["create", "-f", "qcow2", "-o", "size=-1", "x.qcow2"],
    ["create", "-f", "qcow2", "-o", "cluster_size=-0", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "cluster_size=-x", "x.qcow2", "1M"],
    ["create", "-f", "raw", "-o", "size= -5", "x.raw"],
    ["info", "--image-opts", "driver=raw,file.filename=a.raw,offset=-1"],
    ["info", "--image-opts", "driver=raw,file.filename=a.raw,size=-512"],
])
def test_negative_option_sizes(tmp_path, qemu_img, qimg, args):
    make("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    same(qemu_img, qimg, *args, cwd=tmp_path)


# -- rebase: how the differences are copied -----------------------------------------------------

REBASE_CASES = {
    # the old backing ends inside the image: 10.0 writes data up to the end of that chunk
    "old-shorter": (["create -f qcow2 old.qcow2 1M", "io old.qcow2 write -P 1 0 1M",
                     "create -f qcow2 new.qcow2 4M", "io new.qcow2 write -P 2 0 4M",
                     "create -f qcow2 -b old.qcow2 -F qcow2 top.qcow2 4M"], "new.qcow2"),
    "old-ends-mid-chunk": (["create -f qcow2 old.qcow2 1100k", "io old.qcow2 write -P 1 0 1100k",
                            "create -f qcow2 new.qcow2 4M", "io new.qcow2 write -P 2 1M 3M",
                            "create -f qcow2 -b old.qcow2 -F qcow2 top.qcow2 4M"], "new.qcow2"),
    "partial-clusters": (["create -f qcow2 -o cluster_size=4k old.qcow2 4M", "io old.qcow2 write -P 1 0 4M",
                          "create -f qcow2 -o cluster_size=4k new.qcow2 4M", "io new.qcow2 write -P 1 0 4M",
                          "io new.qcow2 write -P 2 8k 4k", "io new.qcow2 write -P 3 200k 512",
                          "create -f qcow2 -b old.qcow2 -F qcow2 top.qcow2", "io top.qcow2 write -P 9 64k 64k"],
                         "new.qcow2"),
    "subclusters": (["create -f qcow2 -o cluster_size=4k old.qcow2 4M", "io old.qcow2 write -P 1 0 4M",
                     "create -f raw new.raw 4M",
                     "create -f qcow2 -o extended_l2=on -b old.qcow2 -F qcow2 top.qcow2",
                     "io top.qcow2 write -P 9 0 2k"], "new.raw"),
    "in-chain": (["create -f qcow2 base.qcow2 4M", "io base.qcow2 write -P 1 0 4M",
                  "create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2", "io mid.qcow2 write -P 2 100k 3000",
                  "create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2", "io top.qcow2 write -P 3 0 64k"],
                 "base.qcow2"),
    "in-chain-short": (["create -f qcow2 base.qcow2 1M", "io base.qcow2 write -P 1 0 1M",
                        "create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 2M", "io mid.qcow2 write -P 2 1500k 3000",
                        "create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 4M"], "base.qcow2"),
    "qed": (["create -f qcow2 -o cluster_size=4k old.qcow2 3M", "io old.qcow2 write -P 1 0 3M",
             "create -f raw new.raw 4M", "create -f qed -b old.qcow2 -F qcow2 top.qed 4M",
             "io -f qed top.qed write -P 5 1M 4k"], "new.raw"),
    "qcow": (["create -f raw old.raw 3M", "io -f raw old.raw write -P 1 1000 5000",
              "create -f qcow2 new.qcow2 4M", "create -f qcow -b old.raw -F raw top.qcow 4M"], "new.qcow2"),
}


def _setup(steps: list[str], cwd) -> None:
    for step in steps:
        words = step.split()
        if words[0] == "io":
            fmt = ["-f", "qcow2"] if words[1] != "-f" else words[1:3]
            rest = words[1:] if words[1] != "-f" else words[3:]
            make("qemu-io", *fmt, "-c", " ".join(rest[1:]), rest[0], cwd=cwd)
        else:
            make(*words[:1], "-q", *words[1:], cwd=cwd)


@pytest.mark.parametrize("case", sorted(REBASE_CASES))
def test_rebase_copies_as_qemu(tmp_path, qemu_img, qimg, case):
    steps, new = REBASE_CASES[case]
    top = next(w for w in steps[-1].split() if w.startswith("top."))
    fmt = new.rsplit(".", 1)[1]
    setup = tmp_path / "setup"
    setup.mkdir()
    _setup(steps, setup)
    out = {}
    for tool, name in ((qemu_img, "q"), (qimg, "m")):
        d = tmp_path / name
        subprocess.run(["cp", "-a", str(setup), str(d)], check=True)
        here = os.getcwd()
        os.chdir(d)
        try:
            r = tool("rebase", "-b", new, "-F", fmt, top)
        finally:
            os.chdir(here)
        out[name] = (r.returncode, r.stdout, as_qemu(r.stderr), (d / top).read_bytes())
    assert out["m"][:3] == out["q"][:3]
    assert out["m"][3] == out["q"][3], "the rebased image differs from qemu-img's"


def test_rebase_compress(tmp_path):
    """``rebase -c`` (qemu-img 10.0): the same guest view and allocation as qemu-img 10.0's; it
    compresses a request's clusters in parallel, so their order varies."""
    from cli_support import run_qimg

    exe, env = need_qemu10("qemu-img")
    steps = ["create -f qcow2 -o cluster_size=4k old.qcow2 4M", "io old.qcow2 write -P 1 0 3M",
             "create -f qcow2 new.qcow2 4M", "io new.qcow2 write -P 1 0 1M", "io new.qcow2 write -P 7 5000 3000",
             "create -f qcow2 -b old.qcow2 -F qcow2 top.qcow2", "io top.qcow2 write -P 3 64k 64k"]
    setup = tmp_path / "setup"
    setup.mkdir()
    _setup(steps, setup)
    q, m = tmp_path / "q", tmp_path / "m"
    shutil.copytree(setup, q)
    shutil.copytree(setup, m)
    p = subprocess.run(["qemu-img", "rebase", "-c", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
                       executable=exe, env=env, cwd=q, capture_output=True)
    assert p.returncode == 0, p.stderr
    r = run_qimg("rebase", "-c", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2", cwd=m, profile="10.0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")

    def view(d):
        r = subprocess.run([QEMU72, "map", "--output=json", "top.qcow2"], capture_output=True, cwd=d, text=True)
        return [{k: v for k, v in e.items() if k != "offset" or not e["data"]} for e in json.loads(r.stdout)]

    assert view(m) == view(q)
    for d in (m, q):
        r = subprocess.run([QEMU72, "check", "top.qcow2"], capture_output=True, cwd=d, text=True)
        assert r.returncode == 0 and "compressed clusters" in r.stdout, r.stdout
    r = subprocess.run([QEMU72, "compare", str(q / "top.qcow2"), str(m / "top.qcow2")], capture_output=True)
    assert r.returncode == 0, r.stdout


def test_rebase_compress_needs_a_compressing_format(tmp_path):
    import qimg
    from qimg.errors import QimgError
    from qimg.ops.rebase import rebase

    make("create", "-q", "-f", "qed", "top.qed", "1M", cwd=tmp_path)
    with qimg.open(str(tmp_path / "top.qed"), "qed", writable=True) as img:
        with pytest.raises(QimgError, match="^Compression not supported for this file format$"):
            rebase(img, "", None, compress=True)


def test_rebase_compress_cli_refused(tmp_path):
    """``rebase -c`` on a format without compression: qemu-img 10.0's message and exit code;
    ``-c`` is no option of 7.2's rebase."""
    from cli_support import run_qimg

    exe, env = need_qemu10("qemu-img")
    make("create", "-q", "-f", "qed", "top.qed", "1M", cwd=tmp_path)
    p = subprocess.run(["qemu-img", "rebase", "-c", "-b", "", "top.qed"], executable=exe, env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    r = run_qimg("rebase", "-c", "-b", "", "top.qed", cwd=tmp_path, profile="10.0")
    assert p.returncode == 1 and (r.returncode, r.stdout, as_qemu(r.stderr)) == (p.returncode, p.stdout, p.stderr)
    r = run_qimg("rebase", "-c", "-b", "", "top.qed", cwd=tmp_path, profile="7.2")
    assert r.returncode == 1 and ("invalid option" in r.stderr or "unrecognized option" in r.stderr), r.stderr


# -- sizes: qemu_strtosz per profile -------------------------------------------------------------

SIZE_CASES = [".5M", "+.5k", " .5k", "\t.1K", "1.00", "1.0", ".0", "1.", "1.k", ".", ".k", "0.5", "1.5b",
              "1.0b", "-1", "-0", "-1k", "-.5", "-.5k", " -0.25", "1.00048828125k", "0.00048828125k",
              "12.1T", "0.999999999999999999999E", "1.999999999999999999999k", ".25E", "7.99999999E", "8E",
              "18446744073709551615", "99999999999999999999", "99999999999999999999.5k", "0x10", "0x10k",
              "0x", "0x.8k", "+0x10", "-0x10", "1e3", ".5e1k", "1.5e", "1 ", " 1k", "1kB", "", "x.5k",
              "0x1.5k", "1.5kb", "1k5", "+ 1k", "1.0000000001k", "0X1F", "00012", "0.0005k", "1e", "1E",
              "-", "+", " ", "0x0", "0xg", "1.5.5k", "1..5k", "-1.5k", "1-", "1.-5k", "1.+5k", "1. 5k"]


@pytest.mark.parametrize("text", SIZE_CASES)
def test_size_syntax(tmp_path, qemu_img, qimg, text):
    """qemu_strtosz as each version reads it (bench prints the offset it read): 10.0 accepts a
    fraction without integral digits and calls a negative number out of range, 7.2 warns about
    a suffix on a hex number; both round a fraction's last half byte up."""
    make("create", "-q", "-f", "raw", "img.raw", "64M", cwd=tmp_path)
    args = ("bench", "-c", "1", "-d", "1", "-o", text, "-f", "raw", "img.raw")
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        q, m = qemu_img(*args), qimg(*args)
    finally:
        os.chdir(here)
    first = lambda r: r.stdout.splitlines()[:1]  # noqa: E731 (the run's timing follows)
    assert (m.returncode, first(m), as_qemu(m.stderr)) == (q.returncode, first(q), q.stderr)


@pytest.mark.parametrize("text", ["16E", "18446744073709551616", "99999999999999999999", "7E", "-1", "-1k", ".5k",
                                  "1.5", "0x1000", "-0"])
def test_size_option_syntax(tmp_path, qemu_img, qimg, text):
    """QemuOpts size options (-o size=) read a uint64 with each version's qemu_strtosz: 2^64
    and more out of range in both, a negative number out of range in 10.0."""
    same(qemu_img, qimg, "create", "-f", "raw", "-o", f"size={text}", "sz.raw", cwd=tmp_path)


def test_resize_encrypted_qcow(tmp_path, qemu_img, qimg):
    """qemu-img opens the image for I/O before it finds the format cannot resize: without its key
    an AES qcow image says so first."""
    make("create", "-q", "--object", "secret,id=s0,data=abc", "-f", "qcow", "-o",
         "encrypt.format=aes,encrypt.key-secret=s0", "e.qcow", "1M", cwd=tmp_path)
    same(qemu_img, qimg, "resize", "--object", "secret,id=s0,data=abc", "e.qcow", "2M", cwd=tmp_path)
    same(qemu_img, qimg, "resize", "--object", "secret,id=s0,data=abc", "--image-opts",
         "driver=qcow,file.filename=e.qcow,encrypt.key-secret=s0", "2M", cwd=tmp_path)


@pytest.mark.parametrize("command", [
    ["map"], ["map", "--output=json"], ["check"], ["check", "--output=json"], ["snapshot", "-l"],
    ["compare", "e.qcow"], ["convert", "-O", "raw"], ["measure", "-O", "qcow2"], ["amend", "-o", "size=2M"],
    ["rebase", "-u", "-b", ""], ["commit"], ["info"], ["info", "--backing-chain"], ["map", "top.qcow2"],
], ids=lambda c: "-".join(w.strip("-") or "empty" for w in c))
def test_encrypted_qcow_needs_key(tmp_path, qemu_img, qimg, command):
    """An AES qcow image without its key opens for info (metadata only) and for nothing else:
    every other command fails at the open, as qemu-img does, before it prints or checks."""
    make("create", "-q", "--object", "secret,id=s0,data=abc", "-f", "qcow", "-o",
         "encrypt.format=aes,encrypt.key-secret=s0", "e.qcow", "1M", cwd=tmp_path)
    make("create", "-q", "-f", "qcow2", "-b", "e.qcow", "-F", "qcow", "top.qcow2", cwd=tmp_path)
    args = [*command[:1], "--object", "secret,id=s0,data=abc", *command[1:]]
    if args[-1] != "top.qcow2":
        args.insert(len(args) - (args[0] == "compare"), "e.qcow")
    if args[0] == "convert":
        args.append("out.raw")
    same(qemu_img, qimg, *args, cwd=tmp_path)
