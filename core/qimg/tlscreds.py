"""``--object tls-creds-x509|tls-creds-psk|tls-creds-anon,...``: TLS credentials, by id.

QEMU's ``qcrypto_tls_creds_*`` objects as qemu-img takes them: the properties, their checks and
their messages, and the files loaded (and sanity-checked) when the object is defined, not when
a protocol uses it. A protocol that speaks TLS (the nbd client) asks :func:`get` for the
credentials by id and :meth:`TlsCreds.client_context` for an :class:`ssl.SSLContext`.

``tls-creds-anon`` is anonymous (unauthenticated) Diffie-Hellman, as GnuTLS' ``+ANON-DH`` /
``+ANON-ECDH`` key exchanges that QEMU asks for: TLS 1.2 (TLS 1.3 has no anonymous key exchange)
with OpenSSL's ``aNULL`` cipher suites, which it offers only at security level 0.
``tls-creds-psk`` reads the client's key from ``DIR/keys.psk`` (``username:hexkey`` lines, user
``qemu`` unless ``username`` says) when the object is defined, as QEMU does; the client context
answers the server with that name and key (:mod:`qimg.tlspsk`).
"""
from __future__ import annotations

import os

from . import compat
from .errors import QimgError, bad_value, missing_parameter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

TYPES = ("tls-creds-anon", "tls-creds-psk", "tls-creds-x509")
#: each type's properties besides id (QEMU's QOM properties of the class and its parent)
_PROPS = {
    "tls-creds-anon": ("dir", "endpoint", "verify-peer", "priority"),
    "tls-creds-psk": ("dir", "endpoint", "verify-peer", "priority", "username"),
    "tls-creds-x509": ("dir", "endpoint", "verify-peer", "priority", "sanity-check", "passwordid"),
}

_creds: dict[str, TlsCreds] = {}


