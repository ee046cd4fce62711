"""Sector ciphers as dm-crypt, LUKS and QEMU use them: AES in XTS, CBC or ECB mode over 512-byte
sectors, with an IV per sector from its number (``plain``, ``plain64`` or ``essiv``).

Imports ``cryptography``: import this module only when encrypted data is really accessed.

No Python loop runs per sector or per byte. Every mode is built from one ECB pass over a whole
buffer plus XORs done on the buffer as one big integer:

* XTS: the tweak of block ``j`` of a sector is ``E_K2(iv) * x^j`` in GF(2^128). The tweaks of all
  sectors are encrypted in one ECB call; multiplying every tweak by ``x`` at once is a shift of
  the concatenated lanes with the carries masked out (32 steps per buffer, not per sector).
* CBC decryption: one ECB pass, XORed with the ciphertext shifted by one block (the IV at each
  sector start).
* CBC encryption chains block ``j`` of every sector together: 32 ECB passes in all.

Objects hold only keys and immutable cipher objects: one instance serves several threads.
"""
from __future__ import annotations

import hashlib
import sys
from array import array

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import QimgError

SECTOR = 512
BLOCK = 16
_BLOCKS = SECTOR // BLOCK
_WORDS = SECTOR // 8
#: bytes handled per inner pass (bounds the size of the temporary big integers)
CHUNK = 1 << 20

_MASK_CACHE: dict[int, int] = {}


