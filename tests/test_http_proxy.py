"""The http and https protocols through a real HTTP proxy (Debian's tinyproxy on a free loopback
port, in front of tests/web_server.py's nginx), chosen from the environment as libcurl chooses
it (``http_proxy``, ``https_proxy``, ``no_proxy``), with and without the proxy's basic
authentication (``proxy-username``/``proxy-password-secret``). qimg and qemu-img run the same
commands with the same environment and must print the same and exit the same; the proxy's log
shows that the requests went through it.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from cli_support import run_qemu, run_qemu_io, run_qimg
from cli_support import same_as_qemu as _same
from web_server import READY_TIMEOUT, WebServer, _need, free_port, stop_server

MIB = 1 << 20


class TinyProxy:
    """tinyproxy in the foreground on a free loopback port; ``auth``: (user, password) it asks."""

    def __init__(self, folder: str, auth: tuple[str, str] | None = None) -> None:
        exe = _need("tinyproxy", "tinyproxy")
        self.log = os.path.join(folder, "tinyproxy.log")
        conf = os.path.join(folder, "tinyproxy.conf")
        self.port = free_port()
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{self.log}"',
                 "LogLevel Connect", "MaxClients 64", "Allow 127.0.0.1"]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([exe, "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_TIMEOUT
        while not WebServer._accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited at start: {self.proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tinyproxy did not listen within {READY_TIMEOUT} s")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    base, top = root / "base.qcow2", root / "top.qcow2"
    run_qemu("create", "-q", "-f", "qcow2", str(base), "16M")
    run_qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 5M 2M", str(base))
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    run_qemu_io("-c", "write -P 0x33 512k 1M", str(top))
    server = WebServer(str(root), str(tmp_path_factory.mktemp("nginx")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = TinyProxy(str(tmp_path_factory.mktemp("proxy")))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory):
    p = TinyProxy(str(tmp_path_factory.mktemp("auth-proxy")), auth=("bob", "s3cret"))
    yield p
    p.stop()


def _norm(text: str) -> str:
    # libcurl's elapsed times, and QEMU 7.2's GLib assertion noise on some errors
    text = re.sub(r"after \d+ (ms|milliseconds)", r"after N \1", text)
    return "".join(line for line in text.splitlines(True) if "GLib:" not in line)


def same_as_qemu(monkeypatch, version: str, *args: str, cwd=None):
    return _same(monkeypatch, version, *args, cwd=cwd, norm=_norm)


def _no_proxy_env(monkeypatch) -> None:
    for k in ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)


def test_reads_go_through_the_proxy_as_qemu(web, proxy, monkeypatch, tmp_path, oracle):
    """``http_proxy`` sends every http request through the proxy: info (the backing chain too),
    map, check and compare print as qemu-img's, and the proxy saw them."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("http_proxy", proxy.url)
    u = web.url
    for args in (["info", f"{u}/top.qcow2"], ["info", "--backing-chain", "--output=json", f"{u}/top.qcow2"],
                 ["map", "--output=json", f"{u}/top.qcow2"], ["check", f"{u}/base.qcow2"],
                 ["compare", f"{u}/top.qcow2", f"{u}/base.qcow2"]):
        before = proxy.requests().count(f"127.0.0.1:{web.port}/")
        same_as_qemu(monkeypatch, oracle, *args, cwd=tmp_path)
        assert proxy.requests().count(f"127.0.0.1:{web.port}/") > before, (args, "the proxy saw no request")


def test_convert_through_the_proxy_lands_the_same_bytes(web, proxy, monkeypatch, tmp_path):
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("QIMG_COMPAT", "7.2")
    mine, theirs = tmp_path / "mine.raw", tmp_path / "theirs.raw"
    r = run_qimg("convert", "-O", "raw", f"{web.url}/top.qcow2", str(mine))
    assert r.returncode == 0, r.stderr
    assert run_qemu("convert", "-O", "raw", f"{web.url}/top.qcow2", str(theirs)).returncode == 0
    assert mine.read_bytes() == theirs.read_bytes()
    assert run_qemu("compare", "-f", "raw", str(mine), os.path.join(web.root, "top.qcow2")).returncode == 0


def test_https_tunnels_through_the_proxy_as_qemu(web, proxy, monkeypatch, tmp_path, oracle):
    """``https_proxy``: the TLS connection is tunnelled (CONNECT); the certificate is still the
    server's own (refused by default, accepted with sslverify=off)."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("https_proxy", proxy.url)
    t = web.tls_url
    before = proxy.requests().count(f"CONNECT 127.0.0.1:{web.tls_port}")
    for args in (["info", "--image-opts", f"driver=qcow2,file.driver=https,file.url={t}/top.qcow2,file.sslverify=off"],
                 ["info", f"{t}/base.qcow2"]):
        same_as_qemu(monkeypatch, oracle, *args, cwd=tmp_path)
    assert proxy.requests().count(f"CONNECT 127.0.0.1:{web.tls_port}") > before


def test_proxy_authentication_as_qemu(web, auth_proxy, monkeypatch, tmp_path, oracle):
    """A proxy that asks for basic authentication: refused (407) without credentials or with the
    wrong password, served with ``proxy-username``/``proxy-password-secret``."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("http_proxy", auth_proxy.url)
    u = web.url
    opts = f"driver=qcow2,file.driver=http,file.url={u}/base.qcow2"
    for args in (["info", f"{u}/base.qcow2"],
                 ["info", "--object", "secret,id=pw,data=s3cret", "--image-opts",
                  f"{opts},file.proxy-username=bob,file.proxy-password-secret=pw"],
                 ["info", "--object", "secret,id=pw,data=wrong", "--image-opts",
                  f"{opts},file.proxy-username=bob,file.proxy-password-secret=pw"],
                 ["info", "--image-opts", f"{opts},file.proxy-username=bob"],
                 ["info", "--image-opts", f"{opts},file.proxy-username=bob,file.proxy-password-secret=nope"],
                 ["map", "--output=json", "--object", "secret,id=pw,data=s3cret", "--image-opts",
                  f"{opts},file.proxy-username=bob,file.proxy-password-secret=pw"]):
        same_as_qemu(monkeypatch, oracle, *args, cwd=tmp_path)


def test_no_proxy_and_a_dead_proxy_as_qemu(web, monkeypatch, tmp_path, oracle):
    """A proxy that is not listening fails the open as qemu-img's does; ``no_proxy`` naming the
    server's host goes around it."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    same_as_qemu(monkeypatch, oracle, "info", f"{web.url}/base.qcow2", cwd=tmp_path)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    r = same_as_qemu(monkeypatch, oracle, "info", f"{web.url}/base.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
