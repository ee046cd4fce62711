"""The s3 protocol against a real S3 endpoint: the radosgw of the test Ceph cluster
(tests/ceph_cluster.py, the session fixture ``ceph``). No qemu-img speaks S3, so the other side
is AWS's own client (boto3, the plugin's dependency) moving the same bytes, and qemu-img
answering on a local copy of them: images qimg writes into a bucket are downloaded and checked
and compared by qemu-img; images qemu-img made are uploaded and read by qimg, whose answers
(info, map, check, compare, measure) must be qemu-img's on the downloaded copy, the name (and
the disk size: an object's stored bytes) aside. Every test has its own bucket, removed after.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
from conftest import _need

MIB = 1 << 20
#: every format qimg writes (luks gets its secret), with the qemu-img check verdict they support
WRITE_FORMATS = ["raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx", "qed", "qcow", "luks"]
CHECKED = {"qcow2", "vmdk", "vdi", "vhdx", "qed"}
SECRET = ["--object", "secret,id=sec0,data=s3cr3t"]


def qemu(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([_need("qemu-img"), *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def qemu_io(*args: str) -> None:
    p = subprocess.run([_need("qemu-io"), *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


class Bucket:
    """A fresh bucket on the cluster's S3 endpoint and the environment naming it for qimg."""

    def __init__(self, ceph, home) -> None:
        import boto3
        from botocore.config import Config

        self.name = f"qimg-{uuid.uuid4().hex[:12]}"
        self.env = dict(ceph.env(), HOME=str(home))  # no ~/.aws of the machine's user
        self.client = boto3.client(
            "s3", endpoint_url=ceph.s3_endpoint, aws_access_key_id=ceph.s3_access_key,
            aws_secret_access_key=ceph.s3_secret_key, region_name="us-east-1",
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"))
        self.client.create_bucket(Bucket=self.name)

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, path, key: str) -> str:
        self.client.upload_file(str(path), self.name, key)
        return self.url(key)

    def get(self, key: str, path) -> None:
        self.client.download_file(self.name, key, str(path))

    def keys(self) -> list[str]:
        out = self.client.list_objects_v2(Bucket=self.name)
        return [o["Key"] for o in out.get("Contents", [])]

    def uploads(self) -> list[str]:
        return [u["Key"] for u in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])]

    def remove(self) -> None:
        for u in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.name, Key=u["Key"], UploadId=u["UploadId"])
        for key in self.keys():
            self.client.delete_object(Bucket=self.name, Key=key)
        self.client.delete_bucket(Bucket=self.name)


