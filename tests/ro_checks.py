"""Shared checks for the formats QEMU only reads (dmg, bochs, cloop): qimg against qemu-img
7.2 and 10.0 on the same file, command by command (info, map, convert, compare, check, the
refused writes), with output, messages and exit codes compared as text.

qemu-img 10.0 adds ``Child node '/file'`` sections (``children`` in JSON) to ``info`` and a
``compressed`` key to ``map``'s JSON for every format; qimg's 10.0 profile does not print them
yet (generic work of the profile, not of these drivers), so they are cut from both outputs
before the comparison: everything else must match.
"""
from __future__ import annotations

import json
import os
import re

import hostile
from conftest import Run, as_qemu


def strip_children(text: str, json_output: bool) -> str:
    """qemu-img 10.0's ``info`` without its child-node sections."""
    if json_output:
        if not text.strip():
            return text
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
        for item in items:
            item.pop("children", None)
        return json.dumps(data, indent=4)
    return re.sub(r"Child node '[^']*':\n(?:    .*\n)*", "", text)


def _strip_ten(args: list[str], run) -> None:
    """Cut the generic 10.0 additions (see the module docstring) from a run's stdout."""
    if run.returncode:
        return
    json_output = "--output=json" in args
    if args[0] == "info":
        run.stdout = strip_children(run.stdout, json_output) + ("\n" if json_output else "")
    elif args[0] == "map" and json_output:
        run.stdout = run.stdout.replace(', "compressed": false', "").replace(', "compressed": true', "")


def data_runs(path) -> list[tuple[int, int]]:
    """(start, end) of a file's data extents (SEEK_DATA/SEEK_HOLE)."""
    out = []
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out


def _first_read_error(stderr: str) -> str:
    """qemu-img convert's copy coroutines (8) each report the read error of their request in
    flight; qimg stops at the first: keep the first of consecutive such lines."""
    lines = stderr.splitlines(keepends=True)
    out = [ln for i, ln in enumerate(lines)
           if not (i and "error while reading at byte" in ln and "error while reading at byte" in lines[i - 1])]
    return "".join(out)


def same_run(mine, theirs, what: str) -> None:
    """Exit code, stdout and stderr of a qimg run equal qemu-img's (program name aside)."""
    theirs = Run(theirs.returncode, theirs.stdout, _first_read_error(theirs.stderr))
    assert (mine.returncode, as_qemu(mine.stdout), as_qemu(mine.stderr)) == \
        (theirs.returncode, theirs.stdout, theirs.stderr), what


def qimg_batch(jobs: list[list[str]], ten: bool = False) -> list[Run]:
    """Run qimg commands in forked children of one warm process (tests/hostile.py's runner:
    no interpreter start-up per command, a memory rlimit and a timeout on each)."""
    results = hostile.run_batch(jobs, env={"QIMG_COMPAT": "10.0" if ten else "7.2"}, timeout=120)
    out = []
    for r in results:
        assert not r.timed_out, f"qimg {' '.join(r.args)} timed out"
        out.append(Run(r.rc, r.stdout, r.stderr))
    return out


def compare_runs(qemu_img, jobs: list[list[str]], ten: bool) -> None:
    """Each job through qimg (batched) and qemu_img: the same output, messages, exit code."""
    for args, mine in zip(jobs, qimg_batch(jobs, ten), strict=True):
        theirs = qemu_img(*args)
        if ten:
            _strip_ten(args, theirs)
            _strip_ten(args, mine)
        same_run(mine, theirs, " ".join(args))


def check_reads_as_qemu(qemu_img, path: str, fmt: str, tmp_path, *, ten: bool = False,
                        expect: bytes | None = None, full: bool = True) -> bytes:
    """info (human, JSON; probed and with -f), map (human, JSON), check, convert -O raw and
    compare of ``path``: qimg's equal ``qemu_img``'s (7.2, or 10.0 with ``ten``). Returns the
    converted bytes (equal to ``expect`` if given). ``full`` False: info, map and convert only."""
    a, b = tmp_path / f"{fmt}-qemu.raw", tmp_path / f"{fmt}-qimg.raw"
    jobs = [["info", "--output=json", path], ["info", "-f", fmt, path], ["map", "-f", fmt, "--output=json", path]]
    if full:
        jobs += [["info", path], ["map", "-f", fmt, path], ["check", "-f", fmt, path],
                 ["compare", "-f", fmt, "-F", "raw", path, str(a)],
                 ["compare", "-s", "-F", fmt, "-f", "raw", str(a), path]]
    theirs = qemu_img("convert", "-f", fmt, "-O", "raw", path, str(a))
    mine = qimg_batch([["convert", "-f", fmt, "-O", "raw", path, str(b)]], ten)[0]
    same_run(mine, theirs, "convert")
    compare_runs(qemu_img, jobs if theirs.returncode == 0 else jobs[:3], ten)
    if theirs.returncode:
        return b""
    data = a.read_bytes()
    assert b.read_bytes() == data
    if expect is not None:
        assert data == expect
    assert data_runs(b) == data_runs(a)  # as sparse as qemu-img leaves it
    os.unlink(a)
    os.unlink(b)
    return data


#: commands that open the image for writing: qemu-img refuses them all at open
WRITERS = (
    ["resize", "{p}", "+1M"],
    ["snapshot", "-c", "s1", "{p}"],
    ["amend", "-o", "size=1M", "{p}"],
    ["commit", "{p}"],
    ["rebase", "-u", "-b", "", "{p}"],
    ["check", "-r", "all", "{p}"],
    ["bitmap", "--add", "{p}", "b0"],
)


def check_writes_refused(qemu_img, path: str, fmt: str, tmp_path, *, ten: bool = False) -> None:
    """Every writing command fails as qemu-img's does, and the file is left as it was."""
    before = open(path, "rb").read()
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(65536))
    new = str(tmp_path / f"new.{fmt}")
    jobs = [[a.replace("{p}", path) for a in t] for t in WRITERS]
    jobs += [["create", "-f", fmt, new, "1M"], ["convert", "-O", fmt, str(src), new],
             ["measure", "-O", fmt, str(src)], ["dd", "-O", fmt, f"if={src}", f"of={new}"],
             ["convert", "-n", "-O", fmt, str(src), path]]
    compare_runs(qemu_img, jobs, ten)
    assert not os.path.exists(new)
    assert open(path, "rb").read() == before