def _top_bits(nbytes: int) -> int:
    """Bit 127 of every 128-bit little-endian lane of ``nbytes`` bytes."""
    m = _MASK_CACHE.get(nbytes)
    if m is None:
        m = int.from_bytes((bytes(15) + b"\x80") * (nbytes // BLOCK), "little")
        if len(_MASK_CACHE) < 8:
            _MASK_CACHE[nbytes] = m
    return m


def _xor(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def _sector_numbers(first: int, count: int, width: int) -> bytes:
    """``count`` IVs of 16 bytes: the sector number little-endian in ``width`` bytes, zero padded."""
    ivs = array("Q", bytes(count * BLOCK))
    if width == 4:
        nums = array("Q", (s & 0xFFFFFFFF for s in range(first, first + count)))
    else:
        nums = array("Q", (s & 0xFFFFFFFFFFFFFFFF for s in range(first, first + count)))
    if sys.byteorder == "big":
        nums.byteswap()
    ivs[0::2] = nums
    return ivs.tobytes()


def _spread(per_sector: list[bytes], count: int) -> bytes:
    """Interleave: ``per_sector[j]`` holds block ``j`` of every sector; return the sectors."""
    out = array("Q", bytes(count * SECTOR))
    for j, blocks in enumerate(per_sector):
        w = array("Q", blocks)
        out[2 * j :: _WORDS] = w[0::2]
        out[2 * j + 1 :: _WORDS] = w[1::2]
    return out.tobytes()


def _gather(data: bytes, count: int, j: int) -> bytes:
    """Block ``j`` of every sector of ``data``."""
    w = array("Q", data)
    out = array("Q", bytes(count * BLOCK))
    out[0::2] = w[2 * j :: _WORDS]
    out[1::2] = w[2 * j + 1 :: _WORDS]
    return out.tobytes()


_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")


def check_hash(name: str) -> None:
    if name not in _HASHES:
        raise QimgError(f"Hash algorithm '{name}' not supported")


def aes_key_ok(nbytes: int) -> bool:
    return nbytes in (16, 24, 32)


class SectorCipher:
    """``alg`` 'aes' only; ``mode`` 'xts', 'cbc' or 'ecb'; ``ivgen`` 'plain', 'plain64', 'essiv'
    (with ``ivhash``) or None (ECB). ``key`` is the whole key (both halves for XTS)."""

    def __init__(self, key: bytes, mode: str, ivgen: str | None = "plain64", ivhash: str | None = None,
                 alg: str = "aes") -> None:
        if alg != "aes":
            raise QimgError(f"Cipher algorithm '{alg}' is not supported by qimg")
        self.mode = mode
        self.ivgen = ivgen
        if mode == "xts":
            half = len(key) // 2
            if len(key) not in (32, 48, 64):  # AES-128/192/256 (OpenSSL lacks 192: built from ECB here)
                raise QimgError(f"XTS cipher key length {len(key)} is not supported")
            self._ecb = Cipher(algorithms.AES(key[:half]), modes.ECB())
            self._tweak = Cipher(algorithms.AES(key[half:]), modes.ECB())
        elif mode in ("cbc", "ecb", "ctr"):
            if not aes_key_ok(len(key)):
                raise QimgError(f"Invalid key length {len(key)}")
            self._ecb = Cipher(algorithms.AES(key), modes.ECB())
        else:
            raise QimgError(f"Cipher mode '{mode}' is not supported by qimg")
        self._essiv = None
        if ivgen == "essiv":
            check_hash(ivhash or "")
            salt = hashlib.new(ivhash or "sha256", key).digest()
            klen = min(len(salt), 32)
            klen = 32 if klen > 24 else 24 if klen > 16 else 16
            self._essiv = Cipher(algorithms.AES(salt[:klen].ljust(klen, b"\0")), modes.ECB())
        elif mode != "ecb" and ivgen not in ("plain", "plain64"):
            raise QimgError(f"IV generator '{ivgen}' is not supported by qimg")

    # -- IVs --------------------------------------------------------------------------------
    def _ivs(self, first: int, count: int) -> bytes:
        if self.ivgen == "plain":
            return _sector_numbers(first, count, 4)
        ivs = _sector_numbers(first, count, 8)
        if self._essiv is not None:
            ivs = self._essiv.encryptor().update(ivs)
        return ivs

    # -- public -----------------------------------------------------------------------------
    def decrypt(self, sector: int, data: bytes | bytearray | memoryview) -> bytes:
        return self._run(sector, data, False)

    def encrypt(self, sector: int, data: bytes | bytearray | memoryview) -> bytes:
        return self._run(sector, data, True)

    def _run(self, sector: int, data: bytes | bytearray | memoryview, enc: bool) -> bytes:
        n = len(data)
        if n % BLOCK:
            raise ValueError("sector cipher input must be a multiple of 16 bytes")
        if not n:
            return b""
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        parts = []
        for pos in range(0, n, CHUNK):
            piece = bytes(mv[pos : pos + CHUNK])
            k = len(piece)
            pad = -k % SECTOR
            if pad:  # a short last sector (key material): pad, run, trim; no block depends on later ones
                piece += bytes(pad)
            first = sector + pos // SECTOR
            out = self._sectors(first, piece, enc)
            parts.append(out[:k] if pad else out)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _sectors(self, first: int, data: bytes, enc: bool) -> bytes:
        count = len(data) // SECTOR
        if self.mode == "ecb":
            ctx = self._ecb.encryptor() if enc else self._ecb.decryptor()
            return ctx.update(data)
        ivs = self._ivs(first, count)
        if self.mode == "ctr":  # rare: a counter per sector, started at the IV (big-endian)
            alg = self._ecb.algorithm
            return b"".join(Cipher(alg, modes.CTR(ivs[i * BLOCK : (i + 1) * BLOCK])).encryptor().update(
                data[i * SECTOR : (i + 1) * SECTOR]) for i in range(count))
        if self.mode == "xts":
            t = int.from_bytes(self._xts_tweaks(ivs, count), "little")
            ctx = self._ecb.encryptor() if enc else self._ecb.decryptor()
            n = len(data)
            mid = ctx.update((int.from_bytes(data, "little") ^ t).to_bytes(n, "little"))
            return (int.from_bytes(mid, "little") ^ t).to_bytes(n, "little")
        if enc:
            chain = ivs
            blocks = []
            ctx = self._ecb.encryptor()
            for j in range(_BLOCKS):
                chain = ctx.update(_xor(_gather(data, count, j), chain))
                blocks.append(chain)
            return _spread(blocks, count)
        dec = self._ecb.decryptor().update(data)
        prev = array("Q", bytes(BLOCK) + data[:-BLOCK])
        iv = array("Q", ivs)
        prev[0::_WORDS] = iv[0::2]
        prev[1::_WORDS] = iv[1::2]
        return _xor(dec, prev.tobytes())

    def _xts_tweaks(self, ivs: bytes, count: int) -> bytes:
        t = self._tweak.encryptor().update(ivs)
        top = _top_bits(len(t))
        blocks = []
        x = int.from_bytes(t, "little")
        nbytes = len(t)
        for _ in range(_BLOCKS):
            blocks.append(x.to_bytes(nbytes, "little"))
            hi = x & top
            # multiply every lane by x: shift, and reduce the lanes whose bit 127 was set
            x = ((x ^ hi) << 1) ^ ((hi >> 127) * 0x87)
        return _spread(blocks, count)
