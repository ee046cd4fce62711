"""The command line in both profiles, against both oracles: qemu-img 7.2 (``QIMG_COMPAT=7.2``)
and qemu-img 10.0 (``QIMG_COMPAT=10.0``, the default).

qimg runs in-process under the oracle's own ``argv[0]`` (qemu-img quotes it in its usage
hints), so outputs compare byte for byte; only the version line's parenthesis (the build) and
the list of formats (qimg's plugins) are masked. The cases come from the option tables
(qimg_cli.tables): every option of every command, by each of its names in either profile, with
a value, without one, abbreviated, with ``=``; then usage errors, help texts, ordering rules.
"""
from __future__ import annotations

import re
import shlex

import pytest
from cli_support import run_qemu
from qimg_cli.gen import all_names
from qimg_cli.tables import NAMES, command, global_options

PROFILES = ("7.2", "10.0")

#: a command line that works (or fails past parsing) for each command, with the images below
BASE = {"amend": "-o lazy_refcounts=on q.qcow2", "bench": "-c 10 a.raw", "bitmap": "--add q.qcow2 bm1",
        "check": "q.qcow2", "commit": "top.qcow2", "compare": "a.raw a.raw", "convert": "a.raw out.img",
        "create": "new.img 1M", "dd": "if=a.raw of=out.img", "info": "a.raw", "map": "a.raw",
        "measure": "--size 1M", "rebase": "-u -b base.qcow2 -F qcow2 top.qcow2", "resize": "-f raw a.raw +1M",
        "snapshot": "-l q.qcow2"}
#: values for options that take one: a good one first, then bad ones
VALUES = {"fmt": ["raw", "nosuchfmt"], "fmt1": ["raw"], "fmt2": ["raw"], "output": ["json", "xml"],
          "cache": ["none", "bogus"], "src_cache": ["none", "bogus"], "repair": ["leaks", "foo"],
          "options": ["lazy_refcounts=on", ",bad"], "objects": ["secret,id=s0,data=x", "bogus"],
          "count": ["5", "-1", "x", "1k"], "depth": ["4", "0", "x"], "offset": ["4k", "x", "-1"],
          "buffer_size": ["4k", "x", "3G"], "step_size": ["4k", "x", "3G"], "aio": ["threads", "bogus"],
          "pattern": ["7", "300", "x"], "flush_interval": ["2", "x", "-1"], "merge": ["bm0"],
          "granularity": ["64k", "x"], "source_file": ["q.qcow2"], "source_fmt": ["qcow2"], "base": ["base.qcow2"],
          "rate": ["1M", "x"], "snapshot": ["snap1", "snapshot.id=1,x=2"], "sparse": ["4k", "3", "x"],
          "out_fmt": ["qcow2"], "backing": ["base.qcow2"], "backing_fmt": ["qcow2"], "parallel": ["4", "0", "x", "99"],
          "start_offset": ["4k", "x", "-1"], "max_length": ["4k", "x"], "size": ["1M", "x", "-1", "0x10k"],
          "preallocation": ["off", "bogus"], "apply": ["snap1"], "create": ["snap2"], "delete": ["snap1"],
          "trace": ["nothing"]}

_MASKS = [
    (re.compile(r"(qemu-img version [0-9]+\.[0-9]+)\.[0-9]+ \(.*\)"), r"\1.N (BUILD)"),
    (re.compile(r"Supported formats:.*"), "Supported formats: FORMATS"),
    (re.compile(r"Run completed in [0-9.]+ seconds"), "Run completed in TIME seconds"),
    # 10.0's info output (child nodes) is compared with info's own tests
    (re.compile(r"Child node '/file':\n(    .*\n)+"), ""),
    (re.compile(r"Supported image formats:\n\n(  .*\n)+"), "Supported image formats:\n\nFORMATS\n"),
]


def masked(text: str) -> str:
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    return text


