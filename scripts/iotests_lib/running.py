"""Running QEMU's ``check``, one test at a time, with stand-ins for the emulator and
qemu-storage-daemon and with qemu-img or qimg (a launcher named qemu-img) as QEMU_IMG_PROG."""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .procs import MARK, kill_marked
from .sources import ROOT, Fatal, Oracle, cache_dir

#: set when the runner is asked to stop (SIGINT, SIGTERM): the tests not started are not run
STOPPING = threading.Event()

# ---------------------------------------------------------------------------------------------
# stand-ins: the emulator and qemu-storage-daemon (needed by check, not by qemu-img tests), and
# the qemu-img launcher that runs qimg

STANDIN = r'''#!@PYTHON@
# qimg's scripts/iotests: a stand-in for @WHAT@. It answers check's start-up questions; any other
# start records the calling test as needing @WHAT@ and ends that test (reported "not run").
import os, signal, subprocess, sys

args = sys.argv[1:]
if args[-2:] == ["-machine", "help"]:
    print("Supported machines are:")
    print("pc                   Standard PC (alias of pc-i440fx)")
    print("pc-i440fx            Standard PC (default)")
    sys.exit(0)
if args[-2:] == ["-drive", "format=help"]:
    out = subprocess.run([os.environ["QIMG_IOTESTS_REAL_QEMU_IMG"], "--help"], capture_output=True,
                         text=True).stdout
    # 7.2: "Supported formats: a b c"; 10.0: "Supported image formats:" and indented lines
    lines = out.splitlines()
    fmts = next((l.split(":", 1)[1] for l in lines if l.startswith("Supported formats:")), "")
    if not fmts.strip() and "Supported image formats:" in lines:
        for l in lines[lines.index("Supported image formats:") + 1:]:
            if l.strip():
                fmts += " " + l.strip()
            elif fmts:
                break
    print("Supported formats:" + fmts)
    print("Supported formats (read-only):" + fmts)
    sys.exit(0)

iot = os.environ.get("QIMG_IOTESTS_DIR", "")
pid, test, test_pid = os.getppid(), None, None
while pid > 1 and test is None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
    for a in argv:
        if os.path.isabs(a) and os.path.dirname(a) in (iot, os.path.join(iot, "tests")):
            test, test_pid = os.path.relpath(a, iot), pid
            break
    pid = ppid
log = os.environ.get("QIMG_IOTESTS_STANDIN_LOG")
if log and test:
    with open(log, "a") as f:
        f.write(f"{test}\tneeds @WHAT@\n")
print("@WHAT@ is a stand-in here (qimg's scripts/iotests): this test needs @WHAT@", file=sys.stderr)
if test_pid:
    try:
        os.kill(test_pid, signal.SIGTERM)
    except OSError:
        pass
sys.exit(1)
'''

LAUNCHER = r'''#!@PYTHON@
# qimg's scripts/iotests: qimg standing in for qemu-img (QEMU's tests call it by this name)
import io, os, sys
os.environ.setdefault("QIMG_COMPAT", "@SERIES@")
if os.environ.get("PYTHONUNBUFFERED") and not sys.stdout.isatty():
    # qemu-img's stdout is C stdio, buffered into a pipe until exit (its stderr is not), which
    # decides the order of the lines of "2>&1" outputs; PYTHONUNBUFFERED in the environment
    # would make qimg's stdout write through instead
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding=sys.stdout.encoding, errors=sys.stdout.errors)
from qimg_cli.main import main
main()
'''


def qimg_python() -> str:
    """The Python qimg is installed into: the active venv, else the checkout's .venv, else this one."""
    for cand in (os.path.join(os.environ.get("VIRTUAL_ENV", ""), "bin", "python") if os.environ.get("VIRTUAL_ENV") else "",
                 str(ROOT / ".venv" / "bin" / "python"), sys.executable):
        if cand and os.access(cand, os.X_OK):
            p = subprocess.run([cand, "-c", "import qimg_cli"], capture_output=True)
            if p.returncode == 0:
                return cand
    raise Fatal("qimg is not installed for this Python, the active venv or .venv (README, Set up)")


