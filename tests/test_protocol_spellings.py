"""A spelling differential for the nbd, http, https and ssh protocols: many ways to write the
same (or a broken) name - URL forms, legacy forms, ``--image-opts`` and ``json:`` forms, bad
ports, unknown and repeated parameters, percent-encoding, IPv6 literals, servers that are not
there - each run through ``info``, ``info --output=json`` and ``map --output=json`` (and, for a
few, ``compare``, ``convert`` and ``convert -n`` into an export) by qimg and by qemu-img (7.2 and
10.0) against the same real server, which must print the same and exit the same.

One server set per protocol per module (per xdist worker): nbdkit's file plugin serving a
folder (every file an export, read-only) on loopback TCP and on ``[::1]``, a writable qemu-nbd on
a unix socket, nginx on HTTP and HTTPS (IPv4 and IPv6 loopback), OpenSSH's sshd. A name is a
template: ``{port}``, ``{sock}`` and the like are filled from the running servers.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import pytest
from cli_support import assert_same, run_qemu, run_qemu_io, run_qimg
from conftest import Run
from nbd_servers import start_server
from web_server import WebServer, free_port

MIB = 1 << 20
READY_TIMEOUT = 30.0

# -- servers -----------------------------------------------------------------------------------


def _wait_port(host: str, port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start")
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {host}:{port} within {READY_TIMEOUT} s") from None
        finally:
            s.close()
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _free_port6() -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The images every server serves: a qcow2 (with a hole, data and zeroes), a raw, a raw
    whose name needs percent-encoding."""
    root = tmp_path_factory.mktemp("spell")
    q = root / "disk.qcow2"
    run_qemu("create", "-q", "-f", "qcow2", str(q), "4M")
    run_qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -z 2M 512k", "-c", "write -P 0x22 3M 64k", str(q))
    run_qemu("convert", "-O", "raw", str(q), str(root / "disk.raw"))
    shutil.copy(root / "disk.raw", root / "a b.raw")
    shutil.copy(root / "disk.raw", root / "a%b.raw")
    return root


