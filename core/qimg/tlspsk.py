"""TLS-PSK for a client :class:`ssl.SSLContext` (QEMU's ``tls-creds-psk``, GnuTLS' PSK key
exchanges: a user name and a key both ends hold, no certificates).

Python 3.13 gives the ``ssl`` module ``SSLContext.set_psk_client_callback``; that is used when
present. Before 3.13 (Debian 12's Python is 3.11) neither ``ssl`` nor pyOpenSSL has any PSK call,
so the same OpenSSL call the 3.13 module makes, ``SSL_CTX_set_psk_client_callback``, is made here
through ctypes on the context's own ``SSL_CTX``, from the very libssl the ``_ssl`` module is linked
to. Where the handle is found is CPython's layout of its context object (the ``SSL_CTX *`` right
after the object header, unchanged from 3.6 to 3.13); it is checked against two values Python
itself reports for the context before anything is set, so a Python laid out otherwise gets a
one-line error, never a write through a wrong pointer.

One more call makes TLS 1.3 work: for a TLS 1.3 handshake OpenSSL turns the callback's key into a
session, which carries no session id context, and then refuses it as "in a different context"
because CPython gives every context the id context ``Python`` (used only by servers resuming
sessions); the client context's id context is cleared.
"""
from __future__ import annotations

import sys

from .errors import QimgError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

_lib: Any = None


def set_client_psk(ctx: ssl.SSLContext, identity: str, key: bytes) -> None:
    """Make ``ctx`` a TLS-PSK client that answers every server with ``identity`` and ``key``;
    TLS 1.2 offers only PSK cipher suites, TLS 1.3 its usual ones (PSK key exchange)."""
    import ssl

    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("PSK")
    if sys.version_info >= (3, 13):
        ctx.set_psk_client_callback(lambda hint: (identity, key))  # type: ignore[attr-defined]
        return
    _set_with_ctypes(ctx, identity.encode(), key)


def _libssl() -> Any:
    """``_ssl``'s shared object: symbols looked up in it resolve to the libssl it uses."""
    global _lib
    if _lib is None:
        import _ssl
        import ctypes

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
        lib.SSL_CTX_set_session_id_context.restype = ctypes.c_int
        lib.SSL_CTX_set_psk_client_callback.argtypes = [ctypes.c_void_p, _callback_type()]
        lib.SSL_CTX_set_psk_client_callback.restype = None
        _lib = lib
    return _lib


def _callback_type() -> Any:
    import ctypes

    # unsigned int cb(SSL *, const char *hint, char *identity, unsigned int max_identity_len,
    #                 unsigned char *psk, unsigned int max_psk_len)
    return ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint,
                            ctypes.c_void_p, ctypes.c_uint)


def _set_with_ctypes(ctx: ssl.SSLContext, identity: bytes, key: bytes) -> None:
    import ctypes

    unsupported = QimgError("TLS-PSK credentials are not supported by qimg on this Python "
                            f"({sys.version.split()[0]}): its ssl module has no PSK call")
    try:
        lib = _libssl()
    except (OSError, AttributeError, ImportError):
        raise unsupported from None
    handle = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not handle or lib.SSL_CTX_get_options(handle) != int(ctx.options) \
            or lib.SSL_CTX_get_verify_mode(handle) != int(ctx.verify_mode):
        raise unsupported
    if lib.SSL_CTX_set_session_id_context(handle, None, 0) != 1:
        raise unsupported

    def answer(_ssl: Any, _hint: Any, identity_out: int, max_identity: int, psk_out: int, max_psk: int) -> int:
        # OpenSSL calls this inside the handshake: a wrong size answers 0 (handshake fails),
        # never an exception through C
        if len(identity) + 1 > max_identity or len(key) > max_psk:
            return 0
        ctypes.memmove(identity_out, identity + b"\0", len(identity) + 1)
        ctypes.memmove(psk_out, key, len(key))
        return len(key)

    callback = _callback_type()(answer)
    ctx.__dict__["_qimg_psk_callback"] = callback  # lives as long as the context that calls it
    lib.SSL_CTX_set_psk_client_callback(handle, callback)
