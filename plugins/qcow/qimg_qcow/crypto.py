"""AES encryption of qcow (v1) data, also qcow2's legacy ``encrypt.format=aes``: AES-128-CBC per
512-byte sector, IV = guest sector number ("plain64").

The key is the secret's text cut at 16 bytes and zero padded; the IV of a sector is its
number (guest offset / 512) as 64-bit little-endian, zero padded to 16 bytes. Imported only
when an encrypted image is opened with a key. The batched CBC lives in :mod:`qimg.cipher`.
"""
from __future__ import annotations

from qimg.cipher import SectorCipher

SECTOR = 512


def key_from_secret(secret: bytes) -> bytes:
    """QEMU uses the secret as a C string: up to the first NUL, at most 16 bytes."""
    return secret.split(b"\0", 1)[0][:16].ljust(16, b"\0")


class QcowAES:
    """Encrypt/decrypt whole sectors at a guest offset (thread-safe: no mutable state)."""

    def __init__(self, secret: bytes) -> None:
        self._cipher = SectorCipher(key_from_secret(secret), "cbc", "plain64")

    @staticmethod
    def _check(guest_offset: int, n: int) -> None:
        if guest_offset % SECTOR or n % SECTOR:
            raise ValueError("qcow encryption works on whole sectors")

    def decrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        self._check(guest_offset, len(data))
        return self._cipher.decrypt(guest_offset // SECTOR, data)

    def encrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        self._check(guest_offset, len(data))
        return self._cipher.encrypt(guest_offset // SECTOR, data)
