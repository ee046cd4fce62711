"""The ssh protocol against a real OpenSSH sshd (tests/ssh_server.py: generated host and user
keys, the user key in an ssh-agent of the test's own). qimg and qemu-img (7.2, and 10.0 where
qimg's 10.0 output is complete) run the same commands on the same URLs and print the same; what
qimg writes over SFTP is checked on the server's side (the files are local) with qemu-img.
"""
from __future__ import annotations

import pytest
import qimg
from cli_support import run_qemu, run_qemu_io, run_qimg, same_as_qemu
from conftest import Run
from ssh_server import SshServer, free_port

MIB = 1 << 20


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = SshServer(str(tmp_path_factory.mktemp("sshd")))
    yield server
    server.stop()


@pytest.fixture
def env(sshd, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", sshd.agent_sock)
    return sshd


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    base, top = root / "base.qcow2", root / "top.qcow2"
    run_qemu("create", "-q", "-f", "qcow2", str(base), "32M")
    run_qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 2M", "-c", "write -z 20M 1M", str(base))
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    run_qemu_io("-c", "write -P 0x33 512k 1M", "-c", "write -P 0x44 30M 1M", str(top))
    run_qemu("convert", "-O", "raw", str(top), str(root / "raw.img"))
    return root


def _norm(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if "GLib:" not in line)


def same(monkeypatch, version: str, *args: str, cwd=None) -> Run:
    return same_as_qemu(monkeypatch, version, *args, cwd=cwd, norm=_norm)


def _info_cases(s: SshServer, root) -> list[list[str]]:
    top, raw = f"{root}/top.qcow2", f"{root}/raw.img"
    return [
        ["info", s.url(top)], ["info", s.url(top, "no")], ["info", "--output=json", s.url(top)],
        ["info", "--image-opts", s.opts(top)], ["info", "--output=json", "--image-opts", s.opts(top)],
        ["info", "--backing-chain", "--image-opts", s.opts(top)], ["info", "-f", "ssh", s.url(raw)],
        ["info", "--image-opts", s.opts(raw, None)],
        ["info", "--image-opts", f"driver=raw,file.driver=ssh,file.host=127.0.0.1,file.port={s.port},"
                                 f"file.path={raw},file.host_key_check=no"],
        ["info", f"ssh://{s.user}@127.0.0.1:{s.port}{raw}?host_key_check=md5:{s.md5}"],
    ]


def _read_cases(s: SshServer, root) -> list[list[str]]:
    top, base, raw = f"{root}/top.qcow2", f"{root}/base.qcow2", f"{root}/raw.img"
    return [
        ["map", "--image-opts", s.opts(top)], ["map", "-f", "raw", s.url(raw)], ["check", "--image-opts", s.opts(top)],
        ["check", s.url(base)], ["compare", "--image-opts", s.opts(top), s.opts(raw, "raw")],
        ["compare", "--image-opts", s.opts(top), s.opts(base)],
        ["map", s.url(top)],  # a relative backing name cannot follow a query string
        ["info", "--backing-chain", s.url(top)],
    ]


def _error_cases(s: SshServer, root) -> list[list[str]]:
    top = f"{root}/top.qcow2"
    return [
        ["info", s.url(f"{root}/nosuch.qcow2")], ["info", s.url(top, None)],  # not in known_hosts
        ["info", f"ssh://nobody@127.0.0.1:{s.port}{top}?host_key_check=no"],
        ["info", f"ssh://127.0.0.1:{free_port()}{top}?host_key_check=no"],
        ["info", s.url(top, None) + "?host_key_check=sha256:00" + s.sha256],
        ["info", s.url(top, None) + "?host_key_check=bogus"], ["info", f"ssh://127.0.0.1:{s.port}?host_key_check=no"],
        ["info", f"ssh://:{s.port}/x?host_key_check=no"], ["info", s.url(str(root), "no")],
        ["info", "--image-opts", s.opts(top).replace("hash=", "hash=ab")],
        ["info", "--image-opts", s.opts(top) + ",file.bogus=1"],
        ["resize", "--shrink", "-f", "raw", s.url(f"{root}/raw.img"), "1M"],
        ["create", "-f", "raw", s.url("/nonexistent-dir/x.raw"), "1M"],
    ]


def test_info_as_qemu(env, images, monkeypatch, tmp_path, oracle):
    for args in _info_cases(env, images):
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_map_check_compare_as_qemu(env, images, monkeypatch, tmp_path, oracle):
    cases = _read_cases(env, images)
    for args in cases:
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_errors_as_qemu(env, images, monkeypatch, tmp_path, oracle):
    for args in _error_cases(env, images):
        same(monkeypatch, oracle, *args, cwd=tmp_path)


def test_convert_both_ways(env, images, tmp_path, monkeypatch):
    monkeypatch.setenv("QIMG_COMPAT", "7.2")
    s = env
    # from ssh: the same bytes as qemu-img's (base.qcow2: a backing file would be checked
    # against known_hosts, the hash option being the top node's only)
    mine, theirs = tmp_path / "mine.raw", tmp_path / "theirs.raw"
    assert run_qimg("convert", "-O", "raw", "--image-opts", s.opts(f"{images}/base.qcow2"), str(mine)).returncode == 0
    assert run_qemu("convert", "-O", "raw", "--image-opts", s.opts(f"{images}/base.qcow2"), str(theirs)).returncode == 0
    assert mine.read_bytes() == theirs.read_bytes()
    assert run_qemu("compare", "-F", "raw", str(images / "base.qcow2"), str(mine)).returncode == 0
    # to ssh: a new qcow2 and raw written over SFTP, checked where they landed
    for fmt in ("qcow2", "raw"):
        out = tmp_path / f"out.{fmt}"
        r = run_qimg("convert", "-O", fmt, str(images / "top.qcow2"), s.url(str(out)))
        assert r.returncode == 0, r.stderr
        if fmt == "qcow2":
            assert run_qemu("check", str(out)).returncode == 0
        assert run_qemu("compare", "-F", fmt, str(images / "top.qcow2"), str(out)).returncode == 0
    # into an existing image (-n), and create over ssh, as qemu-img
    out = tmp_path / "made.qcow2"
    r = run_qimg("create", "-f", "qcow2", s.url(str(out)), "32M")
    assert r.returncode == 0 and r.stdout.startswith("Formatting 'ssh://"), r
    assert run_qemu("check", str(out)).returncode == 0
    r = run_qimg("convert", "-n", "-O", "qcow2", str(images / "top.qcow2"), s.url(str(out)))
    assert r.returncode == 0, r.stderr
    assert run_qemu("compare", str(images / "top.qcow2"), str(out)).returncode == 0
    # qemu-img reads what qimg wrote, over ssh too
    raw = tmp_path / "top.raw"
    raw.write_bytes((images / "raw.img").read_bytes())
    assert run_qemu("compare", "--image-opts", s.opts(str(out)), s.opts(str(raw), "raw")).returncode == 0


def test_resize_grows_only(env, tmp_path, monkeypatch):
    monkeypatch.setenv("QIMG_COMPAT", "7.2")
    img = tmp_path / "r.raw"
    img.write_bytes(b"\x05" * MIB)
    twin = tmp_path / "twin.raw"
    twin.write_bytes(b"\x05" * MIB)
    mine = run_qimg("resize", "-f", "raw", env.url(str(img)), "3M")
    theirs = run_qemu("resize", "-f", "raw", env.url(str(twin)), "3M")
    assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout) == (0, "Image resized.\n")
    assert img.read_bytes() == twin.read_bytes() == b"\x05" * MIB + bytes(2 * MIB)