class TlsCreds:
    """One credentials object: its type, folder, endpoint and what was loaded from the folder."""

    def __init__(self, qom_type: str, ident: str, directory: str | None, endpoint: str, verify_peer: bool) -> None:
        self.qom_type, self.id, self.dir = qom_type, ident, directory
        self.endpoint, self.verify_peer = endpoint, verify_peer
        self.files: dict[str, str] = {}  # role (ca, cert, key, crl) -> path, for those present
        self.key_password: bytes | None = None  # passwordid's secret: our key's passphrase
        self.psk: tuple[str, bytes] | None = None  # tls-creds-psk client: (username, key)

    @property
    def checks_certificate(self) -> bool:
        """Whether the server's certificate is verified (x509 with verify-peer; anonymous
        credentials have no certificates)."""
        return self.qom_type == "tls-creds-x509" and self.verify_peer

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for a client of these credentials, or QimgError saying why not
        (QEMU's ``Expected TLS credentials for a client endpoint``; PSK)."""
        if self.endpoint != "client":
            raise QimgError("Expected TLS credentials for a client endpoint")
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.psk is not None:  # (the connection checks that the server did not answer with a certificate)
            from .tlspsk import set_client_psk

            set_client_psk(ctx, *self.psk)
            return ctx
        if self.qom_type == "tls-creds-anon":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("aNULL:!eNULL:@SECLEVEL=0")
            return ctx
        if self.verify_peer:
            ctx.load_verify_locations(cafile=self.files["ca"])
            if "crl" in self.files:
                ctx.load_verify_locations(cafile=self.files["crl"])
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if "cert" in self.files and "key" in self.files:
            ctx.load_cert_chain(self.files["cert"], self.files["key"], password=self.key_password)
        return ctx


def _bool(name: str, value: str | None) -> bool:
    """A QemuOpts boolean, with its message (qimg.options' one conversion)."""
    from .options import BOOL, Option

    return Option(name, BOOL, "").convert(value or "")


def _path(directory: str, name: str, required: bool) -> str | None:
    """QEMU's qcrypto_tls_creds_get_path: DIR/NAME, which must exist when required."""
    path = os.path.join(directory, name)
    if os.access(path, os.R_OK):
        return path
    if required:
        import errno

        err = errno.ENOENT if not os.path.exists(path) else errno.EACCES
        raise QimgError(f"Unable to access credentials {path}: {os.strerror(err)}")
    return None


def add(qom_type: str, pairs: dict[str, str | None]) -> None:
    """Define TLS credentials from ``--object`` properties (``qom-type`` taken out)."""
    ident = pairs.get("id")
    if not ident:
        raise missing_parameter("id")
    for key in pairs:
        if key == "loaded" and not compat.has("tls-creds-without-loaded"):  # 7.2: a read-only QOM property
            raise QimgError(f"Property '{qom_type}.loaded' is not writable")
        if key != "id" and key not in _PROPS[qom_type]:
            raise QimgError(f"Parameter '{key}' is unexpected")
    endpoint = pairs.get("endpoint") or "client"
    if endpoint not in ("client", "server"):
        raise bad_value("endpoint", endpoint)
    verify_peer = _bool("verify-peer", pairs["verify-peer"]) if "verify-peer" in pairs else True
    sanity = _bool("sanity-check", pairs["sanity-check"]) if "sanity-check" in pairs else True
    directory = pairs.get("dir")
    creds = TlsCreds(qom_type, ident, directory, endpoint, verify_peer)
    if qom_type != "tls-creds-anon":
        if not directory:
            raise QimgError("Missing 'dir' property value")
        if qom_type == "tls-creds-psk":
            _load_psk(creds, directory, pairs.get("username"))
        else:
            if pairs.get("passwordid"):
                from .secrets import get_secret

                creds.key_password = get_secret(str(pairs["passwordid"]))
            _load_x509(creds, directory, sanity)
    _creds[ident] = creds


def _load_psk(creds: TlsCreds, directory: str, username: str | None) -> None:
    """QEMU's qcrypto_tls_creds_psk_load: a server names no user (its key file is the server's
    business, only checked to exist); a client finds its user's line in ``keys.psk`` and the hex
    key on it (gnutls' words for a key that is not hex, or empty)."""
    if creds.endpoint == "server":
        if username is not None:
            raise QimgError("username should not be set when endpoint=server")
        creds.files["psk"] = _path(directory, "keys.psk", True)
        return
    path = creds.files["psk"] = _path(directory, "keys.psk", True)
    user = username if username is not None else "qemu"
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise QimgError(f"Cannot read PSK file {path}: Failed to open file \u201c{path}\u201d: "
                        f"{e.strerror}") from None
    prefix = user.encode() + b":"
    for line in lines:
        if line.startswith(prefix):
            hexkey = line[len(prefix):]
            break
    else:
        raise QimgError(f"Username {user} not found in PSK file {path}")
    if not hexkey:
        raise QimgError("Cannot set PSK client credentials: The request is invalid.")
    try:  # gnutls: not hex (odd, blanks, a CR) is a parsing error; a key under 4 bytes is refused
        key = bytes.fromhex(hexkey.decode("ascii")) if len(hexkey) % 2 == 0 and hexkey.isalnum() else None
    except (UnicodeDecodeError, ValueError):
        key = None
    if key is None:
        raise QimgError("Cannot set PSK client credentials: Error in parsing.")
    if len(key) < 4:
        raise QimgError("Cannot set PSK client credentials: The request is invalid.")
    creds.psk = (user, key)


def _load_x509(creds: TlsCreds, directory: str, sanity: bool) -> None:
    """QEMU's qcrypto_tls_creds_x509_load: the CA (required), a CRL, our own certificate and key
    (required for a server, optional for a client), then the sanity check of our certificate."""
    server = creds.endpoint == "server"
    own = "server" if server else "client"
    found = {"ca": _path(directory, "ca-cert.pem", True),
             "crl": _path(directory, "ca-crl.pem", False),
             "cert": _path(directory, f"{own}-cert.pem", server),
             "key": _path(directory, f"{own}-key.pem", server)}
    creds.files = {k: v for k, v in found.items() if v is not None}
    if sanity and "cert" in creds.files:
        _sanity_check(creds.files["cert"], creds.files["ca"])


def _sanity_check(cert_path: str, ca_path: str) -> None:
    """Our own certificate must be issued by one of the CA file's certificates (QEMU's
    qcrypto_tls_creds_x509_sanity_check, the chain part; gnutls words a failure as below)."""
    from cryptography import x509

    def load(path: str) -> list:
        try:
            with open(path, "rb") as f:
                return x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError) as e:
            raise QimgError(f"Unable to import certificate {path}: {getattr(e, 'strerror', None) or e}") from None

    cert = load(cert_path)[0]
    for ca in load(ca_path):
        try:
            cert.verify_directly_issued_by(ca)
            return
        except Exception:  # noqa: BLE001 - InvalidSignature, ValueError (other issuer), TypeError (key type)
            continue
    raise QimgError(f"Our own certificate {cert_path} failed validation against {ca_path}: "
                    "The certificate hasn't got a known issuer")


def get(ident: str) -> TlsCreds:
    try:
        return _creds[ident]
    except KeyError:
        raise QimgError(f"No TLS credentials with id '{ident}'") from None


def clear() -> None:
    """Forget every definition (tests and library callers running several commands)."""
    _creds.clear()
