"""QemuOpts sizes at the edges (``-o size=`` and every other size option) and 7.2's warning for
a hex size with a suffix, against qemu-img 7.2 and 10.0 (each with its profile).

A size option holds a uint64: 2^64 and more is out of range, 2^64 - 1 is QEMU's "not set" (-1:
create takes the backing file's size or needs one), 2^63 and more print as negative int64 and
each driver refuses (or, vmdk and qcow, accepts) them as QEMU's does; a size within 511 bytes
of 2^64 rounds up to 0. qemu-img 7.2 warns about ``0x1k`` once per reading of the option
string: create reads it again when the driver creates the file (not vmdk, luks), convert reads
all but the size again, amend and measure once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from cli_support import run_qemu, run_qimg
from conftest import as_qemu

QEMU72 = shutil.which("qemu-img") or "qemu-img"
FORMATS = ["qcow2", "raw", "qed", "vdi", "vpc", "vhdx", "vmdk", "qcow", "parallels"]
SIZES = ["9223372036854775807", "9223372036854775808", "18446744073709551615", "18446744073709551614",
         "18446744073709551104", "18446744073709551616", "0x8000000000000000", "8E", "15E", "16E", "1000", "0"]


def outcome(run, folder, args, made: str | None = None):
    """(exit code, stdout, stderr, what ``made`` is afterwards: absent, or its format and size)."""
    r = run(*args, cwd=folder)
    left = None
    if made is not None and os.path.exists(os.path.join(folder, made)):
        p = subprocess.run([QEMU72, "info", "--output=json", made], cwd=folder, capture_output=True, text=True)
        left = (json.loads(p.stdout)["format"], json.loads(p.stdout)["virtual-size"]) if p.returncode == 0 \
            else p.stderr.replace(str(folder), "")
    return r.returncode, r.stdout, as_qemu(r.stderr), left


def same(tmp_path, *args, made: str | None = None, setup=None):
    a, b = tmp_path / "qemu", tmp_path / "qimg"
    for d in (a, b):
        d.mkdir()
        if setup:
            setup(d)
    assert outcome(run_qimg, b, args, made) == outcome(run_qemu, a, args, made), args


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_create_size_option(tmp_path, fmt, size):
    same(tmp_path, "create", "-f", fmt, "-o", f"size={size}", "t.img", made="t.img")


@pytest.mark.parametrize("size", ["18446744073709551615", "18446744073709551614", "9223372036854775808",
                                  "18446744073709551616"])
def test_create_size_option_with_backing(tmp_path, size):
    """2^64 - 1 is no size: the backing file's is taken."""
    def setup(d):
        subprocess.run([QEMU72, "create", "-q", "-f", "qcow2", "b.qcow2", "1M"], cwd=d, check=True)

    same(tmp_path, "create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "-o", f"size={size}", "o.qcow2",
         made="o.qcow2", setup=setup)


@pytest.mark.parametrize("opt", ["cluster_size=18446744073709551614", "cluster_size=9223372036854775808",
                                 "cluster_size=18446744073709551616"])
def test_other_size_options_print_as_int64(tmp_path, opt):
    same(tmp_path, "create", "-f", "qcow2", "-o", opt, "t.img", "1M", made="t.img")


@pytest.mark.parametrize("size", ["9223372036854775808", "18446744073709551615", "18446744073709551616", "8E", "zz"])
@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk", "vdi"])
def test_convert_and_measure_size_option(tmp_path, fmt, size):
    """convert reads -o size (2^64 is out of range) and then takes the source's size."""
    def setup(d):
        subprocess.run([QEMU72, "create", "-q", "-f", "raw", "b.raw", "1M"], cwd=d, check=True)

    same(tmp_path, "convert", "-O", fmt, "-o", f"size={size}", "b.raw", "o.img", made="o.img", setup=setup)
    if fmt == "raw":
        shutil.rmtree(tmp_path / "qemu"), shutil.rmtree(tmp_path / "qimg")
        same(tmp_path, "measure", "-O", fmt, "-o", f"size={size}", "--size", "1M")


HEX = {"qcow2": ",cluster_size=0x40k", "qed": ",cluster_size=0x40k", "parallels": ",cluster_size=0x40k",
       "vhdx": ",block_size=0x1M,log_size=0x1M"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_hex_size_suffix_warnings(tmp_path, fmt):
    """7.2 warns once per reading of the option string (10.0 refuses the suffix)."""
    def setup(d):
        subprocess.run([QEMU72, "create", "-q", "-f", "raw", "b.raw", "1M"], cwd=d, check=True)

    extra = HEX.get(fmt, "")
    same(tmp_path, "create", "-f", fmt, "-o", f"size=0x1k{extra}", "t.img", made="t.img", setup=setup)
    for d in ("qemu", "qimg"):
        shutil.rmtree(tmp_path / d)
    same(tmp_path, "convert", "-O", fmt, "-o", f"size=0x1k{extra}", "b.raw", "o.img", made="o.img", setup=setup)
    for d in ("qemu", "qimg"):
        shutil.rmtree(tmp_path / d)
    same(tmp_path, "measure", "-O", fmt, "-o", f"size=0x1k{extra}", "--size", "0x1k", setup=setup)


@pytest.mark.parametrize("opts", ["size=0x2M", "size=0x2M,cluster_size=0x40k", "size=0x1k"])
def test_hex_size_suffix_warnings_amend(tmp_path, opts):
    def setup(d):
        subprocess.run([QEMU72, "create", "-q", "-f", "qcow2", "a.qcow2", "1M"], cwd=d, check=True)

    same(tmp_path, "amend", "-o", opts, "a.qcow2", made="a.qcow2", setup=setup)


@pytest.mark.parametrize("value", ["-1", "-18446744073709551616", "18446744073709551616", "010", "08", "0x10",
                                   " 16", "16 ", "1_6", "+16", "0x", "", "16k"])
def test_number_options(tmp_path, value):
    """QemuOpts numbers: strtoull with base 0 (octal, hex), nothing after, more than 64 bits
    too large; printed as int64. (Not yet: qcow2's QAPI re-reading of refcount-bits, which
    refuses a number past int64 as 'expects integer'.)"""
    same(tmp_path, "create", "-f", "qcow2", "-o", f"refcount_bits={value}", "t.img", "1M", made="t.img")


@pytest.mark.parametrize("size", ["9223372036854775807", "9223372036854775808", "18446744073709551615",
                                  "18446744073709551614", "8E", "15E", "1000"])
def test_qcow2_measure_and_amend_size_option(tmp_path, size):
    """measure checks the size option (rounded up to a cluster on a uint64) even when a source
    gives the size; amend's resize meets the block layer's checks (negative, past
    BDRV_MAX_LENGTH) before qcow2's own."""
    def setup(d):
        subprocess.run([QEMU72, "create", "-q", "-f", "raw", "b.raw", "1M"], cwd=d, check=True)
        subprocess.run([QEMU72, "create", "-q", "-f", "qcow2", "a.qcow2", "1M"], cwd=d, check=True)

    same(tmp_path, "measure", "-O", "qcow2", "-o", f"size={size}", "b.raw", setup=setup)
    for d in ("qemu", "qimg"):
        shutil.rmtree(tmp_path / d)
    same(tmp_path, "measure", "-O", "qcow2", "-o", f"size={size}", "--size", "1M", setup=setup)
    for d in ("qemu", "qimg"):
        shutil.rmtree(tmp_path / d)
    same(tmp_path, "amend", "-o", f"size={size}", "a.qcow2", made="a.qcow2", setup=setup)
