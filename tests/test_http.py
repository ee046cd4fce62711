"""The http and https protocols against a real web server (nginx on loopback, HTTPS with a
self-signed certificate: tests/web_server.py). qimg and qemu-img (7.2, and 10.0 where qimg's
10.0 output is already complete) run the same commands on the same URLs and must print the
same and exit the same; converted images must hold the same bytes. The cases no real server
produces (a server ignoring ranges, short bodies, a server that never answers) run against
small fake servers in this file.
"""
from __future__ import annotations

import http.server
import os
import re
import socket
import socketserver
import threading

import pytest
import qimg
from cli_support import run_qemu, run_qemu_io, run_qimg, same_as_qemu
from conftest import Run
from web_server import WebServer, free_port

MIB = 1 << 20


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    base, top = root / "base.qcow2", root / "top.qcow2"
    run_qemu("create", "-q", "-f", "qcow2", str(base), "64M")
    run_qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 2M", "-c", "write -z 20M 1M", str(base))
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    run_qemu_io("-c", "write -P 0x33 512k 1M", "-c", "write -P 0x44 30M 3M", str(top))
    run_qemu("convert", "-O", "raw", str(base), str(root / "raw.img"))
    for sub in ("norange", "cookie", "auth"):
        (root / sub).mkdir()
        (root / sub / "raw.img").write_bytes(b"\x55" * MIB)
        os.link(base, root / sub / "base.qcow2")
    (root / "odd.img").write_bytes(os.urandom(3 * MIB + 777))
    server = WebServer(str(root), str(tmp_path_factory.mktemp("nginx")))
    yield server
    server.stop()


def _norm(text: str) -> str:
    # libcurl's elapsed times ("after 0 ms"), and QEMU 7.2's GLib assertion noise on some errors
    text = re.sub(r"after \d+ (ms|milliseconds)", r"after N \1", text)
    return "".join(line for line in text.splitlines(True) if "GLib:" not in line)


def same(monkeypatch, version: str, *args: str, cwd=None) -> Run:
    return same_as_qemu(monkeypatch, version, *args, cwd=cwd, norm=_norm)


def _cases(web: WebServer) -> list[list[str]]:
    u, t = web.url, web.tls_url
    return [
        ["info", f"{u}/top.qcow2"], ["info", "--output=json", f"{u}/top.qcow2"],
        ["info", "--backing-chain", f"{u}/top.qcow2"], ["info", "--backing-chain", "--output=json", f"{u}/top.qcow2"],
        ["info", f"{u}/raw.img"], ["info", "-f", "raw", f"{u}/odd.img"], ["info", "-f", "http", f"{u}/odd.img"],
        ["info", "--image-opts", f"driver=http,url={u}/raw.img"],
        ["info", "--image-opts", f"driver=qcow2,file.driver=http,file.url={u}/base.qcow2,file.readahead=64k,"
                                 "file.timeout=3"],
        ["info", f"json:{{\"file\": {{\"driver\": \"https\", \"url\": \"{t}/top.qcow2\", \"sslverify\": false}}}}"],
        ["info", "--image-opts", f"driver=raw,file.driver=http,file.url={u}/cookie/raw.img,file.cookie=a=b"],
        ["info", "--output=json", "--image-opts", f"driver=http,url={u}/cookie/raw.img,cookie=a=b"],
        ["info", "--object", "secret,id=pw,data=secret", "--image-opts",
         f"driver=raw,file.driver=http,file.url={u}/auth/raw.img,file.username=bob,file.password-secret=pw"],
        ["info", f"{u}/redirect/base.qcow2"],
    ]


def _read_cases(web: WebServer) -> list[list[str]]:
    u, t = web.url, web.tls_url
    return [
        ["map", f"{u}/top.qcow2"], ["map", "--output=json", f"{u}/top.qcow2"], ["map", "--output=json", f"{u}/raw.img"],
        ["map", "--output=json", "-f", "raw", f"{u}/odd.img"],
        ["check", f"{u}/top.qcow2"], ["check", "--output=json", f"{u}/base.qcow2"],
        ["compare", f"{u}/top.qcow2", f"{u}/base.qcow2"], ["compare", f"{u}/base.qcow2", f"{u}/raw.img"],
        ["compare", "--image-opts", f"driver=qcow2,file.driver=https,file.url={t}/base.qcow2,file.sslverify=off",
         f"driver=raw,file.driver=http,file.url={u}/raw.img"],
        # no folder to resolve the relative backing name against once options hide the URL
        ["map", f"json:{{\"file\": {{\"driver\": \"http\", \"url\": \"{u}/top.qcow2\", \"cookie\": \"a=b\"}}}}"],
        ["info", "--backing-chain",
         f"json:{{\"file\": {{\"driver\": \"http\", \"url\": \"{u}/top.qcow2\", \"cookie\": \"a=b\"}}}}"],
    ]


