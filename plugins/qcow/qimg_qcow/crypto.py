"""AES encryption of qcow (v1) data: AES-128-CBC per 512-byte sector, IV = guest sector number.

The key is the secret's text cut at 16 bytes and zero padded; the IV of a sector is its
number (guest offset / 512) as 64-bit little-endian, zero padded to 16 bytes ("plain64").
Imported only when an encrypted image is opened with a key.

CBC is computed for all sectors of a buffer at once rather than sector by sector: decryption
is one ECB pass XORed with the previous ciphertext blocks (the IV at each sector start);
encryption chains block ``j`` of every sector together, 32 ECB passes in all. The XORs work
on whole buffers as big integers, so no Python loop runs per sector or per byte.
"""
from __future__ import annotations

import sys
from array import array

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SECTOR = 512
BLOCK = 16
BLOCKS_PER_SECTOR = SECTOR // BLOCK
#: 64-bit words per sector and per AES block
_W_SECTOR = SECTOR // 8


def key_from_secret(secret: bytes) -> bytes:
    """QEMU uses the secret as a C string: up to the first NUL, at most 16 bytes."""
    return secret.split(b"\0", 1)[0][:16].ljust(16, b"\0")


def _xor(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def _words(data: bytes | bytearray) -> array:
    return array("Q", data)


def _ivs(first: int, count: int) -> array:
    """The IVs of ``count`` sectors from ``first``, as pairs of native 64-bit words."""
    ivs = array("Q", bytes(count * BLOCK))
    nums = array("Q", range(first, first + count))
    if sys.byteorder == "big":
        nums.byteswap()  # the sector number is stored little-endian
    ivs[0::2] = nums
    return ivs


class QcowAES:
    def __init__(self, secret: bytes) -> None:
        self._cipher = Cipher(algorithms.AES(key_from_secret(secret)), modes.ECB())

    @staticmethod
    def _check(guest_offset: int, n: int) -> None:
        if guest_offset % SECTOR or n % SECTOR:
            raise ValueError("qcow encryption works on whole sectors")

    def decrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        raw = bytes(data)
        n = len(raw)
        self._check(guest_offset, n)
        if not n:
            return b""
        dec = self._cipher.decryptor().update(raw)
        # the block before each block: the previous ciphertext block, or the sector's IV
        prev = _words(bytes(BLOCK) + raw[:-BLOCK])
        ivs = _ivs(guest_offset // SECTOR, n // SECTOR)
        prev[0::_W_SECTOR] = ivs[0::2]
        prev[1::_W_SECTOR] = ivs[1::2]
        return _xor(dec, prev.tobytes())

    def encrypt(self, guest_offset: int, data: bytes | bytearray | memoryview) -> bytes:
        plain = _words(bytes(data))
        n = len(plain) * 8
        self._check(guest_offset, n)
        if not n:
            return b""
        count = n // SECTOR
        out = array("Q", bytes(n))
        chain = _ivs(guest_offset // SECTOR, count)  # block j-1 of every sector, as words
        enc = self._cipher.encryptor()
        gathered = array("Q", bytes(count * BLOCK))
        for j in range(BLOCKS_PER_SECTOR):
            w = 2 * j
            gathered[0::2] = plain[w::_W_SECTOR]
            gathered[1::2] = plain[w + 1 :: _W_SECTOR]
            c = enc.update(_xor(gathered.tobytes(), chain.tobytes()))
            chain = array("Q", c)
            out[w::_W_SECTOR] = chain[0::2]
            out[w + 1 :: _W_SECTOR] = chain[1::2]
        return out.tobytes()
