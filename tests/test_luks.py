"""The luks format (LUKS1 volumes) against qemu-img/qemu-io 7.2 and 10.0 and cryptsetup, both
directions: volumes QEMU and cryptsetup make read back identical in qimg, volumes and data qimg
writes open in QEMU (and in cryptsetup) with the same passphrase, and create, measure, amend,
info, map, check and the errors match qemu-img."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import as_qemu, need_qemu10, pattern_bytes

SECRET = "secret,id=sec0,data=123456"
OBJ = ["--object", SECRET]
SECRETS = [*OBJ, "--object", "secret,id=sec1,data=abc", "--object", "secret,id=sec2,data=zzz"]
MIB = 1 << 20


def iopts(path, secret: str | None = "sec0") -> str:
    s = f"driver=luks,file.filename={path}"
    return s + f",key-secret={secret}" if secret else s


def need_cryptsetup() -> str:
    exe = shutil.which("cryptsetup")
    if exe is None:
        msg = "cryptsetup (Debian package cryptsetup-bin) is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg + " but CI is set: the oracle is required")
        pytest.skip(msg)
    return exe


def cryptsetup(*args: str, key: bytes = b"123456", tmp=None) -> subprocess.CompletedProcess:
    exe = need_cryptsetup()
    keyfile = os.path.join(tmp, "cs.key")
    with open(keyfile, "wb") as f:
        f.write(key)
    return subprocess.run([exe, "-q", "--key-file", keyfile, *args], capture_output=True, text=True)


def qemu_create(tool, path, opts: str = "", size: str = "4M", *extra: str):
    """A QEMU-made luks volume. qemu-img 7.2's PBKDF benchmark gives up at random ("Unable to get
    accurate CPU usage", a Debian backport that 10.0 fixed): retried."""
    o = "key-secret=sec0,iter-time=10" + ("," + opts if opts else "")
    for _ in range(30):
        r = tool("create", "-q", *OBJ, *extra, "-f", "luks", "-o", o, str(path), size)
        if "accurate CPU usage" not in r.stderr:
            break
    return r


def qemu_tool_retry(tool, *args: str):
    for _ in range(30):
        r = tool(*args)
        if "accurate CPU usage" not in r.stderr:
            return r
    return r


def io(qemu_io, path, *cmds: str, secret: str = "sec0") -> str:
    args = []
    for c in cmds:
        args += ["-c", c]
    r = qemu_io(*SECRETS, "--image-opts", iopts(path, secret), *args)
    assert r.returncode == 0 and "fail" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    return r.stdout


