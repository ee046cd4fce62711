"""Property-based fuzzing of qimg's format drivers through the library API (Hypothesis).

The property: whatever bytes an image holds, opening it, ``info``, reading every allocated
byte, ``map`` and ``check`` (and sometimes a write) raise nothing but :class:`qimg.QimgError`,
and finish in bounded time and memory. Inputs are mutations of a small valid image that
qemu-img and qemu-io make (header fields set to interesting values, bytes flipped in the
metadata sectors, truncation).

By hand, for a longer run that collects every distinct failure instead of stopping::

    python tests/fuzz/run.py --minutes 10                 # every installed format
    python tests/fuzz/run.py --format qcow2 --minutes 30 --seed 7

In the test suite (tests/test_fuzz.py) it runs with ``--examples N --raise``: Hypothesis then
stops at the first failure and shrinks it to a minimal mutation list. Each process caps its
address space (``--mem``) and every example has an alarm (``--example-timeout``).
"""
from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import qimg
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from qimg.errors import QimgError
from qimg.plugins import get_registry

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"
READ_CAP = 32 << 20  # bytes of guest data read per example
EXTENT_CAP = 4096  # block-status runs looked at per example

INTERESTING_32 = [0, 1, 2, 8, 9, 16, 21, 22, 31, 32, 63, 64, 0x7F, 0x80, 0xFF, 0x200, 0x1000, 0xFFFF,
                  0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
INTERESTING_64 = INTERESTING_32 + [1 << 32, 1 << 40, 1 << 48, 1 << 56, 1 << 62, 1 << 63, 2**63 - 1,
                                   2**64 - 1, 2**64 - 512, 0x00FFFFFFFFFFFE00, 0x8000000000000000 | 0x10000,
                                   0x4000000000000000 | 0x10000]


class Hang(Exception):
    """An example ran past its alarm."""


@dataclass
class Finding:
    fmt: str
    kind: str
    where: str
    message: str
    mutations: list = field(default_factory=list)
    truncate: int | None = None
    trace: str = ""

    def key(self) -> tuple[str, str, str]:
        return self.fmt, self.kind, self.where


def make_seed(fmt: str, work: Path) -> bytes | None:
    """A small valid image with allocated, zero and (qcow2) compressed clusters."""
    path = work / f"seed.{fmt}"
    if subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, str(path), "2M"], capture_output=True).returncode:
        return None
    cmds = ["write -P 0x41 0 64k", "write -P 0x42 1M 64k", "write -z 1536k 64k"]
    if fmt == "qcow2":
        cmds.append("write -c -P 0x43 512k 64k")
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(path)], capture_output=True)
    return path.read_bytes()


def hot_offsets(data: bytes) -> list[int]:
    """Offsets in sectors that look like metadata (not one repeated byte) plus the first 4 KiB."""
    hot = list(range(0, min(4096, len(data)), 4))
    for s in range(4096, len(data), 512):
        sec = data[s:s + 512]
        if sec and sec.count(sec[:1]) != len(sec):
            hot.extend(range(s, s + len(sec), 8))
    if len(data) >= 512:  # footers (vpc) and trailing metadata
        hot.extend(range(len(data) - 512, len(data), 4))
    return sorted(set(hot))


def mutations_strategy(data: bytes):
    hot = hot_offsets(data)
    n = max(1, len(data))
    offset = st.one_of(st.sampled_from(hot), st.integers(0, n - 1))
    mutation = st.one_of(
        st.tuples(st.just("u8"), offset, st.integers(0, 255)),
        st.tuples(st.sampled_from(["u32be", "u32le"]), offset, st.sampled_from(INTERESTING_32)),
        st.tuples(st.sampled_from(["u64be", "u64le"]), offset, st.sampled_from(INTERESTING_64)),
        st.tuples(st.just("bits"), offset, st.integers(1, 255)),
    )
    return st.tuples(st.lists(mutation, min_size=1, max_size=6),
                     st.one_of(st.none(), st.none(), st.none(), st.integers(0, n)),
                     st.booleans(),  # probe instead of -f
                     st.integers(0, 9))  # 0: also try a write


