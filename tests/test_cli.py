"""Top-level CLI behaviour against qemu-img: usage errors, getopt forms, help, version, -T."""
from __future__ import annotations

import pytest
from cli_support import compare, run_qemu, run_qimg, run_qimg_subprocess, strip_formats


@pytest.fixture
def raw_dir(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", [
    [],
    ["-z"],
    ["foo"],
    ["--foo"],
    ["-T"],
    ["info"],
    ["info", "-z", "x"],
    ["info", "-Uz", "x"],
    ["info", "-zU", "x"],
    ["info", "a.raw", "-zU"],
    ["info", "--foo", "x"],
    ["info", "-f"],
    ["info", "-Uf"],
    ["info", "--output"],
    ["info", "--out"],
    ["info", "a.raw", "b.raw"],
    ["info", "--backing-chain=1", "a.raw"],
    ["info", "--image-opts=x", "a.raw"],
    ["info", "--f", "raw", "a.raw"],
    ["info", "--fo", "raw", "a.raw"],
    ["check", "--f", "raw", "a.raw"],
    ["info", "-V", "a.raw"],
    ["info", "--version", "a.raw"],
    ["info", "-T", "x", "a.raw"],
    ["info", "--output=xml", "a.raw"],
    ["-z", "-V"],
])
def test_usage_errors_and_parsing(raw_dir, args):
    compare(raw_dir, *args)


@pytest.mark.parametrize("args", [
    ["info", "-fraw", "a.raw"],
    ["info", "a.raw", "-f", "raw"],
    ["info", "--", "a.raw"],
    ["--", "info", "a.raw"],
    ["info", "--output", "json", "a.raw"],
    ["info", "--out=json", "a.raw"],
    ["info", "--force", "a.raw"],
    ["info", "--backing", "a.raw"],
    ["info", "-Uf", "raw", "a.raw"],
    ["info", "-f", "raw", "-f", "raw", "a.raw"],
    ["info", "--format", "raw", "a.raw"],
    ["info", "--image-opts", "driver=raw,file.filename=a.raw"],
    ["--tr", "enable=nothing_matches*", "info", "a.raw"],
])
def test_accepted_forms(raw_dir, args):
    r = compare(raw_dir, *args)
    assert r.returncode == 0


def test_options_after_dash_dash_are_positionals(raw_dir):
    compare(raw_dir, "info", "--", "-f")


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["-h", "x"], ["info", "-h"], ["info", "--help", "a.raw"],
                                  ["--help", "info"], ["--he"]])
def test_help(raw_dir, args):
    mine, theirs = run_qimg(*args, cwd=raw_dir), run_qemu(*args, cwd=raw_dir)
    assert mine.returncode == theirs.returncode == 0
    if not theirs.stdout.startswith("qemu-img version "):
        # 10.0's per-command help: no version line, no list of formats
        assert mine.stdout == theirs.stdout.replace("qemu-img", "qimg")
        return
    assert mine.stdout.startswith("qimg version ")
    mine_lines = mine.stdout.splitlines()
    their_lines = theirs.stdout.splitlines()
    # identical apart from the version line and the list of formats (7.2: one line; 10.0: a
    # "Supported image formats:" block wrapped to the terminal, up to the next blank line)
    assert strip_formats(mine_lines) == strip_formats(their_lines)



@pytest.mark.oracle_72("qemu-img only makes the image; qimg's own registry is under test")
def test_help_lists_registered_formats(raw_dir):
    from qimg.plugins import get_registry

    line = [ln for ln in run_qimg("--help").stdout.splitlines() if ln.startswith("Supported formats:")]
    # formats and protocols, as qemu-img lists its protocol drivers (nbd) among the formats
    assert line == ["Supported formats: " + " ".join(get_registry().driver_names())]
    assert "raw" in line[0].split()


def test_help_error_before_help_wins(raw_dir):
    # getopt order: the unknown option is met before -h
    compare(raw_dir, "info", "-z", "-h")


