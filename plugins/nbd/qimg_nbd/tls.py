"""TLS for NBD connections (NBD_OPT_STARTTLS, then the TLS handshake on the same socket), with
QEMU's (gnutls') words for what fails.
"""
from __future__ import annotations

import errno
import os
import socket

from qimg.compat import text
from qimg.errors import QimgError, with_errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Tls:
    """TLS for the connections of one node: the client's SSL context (from its
    ``tls-creds``), the name the server's certificate must carry (``tls-hostname``, else the
    server's host name; none for a unix socket), whether the server is verified, and whether
    the server must have authenticated with our pre-shared key (``tls-creds-psk``)."""

    __slots__ = ("context", "hostname", "verify", "psk")

    def __init__(self, context: Any, hostname: str | None, verify: bool, *, psk: bool = False) -> None:
        self.context, self.hostname, self.verify, self.psk = context, hostname, verify, psk
        context.check_hostname = bool(verify and hostname)

    def wrap(self, sock: socket.socket) -> socket.socket:
        """The TLS handshake on ``sock``; QimgError in QEMU's (gnutls') words when it fails."""
        import ssl

        try:
            tls_sock = self.context.wrap_socket(sock, server_hostname=self.hostname or None,
                                                do_handshake_on_connect=False)
            tls_sock.do_handshake()
        except ssl.SSLCertVerificationError as e:
            raise QimgError(_verify_message(e, self.hostname)) from None
        except ConnectionResetError:
            raise QimgError(text("tls-handshake-reset")) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
            raise QimgError("TLS handshake failed: The TLS connection was non-properly terminated.") from None
        except ssl.SSLError as e:
            raise QimgError(f"TLS handshake failed: {e.reason or e}") from None
        except TimeoutError:
            raise with_errno(QimgError(f"TLS handshake failed: {os.strerror(errno.ETIMEDOUT)}"),
                             errno.ETIMEDOUT) from None
        except OSError as e:
            raise QimgError(f"TLS handshake failed: {os.strerror(e.errno or errno.EIO)}") from None
        if self.verify and not self.hostname:
            tls_sock.close()
            raise QimgError("No hostname for certificate validation")
        if self.psk and tls_sock.getpeercert(binary_form=True) is not None:
            # TLS 1.3 lets a server that does not take our key answer with a certificate instead,
            # which a PSK client has nothing to check against (gnutls refuses it in these words)
            tls_sock.close()
            raise QimgError("TLS handshake failed: Insufficient credentials for that request.")
        return tls_sock


def _verify_message(e: Any, hostname: str | None) -> str:
    """gnutls' words (as QEMU prints them) for OpenSSL's certificate verification codes."""
    code = getattr(e, "verify_code", 0)
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return f"Certificate does not match the hostname {hostname}"
    if code in (2, 18, 19, 20, 21):  # no issuer found, self-signed, cannot verify the leaf
        return "The certificate hasn't got a known issuer"
    if code == 10:
        return "The certificate has expired"
    if code == 9:
        return "The certificate is not yet activated"
    if code == 23:
        return "The certificate has been revoked"
    return f"The certificate is not trusted: {getattr(e, 'verify_message', None) or e}"