_PACK = {"u32be": ">I", "u32le": "<I", "u64be": ">Q", "u64le": "<Q"}


def apply(data: bytes, muts: list, truncate: int | None) -> bytes:
    buf = bytearray(data)
    for kind, off, val in muts:
        if kind == "u8":
            raw = bytes([val])
        elif kind == "bits":
            raw = bytes([buf[off] ^ val]) if off < len(buf) else bytes([val])
        else:
            raw = struct.pack(_PACK[kind], val)
        end = off + len(raw)
        if end > len(buf):
            buf.extend(bytes(end - len(buf)))
        buf[off:end] = raw
    if truncate is not None:
        del buf[truncate:]
    return bytes(buf)


def exercise(path: str, fmt: str | None, write: bool) -> None:
    """Everything a command does with an image; only QimgError may come out."""
    with qimg.open(path, fmt, backing=False) as img:
        try:
            from qimg.ops.info import image_info

            image_info(img)
        except ImportError:
            img.driver.format_specific_info()
        img.driver.snapshot_list()
        size = img.size
        read = 0
        buf = bytearray(1 << 20)
        # map: the chain's block status, bounded in runs
        for i, status in enumerate(img.extents()):
            if i >= EXTENT_CAP:
                break
            assert status.length > 0, "empty block-status run"
        # read sequentially from the start (allocated data and holes alike), bounded
        pos = 0
        while pos < size and read < READ_CAP:
            n = min(len(buf), size - pos)
            img.preadinto(pos, memoryview(buf)[:n])
            pos += n
            read += n
        # and a few far offsets (tables near the end of a huge claimed size)
        for off in {size // 2, max(0, size - 4096)}:
            if off < size:
                img.preadinto(off, memoryview(buf)[:min(4096, size - off)])
        try:
            img.driver.check(set())
        except QimgError:
            pass
    if write:
        with qimg.open(path, fmt, writable=True, backing=False) as img:
            if img.size:
                off = (img.size // 3) & ~511
                n = min(8192, img.size - off)
                img.pwrite(off, b"\x5a" * n)
                img.flush()
                img.preadinto(off, memoryview(bytearray(n)))


def _where(tb) -> str:
    """The innermost qimg frame of a traceback (driver file:function:line)."""
    frames = traceback.extract_tb(tb)
    # the driver's frame names the bug better than the core helper it called
    for fr in reversed(frames):
        if "/plugins/" in fr.filename:
            parts = Path(fr.filename).parts
            return f"{'/'.join(parts[-2:])}:{fr.name}:{fr.lineno}"
    for fr in reversed(frames):
        if "/qimg" in fr.filename or "plugins/" in fr.filename:
            parts = Path(fr.filename).parts
            short = "/".join(parts[-2:])
            return f"{short}:{fr.name}:{fr.lineno}"
    fr = frames[-1] if frames else None
    return f"{fr.filename}:{fr.name}:{fr.lineno}" if fr else "?"


def _on_alarm(signum, frame):
    raise Hang("example ran past its time limit")


def run_one(fmt: str, data: bytes, example, work: Path, timeout: float) -> Finding | None:
    muts, truncate, probe, write_sel = example
    image = apply(data, muts, truncate)
    name = hashlib.sha1(image).hexdigest()[:12]
    path = work / f"case-{name}.{fmt}"
    path.write_bytes(image)
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exercise(str(path), None if probe else fmt, write_sel == 0)
        return None
    except QimgError:
        return None
    except Hang:
        return Finding(fmt, "hang", "?", f"no result within {timeout}s", muts, truncate)
    except BaseException as e:  # noqa: BLE001 - that is what we look for
        if isinstance(e, KeyboardInterrupt):
            raise
        return Finding(fmt, type(e).__name__, _where(e.__traceback__), str(e)[:300], muts, truncate,
                       traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        try:
            path.unlink()
        except OSError:
            pass


def fuzz(fmt: str, work: Path, *, examples: int | None, seconds: float | None, seed_value: int | None,
         raise_first: bool, timeout: float, shrink: bool = False) -> list[Finding]:
    data = make_seed(fmt, work)
    if data is None:
        print(f"{fmt}: qemu-img cannot create it; skipped", file=sys.stderr)
        return []
    found: dict[tuple, Finding] = {}
    deadline = time.monotonic() + seconds if seconds else None
    stats = {"n": 0}

    def make_prop(batch: int, seed_value: int | None):
        @settings(max_examples=batch, deadline=None, database=None,
                  derandomize=seed_value is None and raise_first,
                  suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate])
        @given(mutations_strategy(data))
        def prop(example):
            if deadline is not None and time.monotonic() > deadline:
                return
            stats["n"] += 1
            f = run_one(fmt, data, example, work, timeout)
            if f is None:
                return
            if raise_first:
                raise AssertionError(f"{f.kind} at {f.where}: {f.message}\nmutations={f.mutations} "
                                     f"truncate={f.truncate}\n{f.trace}")
            if f.key() not in found:
                found[f.key()] = f
                print(f"[{fmt}] NEW {f.kind} at {f.where}: {f.message[:160]}", flush=True)

        return seed(seed_value)(prop) if seed_value is not None else prop

    if deadline is None:
        make_prop(examples or 200, seed_value)()
    else:
        # time-boxed: batches with fresh seeds until the deadline
        rnd = seed_value if seed_value is not None else int(time.time())
        while time.monotonic() < deadline:
            make_prop(200, rnd)()
            rnd += 1
    print(f"{fmt}: {stats['n']} examples, {len(found)} distinct failures", file=sys.stderr)
    return list(found.values())


def main(argv: list[str] | None = None) -> int:
    global READ_CAP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", action="append", help="format to fuzz (repeatable; default: all installed)")
    ap.add_argument("--minutes", type=float, help="run this long per format, collecting distinct failures")
    ap.add_argument("--examples", type=int, help="number of examples per format")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--raise", dest="raise_first", action="store_true",
                    help="stop at the first failure and shrink it (what the test suite does)")
    ap.add_argument("--shrink", action="store_true",
                    help="with --raise: let Hypothesis shrink the failing input (slow when it hangs)")
    ap.add_argument("--read-cap", type=int, default=READ_CAP, help="guest bytes read per example")
    ap.add_argument("--mem", type=int, default=2 << 30, help="address-space cap in bytes (default 2 GiB)")
    ap.add_argument("--example-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.mem:
        resource.setrlimit(resource.RLIMIT_AS, (args.mem, args.mem))
    signal.signal(signal.SIGALRM, _on_alarm)
    READ_CAP = args.read_cap
    formats = args.format or get_registry().format_names()
    if args.minutes is None and args.examples is None:
        args.examples = 200
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="qimg-fuzz-") as tmp:
        for fmt in formats:
            work = Path(tmp) / fmt
            work.mkdir()
            try:
                findings += fuzz(fmt, work, examples=args.examples,
                                 seconds=args.minutes * 60 if args.minutes else None,
                                 seed_value=args.seed, raise_first=args.raise_first,
                                 timeout=args.example_timeout, shrink=args.shrink and args.raise_first)
            except AssertionError as e:
                print(f"FAILED {fmt}: {e}", file=sys.stderr)
                return 1
    for f in findings:
        print(f"\n== {f.fmt}: {f.kind} at {f.where}\n   {f.message}\n   mutations={f.mutations} truncate={f.truncate}")
        if f.trace:
            print("   " + f.trace.strip().replace("\n", "\n   "))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