def _error_cases(web: WebServer, tmp_path) -> list[list[str]]:
    u, t = web.url, web.tls_url
    local = tmp_path / "local.raw"
    local.write_bytes(b"\1" * MIB)
    opts = f"driver=qcow2,file.driver=http,file.url={u}/base.qcow2"
    return [
        ["info", f"{u}/nosuch.qcow2"], ["info", f"{u}/norange/base.qcow2"], ["info", f"{t}/base.qcow2"],
        ["info", f"https://localhost:{web.tls_port}/base.qcow2"], ["info", f"https://127.0.0.1:{web.port}/base.qcow2"],
        ["info", f"http://127.0.0.1:{free_port()}/base.qcow2"], ["info", f"{u}/cookie/raw.img"],
        ["info", f"{u}/auth/raw.img"], ["info", "http:/x"], ["info", "--image-opts", "driver=qcow2,file.driver=http"],
        ["info", "--image-opts", f"driver=qcow2,file.driver=https,file.url={u}/base.qcow2"],
        ["info", "--image-opts", opts + ",file.readahead=1000"], ["info", "--image-opts", opts + ",file.timeout=10001"],
        ["info", "--image-opts", opts + ",file.timeout=-1"], ["info", "--image-opts", opts + ",file.timeout=x"],
        ["info", "--image-opts", opts + ",file.sslverify=maybe"],
        ["info", "--image-opts", opts + ",file.cookie=a=b,file.cookie-secret=c"],
        ["info", "--image-opts", opts + ",file.password-secret=nope"], ["info", "--image-opts", opts + ",file.bogus=1"],
        ["info", "--image-opts", opts + f",file.filename={u}/raw.img"],
        ["resize", f"{u}/raw.img", "128M"], ["convert", "-n", "-O", "raw", str(local), f"{u}/raw.img"],
        ["convert", "-O", "raw", str(local), f"{u}/new.img"], ["create", "-f", "qcow2", f"{u}/new.qcow2", "1M"],
        ["commit", f"{u}/top.qcow2"], ["snapshot", "-c", "s", f"{u}/base.qcow2"],
    ]


def test_info_as_qemu(web, monkeypatch, tmp_path, oracle):
    for args in _cases(web):
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_map_check_compare_as_qemu(web, monkeypatch, tmp_path, oracle):
    cases = _read_cases(web)
    for args in cases:
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_errors_as_qemu(web, monkeypatch, tmp_path, oracle):
    for args in _error_cases(web, tmp_path):
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_convert_from_http_lands_the_same_bytes(web, tmp_path, monkeypatch):
    monkeypatch.setenv("QIMG_COMPAT", "7.2")
    for src in (f"{web.url}/top.qcow2", f"{web.tls_url}/raw.img", f"{web.url}/odd.img"):
        extra = ["--image-opts", f"driver=raw,file.driver=https,file.url={src},file.sslverify=off"] \
            if src.startswith("https") else [src]
        mine, theirs = tmp_path / "mine.raw", tmp_path / "theirs.raw"
        r = run_qimg("convert", "-O", "raw", *extra, str(mine))
        assert r.returncode == 0, r.stderr
        # one request at a time: qemu-img's curl driver (7.2 and 10.0) often hangs forever when
        # convert keeps several reads in flight over HTTP
        r = run_qemu("convert", "-m", "1", "-O", "raw", *extra, str(theirs))
        assert r.returncode == 0, r.stderr
        assert mine.read_bytes() == theirs.read_bytes(), src
        # and into qcow2 (sparse: zero runs skipped), checked by qemu-img
        out = tmp_path / "mine.qcow2"
        r = run_qimg("convert", "-O", "qcow2", *extra, str(out))
        assert r.returncode == 0, r.stderr
        assert run_qemu("check", str(out)).returncode == 0
        assert run_qemu("compare", "-f", "raw", "-F", "qcow2", str(theirs), str(out)).returncode == 0
        if src.endswith("top.qcow2"):  # qemu-img reads the chain over HTTP too
            assert run_qemu("compare", src, str(out)).returncode == 0