@pytest.fixture(scope="module")
def nbd(images, tmp_path_factory):
    """nbdkit (read-only, the folder's files as exports) on 127.0.0.1 and on ::1; a writable
    qemu-nbd on a unix socket (export ``exp``, a raw of disk.raw's size)."""
    from nbd_servers import _tool

    exe, env = _tool("nbdkit")
    procs = []
    work = tmp_path_factory.mktemp("nbd")
    target = work / "target.raw"
    target.write_bytes(bytes(4 * MIB))
    ports = {}
    try:
        for key, host, port in (("port", "127.0.0.1", free_port()), ("port6", "::1", _free_port6())):
            proc = subprocess.Popen([exe, "-f", "--exit-with-parent", "-r", "-i", host, "-p", str(port), "file",
                                     f"dir={images}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
            procs.append(proc)
            _wait_port(host, port, proc, "nbdkit")
            ports[key] = port
        writable = start_server("qemu-nbd", target, work, export="exp")
        try:
            yield {"port": ports["port"], "port6": ports["port6"], "sock": writable.sock, "target": target,
                   "dead": free_port(), "root": images}
        finally:
            writable.stop()
    finally:
        for p in procs:
            _stop(p)


# -- comparing ---------------------------------------------------------------------------------


def _norm(text: str) -> str:
    # libcurl's elapsed times, and QEMU 7.2's GLib assertion noise on some errors
    text = re.sub(r"after \d+ (ms|milliseconds)", r"after N \1", text)
    return "".join(line for line in text.splitlines(True) if "GLib:" not in line)


def _same(cwd, *args: str) -> Run:
    theirs = run_qemu(*args, cwd=cwd)
    mine = run_qimg(*args, cwd=cwd)
    assert_same(Run(mine.returncode, mine.stdout, _norm(mine.stderr)),
                Run(theirs.returncode, theirs.stdout, _norm(theirs.stderr)))
    return mine


COMMANDS = {"info": ["info"], "json": ["info", "--output=json"], "map": ["map", "--output=json"]}


def _fill(template: tuple[str, ...], values: dict) -> list[str]:
    return [a.format(**values) for a in template]


# -- nbd ---------------------------------------------------------------------------------------

#: names of the nbd servers; {port}: nbdkit on 127.0.0.1, {port6}: on ::1, {sock}: qemu-nbd's
#: socket (export "exp"), {dead}: a port nothing listens on
NBD_NAMES: list[tuple[str, ...]] = [
    # URLs
    ("nbd://127.0.0.1:{port}/disk.qcow2",), ("nbd://127.0.0.1:{port}/disk.raw",),
    ("nbd+tcp://127.0.0.1:{port}/disk.qcow2",), ("nbd://localhost:{port}/disk.qcow2",),
    ("nbd://[::1]:{port6}/disk.qcow2",), ("nbd://[::1]:{port6}/disk.raw",),
    ("nbd://127.0.0.1:{port}/a%20b.raw",), ("nbd://127.0.0.1:{port}/a%25b.raw",),
    ("nbd://127.0.0.1:{port}/a b.raw",), ("nbd://127.0.0.1:{port}//disk.raw",),
    ("nbd://127.0.0.1:{port}/disk.raw#frag",), ("nbd://127.0.0.1:{port}/disk.raw?",),
    ("nbd://127.0.0.1:{port}/disk.raw?foo=bar",), ("nbd://127.0.0.1:{port}/disk.raw?socket=/x",),
    ("nbd://127.0.0.1:{port}",), ("nbd://127.0.0.1:{port}/",), ("nbd://127.0.0.1:{port}/missing",),
    ("nbd://user@127.0.0.1:{port}/disk.raw",), ("nbd://127.0.0.1:0/disk.raw",),
    ("nbd://127.0.0.1:65536/disk.raw",), ("nbd://127.0.0.1:abc/disk.raw",), ("nbd://127.0.0.1:/disk.raw",),
    ("nbd://127.0.0.1:{dead}/disk.raw",), ("nbd:///disk.raw",), ("nbd://",), ("nbd:",),
    ("nbd://[::1/disk.raw",), ("nbd://::1:{port6}/disk.raw",), ("nbd://127.0.0.1:-1/x",),
    ("NBD://127.0.0.1:{port}/disk.raw",), ("nbd+ssh://127.0.0.1:{port}/disk.raw",),
    ("nbd+unix:///exp?socket={sock}",), ("nbd+unix://?socket={sock}",), ("nbd+unix:///?socket={sock}",),
    ("nbd+unix:///exp?socket={sock}&socket={sock}",), ("nbd+unix:///exp?socket={sock}&foo=1",),
    ("nbd+unix:///exp",), ("nbd+unix:///exp?socket=",), ("nbd+unix://localhost/exp?socket={sock}",),
    ("nbd+unix:///exp?socket=/nonexistent/s.sock",), ("nbd+unix:///missing?socket={sock}",),
    ("nbd+unix:///exp?socket={sock}#x",),
    # (not "nbd+unix:///exp?socket": qemu-img 7.2 crashes on a parameter without '=', a NULL
    # value it reads; docs/compat.md)
    ("nbd+unix:///exp?Socket={sock}",), ("nbd+unix:///exp?socket={sock_enc}",),
    ("nbd+tcp://127.0.0.1:{port}/disk.raw?socket={sock}",),
    # legacy
    ("nbd:127.0.0.1:{port}:exportname=disk.qcow2",), ("nbd:localhost:{port}:exportname=disk.raw",),
    ("nbd:127.0.0.1:{port}",), ("nbd:127.0.0.1:{port}:exportname=",), ("nbd:127.0.0.1:{port}:exportname=missing",),
    ("nbd:127.0.0.1:{port}:foo=bar",), ("nbd:127.0.0.1",), ("nbd:127.0.0.1:abc",), ("nbd:127.0.0.1:0",),
    ("nbd:127.0.0.1:{dead}:exportname=disk.raw",), ("nbd:unix:{sock}:exportname=exp",), ("nbd:unix:{sock}",),
    ("nbd:unix:{sock}:exportname=missing",), ("nbd:unix:",), ("nbd:unix:/nonexistent/s.sock",),
    ("nbd:[::1]:{port6}:exportname=disk.raw",), ("nbd:::1:{port6}:exportname=disk.raw",),
    ("nbd::{port}:exportname=disk.raw",), ("nbd:127.0.0.1:{port}:exportname=disk.raw:extra",),
    ("nbd:127.0.0.1:{port}:exportname=a b.raw",),
    # --image-opts
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.qcow2"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=::1,server.port={port6},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=[::1],server.port={port6},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock}"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port}"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.port={port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.host=127.0.0.1,server.port={port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=unix,export=exp"),
    ("--image-opts", "driver=nbd,server.type=bogus,server.path={sock}"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=0,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=65536,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=abc,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=,server.port={port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "bogus=1"),
    ("--image-opts", "driver=nbd,host=127.0.0.1,port={port},export=disk.raw"),
    ("--image-opts", "driver=nbd,path={sock},export=exp"),
    ("--image-opts", "driver=nbd,path={sock},host=127.0.0.1,export=exp"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},host=127.0.0.1,export=exp"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,reconnect-delay=3"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,open-timeout=3"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,reconnect-delay=x"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.ipv4=on"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.numeric=on"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.keep-alive=on"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.to=5"),
    # (an fd's number names what the process has open: 3 differs between qemu-img and pytest)
    ("--image-opts", "driver=nbd,server.type=fd,server.str=1000,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=fd,server.str=abc,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=fd,server.str=99999999999,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=fd,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=vsock,server.cid=x,server.port=1,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=vsock,server.cid=2,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=vsock,server.cid=2,server.port=1,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,x-dirty-bitmap=foo"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,tls-creds="),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,tls-creds=nope"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,tls-hostname=x"),
    ("--image-opts", "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock},file.export=exp"),
    ("--image-opts", "driver=qcow2,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,"
                     "file.server.port={port},file.export=disk.qcow2"),
    ("--image-opts", "driver=qcow2,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,"
                     "file.server.port={port},file.export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={dead},export=disk.raw"),
    ("--image-opts", "driver=nbd,filename=nbd://127.0.0.1:{port}/disk.raw"),
    ("--image-opts", "driver=nbd,filename=nbd://127.0.0.1:{port}/disk.raw,export=disk.qcow2"),
    ("--image-opts", "driver=nbd,filename=nbd://127.0.0.1:{port}/disk.raw,server.type=inet"),
    ("--image-opts", "driver=nbd"),
    # json:
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}},"export":"disk.qcow2"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":{port}}},"export":"disk.qcow2"}}',),
    ('json:{{"driver":"nbd","server.type":"inet","server.host":"127.0.0.1","server.port":"{port}",'
     '"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}}}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"abc"}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":true}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":127,"port":"{port}"}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}},"export":7}}',),
    ('json:{{"driver":"nbd","server":"127.0.0.1","export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}},"export":"disk.raw",'
     '"bogus":1}}',),
    ('json:{{"driver":"nbd","host":"127.0.0.1","port":"{port}","export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","host":"127.0.0.1","port":{port},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","path":"{sock}","export":"exp"}}',),
    ('json:{{"driver":"nbd","filename":"nbd://127.0.0.1:{port}/disk.raw"}}',),
    ('json:{{"driver":"nbd","filename":"nbd+unix:///exp?socket={sock}"}}',),
    ('json:{{"driver":"nbd","filename":"nbd:unix:{sock}:exportname=exp"}}',),
    ('json:{{"file":{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}},'
     '"export":"disk.qcow2"}}}}',),
    ('json:{{"driver":"qcow2","file":{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1",'
     '"port":"{port}"}},"export":"disk.qcow2"}}}}',),
    ('json:{{"driver":"raw","file":{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp"}}}}',),
    ('json:{{"driver":"raw","file":"nbd+unix:///exp?socket={sock}"}}',),
    ('json:{{"driver":"raw","file.filename":"nbd://127.0.0.1:{port}/disk.raw"}}',),
    # more: ports and hosts spelled otherwise, escapes in exports, block-layer options
    ("nbd://127.0.0.1:{port}/./disk.raw",), ("nbd://127.0.0.1:{port}/x/../disk.raw",), ("nbd://127.0.0.1:{port}/..",),
    ("nbd://127.0.0.1:0{port}/disk.raw",), ("nbd://127.0.0.1:+{port}/disk.raw",), ("nbd://LOCALHOST:{port}/disk.raw",),
    ("nbd://127.0.0.1:{port}/disk%2Eraw",), ("nbd://127.0.0.1:{port}/%2Fdisk.raw",), ("nbd://127.0.0.1:{port}/disk.raw%",),
    ("nbd://127.0.0.1:{port}/disk.raw%zz",), ("nbd://127.0.0.1:{port}/disk.raw?socket",),
    ("nbd://127.0.0.1:{port}/disk.raw#a#b",), ("nbd://127.0.0.1:{port}/dis[k.raw",), ("nbd://[127.0.0.1]:{port}/disk.raw",),
    ("nbd://[]:{port}/disk.raw",), ("nbd://%31%32%37.0.0.1:{port}/disk.raw",), ("nbd://a@b@127.0.0.1:{port}/disk.raw",),
    ("nbd+unix:///exp?socket={sock}&",), ("nbd+unix:///exp?&socket={sock}",), ("nbd+unix:///exp?socket={sock};x=1",),
    ("nbd+unix:///exp?=x&socket={sock}",), ("nbd+unix:///exp/?socket={sock}",), ("nbd+unix:///%65xp?socket={sock}",),
    ("nbd:127.0.0.1:{port}:exportname=disk.raw:exportname=disk.qcow2",), ("nbd:unix:{sock}:exportname=exp:x",),
    ("nbd:127.0.0.1:nbd:exportname=disk.raw",), ("nbd:127.0.0.1:+{port}:exportname=disk.raw",),
    ("nbd:127.0.0.1: {port}:exportname=disk.raw",), ("nbd:[::1]:{port6}",), ("nbd:[::1:{port6}",), ("nbd:[]:{port6}",),
    ("nbd:",), ("nbd:unix",), ("nbd:unix:{sock}:",), ("nbd:127.0.0.1:{port}:",),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=+{port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port= {port},export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=0x10,export=disk.raw"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export="),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.ipv6=on"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.ipv4=off,server.ipv6=off"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.ipv4=x"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,server.abstract=on"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,server.port=1"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,read-only=on"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,node-name=n0"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,node-name=0n"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,detect-zeroes=on"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,cache.direct=on"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,discard=unmap"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,force-share=on"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,file.driver=file"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,reconnect-delay=-1"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,open-timeout=1k"),
    ("--image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp,tls-creds=x,tls-hostname=y"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "x-dirty-bitmap=qemu:allocation-depth"),
    ("--image-opts", "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock},file.export=exp,"
                     "offset=512,size=1M"),
    ("--image-opts", "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port={port},file.export=disk.raw"),
    ("--image-opts", "driver=raw,file.driver=nbd,file.filename=nbd://127.0.0.1:{port}/disk.raw"),
    ("--image-opts", "driver=raw,file.filename=nbd://127.0.0.1:{port}/disk.raw"),
    ("--image-opts", "driver=raw,file.filename=nbd:unix:{sock}:exportname=exp"),
    ("--image-opts", "file.filename=nbd://127.0.0.1:{port}/disk.qcow2"),
    ("--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk.raw,"
                     "server.host=localhost"),
    # (not a json: server with ipv4: the json: name qemu-img prints lists server.host before
    # server.port, qimg the other way since json: options arrive in QDict order: not done yet)
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":{port}.0}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":null}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":["{port}"]}},"export":"disk.raw"}}',),
    ('json:{{"driver":"nbd","server":{{}},"export":"disk.raw"}}',), ('json:{{"driver":"nbd","server":[],"export":"x"}}',),
    ('json:{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp","read-only":true}}',),
    ('json:{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp","server.type":"inet"}}',),
    ('json:{{"driver":"nbd","server.type":"unix","server":{{"path":"{sock}"}},"export":"exp"}}',),
    ('json:{{"driver":"raw","file":{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp"}},'
     '"offset":4096}}',),
    ('json:{{"driver":"qcow2","file":{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1",'
     '"port":"{port}"}},"export":"disk.qcow2"}},"backing":null}}',),
    # format given
    ("-f", "raw", "nbd://127.0.0.1:{port}/disk.qcow2"), ("-f", "qcow2", "nbd://127.0.0.1:{port}/disk.qcow2"),
    ("-f", "qcow2", "nbd://127.0.0.1:{port}/disk.raw"), ("-f", "nbd", "nbd://127.0.0.1:{port}/disk.raw"),
    ("-f", "nbd", "nbd+unix:///exp?socket={sock}"), ("-f", "raw", "nbd:unix:{sock}:exportname=exp"),
    ("-U", "nbd://127.0.0.1:{port}/disk.qcow2"), ("-f", "vmdk", "nbd://127.0.0.1:{port}/disk.raw"),
    ("-f", "file", "nbd://127.0.0.1:{port}/disk.raw"), ("-f", "http", "nbd://127.0.0.1:{port}/disk.raw"),
]


