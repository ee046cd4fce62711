"""qimg.tlspsk's ctypes route to OpenSSL's PSK callback (Python < 3.13): it finds the context's
SSL_CTX and refuses, in one line, a context whose handle does not answer as Python says it
should. The handshakes themselves are tested against real servers in tests/test_nbd_tls.py."""
from __future__ import annotations

import ssl

import pytest
from qimg import tlspsk
from qimg.errors import QimgError


def test_the_handle_is_the_contexts_own():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tlspsk._set_with_ctypes(ctx, b"qemu", bytes(range(16)))
    assert ctx.__dict__["_qimg_psk_callback"] is not None
    # the options read through the handle follow a change made through Python
    lib = tlspsk._libssl()
    import ctypes

    handle = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    ctx.options |= ssl.OP_NO_TICKET
    assert lib.SSL_CTX_get_options(handle) == int(ctx.options)


def test_a_handle_that_does_not_answer_is_refused(monkeypatch):
    real = tlspsk._libssl()

    class Other:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def SSL_CTX_get_options(handle):  # noqa: N802 - OpenSSL's name
            return 12345

    monkeypatch.setattr(tlspsk, "_lib", Other())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(QimgError, match=r"^TLS-PSK credentials are not supported by qimg on this Python"):
        tlspsk._set_with_ctypes(ctx, b"qemu", bytes(16))
    assert "_qimg_psk_callback" not in ctx.__dict__
