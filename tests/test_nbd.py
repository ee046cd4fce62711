"""The nbd protocol against real servers: qemu-nbd 7.2, qemu-nbd 10.0 and nbdkit, on unix
sockets and on loopback TCP, named exports, read-only and writable. qimg and qemu-img run
the same commands on the same URLs and must print the same, exit the same, and leave the same
bytes (and the same allocation) behind, checked on the server's side after the server stops.
The protocol cases no real server produces (refused options, broken replies, a server that
closes mid-reply or stalls) run against tests/nbd_fake.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import qimg
from cli_support import assert_same, formats_available, run_qemu, run_qemu_io, run_qimg
from conftest import Run, as_qemu, need_qemu10
from nbd_fake import FLAG_CAN_MULTI_CONN, FakeNBD
from nbd_servers import free_port, start_server
from qimg.errors import QimgError

MIB = 1 << 20


@pytest.fixture
def servers(tmp_path):
    """Start servers with ``servers(kind, image, **kw)``; all are stopped after the test."""
    started = []

    def start(kind, image, **kw):
        s = start_server(kind, image, tmp_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _sparse_raw(path, size=8 * MIB):
    """Data, holes and a written zero range in a raw file (written with qemu-io)."""
    run_qemu("create", "-q", "-f", "raw", str(path), str(size))
    run_qemu_io("-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 64k", "-c", "write -z 5M 1M",
                "-c", "write -P 3 7M 512k", str(path))


def _chain(folder):
    """A qcow2 over a qcow2 with data in both, zero clusters and holes; absolute backing name."""
    base, top = folder / "base.qcow2", folder / "top.qcow2"
    run_qemu("create", "-q", "-f", "qcow2", str(base), "8M")
    run_qemu_io("-c", "write -P 5 0 2M", "-c", "write -P 6 6M 1M", str(base))
    run_qemu("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    run_qemu_io("-c", "write -P 7 1M 64k", "-c", "write -z 6M 128k", str(top))
    return base, top


def same(tmp_path, *args, cwd=None):
    theirs = run_qemu(*args, cwd=cwd or tmp_path)
    mine = run_qimg(*args, cwd=cwd or tmp_path)
    assert_same(mine, theirs)
    return mine


KINDS = ["qemu-nbd", "qemu-nbd-10", "nbdkit"]
TRANSPORTS = ["unix", "tcp"]


@pytest.mark.parametrize("tcp", [False, True], ids=TRANSPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_info_and_map_of_a_raw_export(tmp_path, servers, kind, tcp):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = servers(kind, img, readonly=True, tcp=tcp)
    for name in (s.url, s.legacy, s.url.replace("nbd://", "nbd+tcp://")):
        for cmd in (["info"], ["info", "--output=json"], ["info", "-f", "raw"], ["map"], ["map", "--output=json"],
                    ["map", "-f", "raw", "--output=json"], ["check", "-f", "raw"], ["info", "-U"]):
            same(tmp_path, *cmd, name)
    for cmd in (["info"], ["info", "--output=json"], ["map", "--output=json"]):
        same(tmp_path, *cmd, "--image-opts", s.image_opts)
        same(tmp_path, *cmd, "--image-opts", "driver=raw," + ",".join("file." + kv for kv in s.image_opts.split(",")))
        doc = {"driver": "raw", "file": {"driver": "nbd", "export": s.export,
                                         "server": {"type": "unix", "path": s.sock} if s.sock else
                                         {"type": "inet", "host": "127.0.0.1", "port": str(s.port)}}}
        same(tmp_path, *cmd, "json:" + json.dumps(doc))
        same(tmp_path, *cmd, "json:" + json.dumps(doc["file"]))


@pytest.mark.parametrize("kind", KINDS)
def test_qcow2_chain_over_nbd(tmp_path, servers, kind):
    """A qcow2 file served as bytes: qimg probes and reads qcow2 over NBD; its absolute
    backing file is a local file. Served as qcow2 (qemu-nbd -f qcow2): the chain's data."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    base, top = _chain(tmp_path)
    s = servers(kind, top, readonly=True)
    for cmd in (["info"], ["info", "--output=json"], ["info", "--backing-chain"], ["map"], ["map", "--output=json"],
                ["check"], ["compare", s.url, str(top)], ["compare", "-f", "qcow2", "-F", "raw", s.url, str(top)]):
        same(tmp_path, *(cmd if cmd[0] == "compare" else [*cmd, s.url]))
    if kind != "nbdkit":
        s2 = servers(kind, top, fmt="qcow2", readonly=True, export="chain")
        for cmd in (["info"], ["map", "--output=json"], ["map"], ["compare", s2.url, str(top)]):
            same(tmp_path, *(cmd if cmd[0] == "compare" else [*cmd, s2.url]))