def test_library_opens_urls(web):
    with qimg.open(f"{web.url}/top.qcow2") as img:
        assert img.format == "qcow2" and img.size == 64 * MIB
        assert img.backing is not None and img.backing.filename == f"{web.url}/base.qcow2"
        assert img.pread(0, 512 * 1024) == b"\x11" * (512 * 1024)  # from the backing file
        assert img.pread(512 * 1024, MIB) == b"\x33" * MIB
        assert img.pread(10 * MIB, 4096) == b"\x22" * 4096
    with qimg.open({"driver": "raw", "file": {"driver": "https", "url": f"{web.tls_url}/odd.img",
                                              "sslverify": False}}) as img:
        data = (web_root(web) / "odd.img").read_bytes()
        assert img.size == -(-len(data) // 512) * 512
        assert img.pread(MIB - 5, 3 * MIB) == data[MIB - 5:] + bytes(3 * MIB - (len(data) - MIB + 5))
    with pytest.raises(PermissionError):
        qimg.open(f"{web.url}/raw.img", writable=True)
    with pytest.raises(qimg.QimgError, match="returned error: 404"):
        qimg.open(f"{web.url}/nosuch")


def test_a_kept_connection_the_server_closed_is_made_again(web):
    """The server closes an idle keep-alive connection (here: nginx reloads, and its old workers
    close their idle connections): the next read goes out again on a new connection, without
    falling back to urllib3 (whose pool is then never made), and reads the right bytes."""
    import select
    import signal
    import time

    data = (web_root(web) / "raw.img").read_bytes()
    with qimg.open({"driver": "raw", "file": {"driver": "http", "url": f"{web.url}/raw.img"}}) as img:
        proto = img.driver.file
        assert img.pread(0, MIB) == data[:MIB]
        kept = list(proto._idle)
        assert kept and proto._pool is None
        web.proc.send_signal(signal.SIGHUP)  # reload: idle keep-alive connections are closed
        deadline = time.monotonic() + 30
        for conn in kept:  # bounded wait until the server has closed each (readable, at EOF)
            while not select.select([conn.sock], [], [], 0.05)[0]:
                assert time.monotonic() < deadline, "nginx did not close its idle connections"
        assert img.pread(3 * MIB, MIB) == data[3 * MIB:4 * MIB]
        assert proto._pool is None


def web_root(web):
    from pathlib import Path

    return Path(web.root)


def test_a_server_that_stops_mid_copy_fails_cleanly(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.img").write_bytes(b"\x01" * (8 * MIB))
    server = WebServer(str(root), str(tmp_path))
    try:
        img = qimg.open(f"{server.url}/big.img", "raw")
    finally:
        server.stop()
    with img, pytest.raises(OSError) as e:
        img.pread(0, MIB)
    assert e.value.errno == 5


class _Fake(http.server.BaseHTTPRequestHandler):
    """Answers HEAD as a good server would; GET as the test's ``mode`` says."""

    size = 4 * MIB
    mode = "ignore-range"
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle(self):
        try:
            super().handle()
        except OSError:  # the client hangs up on a bad answer: expected here
            pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        if self.mode == "ignore-range":
            self.send_response(200)
            self.send_header("Content-Length", str(self.size))
            self.end_headers()
            self.wfile.write(b"\x07" * self.size)
        elif self.mode == "short":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{self.size - 1}/{self.size}")
            self.send_header("Content-Length", str(self.size))
            self.end_headers()
            self.wfile.write(b"\x07" * 1000)
            self.close_connection = True
        elif self.mode == "wrong-range":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 7-8/{self.size}")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"xx")


@pytest.mark.parametrize("mode", ["ignore-range", "short", "wrong-range"])
def test_hostile_servers_fail_cleanly(mode, tmp_path):
    handler = type("H", (_Fake,), {"mode": mode})
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/x.img"
        r = run_qimg("convert", "-f", "raw", "-O", "raw", url, str(tmp_path / "out.raw"))
        assert r.returncode == 1
        assert "Traceback" not in r.stderr and "curl: " in r.stderr
        assert "error while reading at byte" in r.stderr or "Input/output error" in r.stderr, r.stderr
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_silent_server_times_out_as_qemu(monkeypatch, oracle):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does) but never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        same(monkeypatch, oracle, "info", "--image-opts", f"driver=raw,file.driver=http,file.url={url},file.timeout=1")
    finally:
        listener.close()
