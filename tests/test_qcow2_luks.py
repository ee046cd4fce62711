"""qcow2 encryption (LUKS and legacy AES) against qemu-img/qemu-io 7.2, both directions: images
QEMU writes read back identical in qimg, images and data qimg writes read back in QEMU, the
same layout, options and error messages."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import as_qemu

SECRET = "secret,id=sec0,data=123456"
OBJ = ["--object", SECRET]
MIB = 1 << 20


def iopts(path, secret: str | None = "sec0", **extra: str) -> str:
    s = f"driver=qcow2,file.filename={path}"
    if secret:
        s += f",encrypt.key-secret={secret}"
    for k, v in extra.items():
        s += f",{k.replace('_', '-')}={v}"
    return s


def qemu_create(qemu_img, path, opts: str, size: str = "4M", fmt: str = "luks"):
    """qemu-img create of an encrypted image. QEMU's PBKDF benchmark sometimes fails under load
    ("Unable to get accurate CPU usage"): retried."""
    o = f"encrypt.format={fmt},encrypt.key-secret=sec0"
    if fmt == "luks":
        o += ",encrypt.iter-time=50"
    if opts:
        o += "," + opts
    for _ in range(20):
        r = qemu_img("create", "-q", *OBJ, "-f", "qcow2", "-o", o, str(path), size)
        if "accurate CPU usage" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    return r


#: option sets of the QEMU-made images (QEMU's create is slow and flaky under load: each is made
#: once per test process, then copied); they also cover the header variants from QEMU's side
QEMU_MADE = ["",
             "cluster_size=4096,encrypt.cipher-alg=aes-128,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha1,compat=0.10",
             "preallocation=metadata,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,"
             "encrypt.hash-alg=sha512"]


@pytest.fixture(scope="module")
def qemu_made(tmp_path_factory):
    """``get(opts, dest)``: copy a pristine QEMU-made LUKS image with those options to ``dest``."""
    d = tmp_path_factory.mktemp("qemu_made")
    made: dict[str, object] = {}

    def get(opts: str, dest) -> None:
        if opts not in made:
            path = d / f"{len(made)}.qcow2"
            _qemu_create_direct(path, "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=50"
                                + ("," + opts if opts else ""))
            made[opts] = path
        dest.write_bytes(made[opts].read_bytes())

    return get


def qimg_create(qimg, path, opts: str, size: str = "4M", fmt: str = "luks"):
    o = f"encrypt.format={fmt},encrypt.key-secret=sec0"
    if fmt == "luks":
        o += ",encrypt.iter-time=10"
    if opts:
        o += "," + opts
    r = qimg("create", "-q", *OBJ, "-f", "qcow2", "-o", o, str(path), size)
    assert r.returncode == 0, r.stderr
    return r


def to_raw(tool, path, out) -> bytes:
    r = tool("convert", *OBJ, "-O", "raw", "--image-opts", iopts(path), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def qemu_io_ok(qemu_io, path, *cmds: str) -> str:
    args = []
    for c in cmds:
        args += ["-c", c]
    r = qemu_io(*OBJ, "--image-opts", iopts(path), *args)
    assert r.returncode == 0 and "fail" not in r.stdout.lower() and "fail" not in r.stderr.lower(), \
        r.stdout + r.stderr
    return r.stdout


def crypto_ext(path) -> tuple[int, int] | None:
    """(offset, length) of the crypto header extension, read straight from the file."""
    d = open(path, "rb").read(65536)
    version = struct.unpack(">I", d[4:8])[0]
    off = struct.unpack(">I", d[100:104])[0] if version == 3 else 72
    while off + 8 <= len(d):
        t, n = struct.unpack(">II", d[off : off + 8])
        if t == 0:
            return None
        if t == 0x0537BE77:
            return struct.unpack(">QQ", d[off + 8 : off + 24])
        off += 8 + (n + 7) // 8 * 8
    return None


WRITES = ["write -P 0x11 0 64k", "write -P 0x22 1000 3000", "write -P 0x33 1M 70000",
          "write -P 0x44 3145735 100", "write -z 1200k 64k"]

VARIANTS = [
    "",
    "encrypt.cipher-alg=aes-128,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha1",
    "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256",
    "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.hash-alg=sha512",
    "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=md5",
    "encrypt.cipher-mode=ecb,encrypt.cipher-alg=aes-128",
    "encrypt.cipher-mode=ctr",
]


# ---------------------------------------------------------------------------- ciphers
def test_sector_cipher_matches_per_sector_cryptography():
    """The batched modes equal textbook per-sector cipher calls (tweak/IV = sector number)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from qimg.cipher import SectorCipher

    data = os.urandom(512 * 9)
    first = (1 << 32) - 4  # crosses the 32-bit wrap of "plain"
    for mode, ivgen, klen in (("xts", "plain64", 64), ("xts", "plain64", 32), ("cbc", "plain", 16),
                              ("cbc", "plain64", 24), ("cbc", "essiv", 32), ("ctr", "plain64", 32),
                              ("ecb", None, 16)):
        key = os.urandom(klen)
        sc = SectorCipher(key, mode, ivgen, "sha256" if ivgen == "essiv" else None)
        exp = bytearray()
        for i in range(9):
            s = first + i
            iv = ((s & 0xFFFFFFFF) if ivgen == "plain" else s).to_bytes(8, "little") + bytes(8)
            if ivgen == "essiv":
                import hashlib

                salt = hashlib.sha256(key).digest()
                iv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update(iv)
            m = modes.ECB() if mode == "ecb" else {"xts": modes.XTS, "cbc": modes.CBC, "ctr": modes.CTR}[mode](iv)
            exp += Cipher(algorithms.AES(key), m).encryptor().update(data[i * 512 : (i + 1) * 512])
        assert sc.encrypt(first, data) == bytes(exp), (mode, ivgen, klen)
        assert sc.decrypt(first, bytes(exp)) == data