def test_relative_backing_over_nbd(tmp_path, servers):
    """A relative backing name over NBD: no folder to resolve it in (qemu-img's messages)."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "b.qcow2", "1M", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", cwd=tmp_path)
    s = servers("qemu-nbd", tmp_path / "t.qcow2", readonly=True)
    for cmd in (["info"], ["info", "--output=json"], ["info", "--backing-chain"], ["map"], ["check"],
                ["convert", "-O", "raw"]):
        args = [*cmd, s.url] + (["out.raw"] if cmd[0] == "convert" else [])
        same(tmp_path, *args)


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("kind", KINDS)
def test_convert_from_nbd(tmp_path, servers, kind, out_fmt):
    """Sparse convert from an export: the same bytes and the same allocation as qemu-img's."""
    if out_fmt not in formats_available():
        pytest.skip(f"{out_fmt} plugin not installed")
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = servers(kind, img, readonly=True)
    for args in (["-O", out_fmt], ["-O", out_fmt, "-S", "0"], ["-O", out_fmt, "-f", "raw", "-W", "-m", "4"]):
        q, m = tmp_path / f"q.{out_fmt}", tmp_path / f"m.{out_fmt}"
        theirs = run_qemu("convert", *args, s.url, str(q))
        mine = run_qimg("convert", *args, s.url, str(m))
        assert_same(mine, theirs)
        assert run_qemu("compare", "-s", str(q), str(m)).returncode == 0
        maps = [json.loads(run_qemu("map", "--output=json", str(p)).stdout) for p in (q, m)]
        if "-W" in args and out_fmt == "qcow2":  # out of order: where clusters land is not fixed
            maps = [[{k: v for k, v in e.items() if k != "offset"} for e in mp] for mp in maps]
        assert maps[0] == maps[1]