def to_raw(tool, path, out, secret: str = "sec0") -> bytes:
    r = tool("convert", *SECRETS, "-O", "raw", "--image-opts", iopts(path, secret), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


WRITES = ["write -P 0x11 0 64k", "write -P 0x22 1000 3000", "write -P 0x33 1M 70000",
          "write -P 0x44 3145735 100", "write -z 1200k 64k"]


def sparse_copy(src, dest) -> None:
    """Copy keeping holes (the allocated size is compared with QEMU's)."""
    subprocess.run(["cp", "--sparse=auto", str(src), str(dest)], check=True)


def masked_info(tool, path, fmt: str = "luks") -> dict:
    r = tool("info", "--output=json", "-f", fmt, str(path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    e = d["format-specific"]["data"]
    e["uuid"] = e["master-key-iters"] = None
    for s in e["slots"]:
        if "iters" in s:
            s["iters"] = None
    d.pop("filename")
    d.pop("children", None)
    return d


# ---------------------------------------------------------------------------- QEMU-made volumes
#: option sets of the QEMU-made volumes (QEMU's create is slow: each made once per module)
QEMU_MADE = ["",
             "cipher-alg=aes-128,ivgen-alg=plain,hash-alg=sha1",
             "cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512,preallocation=falloc",
             "cipher-alg=aes-192,cipher-mode=xts,ivgen-hash-alg=sha1,hash-alg=ripemd160"]


@pytest.fixture(scope="session")
def qemu_made(tmp_path_factory):
    """``get(opts, dest)``: copy a pristine volume qemu-img 10.0 made with those options. QEMU's
    create runs two PBKDF benchmarks of over half a second of CPU each: every volume is made once
    per test run, shared by the xdist workers (a lock file orders them)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d = shared / "luks_qemu_made"
    d.mkdir(exist_ok=True)
    exe, env = need_qemu10("qemu-img")

    def get(opts: str, dest) -> None:
        path = d / f"{QEMU_MADE.index(opts)}.luks"
        with open(d / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                tmp = d / "new.luks"
                r = subprocess.run([exe, "create", "-q", *OBJ, "-f", "luks", "-o",
                                    "key-secret=sec0,iter-time=10" + ("," + opts if opts else ""), str(tmp), "4M"],
                                   capture_output=True, text=True, env=env)
                assert r.returncode == 0, r.stderr
                tmp.rename(path)
        sparse_copy(path, dest)

    return get


@pytest.mark.parametrize("opts", QEMU_MADE)
def test_qemu_volume_reads_identical(opts, tmp_path, qemu_img, qemu_io, qimg, qemu_made):
    img = tmp_path / "q.luks"
    qemu_made(opts, img)
    io(qemu_io, img, *WRITES)
    exp = to_raw(qemu_img, img, tmp_path / "a.raw")
    assert to_raw(qimg, img, tmp_path / "b.raw") == exp
    assert exp[:1000] == b"\x11" * 1000 and exp[1000:4000] == b"\x22" * 3000
    for args in (["info", str(img)], ["info", "--output=json", str(img)]):
        e, g = qemu_img(*args), qimg(*args)
        assert (g.returncode, g.stdout, as_qemu(g.stderr)) == (e.returncode, e.stdout, e.stderr), args


def test_commands_as_qemu(tmp_path, qemu_img, qemu_io, qimg, qemu_made):
    img = tmp_path / "q.luks"
    qemu_made("", img)
    io(qemu_io, img, *WRITES)
    for args in (["map", "--output=json", *OBJ, "--image-opts", iopts(img)],
                 ["map", *OBJ, "--image-opts", iopts(img)],
                 ["check", *OBJ, "--image-opts", iopts(img)],
                 ["compare", *OBJ, "--image-opts", iopts(img), iopts(img)],
                 ["info", *OBJ, "--image-opts", iopts(img)],
                 ["info", *OBJ, f"json:{{\"driver\": \"luks\", \"key-secret\": \"sec0\", \"file\": "
                                f"{{\"driver\": \"file\", \"filename\": \"{img}\"}}}}"]):
        e, g = qemu_img(*args), qimg(*args)
        assert (g.returncode, g.stdout, as_qemu(g.stderr)) == (e.returncode, e.stdout, e.stderr), args


@pytest.mark.parametrize("opts", QEMU_MADE[:2])
def test_info_and_data_as_qemu_10(opts, tmp_path, qemu_img_10, qimg, qemu_made):
    """The 10.0 profile: the same LUKS data (with ``detached-header``); the data reads the same."""
    img = tmp_path / "q.luks"
    qemu_made(opts, img)
    env = {"QIMG_COMPAT": "10.0"}
    e = json.loads(qemu_img_10("info", "--output=json", str(img)).stdout)
    g = json.loads(qimg("info", "--output=json", str(img), env=env).stdout)
    assert g["format-specific"] == e["format-specific"]
    assert "detached-header" in g["format-specific"]["data"]
    assert {k: g[k] for k in ("virtual-size", "format", "encrypted")} == \
        {k: e[k] for k in ("virtual-size", "format", "encrypted")}
    human_e = qemu_img_10("info", str(img)).stdout.split("Child node")[0]
    human_g = qimg("info", str(img), env=env).stdout.split("Child node")[0]
    assert human_g == human_e
    assert to_raw(qimg, img, tmp_path / "b.raw") == to_raw(qemu_img_10, img, tmp_path / "a.raw")


# ---------------------------------------------------------------------------- cryptsetup-made volumes
CRYPTSETUP = [
    [],  # aes-xts-plain64, 512-bit key, sha256 (cryptsetup's default)
    ["--cipher", "aes-xts-plain64", "--key-size", "256", "--hash", "sha1"],
    ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--hash", "sha512"],
    ["--cipher", "aes-cbc-plain", "--key-size", "128"],
    ["--cipher", "aes-cbc-plain64", "--key-size", "256", "--hash", "ripemd160"],
]


@pytest.mark.parametrize("args", CRYPTSETUP, ids=lambda a: "-".join(a[1::2]) or "default")
def test_cryptsetup_volume_reads_identical(args, tmp_path, qemu_img, qemu_io, qimg):
    img = tmp_path / "c.luks"
    with open(img, "wb") as f:
        f.truncate(8 * MIB)
    r = cryptsetup("luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000", *args, str(img), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    newkey = tmp_path / "new.key"
    newkey.write_bytes(b"abc")
    r = cryptsetup("luksAddKey", "--pbkdf-force-iterations", "1000", str(img), str(newkey), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    io(qemu_io, img, *WRITES)
    e, g = qemu_img("info", str(img)), qimg("info", str(img))
    assert (g.returncode, g.stdout) == (e.returncode, e.stdout)
    exp = to_raw(qemu_img, img, tmp_path / "a.raw")
    assert to_raw(qimg, img, tmp_path / "b.raw") == exp
    assert to_raw(qimg, img, tmp_path / "b.raw", secret="sec1") == exp  # cryptsetup's second slot
    # qimg writes, QEMU reads back
    src = tmp_path / "p.raw"
    src.write_bytes(pattern_bytes(4 * MIB, seed=7))
    r = qimg("convert", *OBJ, "-n", "-f", "raw", "--target-image-opts", str(src), iopts(img))
    assert r.returncode == 0, r.stderr
    assert to_raw(qemu_img, img, tmp_path / "c.raw")[: 4 * MIB] == src.read_bytes()
    # cryptsetup still opens its own slot
    assert cryptsetup("open", "--test-passphrase", str(img), tmp=tmp_path).returncode == 0


# ---------------------------------------------------------------------------- qimg-made volumes
VARIANTS = [
    "",
    "cipher-alg=aes-128,ivgen-alg=plain,hash-alg=sha1",
    "cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    "cipher-alg=aes-256,cipher-mode=cbc,hash-alg=sha512",
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
    "cipher-mode=ecb,cipher-alg=aes-128",
    "cipher-mode=ctr",
    "cipher-alg=aes-192,hash-alg=sha224,ivgen-hash-alg=sha1",
]


@pytest.mark.parametrize("opts", VARIANTS)
def test_qimg_volume_opens_in_qemu_and_cryptsetup(opts, tmp_path, qemu_img, qemu_io, qimg):
    img = tmp_path / "m.luks"
    r = qimg("create", "-q", *OBJ, "-f", "luks", "-o", "key-secret=sec0,iter-time=10" + ("," + opts if opts else ""),
             str(img), "4M")
    assert r.returncode == 0, r.stderr
    # qimg writes (unaligned pieces through the library), QEMU reads
    code = f"""
import qimg
from qimg import secrets
secrets.add_object({SECRET!r})
with qimg.open({str(img)!r}, "luks", writable=True, options={{"key-secret": "sec0"}}) as im:
    im.pwrite(0, b"\\x11" * 65536)
    im.pwrite(1000, b"\\x22" * 3000)
    im.pwrite(1 << 20, b"\\x33" * 70000)
    im.pwrite(3145735, b"\\x44" * 100)
    im.write_zeroes(1200 * 1024, 65536)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    io(qemu_io, img, "read -P 0x11 0 1000", "read -P 0x22 1000 3000", "read -P 0x11 4000 61536",
       "read -P 0x33 1M 70000", "read -P 0x44 3145735 100", "read -P 0 1200k 64k")
    # QEMU writes, qimg reads
    io(qemu_io, img, "write -P 0x55 2M 5000")
    assert to_raw(qimg, img, tmp_path / "b.raw") == to_raw(qemu_img, img, tmp_path / "a.raw")
    assert qemu_img("check", *OBJ, "--image-opts", iopts(img)).returncode == 63
    if "ecb" in opts or "ctr" in opts or "aes-192" in opts:
        return  # cryptsetup asks the kernel's dm-crypt for those ciphers (not here without root devices)
    pw = tmp_path / "pw"
    pw.write_bytes(b"123456")
    r = subprocess.run([need_cryptsetup(), "open", "--test-passphrase", "--key-file", str(pw), str(img)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("opts", QEMU_MADE)
def test_layout_as_qemu(opts, tmp_path, qemu_img, qimg, qemu_made):
    """Same header fields, key slot offsets, file size and allocated size as qemu-img's."""
    a, b = tmp_path / "q.luks", tmp_path / "m.luks"
    qemu_made(opts, a)
    r = qimg("create", "-q", *OBJ, "-f", "luks", "-o", "key-secret=sec0,iter-time=10" + ("," + opts if opts else ""),
             str(b), "4M")
    assert r.returncode == 0, r.stderr
    assert masked_info(qemu_img, b) == masked_info(qemu_img, a)
    assert os.path.getsize(b) == os.path.getsize(a)
    assert os.stat(b).st_blocks == os.stat(a).st_blocks
    ha, hb = a.read_bytes()[:592], b.read_bytes()[:592]
    assert hb[:108] == ha[:108]  # magic, version, cipher name and mode, hash, payload offset, key bytes


def test_create_output_and_preallocation_as_qemu(tmp_path, qemu_img, qimg):
    for mode in ("falloc",):  # "off" is test_layout_as_qemu's (QEMU's create is slow)
        o = f"key-secret=sec0,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1,iter-time=10," \
            f"preallocation={mode}"
        exp = qemu_tool_retry(qemu_img, "create", *OBJ, "-f", "luks", "-o", o, str(tmp_path / "a.luks"), "3M")
        got = qimg("create", *OBJ, "-f", "luks", "-o", o, str(tmp_path / "b.luks"), "3M")
        assert (got.returncode, got.stdout.replace("b.luks", "a.luks")) == (exp.returncode, exp.stdout), mode
        sa, sb = os.stat(tmp_path / "a.luks"), os.stat(tmp_path / "b.luks")
        assert (sb.st_size, sb.st_blocks) == (sa.st_size, sa.st_blocks), mode


def test_create_help_as_qemu(qemu_img, qemu_img_10, qimg, tmp_path):
    for args in (["create", "-f", "luks", "-o", "help"], ["create", "-f", "luks", "-o", "help", str(tmp_path / "x")],
                 ["amend", "-f", "luks", "-o", "help", str(tmp_path / "x")]):
        e, g = qemu_img(*args), qimg(*args)
        assert (g.returncode, g.stdout, as_qemu(g.stderr)) == (e.returncode, e.stdout, e.stderr)
    e, g = qemu_img_10("create", "-f", "luks", "-o", "help"), qimg("create", "-f", "luks", "-o", "help",
                                                                    env={"QIMG_COMPAT": "10.0"})
    assert (g.returncode, g.stdout) == (e.returncode, e.stdout)
    assert "detached-header" in g.stdout


# ---------------------------------------------------------------------------- errors as qemu-img
@pytest.mark.parametrize("opts", [
    "",
    "key-secret=sec9",
    "key-secret=sec0,hash-alg=foo",
    "key-secret=sec0,hash-alg=foo,cipher-alg=bar",
    "key-secret=sec0,ivgen-hash-alg=foo,cipher-mode=bar",
    "key-secret=sec0,ivgen-alg=foo",
    "key-secret=sec0,cipher-alg=des",
    "key-secret=sec0,cipher-alg=sm4",
    "key-secret=sec0,hash-alg=sm3",
    "key-secret=sec0,ivgen-alg=essiv,ivgen-hash-alg=sha1",
    "key-secret=sec0,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha512",
    "key-secret=sec0,cipher-alg=serpent-128,ivgen-alg=essiv,ivgen-hash-alg=sha512",
    "key-secret=sec0,cipher-alg=cast5-128",
    "key-secret=sec0,preallocation=bogus",
    "key-secret=sec0,iter-time=x",
    "key-secret=sec0,foo=bar",
    "key-secret=bad",
])
@pytest.mark.parametrize("existing", [False, True])
def test_create_errors_as_qemu(opts, existing, tmp_path, qemu_img, qimg):
    """The message, and what is left of the file: untouched when QEMU refuses the options before
    creating it, removed when it fails after."""
    objs = [*OBJ, "--object", "secret,id=bad,format=base64,data=/w=="]
    sizes = {}
    for tool, name in ((qemu_img, "a.luks"), (qimg, "b.luks")):
        path = tmp_path / name
        if existing:
            path.write_bytes(b"keep")
        r = qemu_tool_retry(tool, "create", *objs, "-f", "luks", "-o", opts, str(path), "1M") \
            if tool is qemu_img else tool("create", *objs, "-f", "luks", "-o", opts, str(path), "1M")
        # what is left of the file as its length and a digest (a failing comparison of whole
        # files made pytest's diff run for minutes)
        left = path.read_bytes() if path.exists() else None
        sizes[name] = (r.returncode, as_qemu(r.stderr).replace(name, "X"),
                       None if left is None else (len(left), hashlib.sha256(left).hexdigest()))
    e, g = sizes["a.luks"], sizes["b.luks"]
    if e[0] == 0:
        # created by both (10.0 has sm3): random keys, so only the outcome and size compare
        assert (g[0], g[1], g[2] and g[2][0]) == (e[0], e[1], e[2] and e[2][0])
        assert opts == "key-secret=sec0,hash-alg=sm3", "only 10.0's sm3 creates here"
    else:
        assert g == e
        assert e[0] == 1


@pytest.mark.parametrize("args", [
    ["--size", "10M"],
    ["-o", "key-secret=sec0,cipher-alg=twofish-128,cipher-mode=cbc", "--size", "1G", "--output=json"],
    ["-o", "key-secret=sec0,cipher-alg=foo", "--size", "1M"],
    ["-o", "key-secret=sec0,iter-time=-5", "--size", "1M"],
    ["-o", "key-secret=sec9", "--size", "1M"],
])
def test_measure_as_qemu(args, tmp_path, qemu_img, qimg):
    exp = qemu_tool_retry(qemu_img, "measure", *OBJ, "-O", "luks", *args)
    got = qimg("measure", *OBJ, "-O", "luks", *args)
    err = as_qemu(got.stderr)
    if "too large to scale" in exp.stderr:  # the number is QEMU's benchmark
        err, exp.stderr = err.split("iterations")[0], exp.stderr.split("iterations")[0]
    assert (got.returncode, got.stdout, err) == (exp.returncode, exp.stdout, exp.stderr)


def test_measure_and_convert_from_image_as_qemu(tmp_path, qemu_img, qimg):
    src = tmp_path / "s.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(src), "5M").returncode == 0
    assert qemu_img("convert", "-n", "-f", "raw", "-O", "qcow2", "/dev/null", str(src)).returncode == 0
    raw = tmp_path / "s.raw"
    raw.write_bytes(pattern_bytes(5 * MIB, seed=3))
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(src)).returncode == 0
    o = "key-secret=sec0,iter-time=10,cipher-alg=aes-128"
    for args in (["measure", *OBJ, "-O", "luks", "-o", o, "--output=json", str(src)],):
        e, g = qemu_tool_retry(qemu_img, *args), qimg(*args)
        assert (g.returncode, g.stdout) == (e.returncode, e.stdout)
    a, b = tmp_path / "a.luks", tmp_path / "b.luks"
    e = qemu_tool_retry(qemu_img, "convert", *OBJ, "-O", "luks", "-o", o, str(src), str(a))
    g = qimg("convert", *OBJ, "-O", "luks", "-o", o, str(src), str(b))
    assert (g.returncode, g.stdout, g.stderr) == (e.returncode, e.stdout, e.stderr) == (0, "", "")
    assert (os.path.getsize(b), os.stat(b).st_blocks) == (os.path.getsize(a), os.stat(a).st_blocks)
    r = qemu_img("compare", *OBJ, "--image-opts", iopts(b), iopts(a))
    assert r.returncode == 0, r.stdout + r.stderr
    assert to_raw(qemu_img, b, tmp_path / "c.raw") == raw.read_bytes()


@pytest.mark.parametrize("cmd", [
    "convert -O raw {img} o.raw",
    "map {img}",
    "check {img}",
    "compare {img} {img}",
    "resize {img} 8M",
    "amend -o state=inactive,keyslot=0 {img}",
    "--image-opts driver=luks,file.filename={img},key-secret=nope",
    "--image-opts driver=luks,file.filename={img},key-secret=sec1",
    "--image-opts driver=luks,file.filename={img},key-secret=bad",
    "--image-opts driver=luks,file.filename={img},key-secret=sec0,foo=bar",
    "-f raw {img}",
    "-f luks {raw}",
])
def test_opens_as_qemu(cmd, tmp_path, qemu_img, qimg, qemu_made, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qemu_made("", tmp_path / "v.luks")
    (tmp_path / "r.raw").write_bytes(bytes(65536))
    args = cmd.format(img="v.luks", raw="r.raw").split()
    if args[0].startswith("-"):
        args = ["convert", "-O", "raw", *args, "o.raw"]
    objs = [*SECRETS, "--object", "secret,id=bad,format=base64,data=/w=="]
    exp = qemu_img(args[0], *objs, *args[1:])
    got = qimg(args[0], *objs, *args[1:])
    assert (got.returncode, got.stdout, as_qemu(got.stderr)) == (exp.returncode, exp.stdout, exp.stderr)


def test_resize_as_qemu(tmp_path, qemu_img, qimg, qemu_made):
    a, b = tmp_path / "a.luks", tmp_path / "b.luks"
    qemu_made("", a)
    sparse_copy(a, b)
    for args in (["12M"], ["--shrink", "3M"], ["2M"], ["--preallocation=falloc", "9M"], ["--preallocation=full", "10M"],
                 ["+1M"], ["--preallocation=foo", "11M"]):
        e = qemu_img("resize", *OBJ, "--image-opts", iopts(a), *args)
        g = qimg("resize", *OBJ, "--image-opts", iopts(b), *args)
        assert (g.returncode, g.stdout, as_qemu(g.stderr)) == (e.returncode, e.stdout, e.stderr), args
        assert (os.path.getsize(b), os.stat(b).st_blocks) == (os.path.getsize(a), os.stat(a).st_blocks), args
    assert to_raw(qimg, b, tmp_path / "b.raw") == to_raw(qemu_img, b, tmp_path / "a.raw")


# ---------------------------------------------------------------------------- amend
AMEND_STEPS = [
    ("state=active", "sec0", False),
    ("state=inactive,new-secret=sec0", "sec0", False),
    ("state=inactive", "sec0", False),
    ("state=active,new-secret=sec0,keyslot=8", "sec0", False),
    ("state=active,new-secret=sec0,keyslot=-1", "sec0", False),
    ("new-secret=sec0", "sec0", False),
    ("state=foo", "sec0", False),
    ("state=inactive,old-secret=sec0", "sec0", False),
    ("state=active,new-secret=sec1,iter-time=10", "sec0", False),
    ("state=active,new-secret=sec1,old-secret=sec2", "sec0", False),
    ("state=active,new-secret=sec9", "sec0", False),
    ("state=active,new-secret=sec2,keyslot=1,iter-time=10", "sec0", False),
    ("state=active,new-secret=sec2,keyslot=1,iter-time=10", "sec1", True),
    ("state=inactive,keyslot=3", "sec0", False),
    ("state=inactive,keyslot=3,iter-time=10", "sec0", False),
    ("state=inactive,old-secret=sec1", "sec0", False),
    ("state=inactive,old-secret=sec1,keyslot=1", "sec0", False),
    ("state=active,new-secret=sec1,iter-time=10", "sec2", False),
    ("state=inactive,old-secret=sec0,keyslot=0", "sec2", False),
    ("state=inactive,old-secret=sec2", "sec1", False),
    ("state=inactive,keyslot=2", "sec1", False),
    ("state=inactive,keyslot=5", "sec1", True),
    ("cipher-alg=aes-128", "sec1", False),
]


def _active_slots(qemu_img, path) -> list[bool]:
    d = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
    return [s["active"] for s in d["format-specific"]["data"]["slots"]]


def test_amend_keyslots_as_qemu(tmp_path, qemu_img, qemu_io, qimg, qemu_made):
    q, m = tmp_path / "q.luks", tmp_path / "m.luks"
    qemu_made("", q)
    io(qemu_io, q, "write -P 0x5a 0 64k")
    sparse_copy(q, m)
    for opts, key, force in AMEND_STEPS:
        args = ["amend", *SECRETS, "-o", opts, *(["--force"] if force else [])]
        exp = qemu_tool_retry(qemu_img, *args, "--image-opts", iopts(q, key))
        got = qimg(*args, "--image-opts", iopts(m, key))
        assert (got.returncode, as_qemu(got.stderr).replace(str(m), str(q))) == (exp.returncode, exp.stderr), opts
        assert _active_slots(qemu_img, m) == _active_slots(qemu_img, q), opts
    # the slot qimg wrote last opens in QEMU (slot 2: sec1; sec0 and sec2 were erased)
    assert _active_slots(qemu_img, m) == [False, False, True] + [False] * 5
    io(qemu_io, m, "read -P 0x5a 0 64k", secret="sec1")
    r = qemu_io(*SECRETS, "--image-opts", iopts(m, "sec0"), "-c", "read 0 512")
    assert "Invalid password, cannot unlock any keyslot" in r.stderr
    # cryptsetup agrees: slot 2 holds "abc"
    pw = tmp_path / "pw"
    pw.write_bytes(b"abc")
    r = subprocess.run([need_cryptsetup(), "open", "--test-passphrase", "--key-file", str(pw), str(m)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Key Slot 2: ENABLED" in subprocess.run([need_cryptsetup(), "luksDump", str(m)], capture_output=True,
                                                   text=True).stdout


# ---------------------------------------------------------------------------- hostile headers
def _corrupt(path, what: str) -> None:
    d = bytearray(path.read_bytes())
    slot = 208
    if what == "magic":
        d[0:4] = b"XXXX"
    elif what == "version":
        d[6:8] = b"\0\2"
    elif what == "name-nul":
        d[8:40] = b"a" * 32
    elif what == "mode-nul":
        d[40:72] = b"b" * 32
    elif what == "hash-nul":
        d[72:104] = b"c" * 32
    elif what == "payload":
        d[104:108] = struct.pack(">I", 7)
    elif what == "mk-iters":
        d[168:172] = bytes(4)
    elif what == "key-bytes":
        d[108:112] = struct.pack(">I", 512000)
    elif what == "key-bytes-0":
        d[108:112] = bytes(4)
    elif what == "mode-format":
        d[40:72] = b"xts".ljust(32, b"\0")
    elif what == "mode-name":
        d[40:72] = b"abc-plain64".ljust(32, b"\0")
    elif what == "ivgen-name":
        d[40:72] = b"xts-foo".ljust(32, b"\0")
    elif what == "essiv-nohash":
        d[40:72] = b"cbc-essiv".ljust(32, b"\0")
    elif what == "ivhash-name":
        d[40:72] = b"xts-plain64:foo".ljust(32, b"\0")
    elif what == "cipher-name":
        d[8:40] = b"des".ljust(32, b"\0")
    elif what == "hash-name":
        d[72:104] = b"whirlpool".ljust(32, b"\0")
    elif what == "stripes":
        d[slot + 44 : slot + 48] = struct.pack(">I", 3999)
    elif what == "stripes-1":
        d[slot + 48 + 44 : slot + 48 + 48] = struct.pack(">I", 0xFFFFFFFF)
    elif what == "state":
        d[slot + 48 : slot + 52] = struct.pack(">I", 7)
    elif what == "slot-iters":
        d[slot + 4 : slot + 8] = bytes(4)
    elif what == "overlap":
        d[slot + 48 + 40 : slot + 48 + 44] = struct.pack(">I", 100)  # slot 1 inside slot 0
    elif what == "header":
        d[slot + 40 : slot + 44] = struct.pack(">I", 1)
    elif what == "past-payload":
        d[slot + 7 * 48 + 40 : slot + 7 * 48 + 44] = struct.pack(">I", 0xFFFFFF00)
    elif what == "material":
        d[4096:8192] = bytes(4096)
    elif what == "short":
        del d[3000:]
    elif what == "short-payload":
        del d[100000:]
    path.write_bytes(bytes(d))


HOSTILE = ["magic", "version", "name-nul", "mode-nul", "hash-nul", "payload", "mk-iters", "key-bytes", "key-bytes-0",
           "mode-format", "mode-name", "ivgen-name", "essiv-nohash", "ivhash-name", "cipher-name", "hash-name",
           "stripes", "stripes-1", "state", "slot-iters", "overlap", "header", "past-payload", "material", "short",
           "short-payload"]


@pytest.mark.parametrize("what", HOSTILE)
def test_damaged_header_as_qemu(what, tmp_path, qemu_img, qimg, qemu_made, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qemu_made("", tmp_path / "d.luks")
    _corrupt(tmp_path / "d.luks", what)
    before = (tmp_path / "d.luks").read_bytes()
    for args in (["info", "d.luks"], ["info", "-f", "luks", "d.luks"],
                 ["convert", *OBJ, "-O", "raw", "--image-opts", iopts("d.luks"), "o.raw"]):
        exp, got = qemu_img(*args), qimg(*args)
        assert (got.returncode, got.stdout, as_qemu(got.stderr)) == (exp.returncode, exp.stdout, exp.stderr), args
    assert (tmp_path / "d.luks").read_bytes() == before


# ---------------------------------------------------------------------------- LUKS2
def test_luks2_as_qemu(tmp_path, qemu_img, qimg, monkeypatch):
    """QEMU reads LUKS version 1 only: a LUKS2 volume probes as raw, and ``-f luks`` says so."""
    monkeypatch.chdir(tmp_path)
    with open("v2.img", "wb") as f:
        f.truncate(20 * MIB)
    r = cryptsetup("luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                   "v2.img", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    for args in (["info", "v2.img"], ["info", "-f", "luks", "v2.img"],
                 ["convert", *OBJ, "-O", "raw", "--image-opts", iopts("v2.img"), "o.raw"]):
        exp, got = qemu_img(*args), qimg(*args)
        if exp.returncode == 0:  # a raw image's info (10.0 with its child node)
            assert got.returncode == 0 and got.stdout == exp.stdout, args
            assert "file format: raw" in got.stdout
        else:
            assert (got.returncode, as_qemu(got.stderr)) == (exp.returncode, exp.stderr), args
            assert "LUKS version 2 is not supported" in got.stderr


def test_secret_from_file_with_newline(tmp_path, qimg, qemu_io):
    pw = tmp_path / "pw.txt"
    pw.write_bytes(b"s3cret\n")  # used as is, newline included (QEMU, cryptsetup --key-file)
    img = tmp_path / "m.luks"
    r = qimg("create", "-q", "--object", f"secret,id=k,file={pw}", "-f", "luks", "-o", "key-secret=k,iter-time=10",
             str(img), "1M")
    assert r.returncode == 0, r.stderr
    b64 = "secret,id=k,format=base64,data=czNjcmV0Cg=="
    r = qemu_io("--object", b64, "--image-opts", iopts(img, "k"), "-c", "write -P 0x3c 0 4k")
    assert r.returncode == 0 and not r.stderr, r.stderr
    r = subprocess.run([need_cryptsetup(), "open", "--test-passphrase", "--key-file", str(pw), str(img)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_info_imports_no_cryptography(tmp_path, qemu_made):
    img = tmp_path / "v.luks"
    qemu_made("", img)
    code = (f"import sys; from qimg_cli.main import main; sys.argv=['qimg','info',{str(img)!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('cryptography' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stderr.strip().endswith("False"), r.stderr


def test_cryptsetup_partial_sector_key_material(tmp_path, qemu_io, qimg):
    """AES-192 in CBC mode: 96000 bytes of key material, not whole sectors. cryptsetup makes such
    volumes and QEMU aborts on them (an assertion); qimg unlocks the same master key cryptsetup
    shows and reads and writes the volume."""
    img = tmp_path / "c.luks"
    with open(img, "wb") as f:
        f.truncate(4 * MIB)
    r = cryptsetup("luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--cipher",
                   "aes-cbc-plain64", "--key-size", "192", str(img), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    r = qemu_io(*OBJ, "--image-opts", iopts(img), "-c", "read 0 512")
    assert r.returncode != 0 and "Assertion" in r.stderr
    r = cryptsetup("luksDump", "--dump-master-key", str(img), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    hexkey = r.stdout.split("MK dump:", 1)[1]
    master = bytes.fromhex("".join(hexkey.split()[:24]))
    code = f"""
import qimg
from qimg import secrets
secrets.add_object({SECRET!r})
with qimg.open({str(img)!r}, "luks", writable=True, options={{"key-secret": "sec0"}}) as im:
    print(im.driver.master.hex())
    im.pwrite(512, b"abc" * 1000)
with qimg.open({str(img)!r}, "luks", options={{"key-secret": "sec0"}}) as im:
    assert im.pread(512, 3000) == b"abc" * 1000
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == master.hex()
