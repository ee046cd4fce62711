"""NBD over TLS against real servers: qemu-nbd 7.2, qemu-nbd 10.0 and nbdkit, each requiring
TLS with x509 certificates made here (a CA, a server certificate for localhost and 127.0.0.1, a
client certificate, and a second CA nobody trusts). qimg and qemu-img run the same commands with
the same ``--object tls-creds-x509,...`` and must print the same: the working cases (info, map,
compare, convert both ways) and the failing ones (no credentials, a server without TLS, a wrong
host name, an unknown issuer, no client certificate, server-side credentials, a unix socket
without a host name), and the ``--object`` checks themselves."""
from __future__ import annotations

import datetime
import ipaddress
import os

import pytest
from cli_support import assert_same, run_qemu, run_qemu_io, run_qimg
from nbd_servers import start_server
from test_nbd import _sparse_raw

MIB = 1 << 20
KINDS = ["qemu-nbd", "qemu-nbd-10", "nbdkit"]


def same(tmp_path, *args):
    """qimg and the oracle (both oracles: each test runs with 7.2 and with 10.0) print the same."""
    theirs = run_qemu(*args, cwd=tmp_path)
    mine = run_qimg(*args, cwd=tmp_path)
    assert_same(mine, theirs)
    return mine


def _write_pem(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Folders in QEMU's layout: srv (ca + server), cli (ca + client), cli-nocert (ca only),
    cli-badca (another CA + the client), srv2 (a server certificate of the other CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def make_ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(ca_key, ca_cert, server):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_key, ca = make_ca("qimg test CA")
    ca2_key, ca2 = make_ca("qimg other CA")
    srv_key, srv = make_leaf(ca_key, ca, True)
    srv2_key, srv2 = make_leaf(ca2_key, ca2, True)
    cli_key, cli = make_leaf(ca_key, ca, False)
    layout = {
        "srv": {"ca-cert.pem": ca.public_bytes(pem), "server-cert.pem": srv.public_bytes(pem),
                "server-key.pem": pem_key(srv_key)},
        "srv2": {"ca-cert.pem": ca2.public_bytes(pem), "server-cert.pem": srv2.public_bytes(pem),
                 "server-key.pem": pem_key(srv2_key)},
        "cli": {"ca-cert.pem": ca.public_bytes(pem), "client-cert.pem": cli.public_bytes(pem),
                "client-key.pem": pem_key(cli_key)},
        "cli-nocert": {"ca-cert.pem": ca.public_bytes(pem)},
        "cli-badca": {"ca-cert.pem": ca2.public_bytes(pem), "client-cert.pem": cli.public_bytes(pem),
                      "client-key.pem": pem_key(cli_key)},
    }
    for folder, files in layout.items():
        (root / folder).mkdir()
        for fname, data in files.items():
            _write_pem(root / folder / fname, data)
            os.chmod(root / folder / fname, 0o600)
    return root


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(kind, image, certdir, *, verify_clients=True, psk=None, **kw):
        if psk is not None:  # TLS-PSK: psk is a folder with keys.psk
            extra = (("--object", f"tls-creds-psk,id=tls0,endpoint=server,dir={psk}", "--tls-creds", "tls0")
                     if kind.startswith("qemu-nbd") else ("--tls=require", f"--tls-psk={psk}/keys.psk"))
        elif certdir is None:  # anonymous TLS (qemu-nbd only: nbdkit has x509 and PSK)
            extra = ("--object", "tls-creds-anon,id=tls0,endpoint=server", "--tls-creds", "tls0")
        elif kind.startswith("qemu-nbd"):
            verify = "" if verify_clients else ",verify-peer=off"
            extra = ("--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={certdir}{verify}", "--tls-creds", "tls0")
        else:
            extra = ("--tls=require", f"--tls-certificates={certdir}", *(("--tls-verify-peer",) if verify_clients else ()))
        s = start_server(kind, image, tmp_path, extra=extra, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def creds(folder, extra: str = "") -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={folder}{extra}"]


def json_name(s) -> str:
    return ('json:{"driver":"nbd","export":"' + s.export + '","tls-creds":"tls0","server":{"type":"inet",'
            '"host":"127.0.0.1","port":"' + str(s.port) + '"}}')


def opts(s, extra: str = "") -> list[str]:
    return ["--image-opts", f"{s.image_opts},tls-creds=tls0{extra}"]


@pytest.mark.parametrize("kind", KINDS)
def test_reads_over_tls(tmp_path, certs, servers, kind):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    tcp = servers(kind, img, certs / "srv", readonly=True, tcp=True)
    unix = servers(kind, img, certs / "srv", readonly=True)
    c = creds(certs / "cli")
    for cmd in (["info"], ["info", "--output=json"], ["map", "--output=json"], ["map"], ["check", "-f", "raw"]):
        same(tmp_path, cmd[0], *c, *cmd[1:], *opts(tcp))
        same(tmp_path, cmd[0], *c, *cmd[1:], *opts(unix, ",tls-hostname=localhost"))
    same(tmp_path, "info", *c, json_name(tcp))
    same(tmp_path, "compare", *c, "-F", "raw", *opts(tcp)[1:], str(img))
    out = tmp_path / "out.raw"
    r = run_qimg("convert", *c, "-O", "raw", *opts(tcp), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == img.read_bytes()


@pytest.mark.parametrize("kind", ["qemu-nbd", "nbdkit"])
def test_writes_over_tls(tmp_path, certs, servers, kind):
    """convert -n into a TLS export (several connections where the server allows multi-conn):
    the bytes land as qemu-io reads them on the server's side."""
    src, target = tmp_path / "src.raw", tmp_path / "target.raw"
    _sparse_raw(src)
    run_qemu("create", "-q", "-f", "raw", str(target), str(8 * MIB))
    s = servers(kind, target, certs / "srv", tcp=True)
    target_name = 'json:{"driver":"raw","file":' + json_name(s)[5:] + "}"  # -O raw over the nbd node
    r = run_qimg("convert", *creds(certs / "cli"), "-n", "-f", "raw", "-O", "raw", str(src), target_name)
    assert r.returncode == 0, r.stderr
    s.stop()
    assert run_qemu("compare", "-f", "raw", "-F", "raw", str(src), str(target)).returncode == 0
    assert "verification failed" not in run_qemu_io("-f", "raw", "-c", "read -P 3 7M 512k", str(target)).stdout


@pytest.mark.parametrize("kind", ["qemu-nbd", "nbdkit"])
def test_failures_as_qemu(tmp_path, certs, servers, kind):
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    tcp = servers(kind, img, certs / "srv", readonly=True, tcp=True)
    unix = servers(kind, img, certs / "srv", readonly=True)
    plain = start_server(kind, img, tmp_path, readonly=True)
    other = servers(kind, img, certs / "srv2", readonly=True, tcp=True, verify_clients=False)
    try:
        cases = [
            ["info", tcp.url],  # the server requires TLS, the client has none
            ["info", *creds(certs / "cli"), tcp.url],  # credentials defined but not named
            ["info", *opts(unix)],  # a unix socket: no host name to check the certificate against
            ["info", *creds(certs / "cli"), *opts(unix, ",tls-hostname=foo")],
            ["info", *creds(certs / "cli"), *opts(tcp, ",tls-hostname=foo")],
            ["info", *creds(certs / "cli", ",verify-peer=off"), *opts(unix, ",tls-hostname=foo")],
            ["info", *creds(certs / "cli"), *opts(other)],  # an issuer the client does not know
            ["info", *creds(certs / "cli", ",verify-peer=off"), *opts(other)],
            ["info", *creds(certs / "cli"), "--image-opts", plain.image_opts + ",tls-creds=tls0,tls-hostname=x"],
            ["info", "--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={certs / 'srv'}", *opts(tcp)],
            ["info", *opts(tcp)],  # no such credentials
        ]
        if kind == "qemu-nbd":  # nbdkit's refusal of a missing client certificate is worded by its own gnutls use
            cases.append(["info", *creds(certs / "cli-nocert"), *opts(tcp)])
        for cmd in cases:
            same(tmp_path, *cmd)
    finally:
        plain.stop()


@pytest.mark.parametrize("obj", [
    "tls-creds-x509,id=t,endpoint=client",
    "tls-creds-x509,id=t,dir={d}/cli,endpoint=bogus",
    "tls-creds-x509,id=t,dir={d}/cli,foo=1",
    "tls-creds-x509,dir={d}/cli",
    "tls-creds-x509,id=t,dir={d}/cli,verify-peer=maybe",
    "tls-creds-x509,id=t,dir={d}/cli,sanity-check=off",
    "tls-creds-x509,id=t,dir={d}/cli-nocert",
    "tls-creds-x509,id=t,dir={d}/cli-badca",
    "tls-creds-x509,id=t,dir={d}/cli-badca,sanity-check=off",
    "tls-creds-x509,id=t,dir={d}/cli,endpoint=server",
    "tls-creds-x509,id=t,dir={d}/srv,endpoint=server",
    "tls-creds-x509,id=t,dir={d}/nonexistent",
    "tls-creds-x509,id=t,dir={d}/cli,passwordid=nosuch",
    "tls-creds-x509,id=t,dir={d}/cli,priority=NORMAL",
    "tls-creds-psk,id=t,dir={d}/cli",
    "tls-creds-anon,id=t",
    "tls-creds-anon,id=t,dir={d}/nonexistent",
    "tls-creds-psk,id=t,endpoint=client",
    "tls-creds-anon,id=t,endpoint=client",
    "tls-creds-anon,id=t,loaded=on",
    "tls-creds-anon,id=t,endpoint=server",
])
def test_object_checks_as_qemu(tmp_path, certs, obj):
    img = tmp_path / "x.raw"
    img.write_bytes(bytes(MIB))
    same(tmp_path, "info", "--object", obj.format(d=certs), str(img))
    same(tmp_path, "info", "--object", obj.format(d=certs), "--object", "secret,id=t,data=x", str(img))


ANON = ["--object", "tls-creds-anon,id=tls0,endpoint=client"]


@pytest.mark.parametrize("kind", ["qemu-nbd", "qemu-nbd-10"])
def test_anonymous_tls(tmp_path, servers, kind):
    """tls-creds-anon: anonymous Diffie-Hellman (TLS 1.2) with QEMU's GnuTLS server, over TCP and a
    unix socket (no host name needed: nothing is verified); reads, map and a convert into it."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    tcp = servers(kind, img, None, readonly=True, tcp=True)
    unix = servers(kind, img, None, readonly=True)
    for cmd in (["info"], ["info", "--output=json"], ["map", "--output=json"], ["map"], ["check", "-f", "raw"]):
        same(tmp_path, cmd[0], *ANON, *cmd[1:], *opts(tcp))
        same(tmp_path, cmd[0], *ANON, *cmd[1:], *opts(unix))
    same(tmp_path, "info", *ANON, json_name(tcp))
    same(tmp_path, "compare", *ANON, "-F", "raw", *opts(unix)[1:], str(img))
    out = tmp_path / "out.raw"
    r = run_qimg("convert", *ANON, "-O", "raw", *opts(tcp), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == img.read_bytes()
    target = tmp_path / "target.raw"
    run_qemu("create", "-q", "-f", "raw", str(target), str(8 * MIB))
    w = servers(kind, target, None)
    r = run_qimg("convert", *ANON, "-n", "-f", "raw", "-O", "raw", str(img),
                 'json:{"driver":"raw","file":{"driver":"nbd","export":"' + w.export + '","tls-creds":"tls0",'
                 '"server":{"type":"unix","path":"' + w.sock + '"}}}')
    assert r.returncode == 0, r.stderr
    w.stop()
    assert run_qemu("compare", "-f", "raw", "-F", "raw", str(img), str(target)).returncode == 0


def test_anonymous_tls_failures_as_qemu(tmp_path, certs, servers):
    """Anonymous credentials against a server that requires certificates, certificates against
    an anonymous server, and no credentials at all: qemu-img's messages and exit codes."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    anon = servers("qemu-nbd", img, None, readonly=True, tcp=True)
    x509 = servers("qemu-nbd", img, certs / "srv", readonly=True, tcp=True)
    for cmd in (["info", *ANON, *opts(x509)], ["info", *creds(certs / "cli"), *opts(anon)],
                ["info", *creds(certs / "cli", ",verify-peer=off"), *opts(anon)], ["info", anon.url]):
        same(tmp_path, *cmd)


def _psk_folder(path, *lines: str):
    path.mkdir()
    (path / "keys.psk").write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def psk_keys(tmp_path):
    """keys.psk folders: the server's (users qemu and alice), the client's own copy, a wrong key
    for qemu, an unknown user."""
    qemu_key, alice_key = os.urandom(32).hex(), os.urandom(16).hex().upper()
    return {
        "srv": _psk_folder(tmp_path / "psk-srv", f"qemu:{qemu_key}", f"alice:{alice_key}"),
        "cli": _psk_folder(tmp_path / "psk-cli", f"bob:{os.urandom(8).hex()}", f"alice:{alice_key}", f"qemu:{qemu_key}"),
        "wrong": _psk_folder(tmp_path / "psk-wrong", f"qemu:{os.urandom(32).hex()}"),
        "stranger": _psk_folder(tmp_path / "psk-stranger", f"mallory:{qemu_key}"),
    }


def psk(folder, extra: str = "") -> list[str]:
    return ["--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={folder}{extra}"]


@pytest.mark.parametrize("kind", KINDS)
def test_psk_reads_and_writes(tmp_path, servers, psk_keys, kind):
    """tls-creds-psk against QEMU's and nbdkit's GnuTLS servers: the default user (qemu) and a
    named one, TCP and a unix socket (PSK needs no host name), info/map/compare as qemu-img prints
    them, a convert out byte for byte and a convert -n into a writable export read back by qemu-img."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    tcp = servers(kind, img, None, psk=psk_keys["srv"], readonly=True, tcp=True)
    unix = servers(kind, img, None, psk=psk_keys["srv"], readonly=True)
    for user in ("", ",username=alice"):
        c = psk(psk_keys["cli"], user)
        for cmd in (["info"], ["info", "--output=json"], ["map", "--output=json"]):
            same(tmp_path, cmd[0], *c, *cmd[1:], *opts(tcp))
            same(tmp_path, cmd[0], *c, *cmd[1:], *opts(unix))
    c = psk(psk_keys["cli"])
    same(tmp_path, "info", *c, json_name(tcp))
    same(tmp_path, "compare", *c, "-F", "raw", *opts(unix)[1:], str(img))
    out = tmp_path / "out.raw"
    r = run_qimg("convert", *c, "-O", "raw", *opts(tcp), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == img.read_bytes()
    if kind == "qemu-nbd-10":
        return
    target = tmp_path / "target.raw"
    run_qemu("create", "-q", "-f", "raw", str(target), str(8 * MIB))
    w = servers(kind, target, None, psk=psk_keys["srv"], tcp=True)
    r = run_qimg("convert", *psk(psk_keys["cli"], ",username=alice"), "-n", "-f", "raw", "-O", "raw", str(img),
                 'json:{"driver":"raw","file":' + json_name(w)[5:] + "}")
    assert r.returncode == 0, r.stderr
    w.stop()
    assert run_qemu("compare", "-f", "raw", "-F", "raw", str(img), str(target)).returncode == 0


@pytest.mark.parametrize("kind", ["qemu-nbd", "nbdkit"])
def test_psk_failures_as_qemu(tmp_path, certs, servers, psk_keys, kind):
    """A wrong key, a user the server does not know, PSK against a certificate server or a server
    without TLS, certificates or nothing against a PSK server: qemu-img's words and exit codes."""
    img = tmp_path / "disk.raw"
    _sparse_raw(img)
    s = servers(kind, img, None, psk=psk_keys["srv"], readonly=True, tcp=True)
    x509 = servers(kind, img, certs / "srv", readonly=True, tcp=True, verify_clients=False)
    plain = start_server(kind, img, tmp_path, readonly=True, tcp=True)
    try:
        for cmd in (["info", *psk(psk_keys["wrong"]), *opts(s)],
                    ["info", *psk(psk_keys["stranger"], ",username=mallory"), *opts(s)],
                    ["info", *psk(psk_keys["cli"], ",username=bob"), *opts(s)],
                    ["info", *creds(certs / "cli"), *opts(s)]):
            # the server refuses the key (or a client without one) and hangs up: with a FIN or,
            # when our next record is already in its socket, a reset; which one is the
            # scheduler's choice, for qemu-img too
            theirs, mine = run_qemu(*cmd, cwd=tmp_path), run_qimg(*cmd, cwd=tmp_path)
            for r in (theirs, mine):
                assert r.returncode == 1 and not r.stdout and len(r.stderr.splitlines()) == 1, r
                reason = r.stderr.split("TLS handshake failed: ", 1)[1]
                assert reason.startswith(("The TLS connection was non-properly terminated.",
                                          "Error in the pull function.")), r.stderr
            assert mine.stderr.split(": ", 1)[1].split("TLS handshake")[0] == \
                theirs.stderr.split(": ", 1)[1].split("TLS handshake")[0]
        for cmd in (["info", *psk(psk_keys["cli"]), *opts(x509)],
                    ["info", *psk(psk_keys["cli"]), "--image-opts", plain.image_opts + ",tls-creds=tls0"],
                    ["info", s.url]):
            same(tmp_path, *cmd)
    finally:
        plain.stop()


@pytest.mark.parametrize("keys, obj", [
    (None, "endpoint=client"),
    (None, "endpoint=client,username=alice"),
    (None, "endpoint=client,username=nobody"),
    (None, "endpoint=client,username="),
    (None, "endpoint=server"),
    (None, "endpoint=server,username=alice"),
    ("qemu:abc", "endpoint=client"),  # odd length
    ("qemu:zz11", "endpoint=client"),  # not hex
    ("qemu:", "endpoint=client"),  # empty
    ("qemu:0011 ", "endpoint=client"),  # trailing blank
    ("qemu:00112233\r", "endpoint=client"),  # a CRLF file
    ("qemu:00:11:22:33", "endpoint=client"),
    ("qemu:001122", "endpoint=client"),  # 3 bytes: gnutls wants 4
    ("qemu:00112233", "endpoint=client,username=qemu"),
    ("qemux:0011\nqemu:00112233", "endpoint=client"),  # a longer name that starts with the user's
    ("qemu:00112233", "endpoint=client,verify-peer=off,priority=NORMAL"),
])
def test_psk_object_checks_as_qemu(tmp_path, psk_keys, keys, obj):
    """The key file is read when the object is defined, as QEMU reads it: the user's line, its hex."""
    folder = psk_keys["srv"] if keys is None else _psk_folder(tmp_path / "k", keys)
    img = tmp_path / "x.raw"
    img.write_bytes(bytes(MIB))
    same(tmp_path, "info", "--object", f"tls-creds-psk,id=t,dir={folder},{obj}", str(img))
