"""``open-timeout`` and ``reconnect-delay`` of the nbd driver against real servers (qemu-nbd 7.2,
10.0 and nbdkit): a server that appears while the open is still trying, one that goes away and
comes back on the same port between two requests, and, without the options (or past them), the
failure as before. The moment a server (re)appears is set by the test, not by timing: the open's
wait between attempts (``qimg_nbd.protocol._sleep``) starts the server; the reconnect test
restarts it before the next request."""
from __future__ import annotations

import os

import pytest
import qimg
from cli_support import assert_same, run_qemu, run_qimg
from nbd_servers import free_port, start_server
from test_nbd import _sparse_raw

MIB = 1 << 20
KINDS = ["qemu-nbd", "qemu-nbd-10", "nbdkit"]


def open_protocol(port: int, extra: str = "", writable: bool = False):
    """The nbd node under a raw image opened by the library with these options."""
    opts = {"driver": "raw", "file.driver": "nbd", "file.server.type": "inet", "file.server.host": "127.0.0.1",
            "file.server.port": str(port), "file.export": "exp",
            **{"file." + k: v for k, v in (kv.split("=", 1) for kv in extra.split(",") if kv)}}
    return qimg.open(opts, writable=writable).driver.file


@pytest.mark.parametrize("kind", KINDS)
def test_open_timeout_waits_for_a_server_that_appears(tmp_path, monkeypatch, kind):
    import qimg_nbd.protocol as proto

    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    port = free_port()
    started = []
    waits = []

    def sleep(seconds):  # the first wait between attempts: the server appears now
        waits.append(seconds)
        if not started:
            started.append(start_server(kind, img, tmp_path, readonly=True, tcp=True, port=port))

    monkeypatch.setattr(proto, "_sleep", sleep)
    try:
        p = open_protocol(port, "open-timeout=600")
        try:
            assert p.pread(0, MIB) == img.read_bytes()[:MIB]
        finally:
            p.close()
        assert waits == [1]  # one failed attempt, QEMU's first wait, then the server
    finally:
        for s in started:
            s.stop()


def test_open_timeout_without_a_server_fails_as_qemu(tmp_path):
    """No server: after open-timeout seconds, the last attempt's error, as qemu-img prints it."""
    port = free_port()
    sock = os.path.join(str(tmp_path), "none.sock")
    for name in (f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},open-timeout=1",
                 f"driver=nbd,server.type=unix,server.path={sock},open-timeout=1"):
        assert_same(run_qimg("info", "--image-opts", name), run_qemu("info", "--image-opts", name))


@pytest.mark.parametrize("kind", KINDS)
def test_reconnect_delay_rides_over_a_server_restart(tmp_path, kind):
    """Reads and a write after the server went away and came back on the same port: with
    reconnect-delay they are sent again on a new connection; without, they fail with EIO."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    data = img.read_bytes()
    s = start_server(kind, img, tmp_path, tcp=True)
    port = s.port
    with_delay = open_protocol(port, "reconnect-delay=600", writable=True)
    without = open_protocol(port)
    try:
        assert with_delay.pread(MIB, MIB) == data[MIB:2 * MIB]
        assert without.pread(MIB, MIB) == data[MIB:2 * MIB]
        s.stop()
        s = start_server(kind, img, tmp_path, tcp=True, port=port)
        assert with_delay.pread(0, 4 * MIB) == data[:4 * MIB]
        with_delay.pwrite(2 * MIB, b"\x07" * 65536)
        with_delay.flush()
        assert with_delay.block_status(0, 8 * MIB)[0] > 0
        with pytest.raises(OSError) as err:
            without.pread(0, MIB)
        assert err.value.errno == 5
    finally:
        with_delay.close()
        without.close()
        s.stop()
    r = run_qemu("compare", "-f", "raw", "-F", "raw", str(img), str(img))
    assert r.returncode == 0
    assert img.read_bytes()[2 * MIB:2 * MIB + 65536] == b"\x07" * 65536


def test_reconnect_delay_gives_up_after_the_delay(tmp_path, monkeypatch):
    """A server that does not come back: the request fails with EIO once the delay is over
    (the waits between attempts, QEMU's 1, 2, 4 ... seconds, are cut at the delay)."""
    import qimg_nbd.protocol as proto

    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = start_server("qemu-nbd", img, tmp_path, readonly=True, tcp=True)
    p = open_protocol(s.port, "reconnect-delay=1")
    waits = []
    real_sleep = proto._sleep
    monkeypatch.setattr(proto, "_sleep", lambda seconds: waits.append(seconds) or real_sleep(seconds))
    try:
        s.stop()
        with pytest.raises(OSError) as err:
            p.pread(0, MIB)
        assert err.value.errno == 5
        assert waits and sum(waits) <= 1
    finally:
        p.close()
        s.stop()