def test_luks_area_unlocks_and_rejects_wrong_passphrase():
    from qimg import luks
    from qimg.errors import QimgError

    p = luks.CreateParams.from_options({"encrypt.iter-time": 1, "encrypt.cipher-mode": "cbc",
                                        "encrypt.ivgen-alg": "essiv"}, "encrypt.")
    area, master = luks.create(p, b"pw")
    assert len(area) == luks.payload_bytes(p) == 1052672
    h = luks.read_header(area)
    assert (h.cipher_name, h.cipher_mode, h.hash_spec, h.key_bytes) == ("aes", "cbc-essiv:sha256", "sha256", 32)
    assert luks.unlock(h, lambda o, n: area[o : o + n], b"pw") == master
    with pytest.raises(QimgError, match="Invalid password, cannot unlock any keyslot"):
        luks.unlock(h, lambda o, n: area[o : o + n], b"px")


# ---------------------------------------------------------------------------- QEMU -> qimg
# QEMU's create is slow and flaky (its PBKDF benchmark): QEMU-made headers for three ciphers here;
# every cipher is tested both ways on qimg-made images below (QEMU writes, qimg reads, and back)
@pytest.mark.parametrize("variant", QEMU_MADE)
def test_qemu_written_data_reads_identical(variant, tmp_path, qemu_img, qemu_io, qimg, qemu_made):
    img = tmp_path / "q.qcow2"
    qemu_made(variant, img)
    qemu_io_ok(qemu_io, img, *WRITES)
    theirs = to_raw(qemu_img, img, tmp_path / "theirs.raw")
    mine = to_raw(qimg, img, tmp_path / "mine.raw")
    assert mine == theirs
    assert theirs[1000:4000] == b"\x22" * 3000 and theirs[MIB : MIB + 100] == b"\x33" * 100
    # info decodes the same header without the key
    for out in ("human", "json"):
        exp, got = qemu_img("info", "--output=" + out, str(img)), qimg("info", "--output=" + out, str(img))
        assert (got.returncode, got.stdout) == (exp.returncode, exp.stdout)


def test_legacy_aes_both_directions(tmp_path, qemu_img, qemu_io, qimg):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_create(qemu_img, a, "", fmt="aes")
    qemu_io_ok(qemu_io, a, *WRITES)
    assert to_raw(qimg, a, tmp_path / "m.raw") == to_raw(qemu_img, a, tmp_path / "t.raw")
    # qimg creates what qemu-img creates (same bytes: AES has no random header)
    r = qimg("create", *OBJ, "-f", "qcow2", "-o", "encryption=on,encrypt.key-secret=sec0", str(b), "4M")
    assert r.returncode == 0, r.stderr
    c = tmp_path / "c.qcow2"
    exp = qemu_img("create", *OBJ, "-f", "qcow2", "-o", "encryption=on,encrypt.key-secret=sec0", str(c), "4M")
    assert r.stdout.replace(str(b), str(c)) == exp.stdout
    assert b.read_bytes() == c.read_bytes()
    _qimg_writes(b)
    _check_qimg_writes(qemu_img, qemu_io, b, tmp_path)


