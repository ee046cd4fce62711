"""``qimg info`` against qemu-img: human and JSON, raw and (when installed) qcow2 chains."""
from __future__ import annotations

import pytest
from cli_support import compare, formats_available, qcow2_params, run_qemu, run_qemu_io, run_qimg


@pytest.fixture
def images(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "a.raw", "1M", cwd=tmp_path)
    (tmp_path / "empty.raw").write_bytes(b"")
    with open(tmp_path / "sparse.raw", "wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(b"x" * 5000)
    return tmp_path


@pytest.mark.parametrize("name", ["a.raw", "empty.raw", "sparse.raw"])
@pytest.mark.parametrize("extra", [[], ["--output=json"], ["-f", "raw"], ["--backing-chain"],
                                   ["--backing-chain", "--output=json"], ["-U"]])
def test_raw(images, name, extra):
    compare(images, "info", *extra, name)


def test_absolute_path_and_image_opts(images):
    compare(images, "info", "--output=json", str(images / "a.raw"))
    compare(images, "info", "--image-opts", f"driver=raw,file.filename={images / 'a.raw'}")


@pytest.mark.parametrize("args", [["info", "missing.raw"], ["info", "-f", "nosuchfmt", "a.raw"], ["info", "."],
                                  ["info", "--image-opts", "driver=foo,file.filename=a.raw"],
                                  ["info", "-f", "--output", "a.raw"]])
def test_errors(images, args):
    compare(images, *args)


def test_image_opts_with_format_refused(images):
    mine, theirs = run_qimg("info", "--image-opts", "-f", "raw", "a.raw", cwd=images), run_qemu(
        "info", "--image-opts", "-f", "raw", "a.raw", cwd=images)
    assert mine.returncode == theirs.returncode == 1


def test_json_quoting(tmp_path):
    name = 'we"ird\\näme.raw'
    run_qemu("create", "-q", "-f", "raw", name, "64k", cwd=tmp_path)
    compare(tmp_path, "info", "--output=json", name)


@pytest.fixture
def chain(tmp_path):
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "base.qcow2", "4M", cwd=tmp_path)
    run_qemu_io("-c", "write -P 1 0 64k", "-c", "write -z 1M 64k", "base.qcow2", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=tmp_path)
    run_qemu_io("-c", "write -P 2 64k 64k", "top.qcow2", cwd=tmp_path)
    run_qemu("snapshot", "-c", "snap1", "top.qcow2", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", "lazy.qcow2", "1G",
             cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["top.qcow2"], ["--output=json", "top.qcow2"], ["--backing-chain", "top.qcow2"],
    ["--backing-chain", "--output=json", "top.qcow2"], ["lazy.qcow2"], ["--output=json", "lazy.qcow2"],
])
def test_qcow2(chain, args):
    compare(chain, "info", *args)


def test_qcow2_missing_backing(chain):
    (chain / "base.qcow2").rename(chain / "gone.qcow2")
    compare(chain, "info", "top.qcow2")
    mine, theirs = run_qimg("info", "--backing-chain", "top.qcow2", cwd=chain), run_qemu(
        "info", "--backing-chain", "top.qcow2", cwd=chain)
    assert mine.returncode == theirs.returncode == 1


@pytest.mark.parametrize("fmt", qcow2_params())
def test_formats_json_human_agree(tmp_path, fmt):
    run_qemu("create", "-q", "-f", fmt, "x.img", "3M", cwd=tmp_path)
    compare(tmp_path, "info", "x.img")
    compare(tmp_path, "info", "--output=json", "x.img")


# -- the generic renderers, driven with data a driver could return ----------------------------

def test_format_specific_rendering_matches_qemu_layout():
    from qimg.ops.info import format_human

    info = {"filename": "x", "format": "fake", "virtual-size": 1 << 30, "actual-size": 4096,
            "dirty-flag": True, "cluster-size": 65536, "encrypted": True,
            "backing-filename": "b.img", "full-backing-filename": "/abs/b.img", "backing-filename-format": "raw",
            "format-specific": {"type": "fake", "data": {
                "compat": "1.1", "lazy-refcounts": False, "refcount-bits": 16,
                "bitmaps": [{"flags": ["auto"], "name": "bm", "granularity": 65536}]}}}
    text = format_human(info)
    assert text == (
        "image: x\nfile format: fake\nvirtual size: 1 GiB (1073741824 bytes)\ndisk size: 4 KiB\n"
        "encrypted: yes\ncluster_size: 65536\ncleanly shut down: no\n"
        "backing file: b.img (actual path: /abs/b.img)\nbacking file format: raw\n"
        "Format specific information:\n"
        "    compat: 1.1\n    lazy refcounts: false\n"
        "    bitmaps:\n        [0]:\n            flags:\n                [0]: auto\n"
        "            name: bm\n            granularity: 65536\n"
        "    refcount bits: 16\n")