def _nbd_values(nbd) -> dict:
    return {**nbd, "sock_enc": nbd["sock"].replace("/", "%2F")}


def _ids(names):
    return [f"{i:03d}" for i in range(len(names))]


@pytest.mark.parametrize("cmd", list(COMMANDS))
@pytest.mark.parametrize("name", NBD_NAMES, ids=_ids(NBD_NAMES))
def test_nbd_spellings(nbd, tmp_path, cmd, name):
    _same(tmp_path, *COMMANDS[cmd], *_fill(name, _nbd_values(nbd)))


# -- http and https ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(images, tmp_path_factory):
    """nginx serving the images (and copies under /auth/, /cookie/, /norange/) on HTTP and
    HTTPS, 127.0.0.1 and ::1."""
    for sub in ("auth", "cookie", "norange"):
        (images / sub).mkdir(exist_ok=True)
        for f in ("disk.raw", "disk.qcow2"):
            if not (images / sub / f).exists():
                os.link(images / f, images / sub / f)
    server = WebServer(str(images), str(tmp_path_factory.mktemp("nginx")), ipv6=True)
    yield {"port": server.port, "tport": server.tls_port, "dead": free_port(), "u": server.url,
           "t": server.tls_url}
    server.stop()


#: names on the web server; {u}: http://127.0.0.1:PORT, {t}: https://127.0.0.1:TLSPORT
HTTP_NAMES: list[tuple[str, ...]] = [
    ("{u}/disk.qcow2",), ("{u}/disk.raw",), ("http://localhost:{port}/disk.qcow2",), ("{u}/a%20b.raw",),
    ("{u}/a%25b.raw",), ("{u}/a b.raw",), ("{u}/disk.raw?x=1",), ("{u}/disk.raw?x=1&x=2",), ("{u}/disk.raw#frag",),
    ("{u}/disk.raw?",), ("{u}//disk.raw",), ("{u}/./disk.raw",), ("{u}/sub/../disk.raw",), ("{u}/%64isk.raw",),
    ("{u}/disk.raw%",), ("{u}/disk.raw%zz",), ("{u}/missing",), ("{u}/",), ("{u}",), ("{u}/norange/disk.raw",),
    ("{u}/redirect/disk.qcow2",), ("{u}/auth/disk.raw",), ("http://bob:secret@127.0.0.1:{port}/auth/disk.raw",),
    ("http://bob:wrong@127.0.0.1:{port}/auth/disk.raw",), ("http://bob@127.0.0.1:{port}/auth/disk.raw",),
    ("http://bob:secret@127.0.0.1:{port}/disk.raw",), ("http://b%6fb:secret@127.0.0.1:{port}/auth/disk.raw",),
    ("http://[::1]:{port}/disk.qcow2",), ("http://[::1]:{port}/disk.raw",), ("http://[::1/disk.raw",),
    ("http://127.0.0.1:0/disk.raw",), ("http://127.0.0.1:65536/disk.raw",), ("http://127.0.0.1:abc/disk.raw",),
    ("http://127.0.0.1:/disk.raw",), ("http://127.0.0.1:{dead}/disk.raw",), ("http:///disk.raw",), ("http://",),
    ("http:",), ("http:/disk.raw",), ("http:disk.raw",), ("HTTP://127.0.0.1:{port}/disk.raw",),
    ("http://127.0.0.1:{port}:{port}/disk.raw",), ("http://127.0.0.1:-1/disk.raw",),
    ("{t}/disk.qcow2",), ("{t}/disk.raw",), ("https://localhost:{tport}/disk.raw",), ("https://[::1]:{tport}/disk.raw",),
    ("https://127.0.0.1:{port}/disk.raw",), ("http://127.0.0.1:{tport}/disk.raw",), ("https:///disk.raw",),
    ("https://127.0.0.1:{dead}/disk.raw",),
    # --image-opts
    ("--image-opts", "driver=http,url={u}/disk.raw"), ("--image-opts", "driver=http,url={u}/disk.qcow2"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=64k"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=1"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=513"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=0"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=x"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=-512"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=0"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=-1"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=100000"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=1000000000000"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=x"),
    ("--image-opts", "driver=http,url={u}/disk.raw,sslverify=off"),
    ("--image-opts", "driver=http,url={u}/disk.raw,sslverify=bogus"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=off"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=on"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=no"),
    ("--image-opts", "driver=https,url={u}/disk.raw"), ("--image-opts", "driver=http,url={t}/disk.raw,sslverify=off"),
    ("--image-opts", "driver=http,url=ftp://127.0.0.1/disk.raw"), ("--image-opts", "driver=http,url=disk.raw"),
    ("--image-opts", "driver=http,url="), ("--image-opts", "driver=http"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie=a=b"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie=a=c"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie-secret=nope"),
    ("--image-opts", "driver=http,url={u}/auth/disk.raw,username=bob"),
    ("--image-opts", "driver=http,url={u}/auth/disk.raw,username=bob,password-secret=nope"),
    ("--image-opts", "driver=http,url={u}/disk.raw,proxy-username=x"),
    ("--image-opts", "driver=http,url={u}/disk.raw,proxy-password-secret=nope"),
    ("--image-opts", "driver=http,url={u}/disk.raw,bogus=1"),
    ("--image-opts", "driver=http,filename={u}/disk.raw"), ("--image-opts", "driver=http,url={u}/disk.raw,filename=x"),
    ("--image-opts", "driver=raw,file.driver=http,file.url={u}/disk.qcow2"),
    ("--image-opts", "driver=qcow2,file.driver=http,file.url={u}/disk.qcow2,file.readahead=1M"),
    ("--image-opts", "driver=qcow2,file.driver=http,file.url={u}/disk.raw"),
    ("--image-opts", "driver=qcow2,file.driver=https,file.url={t}/disk.qcow2,file.sslverify=off"),
    ("--image-opts", "driver=qcow2,file.filename={u}/disk.qcow2"),
    # json:
    ('json:{{"driver":"http","url":"{u}/disk.raw"}}',), ('json:{{"driver":"http","url":"{u}/disk.qcow2"}}',),
    ('json:{{"file":{{"driver":"http","url":"{u}/disk.qcow2"}}}}',),
    ('json:{{"file":{{"driver":"https","url":"{t}/disk.qcow2","sslverify":false}}}}',),
    ('json:{{"file":{{"driver":"https","url":"{t}/disk.qcow2","sslverify":"off"}}}}',),
    ('json:{{"file":{{"driver":"https","url":"{t}/disk.qcow2","sslverify":0}}}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","readahead":65536}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","readahead":"64k"}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","readahead":1.5}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","timeout":"5"}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","timeout":5}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","timeout":true}}',),
    ('json:{{"driver":"http","url":7}}',), ('json:{{"driver":"http","url":["{u}/disk.raw"]}}',),
    ('json:{{"driver":"http","url":"{u}/cookie/disk.raw","cookie":"a=b"}}',),
    ('json:{{"driver":"raw","file.driver":"http","file.url":"{u}/disk.raw"}}',),
    ('json:{{"driver":"raw","file":"{u}/disk.raw"}}',), ('json:{{"driver":"http","filename":"{u}/disk.raw"}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","bogus":true}}',),
    # more
    ("{u}/disk.raw?a=b#c",), ("{u}/disk%2Eraw",), ("{u}/disk.raw?%zz",), ("{u}/disk.raw#%zz",), ("{u}/disk.qcow2?",),
    ("http://LOCALHOST:{port}/disk.raw",), ("http://127.0.0.1:0{port}/disk.raw",), ("http://127.0.0.1:+{port}/disk.raw",),
    ("http://[::1]:{port}",), ("http://[::1]/disk.raw",), ("http://[::1]x:{port}/disk.raw",),
    ("http://[fe80::1%25lo]:{dead}/disk.raw",), ("http://[127.0.0.1]:{port}/disk.raw",),
    ("http://%31%32%37.0.0.1:{port}/disk.raw",), ("http://a@b@127.0.0.1:{port}/disk.raw",),
    ("http://@127.0.0.1:{port}/auth/disk.raw",), ("http://:secret@127.0.0.1:{port}/auth/disk.raw",),
    ("http://bob:@127.0.0.1:{port}/auth/disk.raw",), ("http://bob:sec%72et@127.0.0.1:{port}/auth/disk.raw",),
    ("http://bob:secret@127.0.0.1:{port}/redirect/auth/disk.raw",), ("http://127.0.0.1:{port}?x",),
    ("http://127.0.0.1:{port}#x",), ("http:////127.0.0.1:{port}/disk.raw",), ("http://127.0.0.1:{port}/\\disk.raw",),
    ("http://ex_ample.invalid/disk.raw",), ("http://a!b.invalid/disk.raw",), ("http://127.0.0.1:{port}/disk.raw\t",),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=512"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=0x200"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=1.5k"),
    ("--image-opts", "driver=http,url={u}/disk.raw,readahead=16E"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=10000"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=10001"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=0x10"),
    ("--image-opts", "driver=http,url={u}/disk.raw,timeout=+5"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=yes"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=false"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=n"),
    ("--image-opts", "driver=https,url={t}/disk.raw,sslverify=OFF"),
    ("--image-opts", "driver=http,url=HTTP://127.0.0.1:{port}/disk.raw"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie=a=b;c=d"),
    ("--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie=a=b,cookie-secret=s"),
    ("--object", "secret,id=s,data=a=b", "--image-opts", "driver=http,url={u}/cookie/disk.raw,cookie-secret=s"),
    ("--object", "secret,id=pw,data=secret", "--image-opts",
     "driver=http,url={u}/auth/disk.raw,username=bob,password-secret=pw"),
    ("--object", "secret,id=pw,data=secret", "--image-opts",
     "driver=http,url=http://bob:wrong@127.0.0.1:{port}/auth/disk.raw,password-secret=pw"),
    ("--object", "secret,id=pw,data=wrong", "--image-opts",
     "driver=http,url=http://bob:secret@127.0.0.1:{port}/auth/disk.raw,password-secret=pw"),
    ("--image-opts", "driver=http,url=http://bob:secret@127.0.0.1:{port}/auth/disk.raw,username=alice"),
    ("--image-opts", "driver=http,url={u}/disk.raw,node-name=h0"),
    # (not read-only=off: qemu-img opens the node writable and the curl driver refuses, qimg's
    # info opens it read-only whatever the option says: not done yet)
    ("--image-opts", "driver=http,url={u}/disk.raw,force-share=on"),
    ("--image-opts", "driver=raw,file.driver=http,file.url={u}/disk.raw,offset=1M"),
    ("--image-opts", "driver=raw,file.filename={u}/disk.raw"),
    ("--image-opts", "driver=raw,file.driver=https,file.url={t}/disk.raw"),
    ("--image-opts", "file.filename={u}/disk.qcow2"),
    ('json:{{"driver":"http","url":"{u}/disk.raw","sslverify":true}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","readahead":-512}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","readahead":1e3}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","timeout":5.0}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","timeout":null}}',),
    ('json:{{"driver":"http","url":"{u}/disk.raw","cookie":5}}',),
    ('json:{{"driver":"https","url":"{u}/disk.raw"}}',),
    ('json:{{"driver":"http","url":{{"a":"b"}}}}',),
    ('json:{{"driver":"http"}}',),
    # format given
    ("-f", "raw", "{u}/disk.qcow2"), ("-f", "qcow2", "{u}/disk.qcow2"), ("-f", "qcow2", "{u}/disk.raw"),
    ("-f", "http", "{u}/disk.raw"), ("-f", "https", "{u}/disk.raw"), ("-f", "http", "{t}/disk.raw"),
    ("-f", "file", "{u}/disk.raw"), ("-f", "nbd", "{u}/disk.raw"), ("-U", "{u}/disk.qcow2"),
]


@pytest.mark.parametrize("cmd", list(COMMANDS))
@pytest.mark.parametrize("name", HTTP_NAMES, ids=_ids(HTTP_NAMES))
def test_http_spellings(web, tmp_path, cmd, name):
    _same(tmp_path, *COMMANDS[cmd], *_fill(name, web))


# -- ssh ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(images, tmp_path_factory):
    from ssh_server import SshServer

    server = SshServer(str(tmp_path_factory.mktemp("sshd")), ipv6=True)
    yield server
    server.stop()


@pytest.fixture
def ssh(sshd, images, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", sshd.agent_sock)
    return {"port": sshd.port, "root": str(images), "user": sshd.user, "sha256": sshd.sha256, "md5": sshd.md5,
            "dead": free_port(), "h": f"127.0.0.1:{sshd.port}", "no": "?host_key_check=no",
            "k": f"?host_key_check=sha256:{sshd.sha256}", "sha256_upper": sshd.sha256.upper(),
            "sha256_colons": ":".join(sshd.sha256[i:i + 2] for i in range(0, 64, 2)),
            "md5_colons": ":".join(sshd.md5[i:i + 2] for i in range(0, 32, 2))}


#: names on sshd; {h}: 127.0.0.1:PORT, {root}: the images' folder, {no}: ?host_key_check=no,
#: {k}: ?host_key_check=sha256:HASH
SSH_NAMES: list[tuple[str, ...]] = [
    ("ssh://{h}{root}/disk.qcow2{no}",), ("ssh://{h}{root}/disk.raw{no}",), ("ssh://{h}{root}/disk.qcow2{k}",),
    ("ssh://{user}@{h}{root}/disk.qcow2{no}",), ("ssh://nobody@{h}{root}/disk.qcow2{no}",),
    ("ssh://{user}:pw@{h}{root}/disk.raw{no}",), ("ssh://localhost:{port}{root}/disk.raw{no}",),
    ("ssh://[::1]:{port}{root}/disk.raw{no}",), ("ssh://[::1/x{no}",),
    ("ssh://{h}{root}/a%20b.raw{no}",), ("ssh://{h}{root}/a b.raw{no}",), ("ssh://{h}{root}/a%25b.raw{no}",),
    ("ssh://{h}{root}/disk.raw",), ("ssh://{h}{root}/disk.raw?host_key_check=yes",),
    ("ssh://{h}{root}/disk.raw?host_key_check=md5:{md5}",), ("ssh://{h}{root}/disk.raw?host_key_check=md5:00",),
    ("ssh://{h}{root}/disk.raw?host_key_check=sha1:00",), ("ssh://{h}{root}/disk.raw?host_key_check=sha256:00",),
    ("ssh://{h}{root}/disk.raw?host_key_check=sha256:{sha256}&host_key_check=no",),
    ("ssh://{h}{root}/disk.raw?host_key_check=no&host_key_check=sha256:00",),
    ("ssh://{h}{root}/disk.raw?host_key_check=bogus",), ("ssh://{h}{root}/disk.raw?host_key_check=",),
    # (not "?host_key_check" without '=': qemu-img 7.2 and 10.0 crash on its NULL value; docs/compat.md)
    ("ssh://{h}{root}/disk.raw?foo=bar",),
    ("ssh://{h}{root}/disk.raw?host_key_check=no&foo=bar",), ("ssh://{h}{root}/disk.raw{no}#frag",),
    ("ssh://{h}{root}/disk.raw{no};x=1",), ("ssh://{h}{root}/missing{no}",), ("ssh://{h}{root}{no}",),
    ("ssh://{h}{no}",), ("ssh://{h}/{no}",), ("ssh://127.0.0.1:0{root}/disk.raw{no}",),
    ("ssh://127.0.0.1:65536{root}/disk.raw{no}",), ("ssh://127.0.0.1:abc{root}/disk.raw{no}",),
    ("ssh://127.0.0.1:{root}/disk.raw{no}",), ("ssh://127.0.0.1:{dead}{root}/disk.raw{no}",),
    ("ssh://{root}/disk.raw{no}",), ("ssh://",), ("ssh:",), ("ssh:{root}/disk.raw",), ("SSH://{h}{root}/disk.raw{no}",),
    ("ssh://{h}/{root}/disk.raw{no}",), ("ssh://{h}{root}//disk.raw{no}",),
    # --image-opts
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.qcow2,"
                     "host-key-check.mode=hash,host-key-check.type=sha256,host-key-check.hash={sha256}"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=md5,host-key-check.hash={md5}"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=sha1,host-key-check.hash=00"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=bogus,host-key-check.hash=00"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=sha256"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=known_hosts"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=bogus"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,user={user},"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,user=nobody,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=::1,server.port={port},path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.port={port},path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=0,path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=65536,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=abc,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=,server.port={port},path={root}/disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={dead},path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw,host_key_check=no"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw,host_key_check=sha256:{sha256}"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw,host_key_check=bogus"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none,host_key_check=no"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none,bogus=1"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/missing,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,filename=ssh://{h}{root}/disk.raw{no}"),
    ("--image-opts", "driver=qcow2,file.driver=ssh,file.server.host=127.0.0.1,file.server.port={port},"
                     "file.path={root}/disk.qcow2,file.host-key-check.mode=none"),
    ("--image-opts", "driver=qcow2,file.driver=ssh,file.server.host=127.0.0.1,file.server.port={port},"
                     "file.path={root}/disk.raw,file.host-key-check.mode=none"),
    ("--image-opts", "driver=ssh"),
    # json:
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":{port}}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","server.host":"127.0.0.1","server.port":"{port}","path":"{root}/disk.raw",'
     '"host-key-check.mode":"none"}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"hash","type":"sha256","hash":"{sha256}"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":"none"}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":true}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":7,'
     '"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","host":"127.0.0.1","port":{port},"path":"{root}/disk.raw","host_key_check":"no"}}',),
    ('json:{{"file":{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.qcow2",'
     '"host-key-check":{{"mode":"none"}}}}}}',),
    ('json:{{"driver":"ssh","filename":"ssh://{h}{root}/disk.raw{no}"}}',),
    ('json:{{"driver":"raw","file":"ssh://{h}{root}/disk.raw{no}"}}',),
    # more
    ("ssh://@{h}{root}/disk.raw{no}",), ("ssh://%72oot@{h}{root}/disk.raw{no}",), ("ssh://{h}{root}/disk%2Eraw{no}",),
    ("ssh://{h}{root}/disk.raw%zz{no}",), ("ssh://{h}{root}/disk.raw?host_key_check=n%6f",),
    ("ssh://{h}{root}/disk.raw?host_key_check=sha256:{sha256_upper}",),
    ("ssh://{h}{root}/disk.raw?host_key_check=sha256:{sha256_colons}",),
    ("ssh://{h}{root}/disk.raw?host_key_check=md5:{md5_colons}",), ("ssh://{h}{root}/disk.raw?host_key_check=sha256:",),
    ("ssh://{h}{root}/disk.raw?host_key_check=md5",), ("ssh://{h}{root}/disk.raw?host_key_check=NO",),
    ("ssh://{h}{root}/disk.raw?&host_key_check=no",), ("ssh://{h}{root}/disk.raw?host_key_check=no&",),
    ("ssh://{h}{root}/disk.raw?=x&host_key_check=no",), ("ssh://LOCALHOST:{port}{root}/disk.raw{no}",),
    ("ssh://127.0.0.1:0{port}{root}/disk.raw{no}",), ("ssh://127.0.0.1:+{port}{root}/disk.raw{no}",),
    ("ssh://[127.0.0.1]:{port}{root}/disk.raw{no}",), ("ssh://[::1]{root}/disk.raw{no}",),
    ("ssh://{h}{root}/../{root}/disk.raw{no}",), ("ssh://{h}{root}/{no}",), ("ssh://{h}/nonexistent-dir/x{no}",),
    ("ssh://{h}{root}/dis[k.raw{no}",), ("ssh://a@b@{h}{root}/disk.raw{no}",),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=sha256,host-key-check.hash={sha256_upper}"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=hash,host-key-check.type=sha256,host-key-check.hash={sha256_colons}"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none,host-key-check.type=md5"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=known_hosts,host-key-check.hash=00"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,user=,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path=,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path=disk.raw,host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=+{port},path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=0x10,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},server.ipv4=on,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},server.type=inet,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},server.bogus=1,path={root}/disk.raw,"
                     "host-key-check.mode=none"),
    ("--image-opts", "driver=ssh,port={port},path={root}/disk.raw,host_key_check=no"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port=abc,path={root}/disk.raw,host_key_check=no"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port=+{port},path={root}/disk.raw,host_key_check=no"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw,host_key_check=yes"),
    ("--image-opts", "driver=ssh,host=127.0.0.1,port={port},path={root}/disk.raw,host_key_check=md5:{md5}"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none,node-name=s0"),
    ("--image-opts", "driver=ssh,server.host=127.0.0.1,server.port={port},path={root}/disk.raw,"
                     "host-key-check.mode=none,read-only=on"),
    ("--image-opts", "driver=raw,file.driver=ssh,file.server.host=127.0.0.1,file.server.port={port},"
                     "file.path={root}/disk.raw,file.host-key-check.mode=none,size=1M"),
    ("--image-opts", "driver=raw,file.filename=ssh://{h}{root}/disk.raw{no}"),
    ("--image-opts", "driver=raw,file.driver=ssh,file.filename=ssh://{h}{root}/disk.raw{no}"),
    ("--image-opts", "driver=ssh,filename=ssh://{h}{root}/disk.raw{no},user=x"),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":{port}.0}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"hash","type":"md5","hash":"{md5}"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":7}}}}',),
    ('json:{{"driver":"ssh","server":"127.0.0.1","path":"{root}/disk.raw"}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":null}},"path":"{root}/disk.raw"}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":null}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"user":null,"host-key-check":{{"mode":"none"}}}}',),
    ('json:{{"driver":"ssh","server":{{"host":"127.0.0.1","port":"{port}"}},"path":"{root}/disk.raw",'
     '"host-key-check":{{"mode":"none"}},"bogus":{{"a":1}}}}',),
    ('json:{{"driver":"ssh","host":"127.0.0.1","port":"{port}","path":"{root}/disk.raw","host_key_check":"no",'
     '"server":{{"host":"x"}}}}',),
    # format given
    ("-f", "raw", "ssh://{h}{root}/disk.qcow2{no}"), ("-f", "qcow2", "ssh://{h}{root}/disk.raw{no}"),
    ("-f", "ssh", "ssh://{h}{root}/disk.raw{no}"), ("-f", "file", "ssh://{h}{root}/disk.raw{no}"),
    ("-U", "ssh://{h}{root}/disk.qcow2{no}"),
]


