"""A real SSH server for the ssh protocol tests: OpenSSH's sshd on a free loopback port with a
host key and a user key generated for the test, the user key held by an ssh-agent of the test's
own (``SSH_AUTH_SOCK``), which both qemu-img (libssh) and qimg authenticate with. Both are
started for a test module and stopped after it.

libssh reads ``~/.ssh`` of the password database's home (not ``$HOME``), so the tests check host
keys by fingerprint (``host_key_check=sha256:...``, ``host-key-check.mode=hash``) or not at all,
and reach known_hosts only where the host is absent from it (any random port is).

A missing sshd fails the test when the environment variable CI is set and skips it otherwise.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import time

from web_server import _need, free_port  # one copy of the servers' helpers

READY_TIMEOUT = 30.0


def _wait(what: str, ready, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start: {proc.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {READY_TIMEOUT} s")
        time.sleep(0.02)


class SshServer:
    def __init__(self, folder: str, *, ipv6: bool = False) -> None:
        """``ipv6``: sshd listens on ``[::1]`` too (the same port)."""
        sshd = _need("sshd", "openssh-server")
        keygen = _need("ssh-keygen", "openssh-client")
        agent = _need("ssh-agent", "openssh-client")
        add = _need("ssh-add", "openssh-client")
        self.procs: list[subprocess.Popen] = []
        host_key, user_key = os.path.join(folder, "host_key"), os.path.join(folder, "user_key")
        for key in (host_key, user_key):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, capture_output=True)
        with open(host_key + ".pub") as f:
            blob = base64.b64decode(f.read().split()[1])
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.md5 = hashlib.md5(blob).hexdigest()
        auth = os.path.join(folder, "authorized_keys")
        shutil.copy(user_key + ".pub", auth)
        os.chmod(auth, 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.port = free_port()
        conf = os.path.join(folder, "sshd_config")
        with open(conf, "w") as f:
            listen = f"ListenAddress [::1]:{self.port}\n" if ipv6 else ""
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\n{listen}HostKey {host_key}\nAuthorizedKeysFile {auth}\n"
                    f"PidFile {folder}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
                    "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\nMaxSessions 100\n")
        self.user = __import__("pwd").getpwuid(os.getuid()).pw_name
        try:
            self._start([sshd, "-D", "-e", "-f", conf], "sshd", lambda: self._accepts())
            self.agent_sock = os.path.join(folder, "agent.sock")
            self._start([agent, "-D", "-a", self.agent_sock], "ssh-agent",
                        lambda: os.path.exists(self.agent_sock))
            subprocess.run([add, "-q", user_key], check=True, capture_output=True,
                           env=dict(os.environ, SSH_AUTH_SOCK=self.agent_sock))
        except BaseException:
            self.stop()
            raise

    def _start(self, cmd: list[str], what: str, ready) -> None:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        _wait(what, ready, proc)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path: str, check: str | None = "sha256") -> str:
        query = {None: "", "no": "?host_key_check=no", "sha256": f"?host_key_check=sha256:{self.sha256}"}[check]
        return f"ssh://127.0.0.1:{self.port}{path}{query}"

    def opts(self, path: str, fmt: str | None = "qcow2") -> str:
        """--image-opts of the file at ``path``, its host key checked by its SHA-256 hash."""
        node = (f"driver=ssh,server.host=127.0.0.1,server.port={self.port},path={path},host-key-check.mode=hash,"
                f"host-key-check.type=sha256,host-key-check.hash={self.sha256}")
        if fmt is None:
            return node
        return f"driver={fmt}," + ",".join("file." + kv for kv in node.split(",")[1:]) + ",file.driver=ssh"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        self.procs = []
