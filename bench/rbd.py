"""``convert`` into and out of Ceph RBD, qimg against qemu-img on the same images.

    python bench/rbd.py [--runs 7] [--mib 256] [--qemu-img PATH]

Starts the tests' single-node Ceph (tests/ceph_cluster.py: one monitor, one memstore OSD on
loopback) and stops it at the end. Images: ``full``, ``--mib`` MiB of random bytes (every
object allocated), and ``half``, the same size with every other 4 MiB object random and the
others never written. Cases, each run by qimg and by qemu-img in turn (alternating, so both
see the same machine), whole processes (start-up, the cluster connection and the binding's
import included):

- out: ``convert -O raw rbd:POOL/IMG:conf=C out.raw`` for both images, and ``-O qcow2`` of ``full``;
- in: ``convert -n -f raw -O raw src.raw rbd:POOL/target:conf=C`` into an existing image of the
  same size (every run writes the same bytes).

Printed per case: the medians of wall and CPU (user + system of the child) of each tool, and the
median of the per-pair wall ratios (qimg/qemu-img). Timings only: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MiB = 1 << 20
QIMG = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; sys.exit(main())"]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) of one run of ``cmd``; CPU is the child's user + system time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {p.stderr.decode(errors='replace')}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--qemu-img", default=shutil.which("qemu-img") or "qemu-img")
    args = ap.parse_args()
    from ceph_cluster import Cluster

    cluster = Cluster()
    ceph = cluster.start()
    env = dict(os.environ, **ceph.env())
    qemu = [args.qemu_img]
    size = args.mib * MiB
    try:
        with tempfile.TemporaryDirectory() as tmp:
            full, half, out = Path(tmp) / "full.raw", Path(tmp) / "half.raw", Path(tmp) / "out"
            with open(full, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MiB))
            with open(half, "wb") as f:
                f.truncate(size)
                for off in range(0, size, 8 * MiB):
                    os.pwrite(f.fileno(), os.urandom(min(4 * MiB, size - off)), off)
            for name, src in (("full", full), ("half", half)):
                subprocess.run([*qemu, "convert", "-f", "raw", "-O", "raw", str(src), ceph.rbd(f"bench-{name}")],
                               env=env, check=True, capture_output=True)
            subprocess.run([*qemu, "create", "-f", "raw", ceph.rbd("bench-target"), str(size)],
                           env=env, check=True, capture_output=True)
            cases = {
                "-O raw rbd:full out.raw": ["convert", "-O", "raw", ceph.rbd("bench-full"), f"{out}.raw"],
                "-O raw rbd:half out.raw": ["convert", "-O", "raw", ceph.rbd("bench-half"), f"{out}.raw"],
                "-O qcow2 rbd:full out.qcow2": ["convert", "-O", "qcow2", ceph.rbd("bench-full"), f"{out}.qcow2"],
                "-n full.raw rbd:target": ["convert", "-n", "-f", "raw", "-O", "raw", str(full),
                                           ceph.rbd("bench-target")],
                "-n half.raw rbd:target": ["convert", "-n", "-f", "raw", "-O", "raw", str(half),
                                           ceph.rbd("bench-target")],
            }
            print(f"{args.mib} MiB images, {args.runs} alternating pairs; medians; load average "
                  f"{os.getloadavg()[0]:.1f} at the start")
            print("| convert | qimg wall s | qemu-img wall s | pair ratio (wall) | qimg CPU s | qemu-img CPU s |")
            print("| --- | --- | --- | --- | --- | --- |")
            for name, cmd in cases.items():
                ours, theirs, ratios = [], [], []
                for _ in range(args.runs):
                    a = timed([*QIMG, *cmd], env)
                    b = timed([*qemu, *cmd], env)
                    ours.append(a)
                    theirs.append(b)
                    ratios.append(a[0] / b[0])
                med = statistics.median
                print(f"| `{name}` | {med(w for w, _ in ours):.3f} | {med(w for w, _ in theirs):.3f} | "
                      f"{med(ratios):.2f} | {med(c for _, c in ours):.3f} | {med(c for _, c in theirs):.3f} |",
                      flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