@pytest.mark.parametrize("cmd", list(COMMANDS))
@pytest.mark.parametrize("name", SSH_NAMES, ids=_ids(SSH_NAMES))
def test_ssh_spellings(ssh, tmp_path, cmd, name):
    _same(tmp_path, *COMMANDS[cmd], *_fill(name, ssh))


def test_nbd_parameter_without_value(nbd, tmp_path, oracle):
    """``?socket`` without '=': qemu-img 10.0 refuses the URL, as qimg; 7.2 crashes on it (a
    NULL value it reads: docs/compat.md), which is all there is to compare with."""
    for cmd in COMMANDS.values():
        args = [*cmd, "nbd+unix:///exp?socket"]
        if oracle == "7.2":
            assert run_qemu(*args, cwd=tmp_path).returncode < 0  # killed by a signal
        else:
            _same(tmp_path, *args)


# -- several images, writes --------------------------------------------------------------------

#: the writable export (qemu-nbd on {sock}, export "exp") spelled every way
NBD_TARGETS: list[tuple[str, ...]] = [
    ("nbd+unix:///exp?socket={sock}",), ("nbd:unix:{sock}:exportname=exp",),
    ("--target-image-opts", "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock},"
                            "file.export=exp"),
    ("--target-image-opts", "driver=nbd,server.type=unix,server.path={sock},export=exp"),
    ('json:{{"driver":"raw","file":{{"driver":"nbd","server":{{"type":"unix","path":"{sock}"}},"export":"exp"}}}}',),
    ('json:{{"driver":"nbd","server.type":"unix","server.path":"{sock}","export":"exp"}}',),
    # read-only (nbdkit -r), missing exports, a server that is not there
    ("nbd://127.0.0.1:{port}/disk.raw",), ("nbd:127.0.0.1:{port}:exportname=disk.raw",),
    ("nbd+unix:///missing?socket={sock}",), ("nbd://127.0.0.1:{dead}/x",),
]


