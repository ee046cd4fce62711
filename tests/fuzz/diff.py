"""Differential fuzzing of the qimg CLI against qemu-img, on field-aware mutants (mutants.py).

Every mutant runs through the read commands (info, info --output=json, check, map, convert,
compare, dd, measure), the same commands in untrusted mode, and the write commands on copies
(commit of an overlay into it, snapshot, bitmap, resize, amend, rebase -u and safe rebase,
convert -n into it). qimg runs in a forked child under a memory limit and a timeout
(tests/hostile.py), qemu-img (7.2 unless ``--qemu 10.0``) in a subprocess, each on its own copy.
A *finding* is:

* ``crash``: a traceback or "internal error"; ``hang``: the timeout; ``memory``: out of memory;
* ``opened``: in untrusted mode, a file other than the image (and the command's output) opened;
* ``verdict``: another exit status than qemu-img's;
* ``output``: both succeed, but stdout or the converted bytes differ;
* ``damage``: a write command succeeded and the image no longer reads back (with qemu-img) as
  the command wrote it, or qemu-img cannot read what it could before;
* ``message``: both fail, with other words (reported; a failure only with ``--strict``).

Findings listed in :data:`KNOWN` (with the reason) are reported as known, not as failures.

By hand::

    python tests/fuzz/diff.py                          # every format, a few mutants per variant
    python tests/fuzz/diff.py --format vmdk --all      # every mutant of every vmdk variant
    python tests/fuzz/diff.py --minutes 60 --qemu 10.0 # a long campaign (docs/security.md)

The test suite runs a bounded, deterministic sample (tests/test_fuzz.py).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import hostile  # noqa: E402
import mutants as M  # noqa: E402

QEMU_TIMEOUT = 20.0
#: images larger than this get no write commands (a copy per command would cost too much)
WRITE_SIZE_CAP = 64 << 20
PATTERN_AT = (0, 4096)

READ = ("info", "info-json", "check", "map", "convert", "compare", "dd", "measure")
UNTRUSTED = ("u-info", "u-map", "u-convert")
WRITE = ("commit", "snapshot", "bitmap", "resize", "amend", "rebase-u", "rebase", "convert-n")
#: formats whose write-safety belongs to another helper until their overlap check lands
WRITE_CHECKS_OFF: set[str] = set()

#: known differences from qemu-img: (mutant id glob, command glob, kind, reason)
KNOWN: list[tuple[str, str, str, str]] = [
    ("*", "*", "message", "wording of a refusal both make (reported, not a failure without --strict)"),
    ("*", "*", "strict", "qimg refuses any write over its metadata, also where qemu-img's shows no harm"),
    ("vmdk/*/capacity=0x8*", "*", "verdict", "a sparse capacity of 2^63 sectors or more: qemu-img's sector count goes "
     "negative and its commands fail one by one (check passes); qimg refuses the image"),
    ("qcow2/*/L2?1?=0x2000*", "convert-n", "verdict", "an L2 entry without COPIED names the refcount block: "
     "freeing it on copy-on-write drops QEMU's cached refcount block with its pending updates, and a later "
     "allocation lands on metadata (overlap, exit 1); qimg keeps the refcounts and writes (check reports the entry)"),
    ("vmdk/*/compress_algorithm=*", "commit", "verdict", "a version-3 sparse extent without compression: "
     "qemu-img's commit reopens the base read-write without its read-only check; qimg opens it writable"),
]


@dataclass
class Finding:
    mutant: str
    command: str
    kind: str
    detail: str
    known: str = ""

    def line(self) -> str:
        tag = f" [known: {self.known}]" if self.known else ""
        return f"{self.kind:8} {self.mutant} :: {self.command}: {self.detail}{tag}"


@dataclass
class Run:
    rc: int
    out: str
    err: str
    timed_out: bool = False
    opened: list[str] = field(default_factory=list)


def _classify(command: str, rc: int) -> int:
    """The exit status to match: the code itself (qemu-img fails with 1 and check/compare have
    their own codes; any other code, such as an errno, is a difference)."""
    return rc


def _args(command: str, fmt: str, image: str, size: int) -> list[str]:
    f = ["-f", fmt]
    return {
        "info": ["info", *f, image],
        "info-json": ["info", "--output=json", *f, image],
        "check": ["check", *f, image],
        "map": ["map", "--output=json", *f, image],
        "convert": ["convert", *f, "-O", "raw", image, "out.raw"],
        "compare": ["compare", *f, "-F", fmt, image, image],
        "dd": ["dd", *f, "-O", "raw", f"if={image}", "of=out.dd", "bs=64k", "count=8"],
        "measure": ["measure", *f, "-O", "qcow2", image],
        "u-info": ["--untrusted", "info", *f, image],
        "u-map": ["--untrusted", "map", "--output=json", *f, image],
        "u-convert": ["--untrusted", "convert", *f, "-O", "raw", image, "out-u.raw"],
        "commit": ["commit", "-f", "qcow2", "ov.qcow2"],
        "snapshot": ["snapshot", "-c", "s1", image],
        "bitmap": ["bitmap", "--add", image, "b0"],
        "resize": ["resize", *f, image, "+1M"],
        "amend": ["amend", *f, "-o", f"size={size + (1 << 20)}", image],
        "rebase-u": ["rebase", "-u", *f, "-b", "rebase.raw", "-F", "raw", image],
        "rebase": ["rebase", *f, "-b", "", image],
        "convert-n": ["convert", "-n", "-f", "raw", "-O", fmt, "src.raw", image],
    }[command]


def _pattern(size: int) -> bytes:
    unit = bytes((i * 7 + 1) & 0xFF for i in range(4096))
    out = bytearray(unit * (size // 4096 + 1))[:size]
    for z in range(64 << 10, size, 256 << 10):  # zero runs for zero detection
        out[z:z + (64 << 10)] = bytes(min(64 << 10, size - z))
    return bytes(out)


class Campaign:
    def __init__(self, work: Path, qemu: str = "7.2", strict: bool = False) -> None:
        self.work = work
        self.version = qemu
        self.strict = strict
        if qemu == "7.2":
            self.qemu_img, self.qemu_env = M.QEMU_IMG, dict(os.environ)
        else:
            d = os.environ.get("QIMG_QEMU10_DIR") or os.path.expanduser("~/.cache/qimg/qemu-10.0")
            self.qemu_img = os.path.join(d, "usr", "bin", "qemu-img")
            self.qemu_env = dict(os.environ, QEMU_MODULE_DIR=os.path.join(d, "usr/lib/x86_64-linux-gnu/qemu"))
        self.findings: list[Finding] = []
        self._rank: dict[str, int] = {}
        self.count = 0
        self.qimg_env = {"QIMG_COMPAT": qemu, "QIMG_UNTRUSTED": ""}

    # -- running ------------------------------------------------------------------------------
    def _qemu(self, args: list[str], cwd: Path) -> Run:
        try:
            p = subprocess.run([self.qemu_img, *args], capture_output=True, cwd=cwd, env=self.qemu_env,
                               timeout=QEMU_TIMEOUT)
            return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            return Run(-9, "", "", timed_out=True)

    def _readback(self, fmt: str, image: str, cwd: Path) -> bytes | None:
        """The guest content as qemu-img 7.2 reads it (None: it cannot)."""
        p = subprocess.run([M.QEMU_IMG, "convert", "-f", fmt, "-O", "raw", image, "readback.raw"],
                           capture_output=True, cwd=cwd, timeout=QEMU_TIMEOUT)
        if p.returncode:
            return None
        data = (cwd / "readback.raw").read_bytes()
        (cwd / "readback.raw").unlink()
        return data

    def _check_rank(self, fmt: str, image: str, cwd: Path) -> int:
        """How bad qemu-img 7.2's check finds the image: 0 clean (or no check), 1 leaks,
        2 corruptions, 3 it cannot check or open it."""
        p = subprocess.run([M.QEMU_IMG, "check", "-f", fmt, image], capture_output=True, cwd=cwd,
                           timeout=QEMU_TIMEOUT)
        return {0: 0, 63: 0, 3: 1, 2: 2}.get(p.returncode, 3)

    def _sound(self, m: M.Mutant, d: Path, expected: bytes | None, before_rank: int) -> bool:
        """A write's result reads back as expected and checks no worse than before."""
        got = self._readback(m.fmt, m.seed.image, d)
        if got is None or (expected is not None and got != expected):
            return False
        return self._check_rank(m.fmt, m.seed.image, d) <= before_rank

    def _materialize(self, m: M.Mutant, d: Path) -> None:
        d.mkdir(parents=True)
        for name, data in m.seed.files.items():
            (d / name).write_bytes(data)
        (d / m.target).write_bytes(m.data())
        (d / M.SENTINEL).write_bytes(b"sentinel: nothing may read this in untrusted mode\n")

    def _prepare_write(self, command: str, m: M.Mutant, d: Path, size: int) -> None:
        """The files a write command needs beside the image (made with qemu-img 7.2)."""
        fmt, image = m.fmt, m.seed.image
        if command == "commit":
            subprocess.run([M.QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", image,
                            "-F", fmt, "ov.qcow2", str(size)], capture_output=True, cwd=d)
            a, n = PATTERN_AT
            n = max(0, min(n, size - a))
            subprocess.run([M.QEMU_IO, "-f", "qcow2", "-c", f"write -P 90 {a} {n}", "ov.qcow2"],
                           capture_output=True, cwd=d)
        elif command == "convert-n":
            (d / "src.raw").write_bytes(_pattern(size))
        elif command == "rebase-u":
            base = d / "base.raw"
            (d / "rebase.raw").write_bytes(base.read_bytes() if base.exists() else bytes(size))

    def _expected(self, command: str, before: bytes, size: int) -> bytes | None:
        """The guest content a write command leaves (None: not predictable; the verdict counts)."""
        if command == "commit":
            a, n = PATTERN_AT
            n = max(0, min(n, size - a))
            return before[:a] + bytes([90]) * n + before[a + n:]
        if command == "convert-n":
            return _pattern(size)
        if command in ("resize", "amend"):
            return before + bytes(1 << 20)
        if command in ("snapshot", "bitmap", "rebase"):
            return before
        # rebase -u: the new backing file shows where the old one (maybe none) did
        return None

    def run_mutants(self, ms: list[M.Mutant], deadline: float | None = None, chunk: int = 8) -> None:
        """Mutants in chunks: qimg's jobs of a chunk in one warm runner, qemu-img's beside it."""
        for i in range(0, len(ms), chunk):
            if deadline is not None and time.monotonic() > deadline:
                return
            self._run_chunk(ms[i:i + chunk])

    def _plan(self, m: M.Mutant) -> tuple[Path, list, dict, bytes | None]:
        """Materialize a mutant's folders; its jobs (command, args, qemu dir, qimg dir)."""
        key = hashlib.sha1(m.id.encode()).hexdigest()[:12]
        root = self.work / key
        if root.exists():
            shutil.rmtree(root)
        q_dir, m_dir = root / "q", root / "m"
        self._materialize(m, q_dir)
        shutil.copytree(q_dir, m_dir)
        fmt, image = m.fmt, m.seed.image
        info = self._qemu(["info", "--output=json", "-f", fmt, image], q_dir)
        try:
            size = int(json.loads(info.out)["virtual-size"]) if info.rc == 0 else 4 << 20
        except (ValueError, KeyError):
            size = 4 << 20
        before = self._readback(fmt, image, q_dir) if 0 < size <= WRITE_SIZE_CAP else None
        self._rank[m.id] = self._check_rank(fmt, image, q_dir) if before is not None else 3
        jobs = [(c, _args(c, fmt, image, size), q_dir, m_dir) for c in READ + UNTRUSTED]
        expected: dict[str, bytes | None] = {}
        if 0 < size <= WRITE_SIZE_CAP:
            for c in WRITE:
                wq, wm = root / f"w-{c}-q", root / f"w-{c}-m"
                shutil.copytree(q_dir, wq)
                self._prepare_write(c, m, wq, size)
                shutil.copytree(wq, wm)
                expected[c] = self._expected(c, before, size) if before is not None else None
                jobs.append((c, _args(c, fmt, image, size), wq, wm))
        return root, jobs, expected, before

    def _run_chunk(self, ms: list[M.Mutant]) -> None:
        plans = [(m, *self._plan(m)) for m in ms]
        flat = [(m, job) for m, _root, jobs, _e, _b in plans for job in jobs]
        specs = []
        for _m, (c, args, _q, md) in flat:
            spec = {"args": args, "cwd": str(md), "env": dict(self.qimg_env),
                    "audit_out": str(md / f".opened-{c}.json")}
            specs.append(spec)
        with ThreadPoolExecutor(3) as pool:
            qimg_future = pool.submit(hostile.run_batch, specs)
            qemu_runs = list(pool.map(lambda mj: None if mj[1][0].startswith("u-") else self._qemu(mj[1][1], mj[1][2]),
                                      flat))
            results = qimg_future.result()
        info = {m.id: (e, b) for m, _root, _jobs, e, b in plans}
        for (m, (c, args, qd, md)), spec, res, q in zip(flat, specs, results, qemu_runs, strict=True):
            self.count += c == READ[0]
            r = Run(res.rc, res.stdout, res.stderr, res.timed_out)
            if "audit_out" in spec and os.path.exists(spec["audit_out"]):
                r.opened = json.loads(Path(spec["audit_out"]).read_text())
            expected, before = info[m.id]
            self._judge(m, c, args, r, q, qd, md, expected.get(c), before)
        for _m, root, _jobs, _e, _b in plans:
            shutil.rmtree(root, ignore_errors=True)

    # -- judging ------------------------------------------------------------------------------
    def _add(self, m: M.Mutant, command: str, kind: str, detail: str) -> None:
        f = Finding(m.id, command, kind, detail[:700])
        for pat, cmd, k, reason in KNOWN:
            if fnmatch.fnmatch(m.id, pat) and fnmatch.fnmatch(command, cmd) and fnmatch.fnmatch(kind, k):
                f.known = reason
                break
        if kind == "verdict" and re.search(r"qimg's limit|qimg supports at most|at most \d+ supported|is too large \(",
                                           detail):
            f.known = f.known or "a table above qimg's memory cap (qemu-img allocates it; qimg refuses by design)"
        if kind == "verdict" and "disagree; cannot allocate" in detail:
            f.known = f.known or ("vdi: qimg does not allocate a block outside the block map's range or over a "
                                  "block in use (qemu-img does; its check then reports the entry)")
        if kind == "verdict" and "COWD" in detail:
            f.known = f.known or "qimg refuses VMDK3 (COWD) sparse extents that qemu-img reads"
        if kind in ("verdict", "output", "damage") and m.fmt not in M.VARIANTS:
            f.known = f.known or f"{m.fmt}'s compatibility is its plugin's (safety findings still fail)"
        self.findings.append(f)

    def _judge(self, m, command, args, r: Run, q: Run | None, qd: Path, md: Path, expected, before) -> None:
        err = r.err
        if r.timed_out:
            if not (q is not None and q.timed_out):
                self._add(m, command, "hang", f"no result in {hostile.TIMEOUT}s")
            return
        if "Traceback" in err or "internal error" in err or r.rc < 0 or r.rc == 99:
            self._add(m, command, "crash", err.strip()[-600:] or f"exit {r.rc}")
            return
        if "MemoryError" in err or "out of memory" in err.lower() or "Cannot allocate memory" in err:
            self._add(m, command, "memory", err.strip()[-300:])
            return
        if command.startswith("u-"):
            self._judge_opened(m, command, r, md, "untrusted mode")
            return
        assert q is not None
        if q.timed_out or q.rc < 0:
            return  # qemu-img hung or crashed (an assertion): there is no verdict to match
        if command in READ and q.rc != 0 and q.err.startswith(f"qemu-img: Could not open '{m.seed.image}': ") \
                and "backing" not in q.err \
                and not (m.fmt == "vmdk" and m.seed.files[m.seed.image][:4] != b"KDMV"):
            # qemu-img rejects the image itself: qimg must not have followed a name inside it
            # (a VMDK descriptor is the exception: QEMU opens its extents line by line)
            self._judge_opened(m, command, r, md, "a rejected image")
        mine, theirs = _classify(command, r.rc), _classify(command, q.rc)
        if mine != theirs and command in WRITE and r.rc != 0 and q.rc == 0 and before is not None:
            # qimg refused a write qemu-img made: right if qemu-img's write damaged the image;
            # a refusal to write over metadata is qimg's rule even where no damage shows
            if not self._sound(m, qd, expected, self._rank[m.id]):
                return
            if "Preventing invalid write on metadata" in err:
                self._add(m, command, "strict", f"qimg refuses a write over metadata qemu-img makes: {err.strip()}")
                return
        if mine != theirs:
            self._add(m, command, "verdict", f"qimg exit {r.rc} ({err.strip()[:300]}), qemu-img exit {q.rc} "
                                              f"({q.err.strip()[:300]})")
        elif r.rc == 0 and q.rc == 0:
            if command in ("convert", "dd"):
                out = "out.raw" if command == "convert" else "out.dd"
                if (md / out).read_bytes() != (qd / out).read_bytes():
                    self._add(m, command, "output", "the converted bytes differ")
            elif command in READ and _as_qemu(r.out) != q.out:
                self._add(m, command, "output", _first_diff(_as_qemu(r.out), q.out))
        elif r.rc != 0 and command in READ and _as_qemu(err) != q.err:
            self._add(m, command, "message", f"qimg: {err.strip()[:250]!r} qemu-img: {q.err.strip()[:250]!r}")
        if command in WRITE and r.rc == 0 and m.fmt not in WRITE_CHECKS_OFF and before is not None:
            got = self._readback(m.fmt, m.seed.image, md)
            n = len(self.findings)
            if got is None:
                self._add(m, command, "damage", "qemu-img cannot read the image qimg wrote (it could before)")
            elif expected is not None and got != expected:
                at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                          min(len(got), len(expected)))
                self._add(m, command, "damage", f"the image reads back wrong from byte {at} "
                                                f"(sizes {len(got)}/{len(expected)})")
            elif self._check_rank(m.fmt, m.seed.image, md) > self._rank[m.id]:
                self._add(m, command, "damage", "qemu-img check finds the image worse than before the write")
            if len(self.findings) > n and q.rc == 0 and not self.findings[-1].known \
                    and not self._sound(m, qd, expected, self._rank[m.id]):
                # qemu-img's own write gives the same result: the hostile table aliases guest data
                # with other guest data or with metadata the format rewrites (a vmdk CID)
                self.findings[-1].known = "qemu-img's own write reads back the same way (not sound either)"

    def _judge_opened(self, m, command, r: Run, md: Path, why: str) -> None:
        allowed = {os.path.realpath(md / n) for n in (m.seed.image, "out-u.raw", "out.raw", "out.dd")}
        for p in r.opened:
            real = os.path.realpath(p)
            if real in allowed or _system_path(real) or os.path.basename(real).startswith(".opened-"):
                continue
            self._add(m, command, "opened", f"{why}: opened {p}")
            return

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.known and (self.strict or f.kind != "message")]