def check(profile: str, line: str, images, fresh: bool = True) -> None:
    """qimg and the profile's qemu-img on ``line``, each in its own fresh copy of ``images``
    (``fresh=False``: in ``images`` itself, for lines that write nothing)."""
    import shutil
    import tempfile

    from cli_support import ORACLES, oracle_path, run_qimg

    args = shlex.split(line)
    if not fresh:
        theirs = ORACLES[profile](*args, cwd=images)
        mine = run_qimg(*args, cwd=images, profile=profile, prog=oracle_path(profile))
    else:
        with tempfile.TemporaryDirectory(dir=images.parent) as work:
            a, b = f"{work}/theirs", f"{work}/mine"
            shutil.copytree(images, a)
            shutil.copytree(images, b)
            theirs = ORACLES[profile](*args, cwd=a)
            mine = run_qimg(*args, cwd=b, profile=profile, prog=oracle_path(profile))
    got = (mine.returncode, masked(mine.stdout), masked(mine.stderr))
    want = (theirs.returncode, masked(theirs.stdout), masked(theirs.stderr))
    assert got == want, f"\n{profile}: qemu-img {line}\nqimg:     {got!r}\nqemu-img: {want!r}"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("profiles")
    for args in (["-f", "raw", "a.raw", "1M"], ["-f", "qcow2", "base.qcow2", "1M"],
                 ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], ["-f", "qcow2", "q.qcow2", "1M"]):
        assert run_qemu("create", "-q", *args, cwd=d).returncode == 0
    assert run_qemu("snapshot", "-c", "snap1", "q.qcow2", cwd=d).returncode == 0
    return d


def _option_cases(only: str | None = None) -> list[str]:
    """Each option by each name it has in either profile, in the forms getopt knows, ended by
    an unknown option so nothing runs past parsing (what the option does is tested elsewhere;
    here: whether the profile has the name, and what it checks while parsing)."""
    out = []
    for name in NAMES if only is None else (only,):
        for o in command(name).options:
            if o.key in ("help",):
                continue
            for n in all_names(o):
                if not o.arg:
                    out += [f"{name} {n} -Z", f"{name} {n}=1 -Z"] if n.startswith("--") else [f"{name} {n} -Z"]
                    if n.startswith("--") and len(n) > 5:
                        out.append(f"{name} {n[:5]} -Z")
                    continue
                for v in VALUES.get(o.key, ["x"]):
                    out.append(f"{name} {n} {shlex.quote(v)} -Z")
                out.append(f"{name} -Z {n}")
                out.append(f"{name} {n}")
                v = shlex.quote(VALUES.get(o.key, ["x"])[0])
                if n.startswith("--"):
                    out.append(f"{name} {n}={v} -Z")
                    if len(n) > 5:
                        out.append(f"{name} {n[:5]} {v} -Z")
                else:
                    out.append(f"{name} {n}{v} -Z")
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", NAMES)
def test_every_option_of_every_command(profile, name, images):
    for line in _option_cases(name):
        check(profile, line, images, fresh=False)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", NAMES)
def test_help_of_each_command(profile, name, images):
    """``COMMAND --help`` (10.0: the command's own help; 7.2: the global one), ``-h``, and
    ``-h`` after an error (the error wins: getopt meets it first)."""
    for line in (f"{name} --help", f"{name} -h", f"{name} --he", f"{name} -Zh", f"{name} -hZ", f"{name} --=x"):
        check(profile, line, images, fresh=False)


@pytest.mark.parametrize("profile", PROFILES)
def test_global_help_and_version(profile, images):
    for line in ("--help", "-h", "-h info", "--help info", "--he", "-V", "--version", "-V info", "-Vh", "-hV",
                 "--ver"):
        check(profile, line, images, fresh=False)


