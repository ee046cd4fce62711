"""qimg bench against qemu-img bench: option validation, the lines printed, failures past the end."""
from __future__ import annotations

import re

import pytest
from cli_support import run_qemu, run_qimg
from conftest import as_qemu


def setup(d) -> None:
    with open(d / "b.img", "wb") as f:
        f.truncate(4 << 20)


def norm(text: str) -> str:
    return re.sub(r"Run completed in [0-9]+\.[0-9]{3} seconds\.", "Run completed in X seconds.", text)


CASES = [
    "-c 100 b.img", "-c 100 -w b.img", "-c 100 -w --flush-interval=10 b.img", "-c 100 --no-drain b.img",
    "-c 100 --pattern=5 b.img", "-c 100 -w --pattern=300 b.img", "-c 100 -w --pattern=x b.img", "-c 0 b.img",
    "-c -1 b.img", "-d x b.img", "-s x b.img", "-S x b.img", "-o x b.img", "-o 100M -c 10 b.img",
    "-o 1 -c 10 b.img", "-i foo b.img", "-i threads -c 10 b.img", "-n -c 10 b.img", "-n -t none -c 10 b.img",
    "-t foo b.img", "-q -c 10 b.img", "-c 10 -s 1M -S 2M b.img", "-c 10 -w --flush-interval=x b.img",
    "-c 10 -w --flush-interval=0 b.img", "-c 2 -d 1 -S 0 b.img", "-c 10 -s 1.5k b.img", "nonexist",
    "-c 10 -f qcow2 b.img", "-c 100000000000 b.img", "-c 1k b.img", "-c 128 -w --flush-interval=64 -f raw b.img",
    "-c 10 -o 4190208 -f raw b.img", "-c 3 -w --pattern=0x10 -f raw b.img", "-U -c 3 -w -f raw b.img",
    "-c 10 -s 8M -f raw b.img", "--image-opts -c 2 driver=raw,file.filename=b.img", "-c 1 -s 3 b.img",
    "--flush-interval=1 b.img", "", "--flush-interval", "-c 5 --flush-i=64 -w -f raw b.img", "-c 5 b.img b.img",
    "-c 64 -d 8 -w --flush-interval=16 --no-drain -f raw b.img",
]


@pytest.mark.parametrize("args", CASES)
def test_bench_like_qemu(tmp_path, args):
    setup(tmp_path)
    theirs = run_qemu("bench", *args.split(), cwd=tmp_path)
    mine = run_qimg("bench", *args.split(), cwd=tmp_path)
    assert (mine.returncode, norm(as_qemu(mine.stdout)), as_qemu(mine.stderr)) == \
        (theirs.returncode, norm(theirs.stdout), theirs.stderr)


def test_write_pattern_lands(tmp_path):
    setup(tmp_path)
    r = run_qimg("bench", "-w", "-f", "raw", "-c", "3", "-s", "4k", "-S", "8k", "--pattern=0x21", "b.img", cwd=tmp_path)
    assert r.returncode == 0
    data = (tmp_path / "b.img").read_bytes()
    assert data[:4096] == b"!" * 4096 and data[4096:8192] == bytes(4096) and data[16384:20480] == b"!" * 4096