# ---------------------------------------------------------------------------- qimg -> QEMU
def _qimg_writes(path) -> None:
    """Unaligned writes through the library (copy-on-write of partial clusters and sectors)."""
    code = f"""
import qimg
from qimg import secrets
secrets.add_object({SECRET!r})
with qimg.open({str(path)!r}, "qcow2", writable=True, options={{"encrypt.key-secret": "sec0"}}) as img:
    img.pwrite(1000, b"\\x22" * 3000)
    img.pwrite(1 << 20, b"\\x33" * 70000)
    img.pwrite(3145735, b"\\x44" * 100)
    img.pwrite(1010, b"\\x55" * 7)
    img.pwrite((1 << 20) + 600, b"\\x66" * 5)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _check_qimg_writes(qemu_img, qemu_io, path, tmp_path) -> None:
    qemu_io_ok(qemu_io, path, "read -P 0 0 1000", "read -P 0x22 1000 10", "read -P 0x55 1010 7",
               "read -P 0x22 1017 2983", "read -P 0 4000 61536", "read -P 0x33 1M 600", "read -P 0x66 1049176 5",
               "read -P 0x33 1049181 69395", "read -P 0 1118576 100", "read -P 0 3145728 7",
               "read -P 0x44 3145735 100", "read -P 0 3145835 100")
    r = qemu_img("check", *OBJ, "--image-opts", iopts(path))
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("variant", VARIANTS + ["extended_l2=on,cluster_size=32k", "compat=0.10"])
def test_qimg_created_and_written_reads_in_qemu(variant, tmp_path, qemu_img, qemu_io, qimg):
    img = tmp_path / "m.qcow2"
    qimg_create(qimg, img, variant)
    _qimg_writes(img)
    _check_qimg_writes(qemu_img, qemu_io, img, tmp_path)
    # QEMU writes into qimg's image, qimg reads it back as QEMU does
    qemu_io_ok(qemu_io, img, "write -P 0x77 2M 5000")
    assert to_raw(qimg, img, tmp_path / "m.raw") == to_raw(qemu_img, img, tmp_path / "t.raw")


def _masked_info(qemu_img, path) -> dict:
    d = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
    e = d["format-specific"]["data"]["encrypt"]
    e["uuid"] = e["master-key-iters"] = None
    for s in e["slots"]:
        if "iters" in s:
            s["iters"] = None
    d.pop("filename"), d.pop("actual-size", None)
    for child in d.get("children", ()):  # qemu-img 10.0's child nodes: the file's name and use
        child["info"].pop("filename"), child["info"].pop("actual-size", None)
    return d


@pytest.mark.parametrize("opts", QEMU_MADE)
def test_layout_as_qemu(opts, tmp_path, qemu_img, qimg, qemu_made):
    """Same encrypt block, the LUKS header in the same clusters, same refcounts and file end."""
    a, b = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    qemu_made(opts, a)
    qimg_create(qimg, b, opts)
    assert _masked_info(qemu_img, b) == _masked_info(qemu_img, a)
    assert crypto_ext(b) == crypto_ext(a)
    assert os.path.getsize(b) == os.path.getsize(a)
    ca = qemu_img("check", "--output=json", *OBJ, "--image-opts", iopts(a))
    cb = qemu_img("check", "--output=json", *OBJ, "--image-opts", iopts(b))
    assert cb.returncode == ca.returncode == 0
    ja, jb = json.loads(ca.stdout), json.loads(cb.stdout)
    ja.pop("filename"), jb.pop("filename")
    assert jb == ja


def test_create_output_line_as_qemu(tmp_path, qemu_img, qimg):
    o = ("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,"
         "encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1,encrypt.iter-time=10")
    # qemu-img prints the line before its PBKDF benchmark (which may fail under load)
    exp = qemu_img("create", *OBJ, "-f", "qcow2", "-o", o, str(tmp_path / "a.qcow2"), "1M")
    got = qimg("create", *OBJ, "-f", "qcow2", "-o", o, str(tmp_path / "a.qcow2"), "1M")
    assert got.returncode == 0 and got.stdout == exp.stdout


# ---------------------------------------------------------------------------- errors as qemu-img
@pytest.mark.parametrize("opts", [
    "encrypt.format=luks",
    "encrypt.key-secret=sec0",
    "encrypt.cipher-alg=aes-128",
    "encrypt.format=luks,encrypt.key-secret=sec9",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=foo",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=foo,encrypt.cipher-alg=bar",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.ivgen-hash-alg=foo,encrypt.cipher-mode=bar",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.ivgen-alg=foo",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=foo,cluster_size=1000",
    "encrypt.format=luks,encrypt.key-secret=sec9,cluster_size=1000",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha1",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
    "encrypt.ivgen-hash-alg=sha512",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=cast5-128",
    "encryption=on,encrypt.format=luks,encrypt.key-secret=sec0",
    "encrypt.format=aes,encrypt.key-secret=sec0,encrypt.hash-alg=sha1,encrypt.cipher-alg=aes-128",
    "encrypt.format=aes,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.ivgen-alg=plain",
    "encrypt.format=aes,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,encrypt.ivgen-hash-alg=sha1",
    "encrypt.format=aes,encrypt.key-secret=sec9",
])
def test_create_errors_as_qemu(opts, tmp_path, qemu_img, qimg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = qemu_img("create", *OBJ, "-f", "qcow2", "-o", opts, "e.qcow2", "1M")
    got = qimg("create", *OBJ, "-f", "qcow2", "-o", opts, "e.qcow2", "1M")
    assert (got.returncode, as_qemu(got.stderr)) == (exp.returncode, exp.stderr)
    assert exp.returncode == 1 and not (tmp_path / "e.qcow2").exists()


def _qemu_create_direct(path, opts: str) -> None:
    import shutil

    exe = shutil.which("qemu-img")
    if exe is None:
        pytest.skip("qemu-img is not installed")
    for _ in range(20):
        r = subprocess.run([exe, "create", "-q", *OBJ, "-f", "qcow2", "-o", opts, str(path), "4M"],
                           capture_output=True, text=True)
        if "accurate CPU usage" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def enc_images(tmp_path_factory, qemu_made):
    """One QEMU-made LUKS image with data (a.qcow2) and a plain one (p.qcow2), shared read-only."""
    d = tmp_path_factory.mktemp("enc")
    qemu_made("", d / "a.qcow2")
    r = subprocess.run(["qemu-io", *OBJ, "--image-opts", iopts(d / "a.qcow2"), "-c", "write -P 0x11 0 64k"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "p.qcow2"), "4M"])
    assert r.returncode == 0
    return d


@pytest.mark.parametrize("cmd", [
    "info a.qcow2", "map a.qcow2", "check a.qcow2", "convert -O raw a.qcow2 o.raw", "compare a.qcow2 a.qcow2",
    "snapshot -l a.qcow2", "measure -O qcow2 a.qcow2", "resize a.qcow2 8M", "amend -o lazy_refcounts=on a.qcow2",
    "dd if=a.qcow2 of=o.raw -O raw",
    f"info --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=nope --output=json",
    f"convert -O raw --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=nope o.raw",
    "convert -O raw --object secret,id=sec0,data=bad --image-opts "
    "driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0 o.raw",
    f"convert -O raw --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.format=aes,"
    "encrypt.key-secret=sec0 o.raw",
    f"convert -O raw --object {SECRET} --image-opts driver=qcow2,file.filename=p.qcow2,encrypt.format=luks o.raw",
    f"convert -O raw --object {SECRET} --image-opts driver=qcow2,file.filename=p.qcow2,encrypt.key-secret=sec0 "
    "o.raw",
    f"compare --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0 "
    "driver=qcow2,file.filename=p.qcow2",
    f"compare --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0 "
    "driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0",
    f"map --output=json --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0",
    f"map --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0",
    f"check --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0",
    f"measure -O qcow2 --object {SECRET} --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0",
    f"convert -c -O qcow2 --object {SECRET} -o encrypt.format=luks,encrypt.key-secret=sec0 p.qcow2 o.qcow2",
])
def test_commands_as_qemu(cmd, enc_images, qemu_img, qimg, monkeypatch):
    monkeypatch.chdir(enc_images)
    args = cmd.split()
    before = (enc_images / "a.qcow2").read_bytes()
    exp = qemu_img(*args)
    for f in ("o.raw", "o.qcow2"):
        if os.path.exists(f):
            os.unlink(f)
    got = qimg(*args)
    for f in ("o.raw", "o.qcow2"):
        if os.path.exists(f):
            os.unlink(f)
    assert (enc_images / "a.qcow2").read_bytes() == before
    if "info" in args and "--output=json" in args:
        # qemu-img names an --image-opts image by its json: description (not encryption's business)
        exp_d, got_d = json.loads(exp.stdout), json.loads(got.stdout)
        exp_d.pop("filename"), got_d.pop("filename")
        assert (got.returncode, got_d) == (exp.returncode, exp_d)
        return
    assert (got.returncode, as_qemu(got.stdout), as_qemu(got.stderr)) == (exp.returncode, exp.stdout, exp.stderr)


# ---------------------------------------------------------------------------- convert both ways
def test_convert_roundtrip(tmp_path, qemu_img, qimg):
    src = tmp_path / "src.raw"
    data = bytearray(os.urandom(3 * MIB))
    data[MIB : 2 * MIB] = bytes(MIB)
    src.write_bytes(bytes(data))
    enc = tmp_path / "enc.qcow2"
    r = qimg("convert", *OBJ, "-O", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
             str(src), str(enc))
    assert r.returncode == 0, r.stderr
    # QEMU reads qimg's image; the zero MiB was not written (not allocated)
    r = qemu_img("compare", *OBJ, "--image-opts", iopts(enc), f"driver=raw,file.filename={src}")
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(qemu_img("map", "--output=json", *OBJ, "--image-opts", iopts(enc)).stdout)
    assert [(e["start"], e["data"]) for e in m] == [(0, True), (MIB, False), (2 * MIB, True)]
    # and back: qimg decrypts to plain, compare agrees with qemu-img
    back = tmp_path / "back.qcow2"
    r = qimg("convert", *OBJ, "-O", "qcow2", "--image-opts", iopts(enc), str(back))
    assert r.returncode == 0, r.stderr
    assert qemu_img("compare", str(back), str(src)).returncode == 0
    cmp_args = ["compare", *OBJ, "--image-opts", iopts(enc), f"driver=raw,file.filename={src}"]
    assert qimg(*cmp_args).returncode == 0
    data[5] ^= 1
    src.write_bytes(bytes(data))
    exp, got = qemu_img(*cmp_args), qimg(*cmp_args)
    assert (got.returncode, got.stdout) == (exp.returncode, exp.stdout) and exp.returncode == 1


def test_measure_luks_as_qemu(tmp_path, qemu_img, qimg):
    for o in ("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128,cluster_size=4k",
              "encrypt.format=luks"):
        args = ["measure", *OBJ, "-O", "qcow2", "-o", o, "--size", "3M"]
        for _ in range(20):
            exp = qemu_img(*args)
            if "accurate CPU usage" not in exp.stderr:
                break
        got = qimg(*args)
        assert (got.returncode, got.stdout, as_qemu(got.stderr)) == (exp.returncode, exp.stdout, exp.stderr)


def test_info_of_encrypted_image_imports_no_cryptography(enc_images):
    img = enc_images / "a.qcow2"
    code = ("import sys\nfrom qimg_cli.main import main\nsys.argv[0] = 'qimg'\ntry:\n    main()\n"
            "finally:\n    print('CRYPTO' if any(m.startswith('cryptography') for m in sys.modules) else 'CLEAN')")
    r = subprocess.run([sys.executable, "-c", code, "info", str(img)], capture_output=True, text=True)
    assert "encrypted: yes" in r.stdout and r.stdout.rstrip().endswith("CLEAN"), r.stdout + r.stderr


# ---------------------------------------------------------------------------- amend key slots
AMEND_STEPS = [  # (-o options, key-secret to open with, --force)
    ("encrypt.state=active", "sec0", False),
    ("encrypt.state=inactive,encrypt.new-secret=sec0", "sec0", False),
    ("encrypt.state=inactive", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec0,encrypt.keyslot=8", "sec0", False),
    ("encrypt.new-secret=sec0", "sec0", False),
    ("encrypt.state=foo", "sec0", False),
    ("encrypt.state=inactive,encrypt.old-secret=sec0", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec1,encrypt.old-secret=sec2", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec9", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec2,encrypt.keyslot=1,encrypt.iter-time=10", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec2,encrypt.keyslot=1,encrypt.iter-time=10", "sec1", True),
    ("encrypt.state=inactive,encrypt.keyslot=3", "sec0", False),
    ("encrypt.state=inactive,encrypt.old-secret=sec1", "sec0", False),
    ("encrypt.state=inactive,encrypt.old-secret=sec1,encrypt.keyslot=1", "sec0", False),
    ("encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10,lazy_refcounts=on", "sec2", False),
    ("encrypt.state=inactive,encrypt.old-secret=sec0,encrypt.keyslot=0", "sec2", False),
    ("encrypt.state=inactive,encrypt.old-secret=sec2", "sec1", False),
    ("encrypt.state=inactive,encrypt.keyslot=2", "sec1", False),
]
SECRETS = ["--object", SECRET, "--object", "secret,id=sec1,data=abc", "--object", "secret,id=sec2,data=zzz"]


def _active_slots(qemu_img, path) -> list[bool]:
    d = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
    return [s["active"] for s in d["format-specific"]["data"]["encrypt"]["slots"]]


def test_amend_keyslots_as_qemu(tmp_path, qemu_img, qemu_io, qimg):
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    qimg_create(qimg, q, "")
    qemu_io_ok(qemu_io, q, "write -P 0x5a 0 64k")
    m.write_bytes(q.read_bytes())
    for opts, key, force in AMEND_STEPS:
        args = ["amend", *SECRETS, "-o", opts, *(["--force"] if force else [])]
        for _ in range(20):  # QEMU's PBKDF benchmark may give up under load
            exp = qemu_img(*args, "--image-opts", iopts(q, key))
            if "accurate CPU usage" not in exp.stderr:
                break
        got = qimg(*args, "--image-opts", iopts(m, key))
        assert (got.returncode, as_qemu(got.stderr).replace(str(m), str(q))) == (exp.returncode, exp.stderr), opts
        assert _active_slots(qemu_img, m) == _active_slots(qemu_img, q), opts
    # the slot qimg wrote last opens in QEMU (slot 2: sec1; sec0 and sec2 were erased)
    assert _active_slots(qemu_img, m) == [False, False, True] + [False] * 5
    r = qemu_io(*SECRETS, "--image-opts", iopts(m, "sec1"), "-c", "read -P 0x5a 0 64k")
    assert r.returncode == 0 and "fail" not in r.stdout.lower(), r.stdout + r.stderr
    r = qemu_io(*SECRETS, "--image-opts", iopts(m, "sec0"), "-c", "read 0 512")
    assert "Invalid password, cannot unlock any keyslot" in r.stderr
    assert json.loads(qemu_img("info", "--output=json", str(m)).stdout)["format-specific"]["data"]["lazy-refcounts"]


def test_library_refuses_compressed_writes_to_encrypted_image(tmp_path, qimg):
    img = tmp_path / "m.qcow2"
    qimg_create(qimg, img, "", size="1M")
    code = f"""