def test_version(raw_dir, oracle):
    r = run_qimg("-V")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith(f"qimg version {oracle}")
    assert r.stdout.splitlines()[1] == run_qemu("-V").stdout.splitlines()[1]
    assert run_qimg("--version", "info").stdout == r.stdout


@pytest.mark.parametrize("args", [["-T", "help"], ["--trace", "enable=help"], ["-T", "help", "info"],
                                  ["-T", "bdrv_open_common", "-T", "help"]])
def test_trace_help_lists_qemus_events(raw_dir, args):
    """qemu-img's own list of trace events, per version (qimg's are in docs/tracing.md)."""
    r = compare(raw_dir, *args)
    assert r.returncode == 0 and "bdrv_open_common" in r.stdout.split()


def test_trace_qemus_event_names_are_known(raw_dir):
    """Enabling one of qemu-img's events is no error (it has nothing to trace in qimg)."""
    r = compare(raw_dir, "-T", "breakpoint_insert", "info", "a.raw")
    assert r.returncode == 0 and not r.stderr


def test_trace_enable_emits_events(raw_dir):
    r = run_qimg("-T", "map_*", "map", "a.raw", cwd=raw_dir)
    assert r.returncode == 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("map_entry ")]
    assert lines and "start 0" in lines[0]
    r2 = run_qimg("-T", "enable=info_image", "map", "a.raw", cwd=raw_dir)
    assert "map_entry" not in r2.stderr


def test_trace_events_and_file(raw_dir):
    (raw_dir / "events").write_text("# comment\ninfo_*\n")
    r = run_qimg("-T", "events=events,file=trace.log", "info", "a.raw", cwd=raw_dir)
    assert r.returncode == 0
    assert (raw_dir / "trace.log").read_text().startswith('info_image filename "a.raw" format "raw"')
    assert "info_image" not in r.stderr


def test_trace_unknown_event_warns(raw_dir):
    compare(raw_dir, "-T", "foo", "info", "a.raw")
    compare(raw_dir, "-T", "events=/nonexistent/file", "info", "a.raw")


def test_trace_disabled_is_silent(raw_dir):
    from qimg import trace

    trace.reset()
    assert not trace.active
    trace.event("map_entry", start=1)  # no output, no error


def test_subprocess_entry_point(raw_dir):
    """The real console path (no in-process shortcuts) agrees too."""
    mine = run_qimg_subprocess("info", "--output=json", "a.raw", cwd=raw_dir)
    theirs = run_qemu("info", "--output=json", "a.raw", cwd=raw_dir)
    assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout)
    bad, theirs = run_qimg_subprocess("info", cwd=raw_dir), run_qemu("info", cwd=raw_dir)
    assert bad.returncode == theirs.returncode == 1
    assert bad.stderr == theirs.stderr.replace("qemu-img", "qimg")
    assert bad.stderr.startswith("qimg: Expecting one image file name\nTry 'qimg ")


def test_object_secret_accepted(raw_dir):
    for cmd in (["info"], ["map"], ["check"]):
        mine = run_qimg(*cmd, "--object", "secret,id=s0,data=abc", "a.raw", cwd=raw_dir)
        theirs = run_qemu(*cmd, "--object", "secret,id=s0,data=abc", "a.raw", cwd=raw_dir)
        assert mine.returncode == theirs.returncode


@pytest.mark.parametrize("obj", ["help", "?", "secret,help", "id=x,help", "help=on", "secret,help=off",
                                 "secret,id=s,help", "qom-type=help", "help,help", "Secret,help", ",help", ",",
                                 "tls-cipher-suites,help", "qom-type=throttle-group,help", "tls-creds-x509,?"])
@pytest.mark.parametrize("cmd", [["info"], ["convert", "-O", "raw"], ["create", "-f", "raw"]])
def test_object_help(raw_dir, cmd, obj):
    """``--object help`` lists qemu-img's user creatable object types (per version), and
    ``TYPE,help`` a type's properties."""
    compare(raw_dir, *cmd, "--object", obj, "a.raw", "b.raw")
