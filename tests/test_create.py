"""``qimg create`` against qemu-img: messages, option merging/escaping, -o help, backing files,
the Formatting line; files compared after creation."""
from __future__ import annotations

import filecmp

import pytest
from cli_support import compare, compare_in_copies, formats_available, run_qemu


def _setup(folder):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=folder)
    if "qcow2" in formats_available():
        run_qemu("create", "-q", "-f", "qcow2", "base.qcow2", "4M", cwd=folder)


@pytest.mark.parametrize("args", [
    ["-f", "raw", "x.raw", "1M"], ["x.raw", "1.5k"], ["-f", "raw", "x.raw", "1M", "2"], ["-q", "-f", "raw", "x.raw", "1M"],
    ["-f", "raw", "-o", "size=2M", "x.raw"], ["-f", "raw", "-o", "size=2M", "x.raw", "1M"],
    ["-f", "raw", "-o", "foo=1", "x.raw", "1M"], ["-f", "raw", "-o", "preallocation=full", "x.raw", "1M"],
    ["-f", "raw", "-o", "preallocation=falloc", "x.raw", "64k"],
    ["-f", "raw", "-o", "nocow=on", "x.raw", "1M"], ["x.raw", "9E"], ["x.raw", "8E"], ["x.raw", "0"],
    ["x.raw", ""], ["x.raw", "1.5"], ["x.raw", "12Q"], ["x.raw"], [], ["-f", "raw", "-b", "a.raw", "-F", "raw", "r.raw", "1M"],
    ["-f", "foo", "x", "1M"], ["-o", "", "x", "1M"], ["-o", "a,", "x", "1M"], ["-o", ",a", "x", "1M"],
    ["-f", "raw", "-o", "size=1M,,x", "x.raw"], ["-f", "raw", "x.raw", "--", "-1"], ["-f", "raw", "x.raw", "-5"],
    ["-o", "size=1k", "-o", "size=2k", "x.raw"], ["-qfraw", "x.raw", "4k"], ["x.raw", "1M", "-q"],
    ["-f", "raw", "-o", "preallocation=full,size=4k", "x.raw"], ["-f", "raw", "-o", "size=1x", "x.raw"],
    ["-u", "x.raw", "1M"], ["--object", "secret,id=s,data=x", "x.raw", "1M"],
])
def test_raw(tmp_path, args):
    compare_in_copies(_setup, tmp_path, "create", *args)
    mine, theirs = tmp_path / "qimg", tmp_path / "qemu"
    for name in ("x.raw", "x", "r.raw"):
        if (theirs / name).exists():
            assert (mine / name).exists()
            assert (mine / name).stat().st_size == (theirs / name).stat().st_size
            assert filecmp.cmp(mine / name, theirs / name, shallow=False)


def test_unaligned_size_message(tmp_path):
    # (qemu-img also rounds the file up to 512 bytes; that is the raw driver's business)
    compare_in_copies(_setup, tmp_path, "create", "x.raw", "0x10")


@pytest.mark.parametrize("args", [["-f", "raw", "-o", "help"], ["-f", "raw", "-o", "help", "x.raw"],
                                  ["-o", "?", "-f", "raw"], ["-f", "raw", "-o", "help", "-o", "size=1"],
                                  ["-o", "help"], ["-f", "nosuch", "-o", "help"],
                                  ["-f", "raw", "-o", "size=1,help", "x.raw"]])
def test_option_help(tmp_path, args):
    compare(tmp_path, "create", *args)


QCOW2_CASES = [
    ["-f", "qcow2", "n.qcow2", "1M"],
    ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "n.qcow2"],
    ["-f", "qcow2", "-b", "base.qcow2", "n.qcow2"],
    ["-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "n.qcow2"],
    ["-f", "qcow2", "-u", "-b", "nonexist", "-F", "qcow2", "n.qcow2", "1M"],
    ["-f", "qcow2", "-u", "-b", "nonexist", "-F", "qcow2", "n.qcow2"],
    ["-f", "qcow2", "-u", "-b", "nonexist", "n.qcow2", "1M"],
    ["-f", "qcow2", "-b", "n.qcow2", "-F", "qcow2", "n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "lazy_refcounts=yes,cluster_size=4k,compat=1.1,refcount_bits=0x10", "n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "lazy_refcounts,cluster_size=4k", "-o", "cluster_size=8k", "n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "cluster_size=4k,,x", "n.qcow2", "1M"],
    # ',,' in a string value (iotests 082): the Formatting line prints the value escaped again
    ["-f", "qcow2", "-u", "-o", "backing_file=base.qcow2,,help", "-F", "qcow2", "n.qcow2", "1M"],
    ["-f", "qcow2", "-u", "-o", "backing_file=base.qcow2,,,,x,backing_fmt=qcow2", "n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "backing_file=base.qcow2,,x,backing_fmt=qcow2", "n.qcow2"],
    ["-f", "qcow2", "-o", "compression_type=zlib,,x", "n.qcow2", "1M"],
    # fractions of a byte that scale to zero are sizes (iotests 049)
    ["-f", "qcow2", "-o", "size=1024.0", "n.qcow2"], ["-f", "qcow2", "-o", "cluster_size=1024.0b", "n.qcow2", "1M"],
    # sizes that are not whole sectors are rounded up (qemu-img's option path)
    ["-f", "qcow2", "n.qcow2", "1000"], ["-f", "qcow2", "-o", "size=513", "n.qcow2"], ["-f", "qcow2", "n.qcow2", "1"],
]


@pytest.mark.parametrize("args", QCOW2_CASES)
def test_qcow2(tmp_path, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    compare_in_copies(_setup, tmp_path, "create", *args)
    mine, theirs = tmp_path / "qimg" / "n.qcow2", tmp_path / "qemu" / "n.qcow2"
    if theirs.exists():
        info = [run_qemu("info", "--output=json", str(p)).stdout.replace(str(p.parent), "D") for p in (mine, theirs)]
        assert info[0] == info[1]


def test_formatting_line_order_from_driver_declaration():
    """A driver's create_print_order/create_print_defaults drive the line; without them the
    create_opts order and Option defaults do."""
    from qimg.driver import Format
    from qimg.ops.create import formatting_line
    from qimg.options import BOOL, SIZE, STRING, Option

    class Fake(Format):
        format_name = "fake"
        create_opts = [Option("size", SIZE, ""), Option("flag", BOOL, "", False), Option("mode", STRING, "")]

    declared = list(Fake.create_opts)
    assert formatting_line("f", "fake", Fake, declared, {"size": "5"}) == "Formatting 'f', fmt=fake size=5 flag=off"

    class SizeLast(Format):
        create_opts = [Option("flag", BOOL, "", False), Option("size", SIZE, "")]

    assert formatting_line("f", "fake", SizeLast, list(SizeLast.create_opts), {"size": "5"}) == \
        "Formatting 'f', fmt=fake size=5 flag=off"

    class Ordered(Fake):
        create_print_order = ("mode", "flag", "size")
        create_print_defaults = {"mode": "auto"}

    assert formatting_line("f", "fake", Ordered, declared, {"size": "5", "flag": "yes"}) == \
        "Formatting 'f', fmt=fake mode=auto flag=yes size=5"
