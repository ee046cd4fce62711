"""The nbd driver's ``x-dirty-bitmap`` option against qemu-nbd 7.2 and 10.0 serving a qcow2
chain with persistent bitmaps (``qemu-nbd -B NAME``) and its allocation depth (``-A``): the
context is asked for in place of ``base:allocation`` and its bits read as base:allocation's, so
``map`` shows a dirty run as neither data nor zeroes (not present), and through
``qemu:allocation-depth`` an unallocated run as data, a local one as nothing, a backing one
(any depth past 1) as data and zeroes. qimg and qemu-img run the same commands on the same
server and must print the same; the data read through the option is the image's."""
from __future__ import annotations

import json

import pytest
from cli_support import assert_same, run_qemu, run_qemu_io, run_qimg
from nbd_servers import start_server

MIB = 1 << 20
KINDS = ["qemu-nbd", "qemu-nbd-10"]


def same(tmp_path, *args):
    theirs = run_qemu(*args, cwd=tmp_path)
    mine = run_qimg(*args, cwd=tmp_path)
    assert_same(mine, theirs)
    return mine


def _chain(folder):
    """base <- mid <- top (qcow2), data at each depth, and bitmaps in top: b0 (64k granularity,
    dirty where top was written after it), b1 (512k granularity, a small write marks a whole
    granule), b2 (disabled before the last write)."""
    base, mid, top = (folder / f"{n}.qcow2" for n in ("base", "mid", "top"))
    run_qemu("create", "-q", "-f", "qcow2", str(base), "8M")
    run_qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 1 7M 1M", str(base))
    run_qemu("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(mid))
    run_qemu_io("-c", "write -P 2 2M 1M", str(mid))
    run_qemu("create", "-q", "-f", "qcow2", "-b", str(mid), "-F", "qcow2", str(top))
    run_qemu("bitmap", "--add", "-f", "qcow2", str(top), "b0")
    run_qemu("bitmap", "--add", "-g", "512k", "-f", "qcow2", str(top), "b1")
    run_qemu("bitmap", "--add", "-f", "qcow2", str(top), "b2")
    run_qemu_io("-c", "write -P 3 4M 1M", "-c", "write -z 6M 64k", str(top))
    run_qemu("bitmap", "--disable", "-f", "qcow2", str(top), "b2")
    run_qemu_io("-c", "write -P 4 5632k 64k", str(top))
    return top


@pytest.fixture
def served(tmp_path):
    started = []

    def start(kind):
        top = _chain(tmp_path)
        s = start_server(kind, top, tmp_path, fmt="qcow2", readonly=True,
                         extra=("-B", "b0", "-B", "b1", "-B", "b2", "-A"))
        started.append(s)
        return s, top

    yield start
    for s in started:
        s.stop()


def _opts(s, context):
    return f"driver=nbd,server.type=unix,server.path={s.sock},export={s.export},x-dirty-bitmap={context}"


@pytest.mark.parametrize("kind", KINDS)
def test_map_through_a_dirty_bitmap(tmp_path, served, kind):
    s, _ = served(kind)
    for context in ("qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2",
                    "qemu:allocation-depth", "base:allocation"):
        out = same(tmp_path, "map", "--output=json", "--image-opts", _opts(s, context))
        assert out.returncode == 0
        same(tmp_path, "map", "--image-opts", _opts(s, context))
    # what the bitmap says, checked without the oracle: b0 is dirty where top was written
    runs = json.loads(same(tmp_path, "map", "--output=json", "--image-opts",
                           _opts(s, "qemu:dirty-bitmap:b0")).stdout)
    dirty = [(r["start"], r["length"]) for r in runs if not r["data"]]
    assert dirty == [(4 * MIB, MIB), (5632 << 10, 64 << 10), (6 * MIB, 64 << 10)], runs
    assert all(not r["present"] and "offset" not in r for r in runs if not r["data"])
    # the json: form and a raw format over the node
    node = {"driver": "nbd", "server": {"type": "unix", "path": s.sock}, "export": s.export,
            "x-dirty-bitmap": "qemu:dirty-bitmap:b1"}
    same(tmp_path, "map", "--output=json", "json:" + json.dumps(node))
    same(tmp_path, "map", "--output=json", "json:" + json.dumps({"driver": "raw", "file": node}))


@pytest.mark.parametrize("kind", KINDS)
def test_allocation_depth_collapses_past_two(tmp_path, served, kind):
    """qemu:allocation-depth: depth 3 (base under mid under top) reads as depth 2, as QEMU's
    client collapses it: data and zeroes, like mid's own runs."""
    s, _ = served(kind)
    runs = json.loads(same(tmp_path, "map", "--output=json", "--image-opts",
                           _opts(s, "qemu:allocation-depth")).stdout)
    by_start = {r["start"]: (r["zero"], r["data"]) for r in runs}
    assert by_start[0] == (True, True)  # base's data, depth 3
    assert by_start[4 * MIB] == (False, False)  # top's own data, depth 1


@pytest.mark.parametrize("kind", KINDS)
def test_missing_context_and_reads(tmp_path, served, kind):
    s, top = served(kind)
    for context in ("qemu:dirty-bitmap:nope", "qemu:dirty-bitmap:", "", "nonsense"):
        out = same(tmp_path, "map", "--output=json", "--image-opts", _opts(s, context))
        assert out.returncode == 1
        same(tmp_path, "info", "--image-opts", _opts(s, context))
    # the data reads as the image's whatever the status says
    same(tmp_path, "convert", "-O", "raw", "--image-opts", _opts(s, "qemu:dirty-bitmap:b0"), "out.raw")
    expect = tmp_path / "expect.raw"
    run_qemu("convert", "-O", "raw", str(top), str(expect))
    assert (tmp_path / "out.raw").read_bytes() == expect.read_bytes()
