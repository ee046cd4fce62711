"""``-f file`` / ``driver=file``: QEMU's file protocol named as the image's driver (libvirt
and scripts use it for raw files). Against qemu-img: info/map/check/compare/measure/amend,
create and its option help, convert and dd to it, resize, and its open options."""
from __future__ import annotations

import pytest
from cli_support import compare, compare_in_copies, run_qemu, run_qemu_io


def _setup(folder):
    run_qemu("create", "-q", "-f", "raw", "r.raw", "1M", cwd=folder)
    run_qemu_io("-f", "raw", "-c", "write -P 3 0 64k", "r.raw", cwd=folder)


@pytest.fixture
def imgs(tmp_path):
    _setup(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["info", "-f", "file", "r.raw"], ["info", "--output=json", "-f", "file", "r.raw"],
    ["info", "--backing-chain", "-f", "file", "r.raw"], ["map", "-f", "file", "r.raw"],
    ["map", "--output=json", "-f", "file", "r.raw"], ["check", "-f", "file", "r.raw"],
    ["measure", "-f", "file", "-O", "raw", "r.raw"], ["measure", "-O", "file", "--size", "1M"],
    ["compare", "-f", "file", "-F", "raw", "r.raw", "r.raw"], ["snapshot", "-l", "-f", "file", "r.raw"],
    ["create", "-f", "file", "-o", "help"], ["create", "-f", "file", "-o", "help", "x.img"],
    ["info", "--image-opts", "driver=file,filename=r.raw"],
    ["info", "--image-opts", "driver=file,filename=r.raw,locking=off"],
    ["info", "--image-opts", "driver=file,filename=r.raw,locking=x"],
    ["info", "--image-opts", "driver=file,filename=r.raw,foo=1"],
    ["info", "--image-opts", "driver=file,filename=r.raw,offset=5"],
    ["info", 'json:{"driver":"file","filename":"r.raw"}'],
    ["info", "--image-opts", "driver=raw,file.filename=r.raw,file.locking=yes"],
])
def test_inspect(imgs, args):
    compare(imgs, *args)


@pytest.mark.parametrize("args", [
    ["create", "-f", "file", "n.raw", "1M"], ["create", "-f", "file", "-o", "preallocation=full", "n.raw", "100k"],
    ["create", "-f", "file", "-o", "preallocation=metadata", "n.raw", "1M"],
    ["create", "-f", "file", "-o", "preallocation=foo", "n.raw", "1M"],
    ["create", "-f", "file", "-b", "r.raw", "n.raw", "1M"], ["create", "-f", "file", "n.raw", "1M", "-o", "size=2M"],
    ["convert", "-O", "file", "r.raw", "n.raw"], ["convert", "-f", "file", "-O", "qcow2", "r.raw", "n.qcow2"],
    ["dd", "-O", "file", "if=r.raw", "of=n.raw", "bs=64k"], ["resize", "-f", "file", "r.raw", "2M"],
    ["amend", "-f", "file", "-o", "size=1M", "r.raw"],
])
def test_write(tmp_path, args):
    mine, _ = compare_in_copies(_setup, tmp_path, *args)
    for name in ("n.raw", "r.raw"):
        a, b = tmp_path / "qimg" / name, tmp_path / "qemu" / name
        assert a.exists() == b.exists(), name
        if a.exists():
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize("args", [
    ["convert", "-O", "raw", "r.raw", "/dev/null"], ["convert", "-n", "-O", "raw", "r.raw", "/dev/null"],
    ["convert", "-O", "qcow2", "r.raw", "/dev/null"], ["dd", "if=r.raw", "of=/dev/null"],
    ["dd", "if=r.raw", "of=/dev/full", "bs=64k"], ["convert", "-n", "-O", "raw", "r.raw", "/dev/full"],
    ["create", "-f", "raw", "/dev/null", "1M"], ["create", "-f", "raw", "/dev/null", "0"],
    ["info", "/dev/null"], ["info", "-f", "raw", "/dev/zero"], ["map", "/dev/null"],
    ["compare", "r.raw", "/dev/null"], ["resize", "-f", "raw", "/dev/null", "1M"],
    ["resize", "-f", "raw", "/dev/null", "0"], ["check", "/dev/null"],
])
def test_character_devices(imgs, args):
    """Device files keep their size: QEMU's "Cannot grow device files" (and for resize
    "Cannot resize device files"); /dev/null as a convert target is refused the same way."""
    compare(imgs, *args)


@pytest.mark.parametrize("args", [
    ["info", "-f", "host_device", "/dev/null"], ["info", "-f", "host_device", "r.raw"],
    ["info", "--image-opts", "driver=host_device,filename=/dev/null,locking=off"],
    ["info", "--image-opts", "driver=host_device,filename=/dev/null,foo=off"],
    ["map", "-f", "host_device", "/dev/null"], ["check", "-f", "host_device", "/dev/null"],
    ["measure", "-O", "host_device", "--size", "1M"], ["create", "-f", "host_device", "-o", "help"],
    ["create", "-f", "host_device", "/dev/null", "0"], ["create", "-f", "host_device", "/dev/null", "1M"],
    ["create", "-f", "host_device", "r.raw", "0"], ["create", "-f", "host_device", "missing", "0"],
    ["create", "-f", "host_device", "-o", "preallocation=full", "/dev/null", "0"],
    ["create", "-f", "host_device", "-o", "preallocation=xyz", "/dev/null", "0"],
])
def test_host_device(imgs, args):
    """``host_device``: the file protocol for devices, named as a format (iotests 031 records it
    as a backing format); regular files are refused, creating only opens the device."""
    compare(imgs, *args)


def test_host_device_as_backing_format(tmp_path):
    """``rebase -u -F host_device`` and ``create -F host_device`` record the name (iotests 031)."""
    def setup(folder):
        run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "1M", cwd=folder)

    compare_in_copies(setup, tmp_path, "rebase", "-u", "-b", "/some/backing/file/path", "-F", "host_device", "t.qcow2")
    assert (tmp_path / "qimg" / "t.qcow2").read_bytes() == (tmp_path / "qemu" / "t.qcow2").read_bytes()
    compare(tmp_path / "qimg", "create", "-f", "qcow2", "-b", "/dev/null", "-F", "host_device", "n.qcow2")
    compare(tmp_path / "qimg", "info", "n.qcow2")