def make_bin(oracle: Oracle) -> tuple[Path, Path]:
    """(folder of the stand-ins, the qemu-img launcher running qimg)."""
    d = cache_dir() / "bin" / oracle.series
    d.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> Path:
        p = d / name
        if not p.exists() or p.read_text() != text:
            tmp = p.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(p)
        return p

    arch = os.uname().machine
    write(f"qemu-system-{arch}", STANDIN.replace("@PYTHON@", sys.executable).replace("@WHAT@", "a VM (qemu-system)"))
    write("qemu-storage-daemon", STANDIN.replace("@PYTHON@", sys.executable)
          .replace("@WHAT@", f"qemu-storage-daemon (not in Debian's qemu-utils {oracle.series})"))
    python = qimg_python()
    # one launcher per Python qimg is installed into: runs from two checkouts (worktrees) at
    # once each run their own qimg
    qd = d / ("qimg-" + hashlib.sha256(python.encode()).hexdigest()[:12])
    qd.mkdir(exist_ok=True)
    launcher = qd / "qemu-img"
    text = LAUNCHER.replace("@PYTHON@", python).replace("@SERIES@", oracle.series)
    if not launcher.exists() or launcher.read_text() != text:
        launcher.write_text(text)
        launcher.chmod(0o755)
    return d, launcher


# ---------------------------------------------------------------------------------------------
# running check, one test at a time


@dataclass
class Result:
    status: str  # pass, fail, not run
    reason: str = ""
    output: str = ""  # the test's output when it failed
    elapsed: float = 0.0


@dataclass
class Run:
    label: str  # "reference" or "qimg"
    img_version: str
    results: dict[str, Result] = field(default_factory=dict)