import qimg
from qimg import secrets
from qimg.errors import QimgError
secrets.add_object({SECRET!r})
with qimg.open({str(img)!r}, "qcow2", writable=True, options={{"encrypt.key-secret": "sec0"}}) as img:
    try:
        img.driver.write_compressed(0, memoryview(bytes(65536)))
    except QimgError as e:
        print(e.message)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout == "Compression and encryption not supported at the same time\n", r.stderr


def test_secret_from_file_and_base64(tmp_path, qimg, qemu_io):
    pw = tmp_path / "pw.txt"
    pw.write_bytes(b"s3cret\n")  # used as is, newline included (QEMU)
    img = tmp_path / "m.qcow2"
    r = qimg("create", "-q", "--object", f"secret,id=k,file={pw}", "-f", "qcow2", "-o",
             "encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10", str(img), "1M")
    assert r.returncode == 0, r.stderr
    b64 = "secret,id=k,format=base64,data=czNjcmV0Cg=="
    r = qemu_io("--object", b64, "--image-opts", iopts(img, "k"), "-c", "write -P 0x3c 0 4k")
    assert r.returncode == 0 and not r.stderr, r.stderr
    r = qimg("compare", "--object", f"secret,id=k,file={pw}", "--object", "secret,id=j,data=s3cret",
             "--image-opts", iopts(img, "k"), iopts(img, "j"))
    assert (r.returncode, r.stderr) == (2, f"qimg: Could not open '{iopts(img, 'j')}': Invalid password, "
                                           "cannot unlock any keyslot\n")
    r = qimg("map", "--output=json", "--object", b64, "--image-opts", iopts(img, "k"))
    assert r.returncode == 0 and json.loads(r.stdout)[0] == {"start": 0, "length": 65536, "depth": 0,
                                                              "present": True, "zero": False, "data": True}