def test_qjson_order_is_qemus():
    from qimg.ops.qjson import dumps, qdict_order

    # the order qemu-img prints for qcow2 info (hash order of its QDict)
    assert qdict_order(["filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size",
                        "backing-filename", "full-backing-filename", "backing-filename-format", "snapshots",
                        "format-specific"]) == [
        "backing-filename-format", "snapshots", "virtual-size", "filename", "cluster-size", "format",
        "actual-size", "format-specific", "full-backing-filename", "backing-filename", "dirty-flag"]
    assert dumps({"a": {}, "b": []}) == '{\n    "a": {\n    },\n    "b": [\n    ]\n}'
    assert dumps("é\x01") == '"\\u00E9\\u0001"'


def test_unaligned_raw_counts_whole_sectors(tmp_path):
    (tmp_path / "odd.raw").write_bytes(b"\1" * 1000)
    compare(tmp_path, "info", "odd.raw")
    compare(tmp_path, "info", "--output=json", "odd.raw")
    compare(tmp_path, "map", "--output=json", "odd.raw")


def test_qcow2_variants(tmp_path):
    """Dirty flag, bitmaps (nested lists in format-specific), compat 0.10, external data file."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    import subprocess

    run_qemu("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "1M", cwd=tmp_path)
    subprocess.run(["qemu-io", "-c", "write 0 64k", "-c", "abort", "dirty.qcow2"], cwd=tmp_path,
                   capture_output=True)
    run_qemu("create", "-q", "-f", "qcow2", "bm.qcow2", "1M", cwd=tmp_path)
    run_qemu("bitmap", "--add", "bm.qcow2", "b1", cwd=tmp_path)
    run_qemu("bitmap", "--add", "-g", "128k", "--disable", "bm.qcow2", "b2", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "old.qcow2", "1M", cwd=tmp_path)
    run_qemu("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "ext.qcow2", "1M", cwd=tmp_path)
    for name in ("dirty.qcow2", "bm.qcow2", "old.qcow2", "ext.qcow2"):
        compare(tmp_path, "info", "-U", name)
        compare(tmp_path, "info", "-U", "--output=json", name)


JSON_NAMES = [
    'json:{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"}}', 'json:{"file.filename":"q.qcow2"}',
    'json:{"file":{"filename":"q.qcow2"},"driver":"qcow2","lazy-refcounts":true}',
    'json:{"file.filename":"q.qcow2","driver":"raw"}', 'json:{"file":"q.qcow2"}', 'json:{"filename":"q.qcow2"}',
    'json:[1]', 'json:{"driver":"qcow2"}', 'json:{"file":{"filename":"nonexist"}}', 'json:{', 'json:',
    'json:{x}', 'json:{"a":}', 'json:{"file.filename":"q.qcow2",}', 'json:{"file.filename":"q.qcow2"} x',
    'json:{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"},"foo":1}',
    # nesting: QEMU's parser stops past 1024 levels; qimg must neither recurse out nor differ
    "json:" + '{"a":' * 1024 + "1" + "}" * 1024, "json:" + '{"a":' * 1025 + "1" + "}" * 1025,
    "json:" + "[" * 5000,
]


@pytest.mark.parametrize("cmd", [["info"], ["info", "--output=json"], ["map"], ["check"]])
@pytest.mark.parametrize("name", JSON_NAMES)
def test_json_filenames(images, cmd, name):
    """QEMU's json: pseudo-protocol: the --image-opts keys as a JSON object, with its errors."""
    if "qcow2" not in formats_available():
        pytest.skip("qcow2 plugin not installed")
    run_qemu("create", "-q", "-f", "qcow2", "q.qcow2", "1M", cwd=images)
    compare(images, *cmd, name)


@pytest.mark.parametrize("opts", [
    "driver=raw,file.filename=a.raw,foo=1", "file.filename=a.raw,foo=1", "driver=raw,file.filename=a.raw,file.foo=2",
    "driver=raw,file.filename=a.raw,file.locking=off,file.aio=threads",
    "driver=raw,file.filename=a.raw,discard=unmap,detect-zeroes=on,node-name=x,read-only=on,cache.direct=off",
    "driver=raw,file.filename=a.raw,backing=null", "driver=raw,file.filename=a.raw,backing.file.filename=x",
    "driver=vpc,file.filename=a.raw,offset=5",
])
def test_unknown_open_options_refused(images, opts):
    """Open options neither the format nor the file protocol takes fail as in qemu-img."""
    if "driver=vpc" in opts and "vpc" not in formats_available():
        pytest.skip("vpc plugin not installed")
    compare(images, "info", "--image-opts", opts)