def test_writes_land_through_the_library(env, tmp_path):
    img = tmp_path / "w.raw"
    img.write_bytes(bytes(4 * MIB))
    with qimg.open(env.url(str(img)), "raw", writable=True) as d:
        d.pwrite(12345, b"\xab" * 100000)
        d.flush()
        assert d.pread(12345, 100000) == b"\xab" * 100000
    run = run_qemu_io("-f", "raw", "-c", "read -P 0xab 12345 100000", str(img))
    assert "verification failed" not in run.stdout
    with pytest.raises(qimg.QimgError, match="No such file"):
        qimg.open(env.url(str(tmp_path / "nosuch.raw")), "raw")


def test_pipelined_reads_match_paramiko(env, tmp_path):
    """The pipelined range reads (several SFTP requests in flight) give what paramiko's plain
    SFTPFile.read gives, byte for byte: whole requests, a last partial one, the end of the file
    and past it, and a read after a file shrank under the open node (a short answer)."""
    import os

    from qimg.api import open_protocol

    data = os.urandom(3 * MIB + 12345)
    img = tmp_path / "p.raw"
    img.write_bytes(data)
    p = open_protocol(env.url(str(img)))
    try:
        cases = [(0, len(data)), (1, MIB), (32768 - 1, 32768 * 20 + 3), (len(data) - 70000, 200000),
                 (len(data) - 1, 10), (len(data), 10), (5, 32768)]
        for off, n in cases:
            buf = bytearray(n)
            got = p.preadinto(off, memoryview(buf))
            p._f.seek(off)
            want = p._f.read(n)  # paramiko's own, one request at a time
            assert (got, bytes(buf[:got])) == (len(want), want), (off, n)
        with open(img, "r+b") as f:
            f.truncate(MIB + 100)  # the server's file shrinks; the node still believes the old size
        buf = bytearray(2 * MIB)
        assert p.preadinto(0, memoryview(buf)) == MIB + 100
        assert bytes(buf[:MIB + 100]) == data[:MIB + 100]
        buf = bytearray(MIB)  # and the connection is still in step for the next read
        assert p.preadinto(MIB - 10, memoryview(buf)) == 110
        assert bytes(buf[:110]) == data[MIB - 10:MIB + 100]
    finally:
        p.close()