def test_encrypted_backing_file(tmp_path, qemu_img, qemu_io, qimg, monkeypatch):
    """A plain overlay over an encrypted image: the key comes as ``backing.encrypt.key-secret``."""
    monkeypatch.chdir(tmp_path)
    qimg_create(qimg, "base.qcow2", "", size="1M")
    qemu_io_ok(qemu_io, "base.qcow2", "write -P 0x21 0 128k")
    assert qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2",
                    "1M").returncode == 0
    r = qemu_io("-c", "write -P 0x43 64k 4k", "top.qcow2")  # top is plain, but opens its backing
    assert "required for cipher" in r.stderr
    for args in (["convert", "-O", "raw", "top.qcow2", "o.raw"],
                 ["convert", *OBJ, "-O", "raw", "--image-opts",
                  "driver=qcow2,file.filename=top.qcow2,backing.encrypt.key-secret=sec0", "o.raw"]):
        exp = qemu_img(*args)
        theirs = open("o.raw", "rb").read() if exp.returncode == 0 else None
        got = qimg(*args)
        mine = open("o.raw", "rb").read() if got.returncode == 0 else None
        assert (got.returncode, as_qemu(got.stderr), mine) == (exp.returncode, exp.stderr, theirs)
    assert theirs == b"\x21" * 131072 + bytes((1 << 20) - 131072)


