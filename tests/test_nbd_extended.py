"""NBD_OPT_EXTENDED_HEADERS (32-byte requests and replies, 64-bit block status): qimg asks for
them under the 10.0 profile, as QEMU 10.0's client does, and not under 7.2's. qemu-nbd 10.0
offers them; qemu-nbd 7.2 and nbdkit 1.32 do not (structured replies then). Every request kind
goes over the negotiated headers and lands as qemu-io reads it on the server's side."""
from __future__ import annotations

import pytest
import qimg
from cli_support import assert_same, run_qemu, run_qemu_io, run_qimg
from nbd_servers import start_server
from test_nbd import _sparse_raw

MIB = 1 << 20


@pytest.mark.parametrize("kind", ["qemu-nbd-10", "qemu-nbd", "nbdkit"])
def test_extended_headers_when_both_sides_have_them(tmp_path, oracle, kind):
    profile = oracle
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = start_server(kind, img, tmp_path)
    try:
        image = qimg.open(s.url, "raw", writable=True)
        p = image.driver.file
        try:
            assert p.info.extended == (kind == "qemu-nbd-10" and profile == "10.0")
            assert p.info.structured
            assert p.pread(0, 2 * MIB) == img.read_bytes()[:2 * MIB]
            p.pwrite(4 * MIB, b"\x09" * (3 * MIB))  # a write of several requests
            p.write_zeroes(0, 512 * 1024)
            p.discard(3 * MIB, 64 * 1024)
            p.flush()
            assert p.block_status(5 * MIB, 8 * MIB) is not None
        finally:
            image.close()
        assert_same(run_qimg("map", "--output=json", s.url), run_qemu("map", "--output=json", s.url))
    finally:
        s.stop()
    out = run_qemu_io("-f", "raw", "-c", "read -P 9 4M 3M", "-c", "read -P 0 0 512k", "-c", "read -P 1 512k 512k",
                      str(img)).stdout
    assert "verification failed" not in out, out
    assert run_qemu("check", "-f", "raw", str(img)).returncode in (0, 63)
