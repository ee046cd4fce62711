"""The blkdebug protocol (plugins/blkdebug) against qemu-img: its names and option forms, its
config file as QEMU reads it (errors included), and the errors its rules inject on the events the
format drivers report (the cases of iotests 074 and 098, without their sources)."""
from __future__ import annotations

import shutil

import pytest
from cli_support import compare, compare_in_copies, run_qemu, run_qemu_io

CONFIGS = {
    "read.conf": '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce ="off"\n',
    "once.conf": '[inject-error]\nevent = "read_aio"\nonce = "on"\n',
    "write.conf": '[inject-error]\nevent = "read_aio"\niotype = "write"\n',
    "state.conf": '[set-state]\nevent = "read_aio"\nstate = "1"\nnew_state = "2"\n\n'
                  '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\n',
    "zero.conf": '[inject-error]\nevent = "read_aio"\nerrno = "0"\n',
    # QEMU's config parser: what its sscanf calls accept and refuse
    "nogroup.conf": "junk\n",
    "blank.conf": "  \n",
    "word.conf": '[inject-error]\njunk\nevent = "read_aio"\n',
    "openquote.conf": '[inject-error]\nevent = "read_aio\n',
    "dupid.conf": '[inject-error "x"]\nevent = "read_aio"\n[inject-error "x"]\nevent = "read_aio"\n',
    "nobracket.conf": '[inject-error\nevent = "read_aio"\n',
    "empty.conf": "[]\n",
    "emptyvalue.conf": '[inject-error]\nevent = ""\n',
    "group.conf": '[foo]\nx = "1"\n',
    "event.conf": '[inject-error]\nevent = "nonesuch"\n',
    "noevent.conf": '[inject-error]\nerrno = "5"\n',
    "param.conf": '[inject-error]\nevent = "read_aio"\nbogus = "1"\n',
    "number.conf": '[inject-error]\nevent = "read_aio"\nerrno = "x"\n',
    "iotype.conf": '[inject-error]\nevent = "read_aio"\niotype = "sideways"\n',
    "crlf.conf": '[inject-error]\r\nevent = "read_aio"\r\n',
}


def _setup(folder) -> None:
    run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "1G", cwd=folder)
    run_qemu_io("-c", "write -P 102 512 512", "t.qcow2", cwd=folder)
    shutil.copy(folder / "t.qcow2", folder / "t2.qcow2")
    run_qemu("create", "-q", "-f", "qcow2", "small.qcow2", "0", cwd=folder)
    for name, text in CONFIGS.items():
        (folder / name).write_text(text)


@pytest.fixture
def imgs(tmp_path):
    _setup(tmp_path)
    return tmp_path


@pytest.mark.parametrize("conf", sorted(CONFIGS))
def test_config_file(imgs, conf):
    """Every config: opened (its errors as QEMU's) and a compare that reads data through it."""
    compare(imgs, "compare", f"blkdebug:{conf}:t.qcow2", "t2.qcow2")


@pytest.mark.parametrize("args", [
    ["info", "blkdebug:read.conf:t.qcow2"], ["info", "blkdebug::t.qcow2"], ["info", "blkdebug:foo"],
    ["info", "blkdebug:missing.conf:t.qcow2"], ["info", "blkdebug::missing.qcow2"],
    # 10.0: blkdebug is a node with a child ('image'), and a dirty flag
    ["info", "--output=json", "blkdebug::t.qcow2"], ["info", "-f", "blkdebug", "blkdebug::t.qcow2"],
    ["info", "--output=json", "-f", "blkdebug", "blkdebug::t.qcow2"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,"
     "file.inject-error.0.event=read_aio"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.x-image=t.qcow2,file.config=read.conf"],
    ["info", "--image-opts", "driver=blkdebug,image.filename=t.qcow2"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,file.align=3"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,file.align=4096,"
     "file.max-transfer=1000"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,"
     "file.inject-error.event=nonesuch"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,"
     "file.inject-error.0.bogus=1"],
    ['json:{"driver": "qcow2", "file": {"driver": "blkdebug", "inject-error": [{"event": "read_aio",'
     ' "iotype": "write"}], "image": {"driver": "file", "filename": "t.qcow2"}}}', "t2.qcow2"],
    ['json:{"driver": "qcow2", "file": {"driver": "blkdebug", "inject-error": [{"event": "read_aio"}],'
     ' "image": {"driver": "file", "filename": "t.qcow2"}}}', "t2.qcow2"],
    ["compare", "blkdebug:read.conf:t.qcow2", "small.qcow2"],
    ["compare", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2,"
     "file.inject-error.0.event=read_aio", "driver=qcow2,file.filename=t2.qcow2"],
    ["convert", "-O", "raw", "blkdebug:once.conf:t.qcow2", "o.raw"],
    ["convert", "-O", "raw", "blkdebug:read.conf:t.qcow2", "o.raw"],
])
def test_forms(imgs, args):
    if args[0].startswith("json:"):
        args = ["compare", *args]
    compare(imgs, *args)


@pytest.mark.parametrize("event", ["l1_update", "empty_image_prepare", "reftable_update", "refblock_alloc"])
def test_commit_fails_where_qemu_fails(tmp_path, event):
    """commit empties the top image as QEMU's make_completely_empty does, each step after its
    event: an error there leaves the same file (iotests 098), and nothing more is written."""
    def setup(folder):
        run_qemu("create", "-q", "-f", "qcow2", "b.qcow2", "64M", cwd=folder)
        run_qemu("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "64M", cwd=folder)
        run_qemu_io("-c", "write 0 64k", "t.qcow2", cwd=folder)
        (folder / "e.conf").write_text(f'[inject-error]\nevent = "{event}"\n')

    compare_in_copies(setup, tmp_path, "commit", "blkdebug:e.conf:t.qcow2")
    for name in ("t.qcow2", "b.qcow2"):
        assert (tmp_path / "qimg" / name).read_bytes() == (tmp_path / "qemu" / name).read_bytes(), name
