"""AES encryption of qcow (v1) data: AES-128-CBC per 512-byte sector, IV = guest sector number.

The key is the secret's text cut at 16 bytes and zero padded; the IV of a sector is its
number (guest offset / 512) as 64-bit little-endian, zero padded to 16 bytes ("plain64").
Imported only when an encrypted image is opened with a key.
"""
from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SECTOR = 512


def key_from_secret(secret: bytes) -> bytes:
    """QEMU uses the secret as a C string: up to the first NUL, at most 16 bytes."""
    return secret.split(b"\0", 1)[0][:16].ljust(16, b"\0")


class QcowAES:
    def __init__(self, secret: bytes) -> None:
        self._alg = algorithms.AES(key_from_secret(secret))

    def _run(self, guest_offset: int, data: bytes | bytearray | memoryview, encrypt: bool) -> bytes:
        if guest_offset % SECTOR or len(data) % SECTOR:
            raise ValueError("qcow encryption works on whole sectors")
        view = memoryview(data)
        first = guest_offset // SECTOR
        out = bytearray(len(view))
        for i in range(0, len(view), SECTOR):
            iv = (first + i // SECTOR).to_bytes(8, "little") + bytes(8)
            cipher = Cipher(self._alg, modes.CBC(iv))
            op = cipher.encryptor() if encrypt else cipher.decryptor()
            out[i : i + SECTOR] = op.update(view[i : i + SECTOR]) + op.finalize()
        return bytes(out)

    def encrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        return self._run(guest_offset, data, True)

    def decrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        return self._run(guest_offset, data, False)