def _zero_target(nbd) -> None:
    run_qemu_io("-f", "raw", "-c", "write -z 0 4M", f"nbd+unix:///exp?socket={nbd['sock']}")


@pytest.mark.parametrize("target", NBD_TARGETS, ids=_ids(NBD_TARGETS))
def test_convert_n_into_nbd(nbd, tmp_path, target):
    """``convert -n`` into the export, every spelling: the same output and exit code, and what
    qimg wrote is the image (qemu-img compares it over NBD)."""
    names = _fill(target, nbd)
    src = str(nbd["root"] / "disk.qcow2")
    opts = ["--target-image-opts"] if names[0] == "--target-image-opts" else []
    dest = names[-1]
    args = ["convert", "-n", *opts, "-O", "raw", src, dest] if not opts else ["convert", "-n", *opts, src, dest]
    _zero_target(nbd)
    mine = run_qimg(*args, cwd=tmp_path)
    if mine.returncode == 0:
        check = run_qemu("compare", "-F", "raw", src, f"nbd+unix:///exp?socket={nbd['sock']}")
        assert check.returncode == 0, check
    _zero_target(nbd)
    theirs = run_qemu(*args, cwd=tmp_path)
    assert_same(Run(mine.returncode, mine.stdout, _norm(mine.stderr)),
                Run(theirs.returncode, theirs.stdout, _norm(theirs.stderr)))