@pytest.mark.parametrize("kind", KINDS)
def test_convert_into_export(tmp_path, servers, kind):
    """``convert -n`` into a writable export, as oVirt and virt-v2v do: the server's file ends
    with the bytes and the allocation qemu-img leaves (checked after the server stopped)."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    _, top = _chain(tmp_path)
    results = {}
    for who, run in (("qemu", run_qemu), ("qimg", run_qimg)):
        target = tmp_path / f"{who}.raw"
        run_qemu("create", "-q", "-f", "raw", str(target), "8M")
        run_qemu_io("-f", "raw", "-c", "write -P 9 0 8M", str(target))  # stale data to overwrite
        s = servers(kind, target)
        r = run("convert", "-n", "-O", "raw", str(top), s.url)
        r2 = run("compare", "-f", "qcow2", "-F", "raw", str(top), s.url)
        s.stop()
        results[who] = (r, r2)
        assert run_qemu("compare", "-f", "qcow2", "-F", "raw", str(top), str(target)).returncode == 0
    assert_same(results["qimg"][0], results["qemu"][0])
    assert_same(results["qimg"][1], results["qemu"][1])
    assert (tmp_path / "qemu.raw").read_bytes() == (tmp_path / "qimg.raw").read_bytes()
    maps = [run_qemu("map", "--output=json", "-f", "raw", str(tmp_path / f"{w}.raw")).stdout for w in ("qemu", "qimg")]
    assert maps[0] == maps[1]


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "nbd"])
@pytest.mark.parametrize("kind", ["qemu-nbd", "nbdkit"])
def test_create_into_export(tmp_path, servers, kind, fmt):
    """``create`` into an export writes the new image there (an export cannot be created)."""
    if fmt != "nbd" and fmt not in formats_available():
        pytest.skip(f"{fmt} not installed")
    outs = {}
    for who, run in (("qemu", run_qemu), ("qimg", run_qimg)):
        target = tmp_path / f"{who}.img"
        run_qemu("create", "-q", "-f", "raw", str(target), "16M")
        run_qemu_io("-f", "raw", "-c", "write -P 9 0 1M", str(target))
        s = servers(kind, target)
        outs[who] = [Run(r.returncode, r.stdout.replace(s.url, "URL"), r.stderr.replace(s.url, "URL"))
                     for r in (run("create", "-f", fmt, s.url, "8M"), run("create", "-f", fmt, s.url, "32M"),
                               run("info", s.url))]
        s.stop()
    for a, b in zip(outs["qimg"], outs["qemu"], strict=True):
        assert_same(a, b)
    assert (tmp_path / "qemu.img").read_bytes() == (tmp_path / "qimg.img").read_bytes()
    if fmt == "qcow2":
        assert run_qemu("check", str(tmp_path / "qimg.img")).returncode == 0


def test_create_preallocated_qcow2_that_would_grow_the_export(tmp_path, servers):
    """qcow2 with preallocation=metadata needs more than the export has: qemu-img's words
    ("Could not resize image: Cannot grow NBD nodes"), and as much written as qemu-img wrote."""
    outs = {}
    for who, run in (("qemu", run_qemu), ("qimg", run_qimg)):
        target = tmp_path / f"{who}.img"
        run_qemu("create", "-q", "-f", "raw", str(target), "64M")
        s = servers("qemu-nbd", target)
        r = run("create", "-f", "qcow2", "-o", "preallocation=metadata", s.url, "64M")
        outs[who] = Run(r.returncode, r.stdout.replace(s.url, "URL"), r.stderr.replace(s.url, "URL"))
        s.stop()
    assert_same(outs["qimg"], outs["qemu"])
    assert "Could not resize image: Cannot grow NBD nodes" in outs["qimg"].stderr
    assert (tmp_path / "qemu.img").read_bytes() == (tmp_path / "qimg.img").read_bytes()


def test_writes_land_byte_identical(tmp_path, servers):
    """Library writes over NBD, unaligned, read back by qemu-io on the server's file."""
    target = tmp_path / "t.raw"
    run_qemu("create", "-q", "-f", "raw", str(target), "4M")
    s = servers("qemu-nbd", target)
    with qimg.open(s.url, "raw", writable=True) as img:
        img.pwrite(1000, b"\x11" * 5000)
        img.pwrite(3 * MIB - 7, b"\x22" * 100)
        img.write_zeroes(1500, 1000)
        img.flush()
        assert img.pread(0, 1000) == bytes(1000)
    s.stop()
    data = target.read_bytes()
    assert data[1000:1500] == b"\x11" * 500 and data[1500:2500] == bytes(1000) and data[2500:6000] == b"\x11" * 3500
    assert data[3 * MIB - 7:3 * MIB + 93] == b"\x22" * 100
    r = run_qemu_io("-f", "raw", "-c", "read -P 0x22 3145721 100", str(target))
    assert "read 100/100" in r.stdout


