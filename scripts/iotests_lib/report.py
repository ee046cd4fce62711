"""Comparing a qimg run with the reference: the known differences (scripts/iotests.known),
the tests that cannot be compared and why, the report and its diffs."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from .running import Run, reference_output
from .sources import ROOT, Fatal

KNOWN_FILE = ROOT / "scripts" / "iotests.known"

# Tests that fail with the reference qemu-img too, for reasons outside qimg; the runner prints the
# reason beside each (a test failing with the reference and missing here is listed as such).
# Keys: (qemu version, format or "*", test).
REFERENCE_REASONS: dict[tuple[str, str, str], str] = {
    ("7.2", "*", "125"): "the host file system allocates other amounts than the test expects for preallocated growth",
}
#: a reference failure these words explain is the machine's, not the test's
TIMING = "qemu-img's LUKS key derivation timing under load ('Unable to get accurate CPU usage')"
# ---------------------------------------------------------------------------------------------
# the known differences (scripts/iotests.known) and the report


def load_known(path: Path = KNOWN_FILE) -> dict[tuple[str, str, str], tuple[str, str]]:
    """{(series, format, test): (owner, cause)}; format '*' matches every format."""
    known = {}
    if not path.is_file():
        return known
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].rstrip() if line.lstrip().startswith("#") else line.rstrip()
        if not line.strip():
            continue
        parts = line.split(None, 4)
        if len(parts) < 5:
            raise Fatal(f"{path}: a line needs 'series format test owner cause': {line!r}")
        series, fmt, test, owner, cause = parts
        known[(series, fmt, test)] = (owner, cause)
    return known


def known_for(known, series: str, fmt: str, test: str):
    return known.get((series, fmt, test)) or known.get((series, "*", test))


NAME_BLIND = False  # --name-blind: diffs read qimg's "qimg:" as "qemu-img:"


def diff_text(src: Path, fmt: str, test: str, output: str) -> str:
    iot = src / "tests" / "qemu-iotests"
    if NAME_BLIND:
        output = as_qemu_img(output)
    ref = reference_output(iot, test, fmt)
    expected = ref.read_text(errors="replace").splitlines(keepends=True)
    got = output.splitlines(keepends=True)
    return "".join(difflib.unified_diff(expected, got, str(ref.relative_to(iot)), f"{test} (qimg)", n=2))


def first_difference(src: Path, fmt: str, test: str, output: str) -> str:
    """The first line the output has that the expected output has not (or lacks), for reasons."""
    for line in diff_text(src, fmt, test, output).splitlines()[2:]:
        if line[:1] in "+-" and line[1:].strip():
            return line[:160]
    return ""


#: what the suite's filters make of a qemu-img message they match by the program's name
#: (common.filter's _filter_qemu_img_check), so that qimg's own name is recognised there too
NAME_FILTERS = [("qemu-img: This image format does not support checks", "No errors were found on the image.")]


def as_qemu_img(output: str) -> str:
    """qimg's output as it would read under qemu-img's name, through the name-keyed filters."""
    text = re.sub(r"\bqimg:", "qemu-img:", output)
    for before, after in NAME_FILTERS:
        text = text.replace(before, after)
    return text


#: tests whose output depends on the host: when such lines are all that differs, the test
#: is listed with the reason instead of as a difference (test, lines, reason)
MACHINE_LINES = [
    ("250", re.compile(r"Disk usage delta: \d+"),
     "the file system's own allocation of the file qemu-io wrote (du before the resize) varies by a block"),
]


def machine_dependent(src: Path, fmt: str, test: str, output: str) -> str:
    """The reason when the only lines that differ are ones the host decides."""
    rules = [(pat, why) for t, pat, why in MACHINE_LINES if t == test]
    if not rules or not output:
        return ""
    changed = [line[1:] for line in diff_text(src, fmt, test, output).splitlines()[2:]
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    for pat, why in rules:
        if changed and all(pat.fullmatch(line) for line in changed):
            return why
    return ""


def compare(series: str, src: Path, fmt: str, ref: Run, mine: Run | None, known) -> dict:
    """Sort every test into: same (passes with both), differs (passes with the reference, not
    with qimg: known or new), fixed (a known difference that now passes), outside (cannot be
    compared: not run, or fails with the reference)."""
    out = {"format": fmt, "pass_ref": [], "pass_both": [], "new": [], "known": [], "fixed": [],
           "outside": [], "not_applicable": []}
    for t, r in sorted(ref.results.items()):
        k = known_for(known, series, fmt, t)
        if r.status == "not run":
            if re.search(r"not suitable for this (image format|image protocol)|"
                         r"not (a |)supported (image |)(format|protocol)|format .* not supported|"
                         r"^No qualified output", r.reason):  # (no expected output for this format)
                out["not_applicable"].append(t)
            else:
                out["outside"].append((t, f"not run with qemu-img: {r.reason}"))
            continue
        if r.status == "fail":
            why = (REFERENCE_REASONS.get((series, fmt, t)) or REFERENCE_REASONS.get((series, "*", t))
                   or (TIMING if "Unable to get accurate CPU usage" in r.output else "")
                   or first_difference(src, fmt, t, r.output) or r.reason)
            out["outside"].append((t, f"fails with qemu-img {series} too: {why}"))
            continue
        out["pass_ref"].append(t)
        if mine is None:
            continue
        if t not in mine.results:
            out["outside"].append((t, "no qimg result cached (run it without --cached)"))
            continue
        m = mine.results[t]
        if m.status == "pass":
            out["pass_both"].append(t)
            if k:
                out["fixed"].append((t, k))
        else:
            why = machine_dependent(src, fmt, t, m.output)
            if why:
                out["outside"].append((t, f"differs for a reason of the machine: {why}"))
                continue
            # (a difference in the program's name alone is one too: qimg names itself as invoked)
            item = (t, m.status, m.reason, m.output)
            (out["known"] if k else out["new"]).append(item + ((k,) if k else ()))
    return out


def print_report(series: str, src: Path, fmt: str, cmp: dict, all_diffs: bool, ref_version: str,
                 assumed: int = 0) -> None:
    n_ref, n_both = len(cmp["pass_ref"]), len(cmp["pass_both"])
    note = f" ({assumed} of them not run with it: they pass with qimg, or are known differences with --ci)" if assumed else ""
    print(f"== {fmt}: {n_ref} tests pass with {ref_version}{note}; {n_both} of them pass with qimg; "
          f"{len(cmp['new'])} new and {len(cmp['known'])} known differences")
    for t, status, reason, output, *k in cmp["new"] + cmp["known"]:
        tag = f"known ({k[0][0]}: {k[0][1]})" if k else "NEW"
        print(f"-- {fmt} {t}: {status}, {reason} [{tag}]")
        if (not k or all_diffs) and output:
            print(diff_text(src, fmt, t, output).rstrip("\n"))
        elif (not k or all_diffs) and status == "not run":
            print(f"   (qimg: not run: {reason})")
    for t, (owner, cause) in cmp["fixed"]:
        print(f"-- {fmt} {t}: passes now: remove its line from "
              f"scripts/iotests.known ({owner}: {cause})")
    if cmp["outside"]:
        print(f"   not compared ({len(cmp['outside'])}, reasons outside qimg):")
        for t, why in cmp["outside"]:
            print(f"     {t:28} {why}")
    print(f"   not for {fmt}: {len(cmp['not_applicable'])} tests")
