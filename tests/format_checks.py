"""Checks every format's test module runs the same way: CLI output against qemu-img, and a
convert round trip verified by qemu-img."""
from __future__ import annotations

import random

from conftest import as_qemu

MiB = 1 << 20
CLI_COMMANDS = [["info"], ["info", "--output=json"], ["check"], ["check", "--output=json"], ["map"],
                ["map", "--output=json"]]


def _ok(run):
    assert run.returncode == 0, run.stderr
    return run


def _opts(create_opts: str) -> list[str]:
    return ["-o", create_opts] if create_opts else []


def cli_matches_qemu(fmt, tmp_path, qemu_img, qemu_io, qimg, create_opts: str) -> None:
    """qemu-io writes patterns; info/check/map of qimg print what qemu-img prints."""
    path = str(tmp_path / f"c.{fmt}")
    _ok(qemu_img("create", "-q", "-f", fmt, *_opts(create_opts), path, "12M"))
    _ok(qemu_io("-f", fmt, "-c", "write -P 0x5a 1M 64k", "-c", "write -P 1 100k 10k", "-c", "write -z 4M 1M",
                "-c", "write -P 3 9M 1M", path))
    for args in CLI_COMMANDS:
        q = qemu_img(*args, path)
        m = qimg(*args, path)
        assert (m.returncode, as_qemu(m.stdout), as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr), args


def convert_roundtrip(fmt, tmp_path, qemu_img, qimg, create_opts: str) -> None:
    """raw -> fmt by qimg is clean and identical for qemu-img, and converts back to the same bytes."""
    rng = random.Random(1)
    src = str(tmp_path / "src.raw")
    data = bytearray(12 * MiB)
    for off, n in ((0, 5000), (MiB + 3, 200000), (7 * MiB, MiB), (12 * MiB - 700, 700)):
        data[off:off + n] = rng.randbytes(n)
    with open(src, "wb") as f:
        f.write(data)
    out = str(tmp_path / f"o.{fmt}")
    _ok(qimg("convert", "-O", fmt, *_opts(create_opts), src, out))
    assert "No errors were found" in _ok(qemu_img("check", out)).stdout
    assert "Images are identical" in _ok(qemu_img("compare", src, out)).stdout
    back = str(tmp_path / "back.raw")
    _ok(qimg("convert", "-O", "raw", out, back))
    assert open(back, "rb").read() == data