def test_read_only_exports(tmp_path, servers):
    """What writes to a read-only export does, as qemu-img says it."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    run_qemu("create", "-q", "-f", "raw", "src.raw", "8M", cwd=tmp_path)
    for kind in ("qemu-nbd", "nbdkit"):
        s = servers(kind, img, readonly=True)
        for args in (["convert", "-n", "-O", "raw", "src.raw", s.url], ["create", "-f", "raw", s.url, "1M"],
                     ["resize", "-f", "raw", s.url, "16M"], ["resize", "-f", "raw", s.url, "8M"],
                     ["dd", "if=src.raw", f"of={s.url}", "-O", "raw"], ["bench", "-w", "-c", "1", s.url],
                     ["rebase", "-u", "-b", "", s.url], ["commit", s.url], ["info", s.url]):
            same(tmp_path, *args)


def test_resize_and_grow(tmp_path, servers):
    img = tmp_path / "disk.raw"
    run_qemu("create", "-q", "-f", "raw", str(img), "8M")
    s = servers("qemu-nbd", img)
    for args in (["resize", "-f", "raw", s.url, "16M"], ["resize", "-f", "raw", s.url, "8M"],
                 ["resize", "--shrink", "-f", "raw", s.url, "4M"], ["create", "-f", "raw", s.url, "16M"],
                 ["create", "-f", "raw", "-o", "preallocation=full", s.url, "4M"], ["info", s.url]):
        same(tmp_path, *args)


# -- errors ------------------------------------------------------------------------------------

def _nothing_listens(tmp_path):
    return free_port(), str(tmp_path / "no.sock")


@pytest.mark.parametrize("name", [
    "nbd://127.0.0.1:{port}/x", "nbd:127.0.0.1:{port}", "nbd+unix:///x?socket={sock}", "nbd:unix:{sock}",
    "nbd:unix:{sock}:exportname=e", "nbd://", "nbd:///x", "nbd+unix:///x", "nbd://h:1:2/x", "nbd:x", "nbd:localhost",
    "nbd:", "nbd:localhost:1:exportname=", "nbd://127.0.0.1:{port}/x?a=b", "nbd://localhost:abc/x",
    "nbd://localhost:99999/x", "nbd+unix://h/x?socket={sock}", "nbd+unix:///x?socket={sock}&socket=y",
    "nbd+unix:///x?other={sock}", "nbd://[::1]:{port}/x", "nbd:[::1]:{port}", "nbd://user@127.0.0.1:{port}/x",
    "nbd+tcp:127.0.0.1:{port}", "nbd+unix:{sock}", "nbd://%zz/x", "nbd://[::1/x", "nbd:unix:",
    "nbd://host.invalid/x", "nbd:host.invalid:{port}", "nbd::{port}", "nbd://[]:{port}/x", "nbd://:{port}/x",
])
@pytest.mark.parametrize("cmd", [["info"], ["map"], ["convert", "-O", "raw"]])
def test_unreachable_and_bad_names(tmp_path, cmd, name):
    port, sock = _nothing_listens(tmp_path)
    name = name.format(port=port, sock=sock)
    same(tmp_path, *cmd, name, *(["out.raw"] if cmd[0] == "convert" else []))


@pytest.mark.parametrize("opts", [
    "driver=nbd", "driver=nbd,server.type=inet,server.host=127.0.0.1", "driver=nbd,server.type=inet,server.port=1",
    "driver=nbd,server.type=unix", "driver=nbd,server.type=foo", "driver=nbd,server.path={sock}",
    "driver=nbd,server.type=unix,server.path={sock},server.bogus=1", "driver=nbd,path={sock},host=x",
    "driver=nbd,path={sock},port=1", "driver=nbd,path={sock},server.type=unix", "driver=nbd,host=127.0.0.1,port={port}",
    "driver=nbd,server.type=unix,server.path={sock},tls-creds=x", "driver=nbd,server.type=unix,server.path={sock},"
    "reconnect-delay=x", "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock}",
    "driver=nbd,server.type=unix,server.path={sock},export=" + "e" * 5000,
    "driver=raw,file.driver=nbd,file.filename=nbd+unix:///x?socket={sock}", "driver=nbd,filename=nbd://x",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.ipv4=x",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.ipv4=off,server.ipv6=off",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.to=x",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.to=70000",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.to=-1",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},server.path=x",
    "driver=nbd,server.type=unix,server.path={sock},server.tight=x",
    "driver=nbd,server.type=unix,server.path={sock},server.abstract=on",
    "driver=nbd,server.type=unix,server.path={sock},server.host=x",
])
def test_option_errors(tmp_path, opts):
    port, sock = _nothing_listens(tmp_path)
    same(tmp_path, "info", "--image-opts", opts.format(port=port, sock=sock))


def test_wrong_export_and_unknown_options(tmp_path, servers):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    for kind in ("qemu-nbd", "qemu-nbd-10"):
        s = servers(kind, img, readonly=True, export="right")
        sock = s.sock
        for name in (f"nbd+unix:///wrong?socket={sock}", f"nbd+unix:///?socket={sock}", f"nbd:unix:{sock}",
                     f"nbd:unix:{sock}:exportname=wrong"):
            for cmd in (["info"], ["map"], ["convert", "-O", "raw"]):
                same(tmp_path, *cmd, name, *(["out.raw"] if cmd[0] == "convert" else []))
        for opts in (f"driver=nbd,path={sock},export=right,bogus=1",
                     f"driver=raw,file.driver=nbd,file.path={sock},file.export=right,file.bogus=1",
                     f"driver=nbd,path={sock},export=right,read-only=on",
                     f"driver=raw,file.driver=nbd,file.path={sock},file.export=right,offset=1M,size=1M"):
            same(tmp_path, "info", "--image-opts", opts)
            same(tmp_path, "map", "--output=json", "--image-opts", opts)


#: (fault, value): what the fake server breaks; these end before any data moves, or while it does
FAULTS = [("greeting", "close"), ("greeting", "badmagic"), ("greeting", "oldstyle"), ("greeting", "newstyle"),
          ("go", "unsup"), ("go", "policy"), ("go", "unknown"), ("go", "tls"), ("go", "shutdown"), ("go", "close"),
          ("go", "no_export_info"), ("go", "bad_info_length"), ("go", "invalid"), ("go", "platform"),
          ("go", "block_size"), ("go", "too_big"), ("go", "unknown_err"), ("go", "policy_msg"),
          ("go", "unknown_nomsg"), ("structured", "unsup"), ("meta", "unsup"), ("meta", "none"),
          ("list", "unsup"), ("list", "empty"), ("read", "close_mid"), ("read", "close_before"),
          ("read", "bad_magic"), ("read", "bad_cookie"), ("read", "chunk_outside"), ("read", "huge_chunk"),
          ("read", "error_chunk"), ("read", "simple"), ("read", "hole_outside"), ("read", "no_done"),
          ("block_status", "zero_length"), ("block_status", "bad_context"), ("block_status", "no_extent"),
          ("block_status", "longer"), ("block_status", "error"), ("block_status", "close")]


def _fake_data():
    data = bytearray(MIB)
    data[0:4096] = b"\1" * 4096
    data[512 * 1024:520 * 1024] = b"\2" * 8192
    return data


@pytest.mark.parametrize("fault", FAULTS, ids=[f"{k}={v}" for k, v in FAULTS])
def test_hostile_server(tmp_path, fault):
    """A server that breaks the protocol: qimg fails (or copes) exactly as qemu-img does."""
    for cmd in (["info"], ["map", "--output=json"], ["convert", "-O", "raw"]):
        outs = []
        for run in (run_qemu, run_qimg):
            with FakeNBD(_fake_data(), dict([fault]), export="e") as srv:
                args = [*cmd, srv.url] + ([str(tmp_path / "out.raw")] if cmd[0] == "convert" else [])
                r = run(*args)
                outs.append(Run(r.returncode, r.stdout.replace(srv.path, "SOCK"), r.stderr.replace(srv.path, "SOCK")))
        assert_same(outs[1], outs[0])


@pytest.mark.parametrize("fault", [("greeting", "stall"), ("read", "stall")])
def test_stalled_server_times_out(tmp_path, fault):
    """qemu-img waits forever for a server that stops answering; qimg gives up after
    QIMG_NBD_TIMEOUT seconds with one line and exit 1."""
    with FakeNBD(_fake_data(), dict([fault]), export="e") as srv:
        code = "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"
        p = subprocess.run([sys.executable, "-c", code, "convert", "-O", "raw", srv.url, str(tmp_path / "o.raw")],
                           capture_output=True, text=True, timeout=120, env=dict(os.environ, QIMG_NBD_TIMEOUT="1"))
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "timed out" in p.stderr, p.stderr


def test_multi_conn_reads_in_parallel(tmp_path):
    """A server that allows multi-conn is read over several connections (opened in the
    background once a bulk copy starts), and correctly."""
    import threading
    import time

    data = bytearray(os.urandom(8 * MIB))
    data[2 * MIB:3 * MIB] = bytes(MIB)
    with FakeNBD(data, export="e", flags=FLAG_CAN_MULTI_CONN | 4) as srv:
        r = run_qimg("convert", "-O", "raw", srv.url, str(tmp_path / "o.raw"))
        assert r.returncode == 0, r
        assert (tmp_path / "o.raw").read_bytes() == data
        img = qimg.open(srv.url, "raw")
        try:
            p = img.driver.file
            p.start_parallel(4)
            deadline = time.monotonic() + 30
            while len(p._conns) < 4:
                assert time.monotonic() < deadline, "the extra connections were not opened within 30 s"
                time.sleep(0.01)
            got = [b""] * 8
            together = threading.Barrier(8, timeout=30)  # all alive at once: 8 distinct threads

            def read(i):
                together.wait()
                got[i] = p.pread(i * MIB, MIB)
                together.wait()

            threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert b"".join(got) == data
            assert len({id(c) for c in p._mine.values()}) > 1  # the threads read over several
        finally:
            img.close()
        assert len(srv.conns) >= 5  # the convert's first, then the library's four


def test_library(tmp_path, servers):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = servers("qemu-nbd", img, readonly=True)
    with qimg.open(s.url) as a, qimg.open(img, "raw") as b:
        assert a.format == "raw" and a.size == b.size
        assert a.pread(0, a.size) == b.pread(0, b.size)
    port, sock = _nothing_listens(tmp_path)
    with pytest.raises(ConnectionRefusedError) as info:
        qimg.open(f"nbd://127.0.0.1:{port}/x")
    assert isinstance(info.value, QimgError)
    assert str(info.value) == (f"Could not open 'nbd://127.0.0.1:{port}/x': "
                               f"Failed to connect to '127.0.0.1:{port}': Connection refused")
    with pytest.raises(FileNotFoundError):
        qimg.open(f"nbd+unix:///x?socket={sock}")


# -- qemu-img 10.0 ------------------------------------------------------------------------------

def _same10(tmp_path, *args):
    exe, env = need_qemu10("qemu-img")
    theirs = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    code = "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"
    mine = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, QIMG_COMPAT="10.0"))
    assert (mine.returncode, mine.stdout, as_qemu(mine.stderr)) == (theirs.returncode, theirs.stdout, theirs.stderr)


@pytest.mark.parametrize("kind", ["qemu-nbd", "qemu-nbd-10"])
def test_qemu10_same_results(tmp_path, servers, kind):
    """What qemu-img 10.0 prints as 7.2 does over NBD: map, compare, errors (its info adds a
    'Child node' section and its JSON map a "compressed" key, which the 10.0 profile of those
    commands is still learning)."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = servers(kind, img, readonly=True)
    port, sock = _nothing_listens(tmp_path)
    for args in (["map", s.url], ["compare", s.url, str(img)], ["convert", "-O", "raw", s.url, "o.raw"],
                 ["info", f"nbd://127.0.0.1:{port}/x"], ["info", f"nbd+unix:///x?socket={sock}"],
                 ["info", f"nbd+unix:///wrong?socket={s.sock}"], ["info", "nbd://h:1:2/x"],
                 ["info", "--image-opts", "driver=nbd,server.type=unix"]):
        _same10(tmp_path, *args)


