"""Differences QEMU's iotests found (scripts/iotests), each as a test of its own that needs
none of the iotests' sources: the image is built here, qemu-img and qimg work on copies of it,
and the results are compared (against both oracles, through the fixtures)."""
from __future__ import annotations

import shutil
import struct

from conftest import as_qemu


def _l2_offset(path) -> int:
    d = path.read_bytes()
    l1 = struct.unpack(">Q", d[40:48])[0]
    return struct.unpack(">Q", d[l1:l1 + 8])[0] & 0x00FFFFFFFFFFFE00


def test_repair_of_unaligned_zero_cluster_keeps_backing_data(tmp_path, qemu_img, qemu_io, qimg):
    """iotest 271 ("Corrupted L2 entry, no allocated subclusters"): check -r all repairs an
    extended L2 entry with an unaligned offset and only zero subclusters as QEMU does: the
    offset goes, the zero subclusters stay zero and the others read the backing file again."""
    base, img = tmp_path / "base.raw", tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "raw", str(base), "128k").returncode == 0
    assert qemu_io("-f", "raw", "-c", "write -P 0xff 0 128k", str(base)).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-F", "raw", "-b", "base.raw",
                    str(img)).returncode == 0
    assert qemu_io("-c", "write -P 1 4k 2k", "-c", "write -z 4k 2k", str(img)).returncode == 0
    with open(img, "r+b") as f:  # the cluster's offset made unaligned
        f.seek(_l2_offset(img) + 6)
        f.write(b"\x02")
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    shutil.copyfile(img, theirs)
    shutil.copyfile(img, mine)
    q = qemu_img("check", "-r", "all", str(theirs))
    i = qimg("check", "-r", "all", str(mine))
    assert (i.returncode, as_qemu(i.stdout), sorted(as_qemu(i.stderr).splitlines())) == \
        (q.returncode, q.stdout.replace(str(theirs), str(mine)), sorted(q.stderr.splitlines()))
    assert mine.read_bytes() == theirs.read_bytes()
    r = qemu_io("-c", "read -P 0xff 0 4k", "-c", "read -P 0 4k 2k", "-c", "read -P 0xff 6k 122k", str(mine))
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout
