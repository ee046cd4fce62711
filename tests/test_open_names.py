"""Opening belongs to the core: names with a protocol prefix (``foo:bar``: ``Unknown protocol``,
``./image:top.qcow2``: a file, ``file:image:top.qcow2``: QEMU's ``./`` spelling, qemu-iotests
126), ``json:`` names and option mappings through the library, exceptions that are also the
matching ``OSError``, and one create path for ``create``, ``convert`` and ``dd`` - all against
qemu-img 7.2, and 10.0 where the wording is the same."""
from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest
import qimg
from cli_support import assert_same, compare, formats_available, run_qemu, run_qimg
from conftest import as_qemu, need_qemu10
from qimg.errors import QimgError, QimgFileNotFoundError, QimgOSError


@pytest.fixture
def chain(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "r.raw", "1M", cwd=tmp_path)
    if "qcow2" in formats_available():
        run_qemu("create", "-q", "-f", "qcow2", "base.qcow2", "1M", cwd=tmp_path)
        run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=tmp_path)
    return tmp_path


UNKNOWN = ["foo:bar", "image:top.qcow2", ":x", "FOO:bar", "a+b:c", "nbd+foo://x", "vvfat:x",
           "x" * 200 + ":y"]


@pytest.mark.parametrize("name", UNKNOWN)
@pytest.mark.parametrize("cmd", [["info"], ["info", "--output=json"], ["map"], ["check"], ["measure", "-O", "raw"],
                                 ["snapshot", "-l"], ["amend", "-o", "size=1M"], ["resize"], ["bench", "-c", "1"],
                                 ["commit"], ["rebase", "-u", "-b", "", "-F", "raw"]])
def test_unknown_protocol(chain, cmd, name):
    args = [*cmd, name] if cmd != ["resize"] else ["resize", name, "2M"]
    compare(chain, *args)


@pytest.mark.parametrize("name", UNKNOWN[:3])
def test_unknown_protocol_two_images(chain, name):
    compare(chain, "compare", "r.raw", name)
    compare(chain, "compare", name, "r.raw")
    compare(chain, "convert", "-O", "raw", name, "out.raw")
    compare(chain, "convert", "-O", "raw", "r.raw", name)
    compare(chain, "convert", "-n", "-O", "raw", "r.raw", name)
    compare(chain, "convert", "-O", "raw", "-o", "help", "r.raw", name)
    compare(chain, "convert", "-O", "raw", "nonexistent.raw", name)  # the sources open first
    compare(chain, "dd", "if=r.raw", f"of={name}", "-O", "raw")
    compare(chain, "dd", f"if={name}", "of=out.raw", "-O", "raw")
    compare(chain, "create", "-f", "raw", name, "1M")
    compare(chain, "create", "-f", "raw", "-o", "help", name)
    assert not [p for p in os.listdir(chain) if p.startswith(("image", "foo", "out"))]


@pytest.mark.parametrize("name", ["./image:foo.raw", "file:image:foo.raw", "file:foo.raw", "file:", "",
                                  "file:nonexistent/x", "file:/", "file:."])
def test_colon_file_names(tmp_path, name):
    """qemu-iotests 126: a colon after a slash is no protocol; ``file:`` forces the file
    protocol, whose path QEMU spells ``./image:x`` when it would read as a protocol."""
    mine, theirs = tmp_path / "qimg", tmp_path / "qemu"
    mine.mkdir()
    theirs.mkdir()
    for cmd in (["create", "-f", "raw", name, "1M"], ["info", name], ["info", "--output=json", name],
                ["map", "--output=json", name], ["info", "file:image:nonexistent"], ["info", "./image:nonexistent"]):
        assert_same(run_qimg(*cmd, cwd=mine), run_qemu(*cmd, cwd=theirs))
    assert sorted(os.listdir(mine)) == sorted(os.listdir(theirs))


