"""Hostile images, per driver, and a sandboxed runner for qimg commands on them.

``build(fmt, workdir)`` returns :class:`Hostile` cases for one format: the generic ones every
format gets (empty, truncated, random, smashed header fields of a valid image made by qemu-img)
plus targeted ones for formats whose layout we know (qcow2, qed: absurd sizes, tables past the
end or over the header, overlapping metadata, backing loops, self-backing, very deep chains).
A new driver is covered by the generic cases as soon as it is registered and qemu-img knows its
format name.

``run_batch(jobs)`` runs qimg CLI invocations the way a hostile input deserves: each in a forked
child of one warm Python process (cheap), under an address-space rlimit and a wall-clock
timeout, capturing stdout, stderr, exit code and elapsed time. Run by hand::

    python tests/hostile.py qcow2 /tmp/hostile     # writes the corpus and prints the cases
"""
from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"

#: memory cap of one command on a hostile image (address space; Python itself needs ~100 MiB)
MEM_LIMIT = 1 << 30
#: wall-clock limit of one command on a (small) hostile image
TIMEOUT = 15.0


@dataclass
class Hostile:
    name: str
    path: str
    fmt: str | None  # passed as -f; None lets qimg probe
    note: str = ""
    #: qemu-img 7.2 never finishes on it (backing loops): only info is compared
    qemu_hangs: bool = False


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU_IMG, *args], capture_output=True)


def _valid_image(fmt: str, path: Path, size: str = "4M") -> bool:
    """A small valid image of ``fmt`` with some data, made by qemu-img/qemu-io (for the
    formats qemu-img only reads, by the test-side writers of tests/ro_writers.py)."""
    import ro_writers

    if fmt in ro_writers.VALID:
        path.write_bytes(ro_writers.VALID[fmt]())
        return True
    if _qemu_img("create", "-q", "-f", fmt, str(path), size).returncode != 0:
        return False
    cmds = ["write -P 0x41 0 64k", "write -P 0x42 1M 128k", "write -z 3M 64k"]
    if fmt == "qcow2":
        cmds.append("write -c -P 0x43 2M 64k")
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(path)], capture_output=True)
    return True


def _patch(src: Path, dst: Path, edits: list[tuple[int, bytes]], truncate: int | None = None) -> None:
    data = bytearray(src.read_bytes())
    for off, b in edits:
        if off + len(b) > len(data):
            data.extend(bytes(off + len(b) - len(data)))
        data[off:off + len(b)] = b
    if truncate is not None:
        del data[truncate:]
    dst.write_bytes(bytes(data))


# -- generic cases: any format --------------------------------------------------------------

