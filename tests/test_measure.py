"""``qimg measure`` against qemu-img (raw always; qcow2 output when the plugin is installed)."""
from __future__ import annotations

import pytest
from cli_support import as_oracle, compare, formats_available, run_qemu, run_qemu_io, run_qimg


@pytest.fixture
def imgs(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    (tmp_path / "odd.raw").write_bytes(b"\1" * 1000)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["--size", "1G", "-O", "raw"], ["--size", "1G"], ["--output=json", "--size", "1G", "-O", "raw"],
    ["-O", "raw", "a.raw"], ["-O", "raw", "odd.raw"], ["--size", "1000", "-O", "raw"], [],
    ["--size", "1G", "a.raw"], ["-O", "raw", "-o", "preallocation=full", "--size", "1G"],
    ["-O", "raw", "-o", "help"], ["-O", "raw", "-o", "help", "--size", "1M"], ["--size", "1x", "-O", "raw"],
    ["--size", "-1", "-O", "raw"], ["--size", "9E"], ["-l", "snap", "a.raw", "-O", "raw"],
    ["-O", "foo", "--size", "1M"], ["-O", "raw", "-o", "size=5", "--size", "1M"],
    ["-O", "raw", "-o", "foo=5", "--size", "1M"], ["--image-opts", "--size", "1M"], ["-f", "raw", "--size", "1M"],
    ["a.raw", "odd.raw"], ["--output=yaml", "--size", "1M"], ["-O", "raw", "-o", "", "--size", "1M"],
])
def test_raw(imgs, args):
    compare(imgs, "measure", *args)


@pytest.mark.parametrize("size", ["1e3", " 1M", "1M ", "1 M", "+1M", "0x1k", "1b", "1B", "1.k", ".5M", "1.5M",
                                  "0x10M", "00012", "0100", "1.0000000001k", "18446744073709551615",
                                  "9223372036854775807", "9223372036854775808", "1k5", "+ 1k", "0x", "0x1.5k",
                                  "1.5b", "1.5kb", "0X1F", "1.", "8E", "7.99E"])
def test_size_syntax(imgs, size):
    """qemu_strtosz's grammar: sign, hex (suffix deprecated), fractions, whitespace, range."""
    compare(imgs, "measure", "--size", size)


@pytest.mark.parametrize("args", [["--o=x"], ["--size=1M", "--output"], ["--image-opts=1"], ["-Z", "--size", "1M"],
                                  ["--size", "1M", "-Z"], ["-O"], ["--siz"]])
def test_glibc_usage_messages_then_help(imgs, args, oracle):
    """qemu-img 7.2's measure lets getopt print its own message, then shows the help (exit 0);
    10.0's says what to try and fails, as every other command."""
    if oracle == "10.0":
        assert compare(imgs, "measure", *args).returncode == 1
        return
    mine, theirs = run_qimg("measure", *args, cwd=imgs), run_qemu("measure", *args, cwd=imgs)
    assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr) == (0, mine.stderr)
    assert mine.stdout.startswith("qimg version") and "usage: qimg" in mine.stdout


def test_new_long_options(imgs):
    """qemu-img 10.0's long options (the 10.0 profile); 7.2 has none of them."""
    mine, theirs = as_oracle("10.0", "measure", "--target-format", "raw", "--size", "1M", cwd=imgs)
    assert mine == theirs and mine.stdout == run_qemu("measure", "-O", "raw", "--size", "1M", cwd=imgs).stdout
    mine, theirs = as_oracle("7.2", "measure", "--target-format", "raw", "--size", "1M", cwd=imgs)
    assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr) == (0, "measure: unrecognized option '--target-format'\n")


@pytest.mark.parametrize("args", [
    ["-O", "qcow2", "--size", "1G"], ["--output=json", "-O", "qcow2", "--size", "1G"],
    ["-O", "qcow2", "a.raw"], ["-O", "qcow2", "-o", "cluster_size=4k", "--size", "10G"],
    ["-O", "qcow2", "-o", "preallocation=full", "--size", "100M"], ["-O", "qcow2", "-o", "foo=1", "--size", "1M"],
    ["-O", "qcow2", "data.raw"], ["-O", "raw", "data.raw"],
])
def test_qcow2_target(imgs, args):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    with open(imgs / "data.raw", "wb") as f:
        f.truncate(16 << 20)
        f.seek(5 << 20)
        f.write(b"z" * (300 << 10))
    compare(imgs, "measure", *args)


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("out", [[], ["--output=json"], ["-o", "compat=0.10"]])
def test_qcow2_source_bitmaps_line(imgs, compat, out):
    """A version 2 source cannot hold persistent bitmaps: qemu-img prints no bitmaps size."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", "s.qcow2", "8M", cwd=imgs)
    run_qemu_io("-c", "write -P 1 1M 1M", "s.qcow2", cwd=imgs)
    compare(imgs, "measure", "-O", "qcow2", *out, "s.qcow2")


def test_qcow2_source_raw_target(imgs):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "s.qcow2", "8M", cwd=imgs)
    run_qemu_io("-c", "write -P 1 1M 1M", "s.qcow2", cwd=imgs)
    compare(imgs, "measure", "-O", "raw", "s.qcow2")


@pytest.mark.parametrize("snap", ["s1", "snapshot.name=s1", "snapshot.id=1", "nonex", "snapshot.id=7",
                                  "snapshot.foo=1"])
@pytest.mark.parametrize("out", ["raw", "qcow2"])
def test_qcow2_snapshot_source(imgs, snap, out):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "q.qcow2", "4M", cwd=imgs)
    run_qemu_io("-c", "write 0 1M", "q.qcow2", cwd=imgs)
    run_qemu("snapshot", "-c", "s1", "q.qcow2", cwd=imgs)
    run_qemu_io("-c", "write 1M 2M", "q.qcow2", cwd=imgs)
    compare(imgs, "measure", "-l", snap, "-O", out, "q.qcow2")
