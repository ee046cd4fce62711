"""Ending every process a test started, also those that left its process group.

QEMU's tests start servers that leave the test's process group and session: `qemu-nbd --fork`
daemonizes (fork and setsid), so killing the group of `check` leaves them running, listening and
holding files open (iotest 162 left qemu-nbd servers behind when qimg could not connect to them,
as a server without --persistent waits for its first client). What every descendant keeps is its
environment: the runner gives each test a variable MARK=token, and after the test (on a time-out,
an interrupt or the runner's own end too) ends every process whose environment carries it.
"""
from __future__ import annotations

import os
import signal
import time

#: the environment variable that marks the processes of one test (or of one run)
MARK = "QIMG_IOTESTS_MARK"
#: the variable marking every process of one runner invocation (inherited by each test's)
RUN_MARK = "QIMG_IOTESTS_RUN"


def marked(name: str, token: str) -> list[int]:
    """The processes (other than this one) whose environment has name=token."""
    needle = f"{name}={token}".encode()
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_marked(name: str, token: str, rounds: int = 50) -> list[int]:
    """SIGKILL every process marked name=token until none is left (one may fork meanwhile);
    returns the pids killed. Bounded: after `rounds` scans it gives up on what resists."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = [p for p in marked(name, token) if not _zombie(p)]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except OSError:
                pass
        time.sleep(0.02)  # let the kernel deliver before the next scan (bounded by rounds)
    return killed


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