def list_tests(iot: Path) -> list[str]:
    tests = sorted(p.name for p in iot.glob("[0-9][0-9][0-9]"))
    tests += sorted(f"tests/{p.name}" for p in (iot / "tests").iterdir()
                    if not p.name.endswith(".out") and (iot / "tests" / (p.name + ".out")).is_file())
    disabled = []
    for t in tests:
        with open(iot / t, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("# group: "):
                    if "disabled" in line.split()[2:]:
                        disabled.append(t)
                    break
    return [t for t in tests if t not in disabled]


#: what in a test's source starts an emulator or qemu-storage-daemon (common.qemu's
#: _launch_qemu, $QEMU, iotests.py's VM and QemuStorageDaemon, QSD_PROG); checked against the
#: stand-ins' findings for 7.2's and 10.0's tests: no test that runs without a VM has one
STARTS_VM = re.compile(r"_launch_qemu|_launch_qsd|\$QEMU\b|\bQEMU_PROG\b|\bQSD_PROG\b|\bqemu_prog\b|"
                       r"\bVM\(|\bQemuStorageDaemon\(")


def starts_vm(iot: Path, test: str) -> str:
    """What in the test's source starts a VM or qemu-storage-daemon ('' when nothing does)."""
    try:
        text = (iot / test).read_text(errors="replace")
    except OSError:
        return ""
    m = STARTS_VM.search(text)
    return m.group(0) if m else ""


#: the longest tests (minutes each), started first when no earlier run gave their times, so that
#: the last minutes are not one long test alone
SLOW = {"026": 200.0, "271": 200.0, "023": 100.0, "261": 80.0, "112": 60.0, "061": 60.0, "154": 60.0,
        "122": 60.0, "178": 55.0, "159": 55.0, "014": 45.0, "080": 40.0, "215": 35.0, "115": 30.0}


def reference_output(iot: Path, test: str, fmt: str) -> Path:
    p = iot / f"{test}.out.{fmt}"
    return p if p.is_file() else iot / f"{test}.out"


LINE = re.compile(r"^(\S+)\s+(pass|fail|not run)\s+\[[^\]]*\]\s+\[[^\]]*\]\s*\S*\s*(?:\(last: [^)]*\))?\s*(.*)$")


def run_one(src: Path, oracle: Oracle, standins: Path, img_prog: Path, fmt: str, proto: str,
            test: str, timeout: float, workdir: Path, extra_env: dict[str, str]) -> Result:
    iot = src / "tests" / "qemu-iotests"
    name = test.replace("/", "-")
    if STOPPING.is_set():
        return Result("not run", "the runner was stopped")
    tdir = workdir / name
    shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True)
    sock = Path(tempfile.mkdtemp(prefix="qimg-iot-"))  # short: UNIX socket paths are limited
    log = tdir / "standin.log"
    env = dict(os.environ)
    env.update(oracle.env)
    env.update(extra_env)
    arch = os.uname().machine
    qsd = oracle.tool("qemu-storage-daemon") or standins / "qemu-storage-daemon"
    env.update({
        "QEMU_PROG": str(standins / f"qemu-system-{arch}"),
        "QEMU_IMG_PROG": str(img_prog),
        "QEMU_IO_PROG": str(oracle.tool("qemu-io")),
        "QEMU_NBD_PROG": str(oracle.tool("qemu-nbd")),
        "QSD_PROG": str(qsd),
        "TEST_DIR": str(tdir / "scratch"),
        "SOCK_DIR": str(sock),
        "QIMG_IOTESTS_DIR": str(iot),
        "QIMG_IOTESTS_STANDIN_LOG": str(log),
        "QIMG_IOTESTS_REAL_QEMU_IMG": str(oracle.bindir / "qemu-img"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # every process of this test, also one that leaves its session (qemu-nbd --fork), is
        # found by this and ended with the test (procs.py)
        MARK: f"{os.getpid()}-{workdir.name}-{name}",
    })
    env.pop("QEMU_IOTESTS_REGEN", None)
    cmd = ["nice", "-n", "10", sys.executable, "check", f"-{fmt}", "--color=off"]
    if proto != "file":
        cmd.append(f"-{proto}")
    cmd.append(test.removeprefix("tests/"))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=iot, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        timed_out = True
    finally:
        # the test's own leftovers end with it: its process group, then whatever left it
        # (a daemonized qemu-nbd) by the mark in its environment
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        kill_marked(MARK, env[MARK])
        shutil.rmtree(sock, ignore_errors=True)
    elapsed = round(time.monotonic() - t0, 1)
    text = out.decode(errors="replace")
    # 7.2 writes TEST_DIR/NNN.out.bad, 10.0 a folder per format, protocol and test
    bad = next((tdir / "scratch").rglob(f"{os.path.basename(test)}.out.bad"), None)
    output = bad.read_text(errors="replace") if bad is not None else ""
    standin = ""
    if log.is_file():
        first = log.read_text().strip().split("\n", 1)[0]
        standin = first.split("\t", 1)[1] if "\t" in first else ""
    if standin:
        res = Result("not run", standin, elapsed=elapsed)
    elif timed_out:
        res = Result("fail", f"timed out after {timeout:.0f} s", output, elapsed)
    else:
        res = None
        for line in re.split(r"[\r\n]+", text):
            m = LINE.match(line)
            if m and m.group(1) == os.path.basename(test):
                res = Result(m.group(2), m.group(3).strip(), "", elapsed)
        if res is None:
            res = Result("fail", "check printed no result: " + text.strip()[-500:], output, elapsed)
        if res.status == "fail":
            res.output = output
            if res.reason.startswith("output mismatch"):
                res.reason = "output mismatch"
    shutil.rmtree(tdir, ignore_errors=True)
    return res


def run_all(src: Path, oracle: Oracle, standins: Path, img_prog: Path, label: str, fmt: str,
            proto: str, tests: list[str], jobs: int, timeout: float, quiet: bool,
            extra_env: dict[str, str], order: dict[str, float]) -> Run:
    run = Run(label, oracle.img_version if label == "reference" else "qimg")
    # in the temporary folder: some tests refuse a TEST_DIR with characters other than
    # [-_a-zA-Z0-9/] (a '.' as in ~/.cache)
    workdir = Path(tempfile.mkdtemp(prefix=f"qimg_iotests_{label}_{fmt}_"))
    lock = threading.Lock()
    done = 0
    # the longest first, so the last minutes are not one long test alone
    todo = sorted(tests, key=lambda t: -(order.get(t) or SLOW.get(t, 0.0)))
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
            futs = {ex.submit(run_one, src, oracle, standins, img_prog, fmt, proto, t, timeout,
                              workdir, extra_env): t for t in todo}
            for fut in concurrent.futures.as_completed(futs):
                t = futs[fut]
                r = fut.result()
                run.results[t] = r
                with lock:
                    done += 1
                    if not quiet:
                        print(f"  [{label} {fmt} {done}/{len(tests)}] {t:28} {r.status:8} {r.elapsed:6.1f}s"
                              f"  {r.reason[:60]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def load_cached(path: Path, img_version: str) -> Run | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("img_version") != img_version:
        return None
    results = {t: Result(**r) for t, r in data["results"].items()}
    for r in results.values():
        r.reason = r.reason.split("\n", 1)[0]  # (one line each)
    return Run(data["label"], data["img_version"], results)


def save_run(path: Path, run: Run) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # runs at once (the suite's and one's own) each write whole
    tmp.write_text(json.dumps({"label": run.label, "img_version": run.img_version,
                               "results": {t: asdict(r) for t, r in sorted(run.results.items())}}, indent=1))
    tmp.replace(path)
