"""getopt_long emulation: unit cases and a randomized comparison with qemu-img's parsing."""
from __future__ import annotations

import pytest
from cli_support import assert_same, run_qemu, run_qimg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qimg_cli.getopt import NONOPT, GetoptError
from qimg_cli.getopt import getopt_all as getopt_parse

SHORTS = {"f": ("f", True), "U": ("U", False)}
LONGS = [("format", "f", True), ("force-share", "U", False), ("output", "output", True),
         ("backing-chain", "chain", False), ("backing-file", "new", True), ("left-format", "f", True)]


def parse(*args, **kw):
    found, pos, err = getopt_parse(list(args), SHORTS, LONGS, prog="info", **kw)
    if err is not None:
        raise err
    return [(k, v) for k, v in found], pos


def test_forms():
    assert parse("-fraw", "x") == ([("f", "raw")], ["x"])
    assert parse("x", "-f", "raw", "y") == ([("f", "raw")], ["x", "y"])
    assert parse("-Uf", "raw", "x") == ([("U", None), ("f", "raw")], ["x"])
    assert parse("--out=json", "x") == ([("output", "json")], ["x"])
    assert parse("--output", "json", "x") == ([("output", "json")], ["x"])
    assert parse("--", "-f", "x") == ([], ["-f", "x"])
    assert parse("-", "x") == ([], ["-", "x"])
    assert parse("-f", "-U") == ([("f", "-U")], [])
    assert parse("--backing-c") == ([("chain", None)], [])
    assert parse("--backing-f", "b") == ([("new", "b")], [])
    assert parse("--le", "raw") == ([("f", "raw")], [])
    assert parse("x", "-U", ordering="+") == ([], ["x", "-U"])
    assert parse("x", "-U", "y", ordering="-") == ([(NONOPT, "x"), ("U", None), (NONOPT, "y")], [])
    assert parse("x", "--", "-U", ordering="-") == ([(NONOPT, "x")], ["-U"])


def test_same_option_under_two_names_is_no_ambiguity():
    # --f matches format and left-format (one option) and force-share (another)
    with pytest.raises(GetoptError) as e:
        parse("--f", "x")
    assert e.value.candidates == ("format", "force-share")
    assert parse("--forma", "x") == ([("f", "x")], [])


@pytest.mark.parametrize("args,message,glibc", [
    (("-z",), "unrecognized option '-z'", "invalid option -- 'z'"),
    (("-Uz",), "unrecognized option '-Uz'", "invalid option -- 'z'"),
    (("-zU",), "unrecognized option 'info'", "invalid option -- 'z'"),
    (("a", "-zU"), "unrecognized option 'a'", "invalid option -- 'z'"),
    (("-f",), "missing argument for option '-f'", "option requires an argument -- 'f'"),
    (("--out",), "missing argument for option '--out'", "option '--output' requires an argument"),
    (("--f", "x"), "unrecognized option '--f'", "option '--f' is ambiguous; possibilities: '--format' '--force-share'"),
    (("--backing",), "unrecognized option '--backing'",
     "option '--backing' is ambiguous; possibilities: '--backing-chain' '--backing-file'"),
    (("--backing-chain=1",), "unrecognized option '--backing-chain=1'", "option '--backing-chain' doesn't allow an argument"),
    (("--nope=1",), "unrecognized option '--nope=1'", "unrecognized option '--nope=1'"),
    (("--=x",), "unrecognized option '--=x'", "option '--=x' is ambiguous; possibilities: '--format' '--force-share' "
     "'--output' '--backing-chain' '--backing-file'"),
])
def test_errors(args, message, glibc):
    with pytest.raises(GetoptError) as e:
        parse(*args)
    assert e.value.qemu_message() == message
    assert e.value.glibc_message() == glibc


def test_option_list_validity():
    from qimg.ops.create import valid_option_list

    assert valid_option_list("a=b") and valid_option_list("a=b,,") and valid_option_list("a=,,b")
    assert not valid_option_list("") and not valid_option_list(",a") and not valid_option_list("a,")
    assert not valid_option_list("a=b,,,")


TOKENS = ["-f", "raw", "qcow2", "-U", "-Uf", "-fraw", "--output", "json", "--out=json", "--output=human",
          "--backing-chain", "--back", "--", "a.raw", "b.raw", "-z", "-Uz", "--force", "--f", "--image-opts",
          "--object", "secret,id=s,data=x", "-q", "--format=raw", "-", "nosuch", "--output=xml", "-h"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), max_size=6), st.sampled_from(["info", "map", "check"]))
def test_random_argument_lists_parse_as_qemu_img(tmp_path_factory, args, cmd):
    folder = tmp_path_factory.getbasetemp() / "optfuzz"
    if not (folder / "a.raw").exists():
        folder.mkdir(exist_ok=True)
        run_qemu("create", "-q", "-f", "raw", "a.raw", "64k", cwd=folder)
    mine, theirs = run_qimg(cmd, *args, cwd=folder), run_qemu(cmd, *args, cwd=folder)
    if theirs.stdout.startswith("qemu-img version"):  # the help: version and format list differ
        assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr)
        assert mine.stdout.startswith("qimg version") and "Command syntax:" in mine.stdout
    else:
        assert_same(mine, theirs)