_SYSTEM = None


def _system_path(path: str) -> bool:
    """Files any Python run reads (the interpreter, its modules, this checkout's sources)."""
    global _SYSTEM
    if _SYSTEM is None:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(HERE.parents[1])}
        roots |= {p for p in sys.path if p and os.path.isdir(p)}
        _SYSTEM = tuple(sorted({os.path.realpath(r) + os.sep for r in roots}))
    if path.startswith(("/proc/", "/sys/", "/dev/null", "/dev/urandom", "/etc/localtime", "/usr/share/zoneinfo")):
        return True
    return path.startswith(_SYSTEM)


def _as_qemu(text: str) -> str:
    return text.replace("qimg:", "qemu-img:").replace("qimg ", "qemu-img ")


def _first_diff(a: str, b: str) -> str:
    for x, y in zip(a.splitlines(), b.splitlines(), strict=False):
        if x != y:
            return f"qimg {x[:200]!r} vs qemu-img {y[:200]!r}"
    return f"qimg {len(a)} chars vs qemu-img {len(b)} chars"


def select(formats: list[str] | None, variants: list[str] | None, per_variant: int | None, work: Path,
           rng_seed: int = 0) -> list[M.Mutant]:
    from qimg.plugins import get_registry

    names = formats or get_registry().format_names()
    out: list[M.Mutant] = []
    for fmt in names:
        for v in M.VARIANTS.get(fmt, [M.Variant(fmt, "plain")]):
            if variants and v.name not in variants:
                continue
            seed = M.make_seed(v, work / "seeds")
            if seed is None:
                continue
            out += M.sample(M.mutants(seed, rng_seed), per_variant)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", action="append", help="format (repeatable; default: every installed one)")
    ap.add_argument("--variant", action="append", help="seed variant (repeatable)")
    ap.add_argument("--per-variant", type=int, default=6, help="mutants per variant (a deterministic spread)")
    ap.add_argument("--all", action="store_true", help="every mutant")
    ap.add_argument("--minutes", type=float, help="stop after this long (with --all: a long campaign)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random mutations")
    ap.add_argument("--match", help="only mutants whose id matches this regular expression")
    ap.add_argument("--qemu", choices=("7.2", "10.0"), default="7.2", help="the oracle and qimg's profile")
    ap.add_argument("--strict", action="store_true", help="differences in wording are failures too")
    ap.add_argument("--show-known", action="store_true", help="list the known differences found as well")
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qimg-diff-") as tmp:
        work = Path(args.work or tmp)
        ms = select(args.format, args.variant, None if args.all else args.per_variant, work, args.seed)
        if args.match:
            ms = [m for m in ms if re.search(args.match, m.id)]
        camp = Campaign(work / "cases", args.qemu, args.strict)
        deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
        t0 = time.monotonic()
        camp.run_mutants(ms, deadline)
        shown = [f for f in camp.findings if args.show_known or not f.known]
        for f in shown:
            print(f.line())
        bad = camp.failures()
        print(f"{camp.count} mutants in {time.monotonic() - t0:.0f}s: {len(camp.findings)} findings, "
              f"{len(bad)} failures", file=sys.stderr)
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
