"""The Ceph test fixture itself: a cluster that stores objects, serves RBD images to qemu-img
(both oracles) and answers S3 requests. The rbd and s3 protocol tests rely on each of these."""

from __future__ import annotations

import os
import subprocess
import urllib.request


def test_rados_round_trip(ceph, tmp_path):
    src = tmp_path / "obj"
    src.write_bytes(os.urandom(100_000))
    out = tmp_path / "back"
    subprocess.run(["rados", "-c", ceph.conf, "-p", ceph.pool, "put", "qimg-fixture", str(src)], check=True)
    subprocess.run(["rados", "-c", ceph.conf, "-p", ceph.pool, "get", "qimg-fixture", str(out)], check=True)
    subprocess.run(["rados", "-c", ceph.conf, "-p", ceph.pool, "rm", "qimg-fixture"], check=True)
    assert out.read_bytes() == src.read_bytes()


def test_qemu_img_reaches_rbd(ceph, qemu_img):
    name = ceph.rbd(f"fixture-{os.getpid()}")
    try:
        assert qemu_img("create", "-f", "raw", name, "4M").returncode == 0
        info = qemu_img("info", name)
        assert info.returncode == 0, info.stderr
        assert "virtual size: 4 MiB (4194304 bytes)" in info.stdout
    finally:
        subprocess.run(["rbd", "-c", ceph.conf, "rm", f"{ceph.pool}/fixture-{os.getpid()}"], capture_output=True)


def test_s3_endpoint_answers(ceph):
    # an anonymous request lists no buckets but is answered by radosgw with S3's XML
    with urllib.request.urlopen(ceph.s3_endpoint + "/", timeout=30) as r:
        assert r.status == 200
        assert b"ListAllMyBucketsResult" in r.read()
