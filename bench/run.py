#!/usr/bin/env python3
"""Benchmark qimg against qemu-img on the same workloads.

Each workload runs both tools alternately (qimg, qemu-img, qimg, ...) ``--reps`` times on the
same inputs; outputs are removed between runs (untimed). For each tool the table shows the
median wall time and the peak RSS of the child (``os.wait4`` rusage), and qimg/qemu-img ratios.

    python3 bench/run.py                 # full size: 4 GiB sparse raw holding 1 GiB of data
    python3 bench/run.py --quick         # small images, one repetition: proves the harness works
    python3 bench/run.py --json out.json --reps 5 --only convert

Inputs are made with qemu-img/qemu-io (the reference tools), so both tools read identical files.
Workloads needing a format qimg does not have installed (qcow2) or a qimg command not yet
installed are skipped with a reason. Exit status: 0 when every workload that was not skipped
ran and succeeded with both tools, 1 when a run failed, 2 when the harness could not run at all.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

#: seconds one child may run before it is killed (and the workload counted as failed)
CHILD_TIMEOUT = 1800


@dataclass
class Sizes:
    raw_size: int       # virtual size of the source raw image
    data_every: int     # one data MiB every this many MiB (4 -> a quarter of the image is data)
    big_size: str       # the "huge sparse qcow2" virtual size
    big_data_mib: int   # MiB of data written into it
    nbd_size: int = 1 * GiB  # the qcow2 qemu-nbd serves (a quarter of it data, as src.raw)
    #: virtual sizes of the metadata-preallocated qcow2 images (every L2 entry allocated: the
    #: metadata walks of check, map, measure and compare), each also with an internal snapshot
    prealloc: tuple[str, str] = ("64G", "256G")
    #: the other formats at (near) the largest size each allows, with a few MiB written: their
    #: whole tables (block map, BAT, grain tables, L1) are walked by info/check/map/measure
    tables: tuple[tuple[str, str], ...] = (("vdi", "16T"), ("vpc", "2040G"), ("vhdx", "64T"), ("vmdk", "2T"),
                                           ("qcow", "16T"), ("qed", "16T"), ("parallels", "16T"))


FULL = Sizes(raw_size=4 * GiB, data_every=4, big_size="1T", big_data_mib=4, nbd_size=1 * GiB)
QUICK = Sizes(raw_size=64 * MiB, data_every=4, big_size="16G", big_data_mib=2, nbd_size=32 * MiB,
              prealloc=("1G", "2G"), tables=(("vdi", "4G"), ("vpc", "4G"), ("vhdx", "4G"), ("vmdk", "4G"),
                                              ("qcow", "4G"), ("qed", "4G"), ("parallels", "4G")))


@dataclass
class Workload:
    name: str
    #: argv (after the program) per tool; "{qimg}"-independent: the same args for both tools
    args: list[str]
    needs_formats: tuple[str, ...] = ()
    #: files to delete before each run
    outputs: tuple[str, ...] = ()
    #: exit codes that count as success (compare: 0 identical)
    ok_codes: tuple[int, ...] = (0,)
    command: str = ""
    baseline: bool = False
    #: protocols qimg needs (nbd) and the NBD exports (see NBD_EXPORTS) the workload reads
    needs_protocols: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    result: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.command and self.args:
            self.command = self.args[0]


# -- inputs -------------------------------------------------------------------------------------

def text_block(seed: int) -> bytes:
    """1 MiB of compressible text (numbered lines of words), different per seed."""
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    line = b" ".join(words[(seed + i) % len(words)] for i in range(12))
    out = bytearray()
    n = 0
    while len(out) < MiB:
        out += b"%08d %d " % (n, seed) + line + b"\n"
        n += 1
    return bytes(out[:MiB])


#: formats whose driver has no check (qemu-img: "This image format does not support checks")
NO_CHECK = ("vpc", "qcow")


def _bytes(size: str) -> int:
    """A size such as "16T" or "2040G" in bytes."""
    return int(size[:-1]) << {"G": 30, "T": 40}[size[-1]]


def make_raw(path: Path, sizes: Sizes) -> None:
    """A sparse raw image: one data MiB every ``data_every`` MiB, alternately random and text."""
    with open(path, "wb") as f:
        f.truncate(sizes.raw_size)
        for k, mib in enumerate(range(0, sizes.raw_size // MiB, sizes.data_every)):
            data = os.urandom(MiB) if k % 2 == 0 else text_block(k)
            os.pwrite(f.fileno(), data, mib * MiB)


def sh(*cmd: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: setup step failed: {' '.join(cmd)}\n{p.stderr}")


#: the NBD exports of the nbd workloads: name -> (qemu-nbd format of nbd.qcow2, transport)
NBD_EXPORTS = {"nbd-qcow2": ("qcow2", "unix"), "nbd-qcow2-tcp": ("qcow2", "tcp"), "nbd-bytes": ("raw", "unix")}
#: running qemu-nbd processes (stopped by main)
SERVERS: list[subprocess.Popen] = []
_PORT: list[int] = []


def nbd_port() -> int:
    """A free loopback port for the TCP export, chosen once."""
    if not _PORT:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        _PORT.append(s.getsockname()[1])
        s.close()
    return _PORT[0]


def nbd_url(work: Path, name: str) -> str:
    if NBD_EXPORTS[name][1] == "tcp":
        return f"nbd://127.0.0.1:{nbd_port()}/{name}"
    return f"nbd+unix:///{name}?socket={work}/{name}.sock"


def start_nbd(work: Path, names: set[str], sizes: Sizes, qemu_img: str) -> None:
    """nbd.qcow2 (a quarter data) served read-only by qemu-nbd: as a disk (-f qcow2) and as the
    qcow2 file's bytes (-f raw, qimg then reads the qcow2 over NBD); ready when it accepts."""
    import socket

    qemu_nbd = shutil.which("qemu-nbd", path=os.path.dirname(qemu_img) + os.pathsep + os.environ.get("PATH", ""))
    if not qemu_nbd:
        raise SystemExit("bench: qemu-nbd not found (Debian package qemu-utils)")
    make_raw(work / "nbd.raw", Sizes(sizes.nbd_size, sizes.data_every, "", 0))
    sh(qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(work / "nbd.raw"), str(work / "nbd.qcow2"))
    (work / "nbd.raw").unlink()
    for name in sorted(names):
        fmt, transport = NBD_EXPORTS[name]
        where = ["-b", "127.0.0.1", "-p", str(nbd_port())] if transport == "tcp" else ["-k", f"{work}/{name}.sock"]
        SERVERS.append(subprocess.Popen([qemu_nbd, "-t", "-r", "-e", "16", "-f", fmt, "-x", name, *where,
                                         str(work / "nbd.qcow2")], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while True:
            if transport == "tcp":
                s, addr = socket.socket(), ("127.0.0.1", nbd_port())
            else:
                s, addr = socket.socket(socket.AF_UNIX), f"{work}/{name}.sock"
            try:
                s.connect(addr)
                break
            except OSError:
                if time.monotonic() > deadline or SERVERS[-1].poll() is not None:
                    raise SystemExit(f"bench: qemu-nbd did not start for {name}") from None
                time.sleep(0.02)
            finally:
                s.close()


def stop_nbd() -> None:
    while SERVERS:
        p = SERVERS.pop()
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def prepare(work: Path, sizes: Sizes, qemu_img: str, qemu_io: str | None, with_qcow2: bool,
            tables: bool = True) -> None:
    print(f"bench: preparing inputs in {work} ...", file=sys.stderr, flush=True)
    make_raw(work / "src.raw", sizes)
    sh("cp", "--sparse=always", str(work / "src.raw"), str(work / "copy.raw"))
    for fmt, size in sizes.tables if tables else ():
        path = work / f"table.{fmt}"
        sh(qemu_img, "create", "-q", "-f", fmt, str(path), size)
        if qemu_io:  # a few MiB at the start, in the middle and near the end
            end = _bytes(size)
            for i, off in enumerate((0, end // 2, end // 8 * 7)):
                sh(qemu_io, "-f", fmt, "-c", f"write -P {0x21 + i} {off} {MiB}", str(path))
    if with_qcow2:
        sh(qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(work / "src.raw"), str(work / "src.qcow2"))
        sh(qemu_img, "create", "-q", "-f", "qcow2", str(work / "small.qcow2"), "1G")
        sh(qemu_img, "create", "-q", "-f", "qcow2", str(work / "big.qcow2"), sizes.big_size)
        if qemu_io:
            # a few MiB scattered over the huge image: start, middle, end
            big = {"1T": 1 << 40, "16G": 16 * GiB}[sizes.big_size]
            for i, off in enumerate((0, big // 2, big - sizes.big_data_mib * MiB // 2)):
                n = max(1, sizes.big_data_mib // 2) * MiB if i else MiB
                sh(qemu_io, "-f", "qcow2", "-c", f"write -P {0x11 * (i + 1)} {off} {n}", str(work / "big.qcow2"))
        for size in sizes.prealloc:
            pre, snap = work / f"pre-{size}.qcow2", work / f"pre-{size}-snap.qcow2"
            sh(qemu_img, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(pre), size)
            sh("cp", "--sparse=always", str(pre), str(snap))
            sh(qemu_img, "snapshot", "-c", "s1", str(snap))


def workloads(work: Path, sizes: Sizes = FULL) -> list[Workload]:
    w = str(work)
    small, large = sizes.prealloc
    q = ("qcow2",)
    return [
        Workload("python3 -c pass (start-up baseline)", [], baseline=True),
        Workload("info raw (start-up)", ["info", f"{w}/src.raw"]),
        Workload("info small qcow2 (start-up)", ["info", f"{w}/small.qcow2"], needs_formats=("qcow2",)),
        Workload("convert raw->raw", ["convert", "-f", "raw", "-O", "raw", f"{w}/src.raw", f"{w}/out.raw"],
                 outputs=("out.raw",)),
        Workload("compare raw raw (identical)", ["compare", "-f", "raw", "-F", "raw", f"{w}/src.raw", f"{w}/copy.raw"]),
        Workload("map --output=json raw", ["map", "--output=json", "-f", "raw", f"{w}/src.raw"]),
        Workload("convert raw->qcow2", ["convert", "-f", "raw", "-O", "qcow2", f"{w}/src.raw", f"{w}/out.qcow2"],
                 needs_formats=("qcow2",), outputs=("out.qcow2",)),
        Workload("convert qcow2->raw", ["convert", "-f", "qcow2", "-O", "raw", f"{w}/src.qcow2", f"{w}/out.raw"],
                 needs_formats=("qcow2",), outputs=("out.raw",)),
        Workload("convert qcow2->qcow2", ["convert", "-f", "qcow2", "-O", "qcow2", f"{w}/src.qcow2",
                                          f"{w}/out.qcow2"], needs_formats=("qcow2",), outputs=("out.qcow2",)),
        Workload("convert -c raw->qcow2 (zlib)", ["convert", "-c", "-f", "raw", "-O", "qcow2", f"{w}/src.raw",
                                                  f"{w}/out.qcow2"], needs_formats=("qcow2",), outputs=("out.qcow2",)),
        *[Workload(f"convert raw->{label}", ["convert", "-f", "raw", "-O", fmt, *extra, f"{w}/src.raw",
                                             f"{w}/out.{fmt}"], needs_formats=(fmt,), outputs=(f"out.{fmt}",))
          for label, fmt, extra in (("vmdk streamOptimized", "vmdk", ["-o", "subformat=streamOptimized"]),
                                    ("vpc", "vpc", []), ("vhdx", "vhdx", []), ("vdi", "vdi", []),
                                    ("qed", "qed", []))],
        Workload("compare qcow2 raw (identical)", ["compare", "-f", "qcow2", "-F", "raw", f"{w}/src.qcow2",
                                                    f"{w}/src.raw"], needs_formats=("qcow2",)),
        Workload("info qcow2", ["info", "-f", "qcow2", f"{w}/src.qcow2"], needs_formats=("qcow2",)),
        Workload("check qcow2", ["check", "-f", "qcow2", f"{w}/src.qcow2"], needs_formats=("qcow2",)),
        Workload("map --output=json qcow2", ["map", "--output=json", "-f", "qcow2", f"{w}/src.qcow2"],
                 needs_formats=("qcow2",)),
        Workload("info huge sparse qcow2", ["info", "-f", "qcow2", f"{w}/big.qcow2"], needs_formats=("qcow2",)),
        Workload("map --output=json huge sparse qcow2", ["map", "--output=json", "-f", "qcow2", f"{w}/big.qcow2"],
                 needs_formats=("qcow2",)),
        Workload("check huge sparse qcow2", ["check", "-f", "qcow2", f"{w}/big.qcow2"], needs_formats=("qcow2",)),
        Workload("convert huge sparse qcow2->qcow2", ["convert", "-f", "qcow2", "-O", "qcow2", f"{w}/big.qcow2",
                                                      f"{w}/out.qcow2"], needs_formats=("qcow2",),
                 outputs=("out.qcow2",)),
        *[Workload(f"check {size} metadata-preallocated qcow2{label}", ["check", "-f", "qcow2", f"{w}/pre-{size}{sfx}.qcow2"],
                   needs_formats=q)
          for size in (small, large) for label, sfx in (("", ""), (" + snapshot", "-snap"))],
        *[Workload(f"map --output=json {size} metadata-preallocated qcow2",
                   ["map", "--output=json", "-f", "qcow2", f"{w}/pre-{size}.qcow2"], needs_formats=q)
          for size in (small, large)],
        Workload(f"measure -O qcow2 {large} metadata-preallocated qcow2",
                 ["measure", "-O", "qcow2", "-f", "qcow2", f"{w}/pre-{large}.qcow2"], needs_formats=q),
        Workload(f"compare {large} metadata-preallocated qcow2 (itself)",
                 ["compare", "-f", "qcow2", "-F", "qcow2", f"{w}/pre-{large}.qcow2", f"{w}/pre-{large}.qcow2"],
                 needs_formats=q),
        # the other formats' largest tables (qcow's map and measure are left out: qemu-img 7.2
        # takes over 10 minutes on 16 TiB: one block-status call per 4 KiB cluster)
        *[Workload(f"{' '.join(cmd[:1])} {size} {fmt} (its largest table)", [*cmd, "-f", fmt, f"{w}/table.{fmt}"],
                   needs_formats=(fmt,))
          for fmt, size in sizes.tables
          for cmd in (["info"], ["check"], ["map", "--output=json"], ["measure", "-O", "qcow2"])
          if not (fmt == "qcow" and cmd[0] in ("map", "measure")) and not (fmt in NO_CHECK and cmd[0] == "check")],
        *[Workload(f"convert {label}->raw", ["convert", "-O", "raw", nbd_url(work, name), f"{w}/out.raw"],
                   needs_formats=fmts, needs_protocols=("nbd",), servers=(name,), outputs=("out.raw",))
          for label, name, fmts in (("nbd+unix:// (qemu-nbd -f qcow2)", "nbd-qcow2", ()),
                                    ("nbd:// TCP (qemu-nbd -f qcow2)", "nbd-qcow2-tcp", ()),
                                    ("qcow2 over nbd+unix:// (qemu-nbd -f raw)", "nbd-bytes", ("qcow2",)))],
    ]


# -- running ------------------------------------------------------------------------------------

# A child's ru_maxrss includes the memory of whatever process exec'd it (the kernel records the
# old address space's high-water mark at exec), so children are started by a small launcher
# that forks them and reports their own peak: GNU time when present, else a minimal Python
# (whose ~8 MiB then is a floor under small readings).
_SPAWN = ("import os, sys\n"
          "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
          "_, st, ru = os.wait4(pid, 0)\n"
          "open(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n"
          "sys.exit(os.waitstatus_to_exitcode(st) % 256)\n")


def rss_method() -> str:
    gnu = shutil.which("time", path="/usr/bin:/bin")
    if gnu and subprocess.run([gnu, "-f", "%M", "true"], capture_output=True).returncode == 0:
        return gnu
    return "python"


RSS_METHOD = rss_method()


#: the children's environment: as installed, Python loads its modules from cached bytecode; an
#: inherited PYTHONDONTWRITEBYTECODE (set on some machines and CI images) would have qimg
#: compile every module on every run and measure that instead (~0.1-0.2 s a run here)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_child(argv: list[str]) -> tuple[int, float, int, str]:
    """Run a child; (exit code, wall seconds, peak RSS KiB, stderr tail)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        if RSS_METHOD == "python":
            launch = [sys.executable, "-I", "-S", "-c", _SPAWN, rss.name, *argv]
        else:
            launch = [RSS_METHOD, "-f", "%M", "-o", rss.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(launch, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=CHILD_ENV)
        # a blocking wait, killed by a watchdog: Popen.wait(timeout) polls with doubling sleeps,
        # which rounds short runs up to 8, 16, 32, 64 ms
        watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            code = proc.wait()
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace")
        lines = rss.read().split()
        peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return code, wall, peak, tail


def qimg_argv() -> list[str]:
    """How users run qimg: the console script beside this Python, else the module."""
    script = Path(sys.executable).parent / "qimg"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0] = 'qimg'; main()"]


def qimg_formats() -> set[str]:
    """Formats and protocols qimg has installed."""
    from qimg.plugins import get_registry

    return set(get_registry().driver_names())


def qimg_has_command(name: str) -> bool:
    return importlib.util.find_spec(f"qimg_cli.commands.{name}") is not None


def skip_reason(wl: Workload, formats: set[str]) -> str | None:
    missing = [f for f in wl.needs_formats if f not in formats]
    if missing:
        return f"qimg format(s) not installed: {', '.join(missing)}"
    missing = [f for f in wl.needs_protocols if f not in formats]
    if missing:
        return f"qimg protocol(s) not installed: {', '.join(missing)}"
    if wl.command and not qimg_has_command(wl.command):
        return f"qimg command '{wl.command}' not installed"
    return None


def bench_one(wl: Workload, tools: dict[str, list[str]], reps: int, work: Path) -> dict:
    res: dict = {name: {"times": [], "rss_kib": [], "failed": None} for name in tools}
    for _ in range(reps):
        for name, prog in tools.items():
            for out in wl.outputs:
                (work / out).unlink(missing_ok=True)
            argv = [sys.executable, "-c", "pass"] if wl.baseline else [*prog, *wl.args]
            code, wall, rss, err = run_child(argv)
            if code not in wl.ok_codes:
                res[name]["failed"] = f"exit {code}: {err.strip()[-500:]}"
                continue
            res[name]["times"].append(wall)
            res[name]["rss_kib"].append(rss)
        if wl.baseline:
            break  # tools are irrelevant: one column is enough
    for out in wl.outputs:
        (work / out).unlink(missing_ok=True)
    for r in res.values():
        r["median_s"] = statistics.median(r["times"]) if r["times"] else None
        r["peak_rss_kib"] = max(r["rss_kib"]) if r["rss_kib"] else None
    q, e = res.get("qimg", {}), res.get("qemu-img", {})
    if q.get("median_s") and e.get("median_s"):
        res["time_ratio"] = q["median_s"] / e["median_s"]
        res["rss_ratio"] = q["peak_rss_kib"] / e["peak_rss_kib"]
    return res


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qv = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"nproc": os.cpu_count(), "cpu": cpu or platform.processor(), "kernel": platform.release(),
            "python": platform.python_version(), "qemu-img": qv[0] if qv else "", "rss_method": RSS_METHOD}


def fmt_table(rows: list[Workload]) -> str:
    head = ("| workload | qimg median s | qemu-img median s | time ratio | qimg peak RSS MiB "
            "| qemu-img peak RSS MiB | RSS ratio |")
    lines = [head, "|" + " --- |" * 7]

    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for wl in rows:
        r = wl.result
        if r.get("skipped"):
            lines.append(f"| {wl.name} | skipped: {r['skipped']} | | | | | |")
            continue
        q, e = r["qimg"], r.get("qemu-img", {})
        mib = lambda k: None if k is None else k / 1024  # noqa: E731
        if wl.baseline:
            lines.append(f"| {wl.name} | {num(q['median_s'], '.3f')} | | | {num(mib(q['peak_rss_kib']), '.0f')} | | |")
            continue
        fail = "; ".join(f"{t} FAILED ({r[t]['failed'][:80]})" for t in ("qimg", "qemu-img") if r[t]["failed"])
        lines.append(
            f"| {wl.name} | {num(q['median_s'], '.3f')} | {num(e.get('median_s'), '.3f')} | "
            f"{num(r.get('time_ratio'), '.2f')} | {num(mib(q['peak_rss_kib']), '.0f')} | "
            f"{num(mib(e.get('peak_rss_kib')), '.0f')} | {num(r.get('rss_ratio'), '.2f')} |"
            + (f" {fail}" if fail else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small images, 1 repetition (harness self-test)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 3, quick 1)")
    ap.add_argument("--json", metavar="FILE", help="write results as JSON")
    ap.add_argument("--workdir", metavar="DIR", help="where inputs go (default: a temporary folder, removed)")
    ap.add_argument("--only", metavar="TEXT", action="append", default=[],
                    help="run only workloads whose name contains TEXT (repeatable)")
    ap.add_argument("--qemu-img", default=shutil.which("qemu-img"), help="qemu-img to compare with")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL

    qemu_img = args.qemu_img
    if not qemu_img or not os.access(qemu_img, os.X_OK):
        print(f"bench: qemu-img not found ({qemu_img}); install qemu-utils", file=sys.stderr)
        return 2
    try:
        formats = qimg_formats()
    except Exception as e:  # noqa: BLE001 - report any failure to load qimg as "cannot run"
        print(f"bench: cannot load qimg in {sys.executable}: {e}", file=sys.stderr)
        return 2
    qemu_io = shutil.which("qemu-io", path=os.path.dirname(qemu_img) + os.pathsep + os.environ.get("PATH", ""))
    tools = {"qimg": qimg_argv(), "qemu-img": [qemu_img]}

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="qimg-bench-", dir=os.environ.get("QIMG_BENCH_TMP"))
        work = Path(tmp.name)
    try:
        rows = workloads(work, sizes)
        if args.only:
            rows = [wl for wl in rows if wl.baseline or any(t in wl.name for t in args.only)]
        prepare(work, sizes, qemu_img, qemu_io, "qcow2" in formats and any("qcow2" in wl.needs_formats for wl in rows),
                tables=any("largest table" in wl.name for wl in rows))
        exports = {s for wl in rows if skip_reason(wl, formats) is None for s in wl.servers}
        if exports:
            start_nbd(work, exports, sizes, qemu_img)
        failed = False
        for wl in rows:
            reason = None if wl.baseline else skip_reason(wl, formats)
            if reason:
                wl.result = {"skipped": reason}
                print(f"bench: skip {wl.name}: {reason}", file=sys.stderr)
                continue
            print(f"bench: {wl.name} ...", file=sys.stderr, flush=True)
            wl.result = bench_one(wl, {"qimg": tools["qimg"]} if wl.baseline else tools, reps, work)
            if any(wl.result[t]["failed"] for t in ("qimg", "qemu-img") if t in wl.result):
                failed = True
        table = fmt_table(rows)
        print(table)
        if args.json:
            doc = {"machine": machine(), "quick": args.quick, "reps": reps,
                   "sizes": {"raw_size": sizes.raw_size, "data_every_mib": sizes.data_every,
                             "big_size": sizes.big_size, "big_data_mib": sizes.big_data_mib},
                   "tools": tools, "workloads": [{"name": wl.name, "args": wl.args, **wl.result} for wl in rows]}
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        ran = [wl for wl in rows if not wl.baseline and not wl.result.get("skipped")]
        if not ran:
            print("bench: no workload could run", file=sys.stderr)
            return 2
        return 1 if failed else 0
    finally:
        stop_nbd()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