def _same_image_names(nbd, web, ssh) -> dict[str, list[str]]:
    """The qcow2 image, named over each protocol (each a list of arguments)."""
    return {
        "nbd": [f"nbd://127.0.0.1:{nbd['port']}/disk.qcow2"],
        "nbd6": [f"nbd://[::1]:{nbd['port6']}/disk.qcow2"],
        "http": [f"{web['u']}/disk.qcow2"],
        "https": ['json:{"file":{"driver":"https","url":"' + web["t"] + '/disk.qcow2","sslverify":false}}'],
        "ssh": [f"ssh://127.0.0.1:{ssh['port']}{ssh['root']}/disk.qcow2?host_key_check=no"],
        "raw-nbd": ["-f", "raw", f"nbd://127.0.0.1:{nbd['port']}/disk.raw"],
        "raw-http": ["-f", "raw", f"{web['u']}/a%20b.raw"],
        "raw-ssh": ["-f", "raw", f"ssh://127.0.0.1:{ssh['port']}{ssh['root']}/a%20b.raw?host_key_check=no"],
    }


PAIRS = [("nbd", "http"), ("http", "ssh"), ("ssh", "nbd6"), ("https", "nbd"), ("nbd", "raw-http"),
         ("raw-ssh", "raw-nbd"), ("http", "raw-ssh")]


