"""Real NBD servers for the tests: qemu-nbd 7.2 (Debian's qemu-utils), qemu-nbd 10.0
(scripts/oracle-10) and nbdkit (Debian's nbdkit), each on a unix socket or on a free TCP port
of loopback, started for one test and stopped after it.

``start_server(kind, image, tmp_path, ...)`` returns a :class:`Server` with the URL forms to
reach it; it is ready when it accepts a connection (bounded polling, never a fixed sleep).
A missing server fails the test when the environment variable CI is set, and skips it
otherwise (conftest's rule for oracles).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from conftest import need_qemu10

KINDS = ("qemu-nbd", "qemu-nbd-10", "nbdkit")
#: how long a server may take to start listening
READY_TIMEOUT = 30.0


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _tool(kind: str) -> tuple[str, dict]:
    if kind == "qemu-nbd-10":
        return need_qemu10("qemu-nbd")
    exe = shutil.which(kind)
    if exe is None:
        pkg = "nbdkit" if kind == "nbdkit" else "qemu-utils"
        msg = f"{kind} (Debian package {pkg}) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the server is required")
        pytest.skip(msg)
    return exe, dict(os.environ)


class Server:
    """A running server: ``url`` (nbd:// or nbd+unix://), ``legacy`` (nbd:...), the parts."""

    def __init__(self, kind: str, proc: subprocess.Popen, export: str, sock: str | None, port: int | None,
                 log: str, sock_dir: str | None = None) -> None:
        self.sock_dir = sock_dir
        self.kind = kind
        self.proc = proc
        self.export = export
        self.sock = sock
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        if self.sock:
            return f"nbd+unix:///{self.export}?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    @property
    def legacy(self) -> str:
        if self.sock:
            return f"nbd:unix:{self.sock}:exportname={self.export}"
        return f"nbd:127.0.0.1:{self.port}:exportname={self.export}"

    @property
    def image_opts(self) -> str:
        if self.sock:
            return f"driver=nbd,server.type=unix,server.path={self.sock},export={self.export}"
        return f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={self.port},export={self.export}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)


def _ready(server: Server) -> bool:
    if server.sock:
        if not os.path.exists(server.sock):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr: object = server.sock
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("127.0.0.1", server.port)
    s.settimeout(2)
    try:
        s.connect(addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


def start_server(kind: str, image: str | os.PathLike, tmp_path, *, fmt: str = "raw", export: str = "exp",
                 readonly: bool = False, tcp: bool = False, shared: int = 8, extra: tuple[str, ...] = (),
                 port: int | None = None) -> Server:
    """Serve ``image`` (a file) with ``kind``; the caller stops it (see the ``nbd_server`` fixture).
    ``port``: this TCP port (a server that comes back where one was) instead of a free one."""
    exe, env = _tool(kind)
    folder = tmp_path / f"nbd-{kind}-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    # a unix socket's path has at most 107 bytes: not under pytest's long tmp_path
    sock_dir = None if tcp else tempfile.mkdtemp(prefix="qimg-nbd-")
    sock = None if tcp else os.path.join(sock_dir, "s.sock")
    port = (port or free_port()) if tcp else None
    log = str(folder / "server.log")
    if kind.startswith("qemu-nbd"):
        args = [exe, "-t", "-f", fmt, "-x", export, "-e", str(shared)]
        args += ["-b", "127.0.0.1", "-p", str(port)] if tcp else ["-k", sock]
        if readonly:
            args.append("-r")
        args += [*extra, str(image)]
    else:
        args = [exe, "-f", "--exit-with-parent", "-e", export]
        args += ["-i", "127.0.0.1", "-p", str(port)] if tcp else ["-U", sock]
        if readonly:
            args.append("-r")
        args += [*extra, "file", str(image)] if not any(a.startswith("plugin=") for a in extra) else list(extra)
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    server = Server(kind, proc, export, sock, port, log, sock_dir)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _ready(server):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            with open(log, errors="replace") as f:
                text = f.read()
            raise AssertionError(f"{kind} did not start listening within {READY_TIMEOUT} s: {args}\n{text}")
        time.sleep(0.02)
    return server
