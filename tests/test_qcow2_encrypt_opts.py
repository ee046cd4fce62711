"""qcow2's encrypt.* options: listed as qemu-img lists them and checked as qemu-img checks them
(creating and using encrypted images: test_qcow2_luks.py)."""
from __future__ import annotations

import pytest
from conftest import as_qemu


@pytest.mark.parametrize("args", [
    ["create", "-f", "qcow2", "-o", "help"],
    ["create", "-f", "qcow2", "-o", "help", "x.qcow2", "1M"],
    ["amend", "-f", "qcow2", "-o", "help", "x.qcow2"],
    ["create", "-f", "qcow2", "-o", "encrypt.format=foo", "e.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "encrypt.format=luks", "e.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "encryption=on", "e.qcow2", "1M"],
])
def test_encrypt_options_as_qemu_img(args, tmp_path, qemu_img, qimg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    theirs = qemu_img(*args)
    for f in tmp_path.iterdir():
        f.unlink()
    mine = qimg(*args)
    assert (mine.returncode, as_qemu(mine.stdout), as_qemu(mine.stderr)) == \
        (theirs.returncode, theirs.stdout, theirs.stderr)


def test_amend_encrypt_options_on_plain_image(tmp_path, qemu_img, qimg):
    path = str(tmp_path / "a.qcow2")
    assert qemu_img("create", "-q", "-f", "qcow2", path, "1M").returncode == 0
    theirs = qemu_img("amend", "-o", "encrypt.new-secret=x", path)
    mine = qimg("amend", "-o", "encrypt.new-secret=x", path)
    assert (mine.returncode, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stderr)
    assert theirs.returncode == 1