@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_compare_across_protocols(nbd, web, ssh, tmp_path, pair):
    """The same image over two protocols: ``compare`` (and -s) finds them identical, as qemu-img."""
    names = _same_image_names(nbd, web, ssh)
    a, b = names[pair[0]], names[pair[1]]
    fa = ["-f", a[1]] if a[0] == "-f" else []
    fb = ["-F", b[1]] if b[0] == "-f" else []
    _same(tmp_path, "compare", *fa, *fb, a[-1], b[-1])
    _same(tmp_path, "compare", "-s", *fa, *fb, a[-1], b[-1])


@pytest.mark.parametrize("name", ["nbd", "nbd6", "http", "https", "ssh", "raw-http"])
def test_convert_from_each_protocol(nbd, web, ssh, tmp_path, name):
    """``convert -O raw`` from each spelling lands the same bytes as qemu-img's."""
    args = _same_image_names(nbd, web, ssh)[name]
    mine = run_qimg("convert", "-O", "raw", *args, str(tmp_path / "mine.raw"))
    theirs = run_qemu("convert", "-O", "raw", *args, str(tmp_path / "theirs.raw"))
    assert_same(mine, theirs)
    assert (tmp_path / "mine.raw").read_bytes() == (tmp_path / "theirs.raw").read_bytes()


def test_nbd_server_fd(nbd, tmp_path, oracle):
    """``server.type=fd``: a socket the caller connected, by number; qimg (in-process: the
    number is its own) reads the export through it as qemu-img does (given the same number)."""
    from conftest import _need, need_qemu10

    exe, env = (_need("qemu-img"), None) if oracle == "7.2" else need_qemu10("qemu-img")
    for cmd in (["info"], ["map", "--output=json"]):
        outs = []
        for who in ("qemu-img", "qimg"):
            sock = socket.create_connection(("127.0.0.1", nbd["port"]))
            try:
                fd = sock.fileno()
                args = [*cmd, "--image-opts", f"driver=raw,file.driver=nbd,file.server.type=fd,file.server.str={fd},"
                                              "file.export=disk.raw"]
                if who == "qimg":
                    outs.append(run_qimg(*args, cwd=tmp_path, profile=oracle))
                else:
                    p = subprocess.run(["qemu-img", *args], executable=exe, env=env, capture_output=True, text=True,
                                       pass_fds=(fd,), cwd=tmp_path)
                    outs.append(Run(p.returncode, p.stdout, p.stderr))
            finally:
                sock.close()
        assert outs[1].returncode == 0, outs[1]
        assert_same(outs[1], outs[0])