GENERAL = """
-z
--zz
--=x
--
-- info a.raw
-- -f
-
-T
-T nothing
-T nothing --
-T nothing info a.raw
--trace=nothing info a.raw
--tr nothing info a.raw
-x info
foo
info -- -f
info -z -h
info a.raw b.raw
info
info --output=xml a.raw b.raw
info a.raw --output
info -Uf
info -zU a.raw
info a.raw -zU
info -Uz a.raw
info --backing-chain=1 a.raw
info --image-opts=x a.raw
info --f raw a.raw
info --b a.raw
info -b a.raw
resize a.raw -1M
resize a.raw -q +0
resize a.raw +0 -z
resize -1M a.raw
resize --shrink -f raw a.raw -512K
resize a.raw 2M extra
resize -f raw a.raw -- -0
resize -f raw -- a.raw +0
resize a.raw -z
resize -f raw a.raw -1z
resize a.raw -.5k
resize a.raw +1M -1M
resize a.raw -0 -- x
resize -q
resize a.raw
resize
resize --preallocation=foo a.raw
create
create -f qcow2 x.q 1M extra
create -o ,bad x 1M
create -q x -1
create -q x 1.5
create -q x 0x10k
create -q x 99999999999999999999
dd
dd if=a.raw
dd bs=x if=a.raw of=o
dd bs=0 if=a.raw of=o
dd foo=1 if=a.raw of=o
dd count=x if=a.raw of=o
measure
measure a.raw --size 1M
measure -f raw
measure --size 1M a.raw b.raw
measure --size 0x10k
measure --size -1
measure --size ' -1'
measure --size -x
measure --size ''
measure --output=xml --size 1M
convert a.raw
convert -n -o x=y a.raw o
convert --target-image-opts a.raw o
convert -C -c a.raw o
convert -m 99 a.raw o
convert -S 100 a.raw o
convert --s raw a.raw o
convert --o qcow2 a.raw o
amend
amend q.qcow2
amend -o x=1 a.raw b.raw
amend -t bogus -o lazy_refcounts=on q.qcow2
snapshot
snapshot a.raw b.raw
snapshot -l -c x q.qcow2
snapshot -c x -l q.qcow2
snapshot -l q.qcow2 --apply
snapshot --apply=snap1 -l q.qcow2
snapshot --create s3 q.qcow2
compare a.raw
compare --object bogus a.raw a.raw
compare -T bogus a.raw a.raw
rebase
rebase top.qcow2
rebase -b base.qcow2 a.raw b.raw
bitmap
bitmap q.qcow2 bm
bitmap --add q.qcow2
bitmap -g 64k --remove q.qcow2 bm0
bitmap -F qcow2 --add q.qcow2 bmx
bitmap -b q.qcow2 --add q.qcow2 bmx
check
check -r
check -r foo q.qcow2
check --output=xml q.qcow2
commit
commit -t bogus top.qcow2
commit -r x top.qcow2
map -s
map -s x a.raw
map -s -1 a.raw
map --max-length x a.raw
bench -c 1 -d 0 -Z
bench -c 1 -o -1 a.raw
bench -c 1 --pattern -1 a.raw
bench -c 1 -w --flush-interval -1 a.raw
bench -c 1 -s 3G a.raw
bench -c 1 -S 3G a.raw
bench -c 99999999999999999999 a.raw
bench -c '5 ' a.raw
bench -c 0x a.raw
bench -c 1 -t bogus a.raw
bench -c 1 -i bogus a.raw
"""


@pytest.mark.parametrize("profile", PROFILES)
def test_usage_errors_and_parsing_rules(profile, images):
    for line in filter(None, GENERAL.strip().split("\n")):
        check(profile, line, images)


@pytest.mark.parametrize("profile", PROFILES)
def test_success_lines_parse_alike(profile, tmp_path):
    """Each command's working line, in fresh copies of the images: same output, same exit."""
    for name in NAMES:
        if name in ("bench", "snapshot"):
            continue  # timings; the snapshot table's layout is the info output's (tested there)
        d = tmp_path / profile / name
        d.mkdir(parents=True)
        for args in (["-f", "raw", "a.raw", "1M"], ["-f", "qcow2", "base.qcow2", "1M"],
                     ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], ["-f", "qcow2", "q.qcow2", "1M"]):
            assert run_qemu("create", "-q", *args, cwd=d).returncode == 0
        theirs_dir = d / "theirs"
        mine_dir = d / "mine"
        theirs_dir.mkdir()
        mine_dir.mkdir()
        for f in d.glob("*.*"):
            (theirs_dir / f.name).write_bytes(f.read_bytes())
            (mine_dir / f.name).write_bytes(f.read_bytes())
        line = f"{name} {BASE[name]}"
        from cli_support import ORACLES, oracle_path, run_qimg

        theirs = ORACLES[profile](*shlex.split(line), cwd=theirs_dir)
        mine = run_qimg(*shlex.split(line), cwd=mine_dir, profile=profile, prog=oracle_path(profile))
        if name in ("info", "map") and profile == "10.0":
            # the 10.0 output's own changes (child nodes, map's compressed) are tested with info and map
            assert mine.returncode == theirs.returncode == 0
            continue
        assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr), line


def test_option_tables_match_the_oracles_own():
    """Each table, in 10.0, lists the long names qemu-img 10.0's getopt table has, in its order:
    ``--=x`` makes getopt list every option (its ambiguity message)."""
    from cli_support import run_qemu10

    for name in ("", *NAMES):
        cmd = command(name) if name else global_options()
        theirs = run_qemu10(*([name] if name else []), "--=x")
        listed = re.findall(r"'--([a-z-]+)'", theirs.stderr.split("possibilities:")[1].split("\n")[0])
        shorts, longs = cmd.getopt_tables("10.0")
        mine = [entry[0] for entry in longs if len(entry) == 3]  # without qimg's own exact-only names
        assert mine == listed, name


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", ["", *NAMES])
def test_every_letter(profile, name, images):
    """Each letter and digit as an option of each command (and before any command), alone: the
    letters a profile has, whether they take an argument, and what an unknown one says, are
    the oracle's (the tables list only the letters they know; this finds one they miss). No
    file is named, so nothing runs past the usage checks."""
    import string

    for c in string.ascii_letters + string.digits:
        check(profile, f"{name} -{c}".strip(), images, fresh=False)
