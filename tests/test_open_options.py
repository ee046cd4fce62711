"""Open options (``--image-opts`` / ``json:``) against qemu-img: typed values and their
messages, raw's offset/size window and the ``json:`` name it gives the image, the backing
options (``backing``, ``backing.file.filename``, ``backing.driver``) and which unknown
option QEMU names first."""
from __future__ import annotations

import pytest
from cli_support import compare, formats_available, run_qemu, run_qemu_io, run_qimg


@pytest.fixture
def imgs(tmp_path):
    run_qemu("create", "-q", "-f", "raw", "r.raw", "1M", cwd=tmp_path)
    run_qemu_io("-f", "raw", "-c", "write -P 3 0 4k", "-c", "write -P 5 8k 4k", "-c", "write -P 9 64k 64k", "r.raw",
                cwd=tmp_path)
    if "qcow2" in formats_available():
        run_qemu("create", "-q", "-f", "qcow2", "x.qcow2", "10M", cwd=tmp_path)
        run_qemu_io("-c", "write -P 7 1M 64k", "x.qcow2", cwd=tmp_path)
        run_qemu("create", "-q", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", "t.qcow2", cwd=tmp_path)
        run_qemu("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M", cwd=tmp_path)
    return tmp_path


def _need(fmt: str) -> None:
    if fmt not in formats_available():
        pytest.skip(f"{fmt} plugin not installed")


RAW_WINDOWS = ["offset=2000000", "offset=1048576", "offset=1048575", "offset=-1", "offset=1k", "offset=1000",
               "offset=1.5k", "offset=0x10", "offset=abc", "offset=18446744073709551615",
               "offset=18446744073709551616", "offset=9223372036854775808", "size=100", "size=1048577",
               "size=0", "size=-1", "size=abc", "size=16E", "offset=512,size=1048064", "offset=512,size=1048065",
               "offset=1000,size=100", "offset=4096,size=8192", "offset=512,file.locking=off,read-only=on",
               "offset=+5", "offset=+1k", "offset=++5", "offset= 5", "offset=", "offset=1e5"]


@pytest.mark.parametrize("window", RAW_WINDOWS)
@pytest.mark.parametrize("cmd", [["info"], ["info", "--output=json"], ["compare"]])
def test_raw_window(imgs, cmd, window):
    """raw's offset/size: parsed as sizes, checked against the file, and an image opened with
    them is named ``json:{...}`` (a strong option: it changes what the image is)."""
    opts = f"driver=raw,file.filename=r.raw,{window}"
    other = ["driver=raw,file.filename=r.raw"] if cmd == ["compare"] else []
    compare(imgs, *cmd, "--image-opts", opts, *other)


@pytest.mark.parametrize("window", ["offset=4096,size=8192", "offset=65536", "size=65536"])
def test_raw_window_map_and_convert(imgs, window):
    opts = f"driver=raw,file.filename=r.raw,{window}"
    compare(imgs, "map", "--output=json", "--image-opts", opts)
    compare(imgs, "measure", "-O", "qcow2", "--image-opts", opts)
    for out in ("a.raw", "b.raw"):
        (imgs / out).unlink(missing_ok=True)
    assert run_qemu("convert", "--image-opts", opts, "-O", "raw", "a.raw", cwd=imgs).returncode == 0
    assert run_qimg("convert", "--image-opts", opts, "-O", "raw", "b.raw", cwd=imgs).returncode == 0
    assert (imgs / "a.raw").read_bytes() == (imgs / "b.raw").read_bytes()


@pytest.mark.parametrize("name", [
    'json:{"driver":"raw","offset":512,"file":{"driver":"file","filename":"r.raw"}}',
    'json:{"driver":"raw","offset":"512","file.filename":"r.raw"}',
    'json:{"driver":"raw","file":{"filename":"r.raw"},"size":4096,"offset":512}',
])
@pytest.mark.parametrize("cmd", [["info"], ["info", "--output=json"], ["info", "--backing-chain"]])
def test_json_name_keeps_json_types(imgs, cmd, name):
    compare(imgs, *cmd, name)


QCOW2_OPTIONS = [
    "l2-cache-size=abc", "l2-cache-size=1k", "cache-size=1M,l2-cache-size=2M", "refcount-cache-size=-1",
    "cache-size=1M,l2-cache-size=512k,refcount-cache-size=256k", "cache-size=1M,refcount-cache-size=2M",
    "cache-clean-interval=abc", "cache-clean-interval=-1", "cache-clean-interval=1k", "cache-clean-interval=0x10",
    "cache-clean-interval=010", "cache-clean-interval=4294967296", "cache-clean-interval=1_0",
    "lazy-refcounts=maybe", "lazy-refcounts=yes", "overlap-check=foo", "overlap-check=none",
    "overlap-check.template=foo", "overlap-check=all,overlap-check.template=none", "overlap-check.main-header=x",
    "pass-discard-other=x", "l2-cache-entry-size=100", "l2-cache-entry-size=4096", "l2-cache-entry-size=1M",
    "l2-cache-size=18446744073709551616", "cache-clean-interval=4294967296,l2-cache-entry-size=3",
    "cache-clean-interval=99999999999999999999999", "cache-clean-interval=", "node-name=\u00e9",
    # the block layer's own options and the file protocol's
    "discard=foo", "discard=on", "detect-zeroes=x", "detect-zeroes=unmap", "discard=unmap,detect-zeroes=unmap",
    "read-only=x", "cache.direct=x", "force-share=x", "auto-read-only=x", "cache.no-flush=x", "node-name=1bad",
    "node-name=a.b-c_d", "node-name=abcdefghijabcdefghijabcdefghij12", "node-name=", "file.locking=x",
    "file.locking=auto", "file.aio=x", "file.aio=native", "file.drop-cache=x", "file.aio-max-batch=x",
    # the first unknown option in QEMU's (hash) order, the file's before the format's
    "foo=1,bar=1", "zzz=1,aaa=1,mmm=1", "file.x=1,foo=1", "file.x=1,file.y=2",
]


@pytest.mark.parametrize("opt", QCOW2_OPTIONS)
def test_qcow2_option_values(imgs, opt):
    _need("qcow2")
    compare(imgs, "info", "--image-opts", f"driver=qcow2,file.filename=x.qcow2,{opt}")


@pytest.mark.parametrize("opt", ["lazy-refcounts=on", "lazy-refcounts=off"])
def test_qcow2_v2_lazy_refcounts(imgs, opt):
    _need("qcow2")
    compare(imgs, "info", "--image-opts", f"driver=qcow2,file.filename=v2.qcow2,{opt}")


BACKING_OPTIONS = [
    "x.qcow2,backing.driver=qcow2", "x.qcow2,backing.driver=raw,backing.file.filename=r.raw",
    "t.qcow2,backing.driver=raw,backing.file.filename=r.raw", "t.qcow2,backing.file.filename=r.raw",
    "t.qcow2,backing.driver=raw", "t.qcow2,backing.file.filename=nonex", "t.qcow2,backing.l2-cache-size=abc",
    "t.qcow2,backing.foo=1", "x.qcow2,backing.foo=1", "t.qcow2,backing.filename=r.raw", "t.qcow2,backing=null",
    "t.qcow2,backing=", "x.qcow2,backing.file.filename=r.raw", "t.qcow2,backing.file.filename=x.qcow2",
]


@pytest.mark.parametrize("opts", BACKING_OPTIONS)
@pytest.mark.parametrize("cmd", [["map", "--output=json"], ["info"], ["check"], ["measure", "-O", "qcow2"]])
def test_backing_options(imgs, cmd, opts):
    """``backing.*`` choose the backing image where one is opened (info refuses them);
    ``backing`` "" (deprecated) or null opens none, another string names a node."""
    _need("qcow2")
    compare(imgs, *cmd, "--image-opts", f"driver=qcow2,file.filename={opts}")


@pytest.mark.parametrize("opts", BACKING_OPTIONS[:6])
def test_backing_options_compare(imgs, opts):
    _need("qcow2")
    compare(imgs, "compare", "--image-opts", f"driver=qcow2,file.filename={opts}", "driver=raw,file.filename=r.raw")


@pytest.mark.parametrize("name", ['json:{"driver":"qcow2","file":{"filename":"t.qcow2"},"backing":null}'])
@pytest.mark.parametrize("cmd", [["info"], ["map", "--output=json"]])
def test_json_backing_null(imgs, cmd, name):
    _need("qcow2")
    compare(imgs, *cmd, name)


@pytest.mark.parametrize("opts", ["driver=qcow2,file.filename=x.qcow2", "driver=qcow2,file.filename=t.qcow2"])
def test_check_json_names_the_argument(imgs, opts):
    _need("qcow2")
    compare(imgs, "check", "--output=json", "--image-opts", opts)
    compare(imgs, "check", "--output=json", 'json:{"driver":"qcow2","file":{"filename":"x.qcow2"}}')


@pytest.mark.parametrize("opt", ["force_size_calc=x", "force_size_calc=chs", "force_size_calc=current_size",
                                 "force_size_calc="])
def test_vpc_size_mode(imgs, opt):
    _need("vpc")
    run_qemu("create", "-q", "-f", "vpc", "v.vpc", "1M", cwd=imgs)
    compare(imgs, "info", "--image-opts", f"driver=vpc,file.filename=v.vpc,{opt}")


@pytest.mark.parametrize("target", [
    "driver=qcow2,file.filename=t.qcow2", "driver=raw,file.filename=t.raw,offset=1M",
    "driver=qcow2,file.filename=t.qcow2,foo=1", "driver=qcow2,file.filename=t.qcow2,l2-cache-size=x",
    "driver=file,filename=t.raw", "driver=raw,file.filename=nonex", "driver=raw,file.filename=t.raw,file.foo=2",
    "driver=vpc,file.filename=t.raw",
])
def test_target_image_opts(imgs, target):
    """``convert -n --target-image-opts``: the target's options typed, checked and refused as
    qemu-img does, errors naming the option string."""
    _need("qcow2")
    run_qemu("create", "-q", "-f", "qcow2", "t.qcow2", "4M", cwd=imgs)
    run_qemu("create", "-q", "-f", "raw", "t.raw", "4M", cwd=imgs)
    compare(imgs, "convert", "-n", "--target-image-opts", "x.qcow2", target)