def generic_cases(fmt: str, work: Path) -> list[Hostile]:
    out: list[Hostile] = []
    rng = random.Random(f"hostile-{fmt}")

    def add(name: str, data: bytes, force_fmt: bool = True, note: str = "") -> None:
        if any(c.name == f"{fmt}-{name}" for c in out):
            return  # the seeded smash drew the same field and value twice
        p = work / f"{fmt}-{name}.img"
        p.write_bytes(data)
        out.append(Hostile(f"{fmt}-{name}", str(p), fmt if force_fmt else None, note))

    add("empty", b"", note="zero-length file")
    add("random-4k", rng.randbytes(4096))
    add("random-1m", rng.randbytes(1 << 20))
    add("zeros-64k", bytes(65536))
    add("ones-64k", b"\xff" * 65536)
    valid = work / f"{fmt}-valid.img"
    if not _valid_image(fmt, valid):
        return out
    out.append(Hostile(f"{fmt}-valid", str(valid), fmt, "control: a valid image"))
    data = valid.read_bytes()
    for cut in sorted({1, 100, 512, 65536, len(data) // 2, len(data) - 1}):
        if 0 < cut < len(data):
            add(f"truncated-{cut}", data[:cut], note="valid image cut short")
    add("probed-truncated-512", data[:512], force_fmt=False)
    # the magic survives, the rest of the header is absurd
    add("header-ff", data[:8] + b"\xff" * 504 + data[512:])
    add("header-7f", data[:8] + (b"\x7f" + b"\xff" * 7) * 63 + data[512:])
    add("header-zero", data[:8] + bytes(504) + data[512:])
    # single smashed 32/64-bit fields at seeded positions of the first 512 bytes (and the footer
    # for formats that keep metadata there)
    for _ in range(6):
        pos = rng.randrange(4, 504) & ~3
        val = rng.choice([b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"\x00" * 8, b"\x80" + bytes(7),
                          b"\xff\xff\xff\xf0" + bytes(4), b"\x00\x00\x00\x40" * 2])
        add(f"smash-{pos}-{val.hex()[:4]}", data[:pos] + val + data[pos + 8:])
    if len(data) > 1024:
        add("footer-ff", data[:-512] + b"\xff" * 512)
        for i in range(3):
            pos = len(data) - 512 + (rng.randrange(8, 500) & ~3)
            add(f"footer-smash-{i}", data[:pos] + b"\xff" * 8 + data[pos + 8:])
    # random bytes sprayed over the metadata area
    for i in range(2):
        buf = bytearray(data)
        for _ in range(32):
            p = rng.randrange(8, min(len(buf), 1 << 18))
            buf[p] = rng.randrange(256)
        add(f"spray-{i}", bytes(buf))
    return out


# -- qcow2 ----------------------------------------------------------------------------------

def _q(fmt: str, v: int) -> bytes:
    return struct.pack(fmt, v)


def qcow2_cases(work: Path) -> list[Hostile]:
    base = work / "qcow2-base.img"
    if not _valid_image("qcow2", base):
        return []
    data = base.read_bytes()
    l1_off = struct.unpack(">Q", data[40:48])[0]
    rt_off = struct.unpack(">Q", data[48:56])[0]
    l1e0 = struct.unpack(">Q", data[l1_off:l1_off + 8])[0]
    l2_off = l1e0 & 0x00FFFFFFFFFFFE00
    rb_off = struct.unpack(">Q", data[rt_off:rt_off + 8])[0]
    out: list[Hostile] = []

    def add(name: str, edits: list[tuple[int, bytes]], note: str = "", truncate: int | None = None) -> None:
        p = work / f"qcow2-{name}.qcow2"
        _patch(base, p, edits, truncate)
        out.append(Hostile(f"qcow2-{name}", str(p), "qcow2", note))

    # header fields (docs/interop/qcow2.rst offsets)
    add("version-1", [(4, _q(">I", 1))])
    add("version-99", [(4, _q(">I", 99))])
    for cb in (0, 8, 22, 31, 63, 255, 0xFFFFFFFF):
        add(f"cluster-bits-{cb}", [(20, _q(">I", cb))], "cluster_bits out of range")
    add("size-max", [(24, _q(">Q", 2**63 - 1))], "virtual size far beyond L1")
    add("size-2^64-1", [(24, _q(">Q", 2**64 - 1))])
    add("size-huge-consistent-l1", [(24, _q(">Q", 1 << 55)), (36, _q(">I", 1 << 26))], "huge l1_size")
    add("l1-size-ffffffff", [(36, _q(">I", 0xFFFFFFFF))])
    add("l1-size-7fffffff", [(36, _q(">I", 0x7FFFFFFF))])
    add("l1-size-0", [(36, _q(">I", 0))])
    add("l1-offset-past-eof", [(40, _q(">Q", 1 << 40))])
    add("l1-offset-unaligned", [(40, _q(">Q", l1_off + 8))])
    add("l1-offset-0", [(40, _q(">Q", 0))], "L1 over the header")
    add("l1-offset-max", [(40, _q(">Q", 2**64 - 512))])
    add("reftable-past-eof", [(48, _q(">Q", 1 << 40))])
    add("reftable-at-header", [(48, _q(">Q", 0))], "refcount table over the header")
    add("reftable-unaligned", [(48, _q(">Q", rt_off + 24))])
    add("reftable-clusters-huge", [(56, _q(">I", 0xFFFFFFFF))])
    add("reftable-clusters-0", [(56, _q(">I", 0))])
    add("reftable-overlaps-l1", [(48, _q(">Q", l1_off))], "overlapping metadata")
    add("snapshots-huge", [(60, _q(">I", 0xFFFFFFFF)), (64, _q(">Q", 1 << 40))])
    add("snapshots-at-header", [(60, _q(">I", 4)), (64, _q(">Q", 0))])
    add("backing-name-huge", [(8, _q(">Q", 512)), (16, _q(">I", 0xFFFFFFFF))])
    add("backing-name-past-eof", [(8, _q(">Q", 1 << 40)), (16, _q(">I", 16))])
    add("backing-name-over-header", [(8, _q(">Q", 4)), (16, _q(">I", 64))])
    add("crypt-method-7", [(32, _q(">I", 7))])
    add("incompat-unknown", [(72, _q(">Q", 1 << 40))])
    add("incompat-all", [(72, _q(">Q", 2**64 - 1))])
    add("incompat-data-file-no-ext", [(72, _q(">Q", 4))], "external data file bit without a name")
    add("refcount-order-7", [(96, _q(">I", 7))])
    add("refcount-order-huge", [(96, _q(">I", 0xFFFFFFFF))])
    add("header-length-huge", [(100, _q(">I", 0xFFFFFFFF))])
    add("header-length-small", [(100, _q(">I", 8))])
    add("header-ext-huge", [(112, _q(">I", 0x12345678)), (116, _q(">I", 0xFFFFFFF0))], "extension length past cluster")
    add("compression-type-9", [(104, b"\x09"), (72, _q(">Q", 8))])
    # tables
    add("l1-entry-past-eof", [(l1_off, _q(">Q", (1 << 63) | (1 << 45)))])
    add("l1-entry-at-header", [(l1_off, _q(">Q", 1 << 63))], "L2 table over the header")
    add("l1-entry-unaligned", [(l1_off, _q(">Q", l1e0 + 512))])
    add("l1-entry-reserved-bits", [(l1_off, _q(">Q", l1e0 | 0x1FF))])
    add("l1-entry-is-reftable", [(l1_off, _q(">Q", (1 << 63) | rt_off))], "L2 = refcount table")
    if l2_off:
        add("l2-entry-past-eof", [(l2_off, _q(">Q", (1 << 63) | (1 << 45)))])
        add("l2-entry-at-header", [(l2_off, _q(">Q", 1 << 63))])
        add("l2-entry-unaligned", [(l2_off, _q(">Q", (1 << 63) | 0x10200))])
        add("l2-entry-is-l1", [(l2_off, _q(">Q", (1 << 63) | l1_off))], "data cluster = L1")
        add("l2-compressed-garbage", [(l2_off, _q(">Q", (1 << 62) | 0x3FFFFFFFFFFFFFFF))])
        add("l2-compressed-past-eof", [(l2_off, _q(">Q", (1 << 62) | (1 << 44)))])
        add("l2-all-ff", [(l2_off, b"\xff" * 4096)])
    add("refblock-past-eof", [(rt_off, _q(">Q", 1 << 45))])
    add("refblock-at-header", [(rt_off, _q(">Q", 0x200))])
    if rb_off:
        add("refcounts-zero", [(rb_off, bytes(64))], "every refcount zero: leaks/corruptions")
        add("refcounts-ff", [(rb_off, b"\xff" * 64)])
    add("truncated-after-l1", [], truncate=l1_off + 8)
    out += _backing_cases("qcow2", work)
    return out


def _make_backed(fmt: str, path: Path, backing: str, bfmt: str | None = None) -> bool:
    args = ["create", "-q", "-f", fmt, "-u", "-b", backing, "-F", bfmt or fmt, str(path), "4M"]
    return _qemu_img(*args).returncode == 0


def _backing_cases(fmt: str, work: Path) -> list[Hostile]:
    """Backing loops a->b->a, self-backing, a chain deeper than any limit."""
    out: list[Hostile] = []
    d = work / f"{fmt}-chains"
    d.mkdir(exist_ok=True)
    a, b = d / f"loop-a.{fmt}", d / f"loop-b.{fmt}"
    if _make_backed(fmt, a, b.name) and _make_backed(fmt, b, a.name):
        out.append(Hostile(f"{fmt}-backing-loop", str(a), fmt, "a -> b -> a", qemu_hangs=True))
    s = d / f"self.{fmt}"
    if _make_backed(fmt, s, s.name):
        out.append(Hostile(f"{fmt}-self-backing", str(s), fmt, "a -> a", qemu_hangs=True))
    s2 = d / f"self-abs.{fmt}"
    if _make_backed(fmt, s2, str(s2)):
        out.append(Hostile(f"{fmt}-self-backing-abs", str(s2), fmt))
    # deep chain: one template with a fixed-width name, patched copies (fast)
    depth = 300
    tmpl = d / f"deep-template.{fmt}"
    name0 = "deep-0000." + fmt
    if _make_backed(fmt, tmpl, name0):
        raw = tmpl.read_bytes()
        at = raw.find(name0.encode())
        if at > 0:
            for i in range(depth):
                nxt = f"deep-{i + 1:04d}.{fmt}".encode()
                (d / f"deep-{i:04d}.{fmt}").write_bytes(raw[:at] + nxt + raw[at + len(nxt):])
            last = d / f"deep-{depth:04d}.{fmt}"
            _qemu_img("create", "-q", "-f", fmt, str(last), "4M")
            out.append(Hostile(f"{fmt}-deep-chain", str(d / f"deep-0000.{fmt}"), fmt, f"{depth} levels"))
    return out


# -- qed ------------------------------------------------------------------------------------

def qed_cases(work: Path) -> list[Hostile]:
    base = work / "qed-base.img"
    if not _valid_image("qed", base):
        return []
    data = base.read_bytes()
    l1_off = struct.unpack("<Q", data[40:48])[0]
    out: list[Hostile] = []

    def add(name: str, edits: list[tuple[int, bytes]], note: str = "") -> None:
        p = work / f"qed-{name}.qed"
        _patch(base, p, edits)
        out.append(Hostile(f"qed-{name}", str(p), "qed", note))

    for cs in (0, 1, 4096 + 1, 1 << 31, 0xFFFFFFFF):
        add(f"cluster-size-{cs}", [(4, _q("<I", cs))])
    for ts in (0, 3, 17, 0xFFFFFFFF):
        add(f"table-size-{ts}", [(8, _q("<I", ts))])
    add("header-size-huge", [(12, _q("<I", 0xFFFFFFFF))])
    add("header-size-0", [(12, _q("<I", 0))])
    add("features-unknown", [(16, _q("<Q", 1 << 40))])
    add("l1-past-eof", [(40, _q("<Q", 1 << 44))])
    add("l1-at-header", [(40, _q("<Q", 0))])
    add("l1-unaligned", [(40, _q("<Q", l1_off + 8))])
    add("size-max", [(48, _q("<Q", 2**64 - 1))])
    add("size-huge", [(48, _q("<Q", 1 << 60))])
    add("backing-name-huge", [(16, _q("<Q", 1)), (56, _q("<I", 512)), (60, _q("<I", 0xFFFFFFFF))])
    add("backing-name-past-eof", [(16, _q("<Q", 1)), (56, _q("<I", 0x7FFFFFFF)), (60, _q("<I", 16))])
    add("l1-entry-past-eof", [(l1_off, _q("<Q", 1 << 44))])
    add("l1-entry-at-header", [(l1_off, _q("<Q", 0x10000 - 0x10000 + 4096))])
    add("l1-entry-unaligned", [(l1_off, _q("<Q", 0x10000 + 17))])
    out += _backing_cases("qed", work)
    return out


SPECIFIC = {"qcow2": qcow2_cases, "qed": qed_cases}


def build(fmt: str, work: Path) -> list[Hostile]:
    """Every hostile case for ``fmt`` (generic plus targeted), written under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    cases = generic_cases(fmt, work)
    if fmt in SPECIFIC:
        cases += SPECIFIC[fmt](work)
    return cases


# -- the sandboxed runner -------------------------------------------------------------------

_CHILD = r"""
import io, json, os, resource, signal, sys, time
from qimg_cli.main import main
import qimg_cli.parse, qimg_cli.prog, qimg_cli.tables  # warm: imported once, shared by every forked child
jobs = json.loads(sys.stdin.read())
jobs_warm = ["qimg_cli.commands." + j["args"][0] for j in jobs["jobs"] if j["args"] and j["args"][0][:1] != "-"]
jobs_warm = sorted(set(jobs_warm)) + ["qimg.ops.info", "qimg.ops.map", "qimg.ops.check", "qimg.ops.convert",
                                      "qimg.ops.compare", "qimg_cli.common"]
import importlib
for _mod in jobs_warm:
    try:
        importlib.import_module(_mod)
    except Exception:
        pass
try:
    from qimg.plugins import get_registry
    for _entry in get_registry().formats.values():
        try:
            _entry.load()
        except Exception:
            pass
except Exception:
    pass
mem, timeout = jobs["mem"], jobs["timeout"]
# warm every lazy import by running one job of each command in this process, output discarded
_seen_cmds = set()
_so, _se = sys.stdout, sys.stderr
for job in jobs["jobs"]:
    if job["args"] and job["args"][0] not in _seen_cmds and not job.get("env") and not job.get("cwd"):
        _seen_cmds.add(job["args"][0])
        sys.stdout = sys.stderr = open(os.devnull, "w")
        try:
            main(job["args"])
        except BaseException:
            pass
        finally:
            sys.stdout, sys.stderr = _so, _se
results = []
for job in jobs["jobs"]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_r); os.close(err_r)
            os.dup2(out_w, 1); os.dup2(err_w, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True,
                                           errors="surrogateescape")
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True,
                                           errors="surrogateescape")
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            for k, v in job.get("env", {}).items():
                os.environ[k] = v
            if job.get("cwd"):
                os.chdir(job["cwd"])
            opened = []
            if job.get("audit_out"):
                # every file this run opens (the audit hook sees open() and os.open())
                def _hook(event, args, _opened=opened):
                    if event == "open" and args and isinstance(args[0], (str, bytes)):
                        _opened.append(os.path.abspath(os.fsdecode(args[0])))
                sys.addaudithook(_hook)
            sys.argv = ["qimg", *job["args"]]
            code = 0
            try:
                main(job["args"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            sys.stdout.flush(); sys.stderr.flush()
            if job.get("audit_out"):
                record = json.dumps(opened).encode()  # before opening the record itself
                fd = os.open(job["audit_out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, record)
                os.close(fd)
            os._exit(code)
        except BaseException as e:
            try:
                os.write(2, f"Traceback: runner child died: {type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(99)
    os.close(out_w); os.close(err_w)
    import selectors
    sel = selectors.DefaultSelector()
    bufs = {out_r: bytearray(), err_r: bytearray()}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = False
    open_fds = set(bufs)
    while open_fds:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        for key, _ in sel.select(min(left, 1.0)):
            chunk = os.read(key.fd, 65536)
            if chunk:
                if len(bufs[key.fd]) < (1 << 20):
                    bufs[key.fd] += chunk
            else:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
    _, status = os.waitpid(pid, 0)
    for fd in bufs:
        os.close(fd)
    elapsed = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    results.append({"rc": rc, "stdout": bufs[out_r].decode(errors="replace"),
                    "stderr": bufs[err_r].decode(errors="replace"), "timed_out": timed_out,
                    "elapsed": elapsed})
sys.stdout.write(json.dumps(results))
"""


@dataclass
class Result:
    args: list[str]
    rc: int
    stdout: str
    stderr: str
    timed_out: bool
    elapsed: float


def run_batch(jobs: list, *, mem: int = MEM_LIMIT, timeout: float = TIMEOUT,
              env: dict[str, str] | None = None) -> list[Result]:
    """Run ``qimg <args>`` for each job in a forked, rlimited child; see the module docstring.

    A job is an argument list, or a dict with ``args`` and optionally ``env``, ``cwd`` and
    ``audit_out`` (a file that receives the JSON list of every path the run opened).
    """
    specs = [dict(j) if isinstance(j, dict) else {"args": j} for j in jobs]
    for spec in specs:
        spec["env"] = {**(env or {}), **spec.get("env", {})}
    jobs = [spec["args"] for spec in specs]
    payload = json.dumps({"mem": mem, "timeout": timeout, "jobs": specs})
    p = subprocess.run([sys.executable, "-c", _CHILD], input=payload, capture_output=True, text=True,
                       timeout=timeout * len(jobs) + 60)
    if p.returncode != 0:
        raise RuntimeError(f"hostile runner failed: {p.stderr[-2000:]}")
    return [Result(a, **r) for a, r in zip(jobs, json.loads(p.stdout), strict=True)]


def commands_for(case: Hostile, out_dir: Path) -> list[list[str]]:
    """The qimg (and qemu-img) invocations tried on every case."""
    f = ["-f", case.fmt] if case.fmt else []
    ff = ["-F", case.fmt] if case.fmt else []
    out = str(out_dir / (Path(case.path).name + ".out.raw"))
    return [
        ["info", "--output=json", *f, case.path],
        ["check", *f, case.path],
        ["map", "--output=json", *f, case.path],
        ["convert", *f, "-O", "raw", case.path, out],
        ["compare", *f, *ff, case.path, case.path],
    ]


if __name__ == "__main__":
    fmt_arg = sys.argv[1] if len(sys.argv) > 1 else "qcow2"
    work_dir = Path(sys.argv[2] if len(sys.argv) > 2 else f"/tmp/qimg-hostile-{fmt_arg}")
    for c in build(fmt_arg, work_dir):
        print(f"{c.name:40} {c.fmt or '(probe)':6} {c.path}  {c.note}")