#: URL spellings where QEMU 7.2's own URI parser and 10.0's GLib differ (each profile as its
#: qemu-img): query separators, repeated and empty parameters, characters outside RFC 3986,
#: escaped NULs, escaped IP addresses, IPv6 literals and zones, fragments
URL_SPELLINGS = [
    "nbd+unix:///exp?socket={sock}&socket={sock}", "nbd+unix:///exp?socket=/nonexist&socket={sock}",
    "nbd+unix:///exp?socket={sock}&socket=/nonexist", "nbd+unix:///exp?socket={sock}&", "nbd+unix:///exp?&socket={sock}",
    "nbd+unix:///exp?socket={sock}&&", "nbd+unix:///exp?socket={sock}&a", "nbd+unix:///exp?socket={sock};x=1",
    "nbd+unix:///exp?a=1;socket={sock}", "nbd+unix:///exp?=x&socket={sock}", "nbd+unix:///exp?socket={sock}&=",
    "nbd+unix:///exp?", "nbd+unix:///exp", "nbd+unix:///exp?soc%6bet={sock}", "nbd+unix:///exp?socket=%zz",
    "nbd+unix:///exp?socket={sock}%00x", "nbd+unix:///e%00xp?socket={sock}", "nbd+unix:///a b?socket={sock}",
    "nbd+unix:///x[1]?socket={sock}", "nbd+unix:///\u00e4?socket={sock}", "nbd+unix:///exp?socket={sock}#f",
    "nbd://127.0.0.1:{port}/exp?", "nbd://127.0.0.1:{port}/exp?&", "nbd://127.0.0.1:{port}/exp#a#b",
    "nbd://127.0.0.%31:{port}/exp", "nbd://%6cocalhost:{port}/exp", "nbd://[v1.x]:{port}/exp",
    "nbd://[::1%25lo]:{port}/exp", "nbd://127.0.0.1:{port}/e%78p", "nbd://127.0.0.1:{port}/e{{x}}p",
]