@pytest.fixture
def s3(ceph, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    b = Bucket(ceph, home)
    yield b
    b.remove()


def run(qimg, s3: Bucket, *args: str, env: dict | None = None):
    """qimg's command line (``qimg``: the conftest fixture, which makes a test that also asks for
    ``qemu_img`` differential) in the bucket's environment; ``env`` values None remove a variable."""
    from conftest import QIMG, Run

    e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    e.update(s3.env)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    e["QIMG_COMPAT"] = os.environ.get("QIMG_COMPAT", "7.2")
    p = subprocess.run([*QIMG, *args], capture_output=True, env=e)
    r = Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_line_error(r) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def source_image(path, size: int = 24 * MIB) -> None:
    """A qcow2 with data, a zeroed run, holes and an odd tail (qemu-io writes it)."""
    qemu("create", "-q", "-f", "qcow2", str(path), str(size))
    qemu_io("-c", "write -P 0x5a 0 1M", "-c", "write -P 0x11 3M 5M", "-c", "write -z 9M 1M",
            "-c", f"write -P 0xee {size - 70 * 1024} 70k", str(path))


# -- read: images made by qemu-img, read from the bucket ---------------------------------------
def _norm_info(text: str, url: str, local: str) -> str:
    out = []
    for line in text.replace(url, "NAME").replace(local, "NAME").splitlines():
        if "disk size:" in line:
            continue  # an object stores every byte; a file's disk size is its allocated blocks
        out.append(line.replace("protocol type: s3", "protocol type: file"))
    return "\n".join(out)


def _norm_json(text: str, url: str, local: str):
    def walk(node):
        if isinstance(node, dict):
            if node.get("format") in ("file", "s3") and "filename" in node:  # the protocol's node (10.0)
                node = {k: v for k, v in node.items() if k not in ("format", "format-specific")}
            return {k: walk(v) for k, v in node.items() if k != "actual-size"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return node.replace(url, "NAME").replace(local, "NAME")
        return node

    return walk(json.loads(text))


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vhdx"])
def test_read_commands_as_qemu(s3, qemu_img, tmp_path, fmt, monkeypatch):
    # qimg in-process (cli_support.run_qimg), so that one S3 client serves every command
    from cli_support import run_qimg

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    src = tmp_path / "src.qcow2"
    source_image(src)
    made = tmp_path / f"made.{fmt}"
    assert qemu_img("convert", "-O", fmt, str(src), str(made)).returncode == 0
    url = s3.put(made, f"images/disk.{fmt}")
    local = tmp_path / f"local.{fmt}"
    s3.get(f"images/disk.{fmt}", local)  # written whole: no holes, as the object has none
    for args in (["info"], ["info", "--output=json"], ["map", "--output=json"], ["map"], ["check"],
                 ["check", "--output=json"], ["measure", "-O", "qcow2"], ["compare", str(src)]):
        ours = run_qimg(*args, url)
        theirs = qemu_img(*args, str(local))
        assert ours.returncode == theirs.returncode, (args, ours.stderr, theirs.stderr)
        if "--output=json" in args and args[0] != "map" and theirs.stdout.strip():
            assert _norm_json(ours.stdout, url, str(local)) == _norm_json(theirs.stdout, url, str(local)), args
        else:
            assert _norm_info(ours.stdout, url, str(local)) == _norm_info(theirs.stdout, url, str(local)), args
        assert _norm_info(ours.stderr, url, str(local)).replace("qimg", "qemu-img") == \
            _norm_info(theirs.stderr, url, str(local)), args


def test_convert_from_s3_byte_for_byte(s3, qimg, tmp_path):
    src = tmp_path / "src.qcow2"
    source_image(src, 40 * MIB + 4096)
    url = s3.put(src, "a/src.qcow2")
    ref = tmp_path / "ref.raw"
    qemu("convert", "-O", "raw", str(src), str(ref))
    out = tmp_path / "out.raw"
    r = run(qimg, s3, "convert", "-O", "raw", url, str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()
    # -W (writes as reads finish) and a compressed qcow2 target read the same bytes
    r = run(qimg, s3, "convert", "-W", "-c", "-O", "qcow2", url, str(tmp_path / "c.qcow2"))
    assert r.returncode == 0, r.stderr
    assert qemu("compare", str(ref), str(tmp_path / "c.qcow2"), check=False).returncode == 0


def test_backing_chain_in_bucket(s3, qimg, tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    source_image(base)
    qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    qemu_io("-c", "write -P 0x77 2M 2M", str(top))
    s3.put(base, "chain/base.qcow2")
    url = s3.put(top, "chain/top.qcow2")
    r = run(qimg, s3, "info", "--backing-chain", url)
    assert r.returncode == 0, r.stderr
    assert f"image: {s3.url('chain/base.qcow2')}" in r.stdout
    ref = tmp_path / "ref.raw"
    qemu("convert", "-O", "raw", str(top), str(ref))
    r = run(qimg, s3, "convert", "-O", "raw", url, str(tmp_path / "out.raw"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.raw").read_bytes() == ref.read_bytes()


def test_library_reads(s3, tmp_path, monkeypatch):
    import qimg

    src = tmp_path / "src.qcow2"
    source_image(src)
    url = s3.put(src, "lib.qcow2")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    with qimg.open(url) as img:
        assert img.format == "qcow2"
        qemu("convert", "-O", "raw", str(src), str(src.with_suffix(".raw")))
        want = src.with_suffix(".raw").read_bytes()
        assert img.pread(3 * MIB - 10, 2 * MIB) == want[3 * MIB - 10:5 * MIB - 10]


# -- write: qimg writes into the bucket, qemu-img checks what boto3 downloads ------------------
@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_round_trip(s3, qimg, tmp_path, fmt):
    src = tmp_path / "src.qcow2"
    source_image(src)
    ref = tmp_path / "ref.raw"
    qemu("convert", "-O", "raw", str(src), str(ref))
    key = f"out/disk.{fmt}"
    extra = SECRET + ["-o", "key-secret=sec0,iter-time=10"] if fmt == "luks" else []
    r = run(qimg, s3, "convert", *extra, "-O", fmt, str(src), s3.url(key))
    assert r.returncode == 0, r.stderr
    assert s3.keys() == [key] and s3.uploads() == []
    got = tmp_path / f"got.{fmt}"
    s3.get(key, got)
    if fmt == "luks":
        spec = f"driver=luks,key-secret=sec0,file.filename={got}"
        assert qemu("compare", *SECRET, "--image-opts", spec, f"driver=raw,file.filename={ref}",
                    check=False).returncode == 0
    else:
        assert qemu("compare", "-f", fmt, "-F", "raw", str(got), str(ref), check=False).returncode == 0
        if fmt in CHECKED:
            qemu("check", "-f", fmt, str(got))
    # and back through qimg itself: s3 -> local, byte for byte
    back = tmp_path / "back.raw"
    if fmt == "luks":
        spec = f"driver=luks,key-secret=sec0,file.driver=s3,file.bucket={s3.name},file.key={key}"
        r = run(qimg, s3, "convert", *SECRET, "--image-opts", spec, "-O", "raw", str(back))
    else:
        r = run(qimg, s3, "convert", "-O", "raw", s3.url(key), str(back))
    assert r.returncode == 0, r.stderr
    data, want = back.read_bytes(), ref.read_bytes()
    assert data[:len(want)] == want and not data[len(want):].strip(b"\0")  # vpc: whole CHS geometry


def test_s3_to_s3_and_dd(s3, qimg, tmp_path):
    src = tmp_path / "src.qcow2"
    source_image(src)
    ref = tmp_path / "ref.raw"
    qemu("convert", "-O", "raw", str(src), str(ref))
    url = s3.put(src, "in.qcow2")
    assert run(qimg, s3, "convert", "-O", "vmdk", url, s3.url("copy.vmdk")).returncode == 0
    r = run(qimg, s3, "dd", "-O", "raw", "bs=1M", f"if={s3.url('copy.vmdk')}", f"of={s3.url('dd.raw')}")
    assert r.returncode == 0, r.stderr
    s3.get("dd.raw", tmp_path / "dd.raw")
    assert (tmp_path / "dd.raw").read_bytes() == ref.read_bytes()


def test_create_and_modify(s3, qimg, tmp_path):
    r = run(qimg, s3, "create", "-f", "qcow2", s3.url("new.qcow2"), "1G")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Formatting '{s3.url('new.qcow2')}', fmt=qcow2 ")
    s3.get("new.qcow2", tmp_path / "new.qcow2")
    qemu("check", str(tmp_path / "new.qcow2"))
    assert '"virtual-size": 1073741824' in qemu("info", "--output=json", str(tmp_path / "new.qcow2")).stdout
    # commands that change an image in place: downloaded into the spool, uploaded whole
    assert run(qimg, s3, "resize", s3.url("new.qcow2"), "2G").returncode == 0
    assert run(qimg, s3, "snapshot", "-c", "snap1", s3.url("new.qcow2")).returncode == 0
    s3.get("new.qcow2", tmp_path / "new2.qcow2")
    qemu("check", str(tmp_path / "new2.qcow2"))
    assert "snap1" in qemu("snapshot", "-l", str(tmp_path / "new2.qcow2")).stdout
    assert '"virtual-size": 2147483648' in qemu("info", "--output=json", str(tmp_path / "new2.qcow2")).stdout
    r = run(qimg, s3, "create", "-f", "raw", s3.url("zero.raw"), "3M")
    assert r.returncode == 0, r.stderr
    s3.get("zero.raw", tmp_path / "zero.raw")
    assert (tmp_path / "zero.raw").read_bytes() == bytes(3 * MIB)
    assert s3.uploads() == []


def test_failed_convert_stores_nothing(s3, qimg, tmp_path):
    # a read error injected (blkdebug) past the first part: the upload under way is aborted
    raw, src = tmp_path / "src.raw", tmp_path / "src.qcow2"
    raw.write_bytes(os.urandom(24 * MIB))
    qemu("convert", "-O", "qcow2", str(raw), str(src))  # host sector 40960 (20 MiB) holds data
    spec = {"driver": "qcow2", "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": str(src)},
                                        "inject-error": [{"event": "read_aio", "errno": "5", "sector": "40960"}]}}
    for fmt in ("raw", "qcow2"):
        r = run(qimg, s3, "convert", "-O", fmt, "json:" + json.dumps(spec), s3.url(f"broken.{fmt}"))
        assert "error while reading at byte" in one_line_error(r)
    assert s3.keys() == [] and s3.uploads() == []


# -- names and options ---------------------------------------------------------------------------
def test_option_forms_and_profiles(s3, qimg, tmp_path, ceph):
    src = tmp_path / "src.qcow2"
    source_image(src)
    s3.put(src, "d/x.qcow2")
    spec = f"driver=qcow2,file.driver=s3,file.bucket={s3.name},file.key=d/x.qcow2"
    r = run(qimg, s3, "info", "--image-opts", spec)
    assert r.returncode == 0 and f"image: {s3.url('d/x.qcow2')}" in r.stdout, r.stderr
    # an endpoint given as an option changes what is reached: the name is json:{...}
    opts = {"driver": "qcow2", "file": {"driver": "s3", "bucket": s3.name, "key": "d/x.qcow2",
                                        "endpoint-url": ceph.s3_endpoint, "addressing-style": "path"}}
    r = run(qimg, s3, "info", "--output=json", "json:" + json.dumps(opts), env={"AWS_ENDPOINT_URL": None})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["filename"].startswith("json:{")
    # a profile from ~/.aws/config and ~/.aws/credentials, endpoint included
    aws = tmp_path / "home" / ".aws"
    aws.mkdir()
    (aws / "config").write_text(f"[profile lab]\nregion = us-east-1\nendpoint_url = {ceph.s3_endpoint}\n"
                                "s3 =\n    addressing_style = path\n")
    (aws / "credentials").write_text(f"[lab]\naws_access_key_id = {ceph.s3_access_key}\n"
                                     f"aws_secret_access_key = {ceph.s3_secret_key}\n")
    bare = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_ENDPOINT_URL": None}
    r = run(qimg, s3, "info", s3.url("d/x.qcow2"), env=dict(bare, AWS_PROFILE="lab"))
    assert r.returncode == 0 and "file format: qcow2" in r.stdout, r.stderr
    r = run(qimg, s3, "info", "--image-opts", spec + ",file.profile=lab", env=bare)
    assert r.returncode == 0 and "file format: qcow2" in r.stdout, r.stderr
    r = run(qimg, s3, "info", "--image-opts", spec + ",file.profile=nosuch", env=bare)
    assert "S3: the AWS profile 'nosuch' is not in the AWS config files" in one_line_error(r)


# -- errors: one line, non-zero, bounded -----------------------------------------------------------
@pytest.fixture(scope="session")
def other_user(ceph):
    """A second S3 user of the cluster (owns nothing, is granted nothing)."""
    uid = f"qimg-other-{os.getpid()}"
    access, secret = f"other{os.getpid()}", "othersecret"
    p = subprocess.run(["radosgw-admin", "-c", ceph.conf, "user", "create", f"--uid={uid}", "--display-name=other",
                        f"--access-key={access}", f"--secret-key={secret}"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


def test_errors(s3, qimg, tmp_path, other_user):
    src = tmp_path / "src.qcow2"
    source_image(src)
    url = s3.put(src, "e.qcow2")
    cases = [
        (["info", f"s3://nobucket-{uuid.uuid4().hex[:8]}/k"], {}, "bucket '"),
        (["info", s3.url("missing")], {}, f"S3 object 'missing' does not exist in bucket '{s3.name}'"),
        (["convert", "-O", "raw", s3.url("missing"), str(tmp_path / "o")], {}, "does not exist"),
        (["info", "s3://"], {}, "names no bucket"),
        (["info", f"s3://{s3.name}"], {}, "names no object key"),
        (["info", url], other_user, "S3 access denied"),
        (["info", url], {"AWS_SECRET_ACCESS_KEY": "wrong"}, "S3 refused the credentials (SignatureDoesNotMatch)"),
        (["info", url], {"AWS_ACCESS_KEY_ID": "nosuchkey"}, "S3 refused the credentials (InvalidAccessKeyId)"),
        (["convert", "-O", "raw", str(src), s3.url("w.raw")], other_user, "S3 access denied"),
        (["create", "-f", "qcow2", s3.url("w.qcow2"), "1M"], other_user, "S3 access denied"),
    ]
    for args, env, want in cases:
        line = one_line_error(run(qimg, s3, *args, env=env))
        assert want in line, (args, line)
    assert s3.keys() == ["e.qcow2"] and s3.uploads() == []


def test_public_read_bucket_refuses_writes(s3, qimg, tmp_path, other_user):
    src = tmp_path / "src.qcow2"
    source_image(src)
    url = s3.put(src, "p.qcow2")
    s3.client.put_bucket_acl(Bucket=s3.name, ACL="public-read")
    s3.client.put_object_acl(Bucket=s3.name, Key="p.qcow2", ACL="public-read")
    assert run(qimg, s3, "info", url, env=other_user).returncode == 0  # reads are allowed
    for args in (["convert", "-O", "qcow2", str(src), s3.url("w.qcow2")], ["resize", url, "8M"],
                 ["create", "-f", "raw", s3.url("w.raw"), "1M"]):
        line = one_line_error(run(qimg, s3, *args, env=other_user))
        assert "S3 access denied" in line, (args, line)
    assert s3.keys() == ["p.qcow2"] and s3.uploads() == []


def test_unreachable_endpoint_is_bounded(s3, qimg):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are taken (the backlog) and never answered
    try:
        spec = f"driver=raw,file.driver=s3,file.bucket={s3.name},file.key=k,file.timeout=1,file.retries=1"
        line = one_line_error(run(qimg, s3, "info", "--image-opts", spec,
                                  env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}))
        assert "S3 endpoint unreachable" in line, line
        line = one_line_error(run(qimg, s3, "info", "--image-opts", spec,
                                  env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}))
        assert "S3 endpoint did not answer in time" in line, line
    finally:
        silent.close()


def test_missing_botocore_is_one_line(s3, tmp_path):
    # the plugin installed without its dependency: the command says what to install
    code = ("import sys; sys.modules['botocore'] = None; sys.modules['botocore.session'] = None; "
            "from qimg_cli.main import main; sys.argv[0] = 'qimg'; main()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env)
    p = subprocess.run([sys.executable, "-c", code, "info", s3.url("x.qcow2")], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"qimg: Could not open '{s3.url('x.qcow2')}': The s3 protocol needs botocore (pip install botocore, or "
        "install the qimg-s3 distribution with its dependencies)"]
