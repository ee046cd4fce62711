"""Every installed format through the generic commands, against qemu-img on the same files:
create's Formatting line, info (human/JSON), map (JSON/human), check (human/JSON)."""
from __future__ import annotations

import pytest
from cli_support import compare, compare_in_copies, formats_available, run_qemu, run_qemu_io

FORMATS = [f for f in ("qcow2", "qed", "vpc", "vmdk", "vdi", "vhdx", "qcow", "parallels") if f in formats_available()]

pytestmark = pytest.mark.skipif(not FORMATS, reason="no format plugin besides raw installed")


@pytest.fixture(params=FORMATS)
def image(request, tmp_path):
    fmt = request.param
    run_qemu("create", "-q", "-f", fmt, "x.img", "8M", cwd=tmp_path)
    run_qemu_io("-f", fmt, "-c", "write -P 7 0 64k", "-c", "write -P 9 3M 128k", "x.img", cwd=tmp_path)
    return tmp_path, fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_create(tmp_path, fmt):
    compare_in_copies(lambda d: None, tmp_path, "create", "-f", fmt, "new.img", "5M")


@pytest.mark.parametrize("args", [["info"], ["info", "--output=json"], ["map", "--output=json"], ["map"],
                                  ["check"], ["check", "--output=json"]])
def test_generic_commands(image, args):
    folder, fmt = image
    compare(folder, *args, "x.img")
    compare(folder, *args, "-f", fmt, "x.img")