def test_url_spellings_per_profile(tmp_path, servers):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    u = servers("qemu-nbd", img, readonly=True)
    t = servers("qemu-nbd", img, readonly=True, tcp=True)
    for spelling in URL_SPELLINGS:
        name = spelling.format(sock=u.sock, port=t.port)
        same(tmp_path, "compare", name, str(img))
        _same10(tmp_path, "compare", name, str(img))


def test_socket_address_options(tmp_path, servers):
    """QEMU's SocketAddress options: accepted and checked; ipv4/ipv6/to leave no URL to name
    the node (a json: name with the options as given, flat and in QDict order)."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    t = servers("qemu-nbd", img, readonly=True, tcp=True)
    u = servers("qemu-nbd", img, readonly=True)
    inet = f"server.type=inet,server.host=127.0.0.1,server.port={t.port},export=exp"
    unix = f"server.type=unix,server.path={u.sock},export=exp"
    for extra in ("server.ipv4=on", "server.ipv6=on", "server.ipv4=off", "server.ipv6=off,server.to=9",
                  "server.ipv4=yes,server.ipv6=true", "server.numeric=on", "server.keep-alive=on", "server.mptcp=off",
                  "server.to=5,server.keep-alive=off"):
        file_opts = ",".join("file." + kv for kv in f"{inet},{extra}".split(","))
        for opts in (f"driver=nbd,{inet},{extra}", "driver=raw,file.driver=nbd,offset=1M," + file_opts,
                     "driver=raw,file.driver=nbd," + file_opts, "file.driver=nbd," + file_opts):
            same(tmp_path, "info", "--image-opts", opts)
            _same10(tmp_path, "map", "--image-opts", opts)
    for extra in ("server.tight=off", "server.tight=on", "server.abstract=off"):
        same(tmp_path, "info", "--image-opts", f"driver=nbd,{unix},{extra}")
    with FakeNBD(_fake_data(), abstract=True) as fake:
        for extra in ("server.abstract=on", "server.abstract=on,server.tight=on", "server.abstract=on,server.tight=off",
                      "server.abstract=off"):
            same(tmp_path, "info", "--image-opts", f"driver=nbd,server.type=unix,server.path={fake.path},{extra}")


def test_nbdkit_named_exports(tmp_path):
    """nbdkit's file plugin serving a folder: every file an export by its name (a raw and a
    qcow2), a name it does not have, the default export it refuses; qimg and qemu-img the same."""
    import shutil
    import tempfile
    import time

    from nbd_servers import READY_TIMEOUT, Server, _ready, _tool

    exe, env = _tool("nbdkit")
    folder = tmp_path / "exports"
    folder.mkdir()
    run_qemu("create", "-q", "-f", "raw", str(folder / "a.raw"), "1M")
    run_qemu_io("-f", "raw", "-c", "write -P 7 0 64k", str(folder / "a.raw"))
    run_qemu("create", "-q", "-f", "qcow2", str(folder / "b.qcow2"), "2M")
    sock_dir = tempfile.mkdtemp(prefix="qimg-nbd-")
    sock = os.path.join(sock_dir, "s.sock")
    proc = subprocess.Popen([exe, "-f", "--exit-with-parent", "-U", sock, "file", f"dir={folder}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    server = Server("nbdkit", proc, "", sock, None, os.devnull, sock_dir)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(server):
            assert proc.poll() is None and time.monotonic() < deadline, "nbdkit did not start listening"
            time.sleep(0.02)
        for name in (f"nbd+unix:///a.raw?socket={sock}", f"nbd+unix:///b.qcow2?socket={sock}",
                     f"nbd:unix:{sock}:exportname=b.qcow2", f"nbd+unix:///nope?socket={sock}",
                     f"nbd+unix:///?socket={sock}"):
            same(tmp_path, "info", name)
            same(tmp_path, "map", "--output=json", name)
        same(tmp_path, "compare", f"nbd+unix:///a.raw?socket={sock}", str(folder / "a.raw"))
    finally:
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
