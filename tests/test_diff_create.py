"""Differential regressions for the commands that create or rewrite images (create, convert,
dd, measure, amend, resize): each case runs qemu-img and qimg on identical folders and compares
their output, exit status and the files left behind."""
from __future__ import annotations

import os

import pytest
from cli_support import compare_in_copies, run_qemu, run_qemu_io


def _files(folder) -> dict[str, int]:
    return {n: os.path.getsize(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}


def _info(folder, name: str) -> str:
    r = run_qemu("info", "--output=json", name, cwd=folder)
    return r.stdout.replace(str(folder), "X") if r.returncode == 0 else r.stderr.split(":", 1)[-1]


def same_result(setup, tmp_path, *args: str, images: tuple[str, ...] = ()) -> None:
    """Same output and status, the same files (names, sizes), the same ``info`` of ``images``."""
    compare_in_copies(setup, tmp_path, *args)
    mine, theirs = tmp_path / "qimg", tmp_path / "qemu"
    assert _files(mine) == _files(theirs)
    for name in images:
        if (theirs / name).exists():
            assert _info(mine, name) == _info(theirs, name)


def _source(folder) -> None:
    run_qemu("create", "-q", "-f", "raw", "s.raw", "4M", cwd=folder)


@pytest.mark.parametrize("size", ["10M", "3G"])
@pytest.mark.parametrize("opts", ["cluster_size=4M", "cluster_size=2M,table_size=16",
                                  "cluster_size=2M", "cluster_size=64M,table_size=1"])
def test_qed_max_size_wraps_in_64_bits(tmp_path, opts, size):
    # QEMU's limit (cluster * (table entries)^2) overflows 64 bits for big clusters: it reads
    # "less than 0 bytes" and every size is refused
    same_result(_source, tmp_path, "create", "-f", "qed", "-o", opts, "x.qed", size, images=("x.qed",))


@pytest.mark.parametrize("fmt", ["raw", "qcow", "qed", "vdi", "vpc", "vmdk"])
@pytest.mark.parametrize("mode", ["metadata", "bad", "full"])
def test_create_protocol_preallocation(tmp_path, fmt, mode):
    # formats without their own preallocation pass it to the file protocol
    same_result(_source, tmp_path, "create", "-f", fmt, "-o", f"preallocation={mode}", "x.img", "1M")


@pytest.mark.parametrize("fmt", ["raw", "qcow", "vdi"])
@pytest.mark.parametrize("mode", ["metadata", "bad", "falloc", "full"])
def test_convert_protocol_preallocation(tmp_path, fmt, mode):
    same_result(_source, tmp_path, "convert", "-O", fmt, "-o", f"preallocation={mode}", "s.raw", "x.img",
                images=("x.img",))


def test_convert_protocol_option_nocow(tmp_path):
    same_result(_source, tmp_path, "convert", "-O", "qcow2", "-o", "nocow=on", "s.raw", "x.img",
                images=("x.img",))


def test_create_protocol_options_print_order(tmp_path):
    # the Formatting line lists the file protocol's options in QEMU's declaration order
    same_result(_source, tmp_path, "create", "-f", "qcow", "-o",
                "extent_size_hint=1M,preallocation=full,nocow=on", "x.img", "1M")


@pytest.mark.parametrize("target", ["t.qcow2", "missing.qcow2"])
def test_convert_target_is_zero_with_backing(tmp_path, target):
    # qemu-img prints the refusal but exits with status 0, before opening the target
    def setup(folder):
        _source(folder)
        run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "4M", cwd=folder)
        run_qemu("create", "-q", "-f", "qcow2", "b.qcow2", "4M", cwd=folder)

    same_result(setup, tmp_path, "convert", "-n", "--target-is-zero", "-B", "b.qcow2", "-O", "qcow2",
                "s.raw", target)


def _with_old_file(folder) -> None:
    _source(folder)
    with open(os.path.join(folder, "x.img"), "wb") as f:
        f.write(b"old" * 1000)