def test_pipelined_reads_adapt_to_the_servers_limit(env, tmp_path, monkeypatch):
    """Read requests larger than sshd's sftp-server answers whole (it caps one read at 255 KiB):
    each short answer inside the file is asked again from where it stopped, the smaller size is
    kept for later reads, and every byte is right."""
    import os

    import qimg_ssh.protocol
    from qimg.api import open_protocol

    monkeypatch.setattr(qimg_ssh.protocol, "READ_REQUEST", 4 * MIB)
    data = os.urandom(6 * MIB + 777)
    img = tmp_path / "big.raw"
    img.write_bytes(data)
    p = open_protocol(env.url(str(img)))
    try:
        for off, n in ((0, 5 * MIB), (MIB - 3, 5 * MIB + 780), (100, 64 * 1024)):
            buf = bytearray(n)
            got = p.preadinto(off, memoryview(buf))
            assert (got, bytes(buf[:got])) == (min(n, len(data) - off), data[off:off + n]), (off, n)
        assert 0 < p._read_request < 4 * MIB
    finally:
        p.close()


def test_threads_read_a_read_only_node_at_once(env, tmp_path):
    """A read-only node is read by several threads at once on its one SFTP channel (a bulk
    copy's readers): each answer reaches its own reader, small and large reads mixed, past the end."""
    import os
    import random
    from concurrent.futures import ThreadPoolExecutor

    from qimg.api import open_protocol

    data = os.urandom(5 * MIB + 321)
    img = tmp_path / "t.raw"
    img.write_bytes(data)
    p = open_protocol(env.url(str(img)))
    assert p.parallel_reads > 1
    rnd = random.Random(7)
    cases = [(rnd.randrange(len(data) + 10), rnd.choice([1, 512, 65536, 300000, MIB, 2 * MIB])) for _ in range(80)]

    def read(case):
        off, n = case
        buf = bytearray(n)
        got = p.preadinto(off, memoryview(buf))
        return got, bytes(buf[:got])

    try:
        with ThreadPoolExecutor(4) as pool:
            for (off, n), (got, out) in zip(cases, pool.map(read, cases), strict=True):
                assert (got, out) == (len(data[off:off + n]), data[off:off + n]), (off, n)
    finally:
        p.close()


def test_reads_see_pipelined_writes(env, tmp_path):
    """Writes are buffered and pipelined; a read in between (small or pipelined, as a format's
    metadata reads are) sees every byte written before it, and the writes' answers are all
    collected: more than paramiko's 100 in flight, then a flush, then the file on the server."""
    import os

    from qimg.api import open_protocol

    img = tmp_path / "rw.raw"
    img.write_bytes(bytes(4 * MIB))
    want = bytearray(4 * MIB)
    p = open_protocol(env.url(str(img)), writable=True)
    try:
        for round_ in range(3):
            for i in range(150):  # small writes: paramiko buffers some, pipelines the rest
                off = (i * 7919 + round_ * 131) % (4 * MIB - 3000)
                data = os.urandom(1 + (i * 37) % 2999)
                p.pwrite(off, data)
                want[off:off + len(data)] = data
            for off, n in ((0, 4 * MIB), (12345, 100), (MIB - 7, 70000)):
                buf = bytearray(n)
                assert p.preadinto(off, memoryview(buf)) == n
                assert buf == want[off:off + n], (round_, off, n)
        p.flush()
    finally:
        p.close()
    assert img.read_bytes() == bytes(want)