def _corrupt(path, what: str) -> None:
    d = bytearray(path.read_bytes())
    hlen = struct.unpack(">I", d[100:104])[0]
    assert struct.unpack(">I", d[hlen : hlen + 4])[0] == 0x0537BE77
    off = struct.unpack(">Q", d[hlen + 8 : hlen + 16])[0]
    slot = off + 208
    if what == "no-ext":
        d[hlen : hlen + 4] = struct.pack(">I", 0x12345678)
    elif what == "magic":
        d[off : off + 4] = b"XXXX"
    elif what == "version":
        d[off + 6 : off + 8] = b"\0\2"
    elif what == "key-bytes":
        d[off + 108 : off + 112] = struct.pack(">I", 512000)
    elif what == "stripes":
        d[slot + 44 : slot + 48] = struct.pack(">I", 3999)
    elif what == "state":
        d[slot + 48 : slot + 52] = struct.pack(">I", 7)
    elif what == "overlap":
        d[slot + 48 + 40 : slot + 48 + 44] = struct.pack(">I", 100)  # slot 1 inside slot 0
    elif what == "header":
        d[slot + 40 : slot + 44] = struct.pack(">I", 1)
    path.write_bytes(bytes(d))


@pytest.mark.parametrize("what", ["no-ext", "magic", "version", "key-bytes", "stripes", "state", "overlap",
                                  "header"])
