"""A real web server for the http/https protocol tests: Debian's nginx on two free loopback
ports (HTTP, and HTTPS with a self-signed certificate made for the test), serving a folder,
started for a test module and stopped after it. Locations with their own rules:
``/norange/`` answers without byte ranges, ``/cookie/`` only with the cookie ``a=b``,
``/auth/`` only with basic auth ``bob``/``secret``, ``/redirect/X`` redirects to ``/X``.

A missing nginx (or openssl) fails the test when the environment variable CI is set and skips
it otherwise (conftest's rule for oracles). Readiness is a bounded polling wait.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

READY_TIMEOUT = 30.0


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None)
    if path is None:
        msg = f"{tool} (Debian package {package}) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the server is required")
        pytest.skip(msg)
    return path


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def self_signed(folder: str) -> tuple[str, str]:
    """(certificate, key) for 127.0.0.1 and localhost, valid for two days."""
    openssl = _need("openssl", "openssl")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


class WebServer:
    def __init__(self, root: str, conf_dir: str, *, ipv6: bool = False) -> None:
        """``ipv6``: listen on ``[::1]`` too (the same two ports, when they are free there)."""
        self.root = root
        nginx = _need("nginx", "nginx-light")
        self.cert, key = self_signed(conf_dir)
        self.port, self.tls_port = free_port(), free_port()
        htpasswd = os.path.join(conf_dir, "htpasswd")
        crypt = subprocess.run([_need("openssl", "openssl"), "passwd", "-apr1", "secret"], check=True,
                               capture_output=True, text=True).stdout.strip()
        with open(htpasswd, "w") as f:
            f.write(f"bob:{crypt}\n")
        temp = "".join(f" {k}_temp_path {conf_dir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                      "scgi"))
        user = "user root;" if os.geteuid() == 0 else ""
        listen6 = f"listen [::1]:{self.port}; listen [::1]:{self.tls_port} ssl;" if ipv6 else ""
        conf = f"""{user}
daemon off;
master_process on;
worker_processes 2;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {conf_dir}/access.log;
  {temp}
  default_type application/octet-stream;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{self.port};
    listen 127.0.0.1:{self.tls_port} ssl;
    {listen6}
    ssl_certificate {self.cert};
    ssl_certificate_key {key};
    root {root};
    location /norange/ {{ max_ranges 0; }}
    location /cookie/ {{ if ($cookie_a != "b") {{ return 403; }} }}
    location /auth/ {{ auth_basic "qimg"; auth_basic_user_file {htpasswd}; }}
    location /redirect/ {{ rewrite ^/redirect/(.*)$ /$1 redirect; }}
  }}
}}
"""
        path = os.path.join(conf_dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log = os.path.join(conf_dir, "error.log")
        self.proc = subprocess.Popen([nginx, "-p", conf_dir, "-e", self.log, "-c", path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"nginx exited at start: {err}")
            if all(self._accepts(p) for p in (self.port, self.tls_port)):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen within {READY_TIMEOUT} s")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.tls_url = f"https://127.0.0.1:{self.tls_port}"

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_server(self.proc)  # SIGTERM: nginx's fast shutdown, workers included


def stop_server(proc: subprocess.Popen) -> None:
    """A server started by a fixture: SIGTERM, a bounded wait, then SIGKILL; its stderr closed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
