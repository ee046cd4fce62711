"""``convert -O raw`` of a qcow2 holding 256 MiB of data from http://, ssh:// and nbd+unix://
(nginx, OpenSSH's sshd on loopback and ``qemu-nbd -r -f qcow2``, started here with the tests'
helpers and stopped after), qimg against qemu-img, alternating, medians of ``--runs`` runs.

    python bench/remote.py [--runs 3] [--data-mib 256] [--qemu-img PATH]

qemu-img's curl driver often stalls forever when convert keeps several reads in flight over
HTTP (7.2 and 10.0); its HTTP runs use ``-m 1`` unless ``--qemu-parallel`` is given, and every
run is bounded by ``--timeout`` seconds (a stalled run is reported, not waited for).
"""
from __future__ import annotations

import argparse
import os
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


def make_image(folder: Path, data_mib: int, qemu_img: str) -> Path:
    raw = folder / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(2 * data_mib * MiB)
        for i in range(data_mib):  # data in every other MiB: runs of data and holes
            os.pwrite(f.fileno(), os.urandom(MiB), 2 * i * MiB)
    img = folder / "src.qcow2"
    subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(img)], check=True)
    raw.unlink()
    return img


def timed(cmd: list[str], env: dict, timeout: float) -> float | None:
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {p.stderr.decode(errors='replace')}")
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-mib", type=int, default=256)
    ap.add_argument("--qemu-img", default=shutil.which("qemu-img") or "qemu-img")
    ap.add_argument("--qemu-parallel", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    from nbd_servers import start_server
    from ssh_server import SshServer
    from web_server import WebServer

    qimg = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"]
    with tempfile.TemporaryDirectory(prefix="qimg-bench-remote-") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        img = make_image(work / "www", args.data_mib, args.qemu_img)
        servers = []
        try:
            web = WebServer(str(work / "www"), str(work))
            servers.append(web)
            (work / "sshd").mkdir()
            ssh = SshServer(str(work / "sshd"))
            servers.append(ssh)
            nbd = start_server("qemu-nbd", img, work, fmt="qcow2", readonly=True)
            servers.append(nbd)
            env = dict(os.environ, SSH_AUTH_SOCK=ssh.agent_sock)
            out = str(work / "out.raw")
            cases = {"http": f"{web.url}/src.qcow2", "ssh": ssh.url(str(img)), "nbd": nbd.url}
            print(f"convert -O raw of a qcow2 with {args.data_mib} MiB of data; median of {args.runs} runs")
            print(f"{'source':8} {'qimg s':>8} {'qemu-img s':>11} {'ratio':>6}")
            for label, url in cases.items():
                mine, theirs = [], []
                qflags = [] if label != "http" or args.qemu_parallel else ["-m", "1"]
                for _ in range(args.runs):
                    mine.append(timed([*qimg, "convert", "-O", "raw", url, out], env, args.timeout))
                    theirs.append(timed([args.qemu_img, "convert", *qflags, "-O", "raw", url, out], env,
                                        args.timeout))
                m = statistics.median(t for t in mine if t is not None) if any(mine) else None
                good = [t for t in theirs if t is not None]
                q = statistics.median(good) if good else None
                stalled = len(theirs) - len(good)
                ratio = f"{m / q:6.2f}" if m and q else "   n/a"
                note = f"  (qemu-img stalled {stalled}x)" if stalled else ""
                note += "  (qemu-img -m 1)" if qflags else ""
                print(f"{label:8} {m or float('nan'):8.2f} {q or float('nan'):11.2f} {ratio}{note}")
        finally:
            for s in servers:
                s.stop()


if __name__ == "__main__":
    main()