def test_damaged_luks_header_as_qemu(what, tmp_path, qemu_img, qimg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qimg_create(qimg, tmp_path / "d.qcow2", "", size="1M")
    _corrupt(tmp_path / "d.qcow2", what)
    cmds = [["convert", "-O", "raw", "d.qcow2", "o.raw"],
            ["convert", *OBJ, "-O", "raw", "--image-opts", iopts("d.qcow2"), "o.raw"]]
    if what != "no-ext":  # qemu-img info crashes on a missing crypto header extension
        cmds.append(["info", "d.qcow2"])
    for args in cmds:
        exp, got = qemu_img(*args), qimg(*args)
        assert (got.returncode, as_qemu(got.stderr)) == (exp.returncode, exp.stderr), args
        assert exp.returncode == 1


@pytest.mark.parametrize("opts", ["encrypt.format=luks", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=x",
                                  "encrypt.format=aes,encrypt.key-secret=sec0,encrypt.hash-alg=sha1",
                                  "encrypt.format=luks,encrypt.key-secret=sec9", "compat=foo"])
def test_convert_create_errors_as_qemu(opts, tmp_path, qemu_img, qimg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.raw").write_bytes(bytes(65536))
    args = ["convert", *OBJ, "-O", "qcow2", "-o", opts, "s.raw", "t.qcow2"]
    exp = qemu_img(*args)
    got = qimg(*args)
    assert (got.returncode, as_qemu(got.stderr)) == (exp.returncode, exp.stderr)
    assert exp.returncode == 1 and not (tmp_path / "t.qcow2").exists()