@pytest.mark.parametrize("args", [
    # qed, vpc, vhdx and qcow leave the file QEMU created (empty) before checking the options
    ["-f", "qed", "-o", "cluster_size=3k"], ["-f", "qed", "-o", "table_size=3"],
    ["-f", "vpc", "-o", "subformat=bad"], ["-f", "vhdx", "-o", "block_size=3M"],
    ["-f", "qcow", "-o", "encrypt.format=luks"],
    # qcow2 deletes it
    ["-f", "qcow2", "-o", "compat=bad"], ["-f", "qcow2", "-o", "refcount_bits=3"],
    ["-f", "qcow2", "-o", "lazy_refcounts=on,compat=0.10"],
    # refused before any file is touched
    ["-f", "qcow2", "-o", "cluster_size=abc"], ["-f", "vmdk", "-o", "subformat=bad"],
])
@pytest.mark.parametrize("old", [False, True])
def test_refused_create_leaves_file_as_qemu(tmp_path, args, old):
    same_result(_with_old_file if old else _source, tmp_path, "create", *args, "x.img", "1M")


@pytest.mark.parametrize("args", [["-O", "qed", "-o", "cluster_size=3k"], ["-O", "qcow2", "-o", "compat=bad"]])
def test_refused_convert_leaves_file_as_qemu(tmp_path, args):
    same_result(_with_old_file, tmp_path, "convert", *args, "s.raw", "x.img")


def _measure_source(folder) -> None:
    run_qemu("create", "-q", "-f", "qcow2", "s.qcow2", "8M", cwd=folder)
    run_qemu_io("-c", "write -P 1 0 64k", "s.qcow2", cwd=folder)


@pytest.mark.parametrize("opts", [
    "compat=bad", "compat=v3", "compat=v2", "compat=0.10,refcount_bits=1", "compression_type=bad",
    "encrypt.format=aes", "encryption=on", "encrypt.cipher-alg=bad", "preallocation=bad",
    "compat=bad,cluster_size=3k", "refcount_bits=3,compat=bad", "refcount_bits=3,preallocation=bad",
    "extended_l2=on,compat=0.10", "extended_l2=on,cluster_size=4k,compat=bad", "lazy_refcounts=on,compat=0.10",
    "preallocation=bad,encrypt.format=luks", "backing_file=x", "backing_file=x,preallocation=metadata",
])
@pytest.mark.parametrize("what", [["--size", "1G"], ["s.qcow2"]])
def test_measure_qcow2_option_checks(tmp_path, opts, what):
    # measure checks fewer options than create, in another order and other words
    same_result(_measure_source, tmp_path, "measure", "-O", "qcow2", "-o", opts, *what)


@pytest.mark.parametrize("args", [["--size", "100P"], ["--size", "2251799813685248"], ["--size", "2251799813685249"],
                                  ["-o", "extended_l2=on", "--size", "1125899906842625"]])
def test_measure_qcow2_too_large(tmp_path, args):
    same_result(_measure_source, tmp_path, "measure", "-O", "qcow2", *args)


def _images(folder) -> None:
    for fmt in ("raw", "qed", "qcow2"):
        run_qemu("create", "-q", "-f", fmt, f"e.{fmt}", "4M", cwd=folder)
    run_qemu_io("-c", "write -P 3 0 64k", "e.qcow2", cwd=folder)


@pytest.mark.parametrize("args", [
    ["resize", "--preallocation=metadata", "e.raw", "8M"],
    ["resize", "--shrink", "e.qed", "1000"], ["resize", "--shrink", "e.qed", "1M"],
    ["resize", "e.qed", "1000"],
    # size=0 is "no size" for qcow2 amend
    ["amend", "-o", "size=0", "e.qcow2"], ["amend", "-o", "size=0,compat=0.10", "e.qcow2"],
])
def test_resize_amend_messages(tmp_path, args):
    same_result(_images, tmp_path, *args, images=(args[-2] if args[0] == "resize" else args[-1],))


def _blocks(folder, name: str) -> int:
    return os.stat(os.path.join(folder, name)).st_blocks