def test_colon_backing_names(tmp_path):
    """Relative backing names resolve against ``./image:top`` as QEMU's path_combine does;
    a backing name with a colon and no slash is a protocol name (``Unknown protocol``)."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "base.qcow2", "1M", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "./image:base.qcow2", "1M", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "file:image:top.qcow2", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-b", "./image:base.qcow2", "-F", "qcow2", f"{tmp_path}/image:t2.qcow2",
             cwd=tmp_path)
    run_qemu("create", "-q", "-u", "-f", "qcow2", "-b", "image:base.qcow2", "-F", "qcow2", "t3.qcow2", "1M",
             cwd=tmp_path)
    for name in ("file:image:top.qcow2", f"{tmp_path}/image:t2.qcow2", "./image:t2.qcow2", "t3.qcow2"):
        for cmd in (["info"], ["info", "--output=json"], ["info", "--backing-chain"], ["map", "--output=json"],
                    ["check"]):
            compare(tmp_path, *cmd, name)
    compare(tmp_path, "create", "-f", "qcow2", "-b", "image:base.qcow2", "-F", "qcow2", "t4.qcow2")
    compare(tmp_path, "create", "-f", "qcow2", "-b", "./image:base.qcow2", "-F", "qcow2", "t5.qcow2")


@pytest.mark.parametrize("args", [
    ["info", "foo:bar"], ["info", "image:x.qcow2"], ["info", "file:"], ["create", "-f", "raw", "foo:bar", "1M"],
    ["convert", "-O", "raw", "r.raw", "foo:bar"], ["info", 'json:{"driver":"foo","file":"x"}'],
    ["info", "--image-opts", "driver=foo,file=x"], ["info", "--image-opts", "x"],
])
def test_qemu10_same_words(chain, args):
    """qemu-img 10.0 words these as 7.2 does."""
    exe, env = need_qemu10("qemu-img")
    theirs = subprocess.run([exe, *args], capture_output=True, text=True, cwd=chain, env=env)
    mine = subprocess.run([sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()",
                           *args], capture_output=True, text=True, cwd=chain,
                          env=dict(os.environ, QIMG_COMPAT="10.0"))
    assert (mine.returncode, mine.stdout, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stdout, theirs.stderr)


@pytest.mark.parametrize("target", ["/nonexistent-dir/x.img", "{tmp}/r.raw/x"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_one_create_path(chain, target, fmt):
    """create, convert and dd create through one path: the same failure, each command's frame."""
    if fmt not in formats_available():
        pytest.skip(f"{fmt} plugin not installed")
    target = target.format(tmp=chain)
    compare(chain, "create", "-f", fmt, target, "1M")
    compare(chain, "convert", "-O", fmt, "r.raw", target)
    compare(chain, "dd", "if=r.raw", f"of={target}", "-O", fmt)


# -- the library ------------------------------------------------------------------------------

def test_library_pathlike_and_errors(chain):
    path = pathlib.Path(chain) / "r.raw"
    with qimg.open(path) as img:
        assert img.format == "raw" and img.size == 1 << 20
    missing = pathlib.Path(chain) / "missing.qcow2"
    with pytest.raises(FileNotFoundError) as info:
        qimg.open(missing)
    e = info.value
    assert isinstance(e, QimgError) and isinstance(e, QimgFileNotFoundError) and isinstance(e, OSError)
    assert e.errno == errno.ENOENT and e.exit_code == 1
    assert str(e) == f"Could not open '{missing}': Could not open '{missing}': No such file or directory"
    with pytest.raises(FileNotFoundError):
        qimg.create(pathlib.Path(chain) / "nonexistent-dir" / "x.raw", "raw", 1 << 20)
    with pytest.raises(QimgError, match="to be a regular file"):
        qimg.open(chain)
    with pytest.raises(QimgError, match=r"^Could not open 'foo:bar': Unknown protocol 'foo'$") as info:
        qimg.open("foo:bar")
    assert not isinstance(info.value, OSError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_library_permission_error(chain):
    path = chain / "r.raw"
    path.chmod(0)
    with pytest.raises(PermissionError):
        qimg.open(path)


def test_library_permission_error_as_root(chain, monkeypatch):
    """EACCES from the system call (faked here: root may read anything) is a PermissionError."""
    real = os.open

    def deny(p, *a, **k):
        if str(p).endswith("r.raw"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real(p, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PermissionError) as info:
        qimg.open(chain / "r.raw", "raw")
    assert isinstance(info.value, QimgOSError)
    assert str(info.value).endswith("r.raw': Permission denied")


def test_library_json_and_option_names(chain):
    """``json:`` names and ``--image-opts`` mappings (nested or dotted) open the same image."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    top = str(chain / "top.qcow2")
    names = [
        f'json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{top}"}}}}',
        {"driver": "qcow2", "file": {"driver": "file", "filename": top}},
        {"driver": "qcow2", "file.filename": top},
    ]
    for name in names:
        with qimg.open(name) as img:
            assert img.format == "qcow2" and img.backing is not None and img.backing.format == "qcow2"
    with qimg.open(f"driver=qcow2,file.filename={top}", image_opts=True, options={"backing": None}) as img:
        assert img.backing is None
    with pytest.raises(QimgError, match="Unknown driver 'nope'"):
        qimg.open({"driver": "nope", "file": {"filename": top}})
    with pytest.raises(QimgError, match="--image-opts and --format are mutually exclusive"):
        qimg.open({"driver": "qcow2"}, "qcow2")


def test_json_backing_names_followed(chain):
    """A backing file named ``json:{...}`` opens as QEMU opens it (not in untrusted mode)."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    base = chain / "base.qcow2"
    name = f'json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{base}"}}}}'
    run_qemu("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "qcow2", "j.qcow2", "1M", cwd=chain)
    subprocess.run(["qemu-io", "-c", "write -P 7 0 64k", str(base)], check=True, capture_output=True)
    for cmd in (["info", "--backing-chain"], ["map", "--output=json"], ["compare", "j.qcow2", "base.qcow2"]):
        compare(chain, *(cmd if cmd[0] == "compare" else [*cmd, "j.qcow2"]))
    with qimg.open(chain / "j.qcow2") as img:
        assert img.pread(0, 4) == b"\7" * 4
    r = subprocess.run([sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()",
                        "--untrusted", "map", "j.qcow2"], capture_output=True, text=True, cwd=chain)
    assert r.returncode == 1 and "not opened in untrusted mode" in r.stderr
