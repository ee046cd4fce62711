"""A real single-node Ceph for the rbd and s3 protocol tests.

tests/ceph/ceph-up.sh starts one monitor, one OSD on memstore (RAM, used only as filled) and a
radosgw S3 endpoint on loopback, with no authentication, all state under one folder; ceph-down.sh
stops the daemons by their recorded PIDs and removes that folder. (Both scripts are the
workplace's tested recipe from ../shared/ceph, kept here so a bare checkout runs the tests.)

One cluster serves the whole test run, shared by the pytest-xdist workers: the first worker that
needs it starts it (under a file lock), each worker registers itself as a user, and the last user
to finish stops it. Ports are picked free at start, so concurrent test runs (other checkouts on
the same machine) do not collide. Use the `ceph` fixture (tests/conftest.py), which gives a
`Ceph` with the config file, the pool and the S3 endpoint and keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
UP = os.path.join(HERE, "ceph", "ceph-up.sh")
DOWN = os.path.join(HERE, "ceph", "ceph-down.sh")
PACKAGES = "ceph-mon ceph-osd ceph-common radosgw python3-rados python3-rbd"
# an OSD capacity far above what the tests write; memstore takes RAM only as objects fill it
MEMSTORE_BYTES = 2 << 30


@dataclass(frozen=True)
class Ceph:
    conf: str  # the ceph.conf clients name (conf=...)
    pool: str  # a replicated pool with the rbd application enabled
    s3_endpoint: str  # http://127.0.0.1:PORT (radosgw)
    s3_access_key: str
    s3_secret_key: str
    mon_host: str  # what conf's "mon host" says, for the mon_host= spelling

    def rbd(self, image: str, *, extra: str = "") -> str:
        """qemu-img's rbd: filename of an image in the test pool."""
        return f"rbd:{self.pool}/{image}:conf={self.conf}{extra}"

    def env(self) -> dict[str, str]:
        """The environment for the S3 tools: endpoint and keys as AWS's variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _missing() -> list[str]:
    return [b for b in ("ceph-mon", "ceph-osd", "ceph", "rados", "rbd", "monmaptool", "radosgw") if not shutil.which(b)]


def need_ceph() -> None:
    """Skip (fail with CI set) when the Ceph daemons are not installed."""
    missing = _missing()
    if missing:
        msg = f"Ceph is not installed ({', '.join(missing)} missing: apt-get install {PACKAGES})"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the Ceph tests are required")
        pytest.skip(msg)


def _bind_ok(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def _ports() -> dict[str, str]:
    """Free ports for the monitor (two: msgr v2 and v1), radosgw, and a range of 100 the other
    daemons pick from: below 30000, under the kernel's ephemeral range (32768 up), so no client
    socket takes them meanwhile; a random start so parallel test runs on one machine differ."""
    first = uuid.uuid4().int % 80
    for i in range(80):
        start = 10000 + ((first + i) % 80) * 250
        if all(_bind_ok(p) for p in (start, start + 1, start + 2)):
            return {"CEPH_MON_PORT": str(start), "CEPH_RGW_PORT": str(start + 2), "CEPH_PORT_MIN": str(start + 100)}
    pytest.fail("no free port range for Ceph between 10000 and 30000")


def _run_id() -> str:
    # pytest-xdist gives every worker of one run the same id; a plain run is its own run
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"


class Cluster:
    """The run's shared cluster: start() registers this worker (starting the daemons if they are
    not up), stop() unregisters it (stopping them when no worker is left)."""

    def __init__(self) -> None:
        self.base = os.path.join(tempfile.gettempdir(), f"qimg-ceph-{_run_id()}")
        self.state = os.path.join(self.base, "state")
        self.users = os.path.join(self.base, "users")
        self.info = os.path.join(self.base, "info.env")
        self.me = os.path.join(self.users, f"{os.getpid()}")

    @contextlib.contextmanager
    def _locked(self):
        path = os.path.join(self.base, "lock")
        while True:
            os.makedirs(self.users, exist_ok=True)
            f = open(path, "w")
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            # the last user's stop() removed the folder while this worker waited: lock anew
            f.close()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return dict(
            os.environ, CEPH_STATE=self.state, CEPH_MEMSTORE_BYTES=str(MEMSTORE_BYTES), CEPH_POOL="rbd", **extra
        )

    def reap_orphans(self) -> None:
        """Stop the clusters of earlier test runs that were killed before their last worker's
        stop() (a timeout, ^C): a folder whose lock is free and whose registered workers are all
        gone. A run starting or using its cluster holds the lock or has a live worker."""
        for base in glob.glob(os.path.join(tempfile.gettempdir(), "qimg-ceph-*")):
            if base == self.base or not os.path.exists(os.path.join(base, "lock")):
                continue
            with open(os.path.join(base, "lock"), "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # starting or stopping right now
                users = os.path.join(base, "users")
                names = os.listdir(users) if os.path.isdir(users) else []
                if any(os.path.exists(f"/proc/{n}") for n in names):
                    continue
                env = dict(os.environ, CEPH_STATE=os.path.join(base, "state"))
                subprocess.run([DOWN], env=env, capture_output=True, timeout=120, check=False)
                shutil.rmtree(base, ignore_errors=True)

    def start(self) -> Ceph:
        self.reap_orphans()
        with self._locked():
            ports: dict[str, str] = {}
            if os.path.exists(self.info):
                with open(self.info) as f:
                    ports = dict(line.strip().split("=", 1) for line in f if line.startswith("CEPH_") and "PORT" in line)
            if not ports:
                ports = _ports()
            try:
                out = subprocess.run(
                    [UP], env=self._env(ports), capture_output=True, text=True, timeout=300, check=False
                )
            except subprocess.TimeoutExpired:
                subprocess.run([DOWN], env=self._env(ports), capture_output=True, timeout=120, check=False)
                pytest.fail("Ceph did not start within 300 s (tests/ceph/ceph-up.sh)")
            if out.returncode != 0:
                tail = "\n".join(out.stderr.splitlines()[-15:])
                subprocess.run([DOWN], env=self._env(ports), capture_output=True, timeout=120, check=False)
                pytest.fail(f"Ceph did not start (tests/ceph/ceph-up.sh exit {out.returncode}):\n{tail}")
            vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
            with open(self.info, "w") as f:
                f.writelines(f"{k}={v}\n" for k, v in ports.items())
            with open(self.me, "w"):
                pass
        conf = vals["CEPH_CONF"]
        mon_port = int(ports["CEPH_MON_PORT"])
        return Ceph(
            conf=conf,
            pool=vals["CEPH_POOL"],
            s3_endpoint=vals["CEPH_S3_ENDPOINT"],
            s3_access_key=vals["CEPH_S3_ACCESS_KEY"],
            s3_secret_key=vals["CEPH_S3_SECRET_KEY"],
            mon_host=f"127.0.0.1:{mon_port}",
        )

    def stop(self) -> None:
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.me)
            # users whose process is gone (a crashed worker) do not keep the cluster up
            for name in os.listdir(self.users):
                if not os.path.exists(f"/proc/{name}"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.users, name))
            if os.listdir(self.users):
                return
            ports: dict[str, str] = {}
            if os.path.exists(self.info):
                with open(self.info) as f:
                    ports = dict(line.strip().split("=", 1) for line in f if "=" in line)
            subprocess.run([DOWN], env=self._env(ports), capture_output=True, timeout=120, check=False)
            # the folder goes too (a worker waiting on the lock meanwhile recreates what it needs)
            shutil.rmtree(self.base, ignore_errors=True)
