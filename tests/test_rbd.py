"""The rbd protocol against a real Ceph cluster (the session fixture ``ceph``, tests/ceph_cluster.py).

qimg and qemu-img (7.2 and 10.0: the differential tests run once per oracle) run the same
commands on the same RBD images and print the same; data goes both ways: what qemu-img writes
into an image qimg reads byte for byte, and what qimg writes qemu-img reads and checks. Every
test makes its own images (unique names: the xdist workers share one pool) and removes them.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid

import pytest
from cli_support import compare, run_qemu, run_qimg
from conftest import as_qemu, pattern_bytes

MIB = 1 << 20


class Pool:
    """Unique image names in the test pool, removed (with their snapshots) at the end."""

    def __init__(self, ceph) -> None:
        self.ceph = ceph
        self.made: list[str] = []

    def name(self, tag: str) -> str:
        image = f"t-{tag}-{uuid.uuid4().hex[:10]}"
        self.made.append(image)
        return image

    def rbd(self, image: str, extra: str = "") -> str:
        return self.ceph.rbd(image, extra=extra)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rbd", "-c", self.ceph.conf, *args], capture_output=True, text=True, timeout=120)

    def stat(self, image: str) -> dict:
        p = self.cli("info", "--format", "json", f"{self.ceph.pool}/{image}")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def cleanup(self) -> None:
        # Ceph's bindings, not the rbd tool: that one refuses names with an "@"
        import rados
        import rbd

        with rados.Rados(conffile=self.ceph.conf) as cluster:
            with cluster.open_ioctx(self.ceph.pool) as ioctx:
                for image in self.made:
                    try:
                        with rbd.Image(ioctx, image) as img:
                            for snap in list(img.list_snaps()):
                                img.remove_snap(snap["name"])
                        rbd.RBD().remove(ioctx, image)
                    except rbd.ImageNotFound:
                        pass


@pytest.fixture
def pool(ceph):
    p = Pool(ceph)
    yield p
    p.cleanup()


def _filled(pool: Pool, tmp_path, tag: str, size: int = 12 * MIB, seed: int = 1) -> tuple[str, bytes]:
    """An RBD image qemu-img wrote (convert from a local raw file): its name and its bytes."""
    data = pattern_bytes(size, seed)
    src = tmp_path / f"{tag}.raw"
    src.write_bytes(data)
    image = pool.name(tag)
    r = run_qemu("convert", "-f", "raw", "-O", "raw", str(src), pool.rbd(image))
    assert r.returncode == 0, r.stderr
    return image, data


def test_info_map_snapshots_as_qemu(pool, tmp_path):
    image, _ = _filled(pool, tmp_path, "info")
    assert pool.cli("snap", "create", f"{pool.ceph.pool}/{image}@first").returncode == 0
    name = pool.rbd(image)
    for args in (["info", name], ["info", "--output=json", name], ["info", "-f", "raw", name],
                 ["info", "-f", "rbd", name], ["info", "--output=json", "-f", "rbd", name],
                 ["info", pool.rbd(image + "@first")], ["map", name], ["map", "--output=json", name],
                 ["map", "-f", "rbd", "--output=json", name], ["snapshot", "-l", name],
                 ["info", "--image-opts", f"driver=rbd,pool={pool.ceph.pool},image={image},conf={pool.ceph.conf}"],
                 ["info", "--output=json", "--image-opts",
                  f"driver=raw,file.driver=rbd,file.pool={pool.ceph.pool},file.image={image},file.conf={pool.ceph.conf}"],
                 ["compare", name, str(tmp_path / "info.raw")]):
        compare(tmp_path, *args)


def test_spellings_as_qemu(pool, tmp_path):
    """Every way qemu-img names an rbd image: id=, librados pairs, escapes, a namespace, the
    options and json: forms (a server list included), the deprecated filename option."""
    ceph = pool.ceph
    image, _ = _filled(pool, tmp_path, "names", size=2 * MIB)
    odd = pool.name("we:ird@x")
    esc = odd.replace(":", "\\:").replace("@", "\\@")
    assert run_qemu("create", "-f", "raw", f"rbd:{ceph.pool}/{esc}:conf={ceph.conf}", "1M").returncode == 0
    ns = "ns" + uuid.uuid4().hex[:8]
    assert pool.cli("namespace", "create", f"{ceph.pool}/{ns}").returncode == 0
    try:
        assert pool.cli("create", "--size", "3M", f"{ceph.pool}/{ns}/inns").returncode == 0
        conf = ceph.conf
        mon_host = ceph.mon_host.replace(":", "\\:")
        host, port = ceph.mon_host.split(":")
        for args in (
            ["info", f"rbd:{ceph.pool}/{image}:conf={conf}:id=admin"],
            ["info", f"rbd:{ceph.pool}/{image}:id=admin:conf={conf}:auth_supported=none:rbd_cache=false"],
            ["info", f"rbd:{ceph.pool}/{image}:conf=/dev/null:mon_host={mon_host}"],
            ["info", f"rbd:{ceph.pool}/{esc}:conf={conf}"],
            ["info", f"rbd:{ceph.pool}/{ns}/inns:conf={conf}"],
            ["info", "--output=json", f"rbd:{ceph.pool}/{ns}/inns:conf={conf}"],
            ["info", f"rbd:{ceph.pool}/nons{ns}/inns:conf={conf}"],
            ["info", f'json:{{"driver": "rbd", "filename": "rbd:{ceph.pool}/{image}:conf={conf}"}}'],
            ["info", f'json:{{"driver": "raw", "file": {{"driver": "rbd", "pool": "{ceph.pool}", "image": "{image}", '
                     f'"conf": "/dev/null", "server": [{{"host": "{host}", "port": "{port}"}}]}}}}'],
            ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf=/dev/null,"
                                     f"server.0.host={host},server.0.port={port},user=admin"],
            ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},namespace={ns},image=inns,conf={conf}"],
            ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},auth-client-required.0=none"],
        ):
            compare(tmp_path, *args)
    finally:
        pool.cli("rm", f"{ceph.pool}/{ns}/inns")
        pool.cli("namespace", "remove", f"{ceph.pool}/{ns}")


def test_bad_names_and_options_as_qemu(pool, tmp_path):
    ceph = pool.ceph
    image, _ = _filled(pool, tmp_path, "bad", size=MIB)
    conf = ceph.conf
    for args in (
        ["info", "rbd:"], ["info", f"rbd:{ceph.pool}"], ["info", f"rbd:{ceph.pool}/{image}:conf"],
        ["info", f"rbd:{ceph.pool}/{image}:conf={conf}:no_such_option=1"],
        ["info", "--image-opts", f"driver=rbd,image={image},conf={conf}"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},conf={conf}"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},bogus=1"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},key-secret=nosuch"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},auth-client-required=none"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},auth-client-required.0=x"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},server.0.host=h"],
        ["info", "--image-opts", f"driver=rbd,pool={ceph.pool},image={image},conf={conf},server.1.host=h,server.1.port=1"],
    ):
        compare(tmp_path, *args)


def test_missing_things_as_qemu(pool, tmp_path):
    """Missing pool, missing image, a bad configuration file, no cluster (a monitor address
    nobody answers, librados' wait shortened for both) and creating what exists."""
    ceph = pool.ceph
    image, _ = _filled(pool, tmp_path, "missing", size=MIB)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    for args in (
        ["info", f"rbd:nopool{uuid.uuid4().hex[:6]}/x:conf={ceph.conf}"],
        ["info", ceph.rbd("no-such-image-" + uuid.uuid4().hex[:8])],
        ["info", f"rbd:{ceph.pool}/{image}:conf={tmp_path}/nonexistent.conf"],
        ["info", f"rbd:{ceph.pool}/{image}:conf=/dev/null:mon_host=127.0.0.1\\:{dead}:client_mount_timeout=2"],
        ["create", "-f", "raw", ceph.rbd(image), "1M"],
        ["create", "-f", "raw", f"rbd:nopool{uuid.uuid4().hex[:6]}/x:conf={ceph.conf}", "1M"],
        ["convert", "-O", "raw", str(tmp_path / "missing.raw"), ceph.rbd(image)],
    ):
        compare(tmp_path, *args)


def test_create_as_qemu(pool, tmp_path):
    """create's output, and the images: the same size, object size and features."""
    ceph = pool.ceph
    for opts, size in ((["-f", "raw"], "5M"), (["-f", "raw", "-o", "cluster_size=1M"], "5M"), (["-f", "rbd"], "1000"),
                       (["-f", "raw", "-o", "cluster_size=64k"], "3M")):
        a, b = pool.name("mk"), pool.name("mk")
        theirs = run_qemu("create", *opts, ceph.rbd(a), size)
        mine = run_qimg("create", *opts, ceph.rbd(b), size)
        assert (mine.returncode, as_qemu(mine.stdout).replace(b, a), as_qemu(mine.stderr).replace(b, a)) == \
            (theirs.returncode, theirs.stdout, theirs.stderr)
        sa, sb = pool.stat(a), pool.stat(b)
        for key in ("size", "order", "object_size", "features", "format"):
            assert sa[key] == sb[key], key
        compare(tmp_path, "info", ceph.rbd(b))
    for args in (["-f", "raw", "-o", "cluster_size=3000"], ["-f", "raw", "-o", "cluster_size=2048"],
                 ["-f", "raw", "-o", "preallocation=full"], ["-f", "raw", "-o", "help"], ["-f", "rbd", "-o", "help"],
                 ["-f", "raw", "-o", "cluster_size=1M,help"]):
        compare(tmp_path, "create", *args, ceph.rbd(pool.name("never")), "5M")


def test_convert_both_ways(pool, tmp_path):
    """qemu-img writes an image that qimg reads back byte for byte, and the other way round;
    sparse: what is zero stays unallocated in the RBD image (map shows it) and the local copy."""
    ceph = pool.ceph
    image, data = _filled(pool, tmp_path, "conv", size=20 * MIB + 4096)
    out = tmp_path / "back.raw"
    r = run_qimg("convert", "-O", "raw", ceph.rbd(image), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    qc = tmp_path / "back.qcow2"
    assert run_qimg("convert", "-O", "qcow2", ceph.rbd(image), str(qc)).returncode == 0
    assert run_qemu("compare", "-f", "qcow2", "-F", "raw", str(qc), str(tmp_path / "conv.raw")).returncode == 0
    # qimg writes, qemu-img reads: from raw and from qcow2 sources
    for src, fmt in ((tmp_path / "conv.raw", "raw"), (qc, "qcow2")):
        target = pool.name("qw")
        r = run_qimg("convert", "-f", fmt, "-O", "raw", str(src), ceph.rbd(target))
        assert r.returncode == 0, r.stderr
        assert run_qemu("compare", "-f", "raw", "-F", "raw", ceph.rbd(target), str(tmp_path / "conv.raw")).returncode == 0
        compare(tmp_path, "map", "--output=json", ceph.rbd(target))
        compare(tmp_path, "info", ceph.rbd(target))


def test_qcow2_in_rbd(pool, tmp_path):
    """A qcow2 stored in an RBD image: created by qimg it passes qemu-img check and reads as
    the data written; created by qemu-img, qimg reads it; info and map as qemu-img's."""
    ceph = pool.ceph
    src = tmp_path / "src.raw"
    data = pattern_bytes(6 * MIB, 7)
    src.write_bytes(data)
    mine, theirs = pool.name("q2i"), pool.name("q2q")
    r = run_qimg("convert", "-f", "raw", "-O", "qcow2", str(src), ceph.rbd(mine))
    assert r.returncode == 0, r.stderr
    assert run_qemu("check", ceph.rbd(mine)).returncode == 0
    assert run_qemu("compare", ceph.rbd(mine), str(src)).returncode == 0
    assert run_qemu("convert", "-f", "raw", "-O", "qcow2", str(src), ceph.rbd(theirs)).returncode == 0
    out = tmp_path / "out.raw"
    assert run_qimg("convert", "-O", "raw", ceph.rbd(theirs), str(out)).returncode == 0
    assert out.read_bytes() == data
    for args in (["info", ceph.rbd(theirs)], ["info", "--output=json", ceph.rbd(theirs)], ["map", ceph.rbd(theirs)],
                 ["check", ceph.rbd(theirs)], ["check", ceph.rbd(mine)]):
        compare(tmp_path, *args)
    created = pool.name("q2c")
    r = run_qimg("create", "-f", "qcow2", ceph.rbd(created), "64M")
    assert r.returncode == 0, r.stderr
    assert run_qemu("check", ceph.rbd(created)).returncode == 0
    compare(tmp_path, "info", ceph.rbd(created))


def test_resize_as_qemu(pool, tmp_path):
    ceph = pool.ceph
    mine, theirs = pool.name("rs"), pool.name("rs")
    for image in (mine, theirs):
        assert run_qemu("create", "-q", "-f", "raw", ceph.rbd(image), "4M").returncode == 0
    for args in (["resize", "-f", "raw", "{}", "10M"], ["resize", "{}", "+2M"], ["resize", "-f", "raw", "{}", "1M"],
                 ["resize", "-f", "raw", "--shrink", "{}", "3M"]):
        theirs_run = run_qemu(*[a.replace("{}", ceph.rbd(theirs)) for a in args])
        mine_run = run_qimg(*[a.replace("{}", ceph.rbd(mine)) for a in args])
        assert (mine_run.returncode, as_qemu(mine_run.stdout), as_qemu(mine_run.stderr).replace(mine, theirs)) == \
            (theirs_run.returncode, theirs_run.stdout, theirs_run.stderr)
        assert pool.stat(mine)["size"] == pool.stat(theirs)["size"]


def test_snapshots(pool, tmp_path):
    """snapshot -c/-l/-a/-d through a raw image over rbd (QEMU's fallback to the protocol), and
    the data of name@snap read-only, against qemu-img's view of the same snapshots."""
    ceph = pool.ceph
    image, data = _filled(pool, tmp_path, "snap", size=4 * MIB)
    name = ceph.rbd(image)
    r = run_qimg("snapshot", "-c", "one", name)
    assert r.returncode == 0, r.stderr
    compare(tmp_path, "snapshot", "-l", name)
    # overwrite the image, then read the snapshot as it was
    other = tmp_path / "other.raw"
    other.write_bytes(pattern_bytes(4 * MIB, 9))
    assert run_qemu("convert", "-n", "-f", "raw", "-O", "raw", str(other), name).returncode == 0
    out = tmp_path / "snap.raw"
    r = run_qimg("convert", "-O", "raw", ceph.rbd(image + "@one"), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    compare(tmp_path, "info", ceph.rbd(image + "@one"))
    compare(tmp_path, "resize", ceph.rbd(image + "@one"), "8M")  # snapshots are read-only
    compare(tmp_path, "snapshot", "-c", "one", name)  # exists
    r = run_qimg("snapshot", "-a", "one", name)
    assert r.returncode == 0, r.stderr
    assert run_qemu("compare", "-f", "raw", "-F", "raw", name, str(tmp_path / "snap.raw")).returncode == 0
    r = run_qimg("snapshot", "-d", "one", name)
    assert r.returncode == 0, r.stderr
    compare(tmp_path, "snapshot", "-l", name)
    compare(tmp_path, "snapshot", "-d", "one", name)


def test_library_writes(pool, tmp_path):
    """qimg.open over rbd: writes, write-zeroes, discard, growth past the end and flush, as
    qemu-img then reads them."""
    import qimg

    ceph = pool.ceph
    image = pool.name("lib")
    assert run_qemu("create", "-q", "-f", "raw", ceph.rbd(image), "8M").returncode == 0
    expect = bytearray(8 * MIB)
    with qimg.open(ceph.rbd(image), "raw", writable=True) as img:
        img.pwrite(0, b"\x11" * MIB)
        img.pwrite(3 * MIB + 100, b"\x22" * 5000)
        img.write_zeroes(512 * 1024, 4096)
        img.discard(6 * MIB, MIB)
        img.flush()
    expect[0:MIB] = b"\x11" * MIB
    expect[3 * MIB + 100:3 * MIB + 5100] = b"\x22" * 5000
    expect[512 * 1024:512 * 1024 + 4096] = bytes(4096)
    ref = tmp_path / "expect.raw"
    ref.write_bytes(bytes(expect))
    r = run_qemu("compare", "-f", "raw", "-F", "raw", ceph.rbd(image), str(ref))
    assert r.returncode == 0, r.stdout + r.stderr


def test_bounded_connect_and_missing_bindings(ceph, tmp_path):
    """No monitor answers: qimg gives up after QIMG_RBD_TIMEOUT seconds with qemu-img's message
    (qemu-img waits librados' 300 s). Without Ceph's bindings: one line naming the packages."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    name = f"rbd:{ceph.pool}/x:conf=/dev/null:mon_host=127.0.0.1\\:{dead}"
    env = dict(os.environ, QIMG_RBD_TIMEOUT="2")
    cmd = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"]
    p = subprocess.run([*cmd, "info", name], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == f"qimg: Could not open '{name}': error connecting: Connection timed out"
    hide = ("import sys; sys.modules['rados'] = None; from qimg_cli.main import main; sys.argv[0]='qimg'; main()")
    p = subprocess.run([sys.executable, "-c", hide, "info", ceph.rbd("x")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1
    assert "python3-rados and python3-rbd" in p.stderr


def test_encrypted_create_and_open(pool, tmp_path):
    """-o encrypt.*: librbd writes a LUKS header (qimg's image opens in qemu-img with the
    passphrase, and the other way round); info names the encryption format as qemu-img does."""
    ceph = pool.ceph
    secret = ["--object", "secret,id=sec0,data=topsecret"]
    a, b = pool.name("enc"), pool.name("enc")
    opts = ["-f", "raw", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128"]
    theirs = run_qemu("create", *secret, *opts, ceph.rbd(a), "8M")
    mine = run_qimg("create", *secret, *opts, ceph.rbd(b), "8M")
    assert (mine.returncode, as_qemu(mine.stdout).replace(b, a), as_qemu(mine.stderr)) == \
        (theirs.returncode, theirs.stdout, theirs.stderr)
    assert pool.stat(a)["size"] == pool.stat(b)["size"]
    data = tmp_path / "plain.raw"
    data.write_bytes(pattern_bytes(8 * MIB, 3))
    for image, writer in ((a, run_qimg), (b, run_qemu)):
        target = (f"driver=rbd,pool={ceph.pool},image={image},conf={ceph.conf},"
                  "encrypt.format=luks,encrypt.key-secret=sec0")
        r = writer("convert", *secret, "-n", "-f", "raw", str(data), "--target-image-opts", target)
        assert r.returncode == 0, r.stderr
        reader = run_qemu if writer is run_qimg else run_qimg
        r = reader("compare", *secret, "--image-opts", target, f"driver=raw,file.filename={data}")
        assert r.returncode == 0, r.stdout + r.stderr
    for args in (["info", ceph.rbd(b)], ["info", "-f", "rbd", "--output=json", ceph.rbd(b)],
                 ["info", *secret, "--image-opts", f"driver=rbd,pool={ceph.pool},image={b},conf={ceph.conf},"
                                                   "encrypt.format=luks2,encrypt.key-secret=sec0"],
                 # too small for librbd's header: it fails, the image is removed
                 ["create", *secret, *opts, ceph.rbd(pool.name("enc")), "4M"]):
        compare(tmp_path, *args)


_HOLD_LOCK = """
import sys
from qimg_rbd.bindings import bindings
rados, rbd = bindings()
conf, pool, image = sys.argv[1:4]
with rados.Rados(conffile=conf) as c, c.open_ioctx(pool) as io, rbd.Image(io, image) as img:
    img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)  # a managed lock: never handed over on request
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_failed_asynchronous_write(pool, tmp_path):
    """Another client holds the image's exclusive lock (librbd's managed lock, which it does not
    give up on request), so librbd fails every write with EROFS, after the write was queued: the
    error of writes still in flight at the end of a convert is raised when the image is closed.
    qimg exits 1 with one line naming the reason, as qemu-img's last line does."""
    ceph = pool.ceph
    image = pool.name("locked")
    assert run_qemu("create", "-q", "-f", "raw", ceph.rbd(image), "8M").returncode == 0
    src = tmp_path / "src.raw"
    src.write_bytes(random.Random(3).randbytes(4 * MIB))  # two 2 MiB writes, in flight at the end
    tail = tmp_path / "tail.raw"
    tail.write_bytes(random.Random(4).randbytes(2 * MIB) + bytes(2 * MIB))  # a write, then zeroes
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, ceph.conf, ceph.pool, image],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n", "the lock holder did not take the lock"
        argv = ("convert", "-n", "-f", "raw", "-O", "raw", str(src), ceph.rbd(image))
        ours, theirs = run_qimg(*argv), run_qemu(*argv)
        assert (ours.returncode, theirs.returncode) == (1, 1), ours.stderr + theirs.stderr
        assert ours.stdout == theirs.stdout == ""
        assert ours.stderr == f"qimg: Could not close '{ceph.rbd(image)}': Read-only file system\n"
        assert theirs.stderr.splitlines()[-1].endswith(": Read-only file system")
        # a synchronous request after them (the zeroes) sees their failure: convert's message
        argv = ("convert", "-n", "-f", "raw", "-O", "raw", str(tail), ceph.rbd(image))
        ours, theirs = run_qimg(*argv), run_qemu(*argv)
        assert (ours.returncode, theirs.returncode) == (1, 1), ours.stderr + theirs.stderr
        assert ours.stderr == "qimg: error while writing at byte 2097152: Read-only file system\n"
        assert theirs.stderr.splitlines()[-1] == "qemu-img: error while writing at byte 0: Read-only file system"
        # the library: the failed write is raised by close, not lost
        import qimg

        img = qimg.open(ceph.rbd(image), "raw", writable=True)
        img.pwrite(0, b"\x55" * 4096)
        with pytest.raises(qimg.QimgError, match="^Could not close .*: Read-only file system$"):
            img.close()
    finally:
        holder.communicate("", timeout=60)
    # nothing reached the image
    zeros = tmp_path / "zeros.raw"
    zeros.write_bytes(bytes(8 * MIB))
    r = run_qemu("compare", "-f", "raw", "-F", "raw", ceph.rbd(image), str(zeros))
    assert r.returncode == 0, r.stdout + r.stderr


def test_bindings_from_the_system_folder():
    """In a venv that does not see the system's packages, the two extension modules are loaded
    from the distribution's folder (when built for this Python)."""
    code = ("import sys; from qimg_rbd.bindings import _system_bindings; r, b = _system_bindings(); "
            "print(r.__name__, b.__name__, b.RBD().version() >= (1, 0, 0))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "rados rbd True\n"


def _direct_and_binding(name: str) -> tuple[bytes, bytes]:
    """The image ``name`` read whole twice over one open: through qimg_rbd.direct (librbd's C API
    into the caller's buffers, 1 MiB requests from three threads, the last one past the end) and
    through Ceph's binding."""
    import threading

    from qimg_rbd.names import parse_filename
    from qimg_rbd.protocol import RbdProtocol

    proto = RbdProtocol.open(parse_filename(name), writable=False, filename=name)
    try:
        proto.start_parallel(3)
        view1 = memoryview(bytearray(1))
        proto.preadinto(0, view1)  # more than DIRECT_AFTER (0 here) bytes through the binding
        with proto._opening:  # the second handle's connection has finished
            pass
        assert proto._direct is not None, "the direct path did not open"
        size = proto.size()
        got = bytearray(size)
        view = memoryview(got)
        offsets = iter(range(0, size, MIB))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def reader() -> None:
            buf = bytearray(MIB)
            while True:
                with lock:
                    off = next(offsets, None)
                if off is None:
                    return
                try:
                    n = proto.preadinto(off, memoryview(buf))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return
                view[off:off + n] = buf[:n]

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        proto._direct, direct = None, proto._direct
        try:
            via_binding = proto.pread(0, size)
        finally:
            proto._direct = direct
        return bytes(got), via_binding
    finally:
        proto.close()


@pytest.mark.oracle_72("qemu-img only makes and reads back the images: qimg's reads do not depend on the profile")
def test_direct_reads_match_the_binding(pool, tmp_path, monkeypatch):
    """A bulk copy out of rbd reads through librbd's C API (qimg_rbd.direct, ctypes) straight
    into the copy's buffers, on a second connection configured as the binding's: the same bytes
    as the binding reads, for an image with librados pairs in its name, a snapshot, an image in a
    namespace, and an end that is not a whole request; then a sparse convert of an image past
    DIRECT_AFTER, against qemu-img's."""
    import qimg_rbd.protocol as rp

    ceph = pool.ceph
    monkeypatch.setattr(rp, "DIRECT_AFTER", 0)
    image, data = _filled(pool, tmp_path, "direct", size=5 * MIB + 1536)
    name = pool.rbd(image, extra=":id=admin:rbd_cache=false")
    assert _direct_and_binding(name) == (data, data)
    assert run_qimg("snapshot", "-c", "s1", name).returncode == 0
    other = tmp_path / "other.raw"
    other.write_bytes(pattern_bytes(5 * MIB + 1536, 7))
    assert run_qemu("convert", "-n", "-f", "raw", "-O", "raw", str(other), name).returncode == 0
    assert _direct_and_binding(ceph.rbd(image + "@s1")) == (data, data)
    ns = "ns" + uuid.uuid4().hex[:8]
    assert pool.cli("namespace", "create", f"{ceph.pool}/{ns}").returncode == 0
    try:
        assert pool.cli("create", "--size", "3M", f"{ceph.pool}/{ns}/inns").returncode == 0
        small = tmp_path / "small.raw"
        small.write_bytes(pattern_bytes(3 * MIB, 3))
        nsname = f"rbd:{ceph.pool}/{ns}/inns:conf={ceph.conf}"
        assert run_qemu("convert", "-n", "-f", "raw", "-O", "raw", str(small), nsname).returncode == 0
        assert _direct_and_binding(nsname) == (small.read_bytes(),) * 2
    finally:
        pool.cli("rm", f"{ceph.pool}/{ns}/inns")
        pool.cli("namespace", "remove", f"{ceph.pool}/{ns}")
    # a whole command that reads through both: data past DIRECT_AFTER
    monkeypatch.undo()
    size = rp.DIRECT_AFTER + 16 * MIB + 512
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(size)
        block = bytes(range(1, 256)) * 4112  # no zero run: all of it is data, read and allocated
        for _ in range((rp.DIRECT_AFTER + 8 * MIB) // len(block)):
            f.write(block)
        for off in (rp.DIRECT_AFTER + 9 * MIB + 100, size - 5000):
            f.seek(off)
            f.write(pattern_bytes(4096, off % 251))
    big = pool.name("direct-big")
    assert run_qemu("convert", "-f", "raw", "-O", "raw", str(src), pool.rbd(big)).returncode == 0
    out = tmp_path / "out.raw"
    r = run_qimg("convert", "-O", "raw", pool.rbd(big), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()
    theirs = tmp_path / "theirs.raw"
    assert run_qemu("convert", "-O", "raw", pool.rbd(big), str(theirs)).returncode == 0
    assert run_qemu("map", "--output=json", str(out)).stdout == run_qemu("map", "--output=json", str(theirs)).stdout


def test_small_objects_map_and_convert(pool, tmp_path):
    """An image of 4 KiB objects, every other one written: thousands of allocation runs per
    block status query (kept and looked up by bisection); map, info and a sparse convert as
    qemu-img's."""
    import rados
    import rbd

    ceph = pool.ceph
    image = pool.name("small-objects")
    assert run_qemu("create", "-q", "-f", "raw", "-o", "cluster_size=4096", ceph.rbd(image), "8M").returncode == 0
    expect = bytearray(8 * MIB)
    with rados.Rados(conffile=ceph.conf) as cluster:
        with cluster.open_ioctx(ceph.pool) as ioctx:
            with rbd.Image(ioctx, image) as img:
                for i, off in enumerate(range(0, 8 * MIB, 8192)):
                    data = bytes([i % 255 + 1]) * 4096
                    img.write(data, off)
                    expect[off:off + 4096] = data
    compare(tmp_path, "map", "--output=json", ceph.rbd(image))
    compare(tmp_path, "map", ceph.rbd(image))
    out = tmp_path / "out.raw"
    r = run_qimg("convert", "-O", "raw", ceph.rbd(image), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == bytes(expect)