@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
@pytest.mark.parametrize("sparse", [[], ["-S", "0"]])
def test_convert_n_fills_vdi_vpc(tmp_path, fmt, sparse):
    # -n: the target is not known to read as zeroes, so zero runs are written; vdi and vpc have
    # no zero-write operation in QEMU and so get every block allocated and written, in order
    def setup(folder):
        run_qemu("create", "-q", "-f", "qcow2", "s.qcow2", "8M", cwd=folder)
        run_qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 2 5M 64k", "s.qcow2", cwd=folder)
        run_qemu("create", "-q", "-f", fmt, "t.img", "16M", cwd=folder)

    same_result(setup, tmp_path, "convert", "-n", "-O", fmt, *sparse, "s.qcow2", "t.img")
    mine, theirs = tmp_path / "qimg", tmp_path / "qemu"
    a = run_qemu("map", "--output=json", "-f", fmt, "t.img", cwd=mine)
    b = run_qemu("map", "--output=json", "-f", fmt, "t.img", cwd=theirs)
    assert a.stdout == b.stdout
    assert abs(_blocks(mine, "t.img") - _blocks(theirs, "t.img")) * 512 < 64 * 1024


@pytest.mark.parametrize("args", [["-o", "compat=0.10", "s.qcow2", "x.qcow2"], ["v2.qcow2", "x.qcow2"],
                                  ["-n", "s.qcow2", "v2.qcow2"]])
def test_convert_bitmaps_qcow2_v2(tmp_path, args):
    # a compat=0.10 image has no bitmap support, as source or target
    def setup(folder):
        run_qemu("create", "-q", "-f", "qcow2", "s.qcow2", "1M", cwd=folder)
        run_qemu("bitmap", "--add", "s.qcow2", "b0", cwd=folder)
        run_qemu("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M", cwd=folder)

    same_result(setup, tmp_path, "convert", "-O", "qcow2", "--bitmaps", *args)


@pytest.mark.parametrize("args", [["-O", "vmdk", "--bitmaps", "s.qcow2"], ["-O", "qcow2", "-t", "bogus", "s.qcow2"],
                                  ["-O", "qcow2", "--bitmaps", "s.raw"], ["-O", "qcow2", "--bitmaps", "s.qcow2", "s.qcow2"]])
def test_convert_failure_after_create_keeps_target(tmp_path, args):
    # qemu-img checks the sources' bitmaps before creating the target, and never deletes a
    # target it created when a later step (cache mode, target bitmap support) fails
    def setup(folder):
        _source(folder)
        run_qemu("create", "-q", "-f", "qcow2", "s.qcow2", "1M", cwd=folder)
        run_qemu("bitmap", "--add", "s.qcow2", "b0", cwd=folder)

    same_result(setup, tmp_path, "convert", *args, "x.img")


@pytest.mark.parametrize("size", ["1P", "256T", "300T"])
def test_vmdk_huge_grain_count_wraps(tmp_path, size):
    # qemu-img counts a new sparse extent's grains in 32 bits: from 256 TiB the tables shrink
    same_result(_source, tmp_path, "create", "-q", "-f", "vmdk", "x.vmdk", size)


@pytest.mark.parametrize("args", [
    ["-f", "qcow2", "x.img", "9223372036854775807"], ["-f", "qcow2", "x.img", "9223372035781034496"],
    ["-f", "qcow2", "x.img", "9223372035781033984"], ["-f", "qcow2", "-o", "compat=bad", "x.img", "9223372036854775807"],
    # qcow's L1 entry count wraps in 32 bits: no table is written for these
    ["-f", "qcow", "x.img", "8P"], ["-f", "qcow", "x.img", "1E"], ["-f", "qcow", "x.img", "9007199256838144"],
])
def test_create_huge_sizes(tmp_path, args):
    same_result(_source, tmp_path, "create", *args)


def test_refused_create_needs_the_file_first(tmp_path):
    # the file protocol's own failure (a directory in the way) comes first, nothing is removed
    def setup(folder):
        os.mkdir(os.path.join(folder, "x.img"))

    same_result(setup, tmp_path, "create", "-f", "qcow2", "-o", "compat=bad", "x.img", "1M")
