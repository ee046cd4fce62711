"""LUKS1 volume headers (the "LUKS On-Disk Format Specification" version 1.2.3), as QEMU's
qcrypto block layer uses them inside qcow2 images (and raw ``luks`` volumes).

Parsing, ``info`` and validation import nothing heavy. Unlocking a key slot and creating a
header need :mod:`qimg.cipher` (``cryptography``), imported only then.

Layout: a 592-byte header (magic, version 1, cipher name/mode, hash spec, payload offset in
512-byte sectors, master key length, master key digest, its salt and PBKDF2 iterations, UUID)
and 8 key slots (state, PBKDF2 iterations, salt, key material offset in sectors, AF stripes).
A slot's key material is the master key split by the anti-forensic splitter into ``stripes``
stripes, encrypted with the volume's cipher under the PBKDF2 of the passphrase (sector numbers
counted from the start of the key material).
"""
from __future__ import annotations

import hashlib
import struct

from .errors import QimgError

TYPE_CHECKING = False  # typing costs start-up time (info imports this module)
if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC = b"LUKS\xba\xbe"
SECTOR = 512
#: magic, version, cipher name, cipher mode, hash, payload offset, key bytes, digest, salt, iterations, uuid
PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
SLOT = struct.Struct(">II32sII")
HEADER_SIZE = PHDR.size + 8 * SLOT.size  # 592
NUM_SLOTS = 8
SLOT_ACTIVE = 0x00AC71F3
SLOT_INACTIVE = 0x0000DEAD
STRIPES = 4000
DIGEST_LEN = 20
SALT_LEN = 32
#: QEMU's alignment of key material and payload (bytes)
ALIGN = 4096
MIN_SLOT_ITERS = 1000
MIN_MK_ITERS = 1000

CIPHER_ALGS = ("aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128", "serpent-192",
               "serpent-256", "twofish-128", "twofish-192", "twofish-256", "sm4")
CIPHER_MODES = ("ecb", "cbc", "xts", "ctr")
IVGEN_ALGS = ("plain", "plain64", "essiv")
HASH_ALGS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "ripemd160": 20}


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


class KeySlot:
    __slots__ = ("active", "iterations", "salt", "key_offset", "stripes")

    def __init__(self, active: int, iterations: int, salt: bytes, key_offset: int, stripes: int) -> None:
        self.active = active
        self.iterations = iterations
        self.salt = salt
        self.key_offset = key_offset  # sectors from the start of the header
        self.stripes = stripes


class Header:
    """A parsed LUKS1 header (fields as the specification names them)."""

    def __init__(self, raw: bytes) -> None:
        (magic, self.version, cname, cmode, hspec, self.payload_offset, self.key_bytes, self.mk_digest,
         self.mk_salt, self.mk_iterations, uid) = PHDR.unpack_from(raw)
        self.magic = magic
        self.cipher_name, self.cipher_mode, self.hash_spec = _cstr(cname), _cstr(cmode), _cstr(hspec)
        self.uuid = _cstr(uid)
        self.slots = [KeySlot(*SLOT.unpack_from(raw, PHDR.size + i * SLOT.size)) for i in range(NUM_SLOTS)]
        mode, _, ivgen = self.cipher_mode.partition("-")
        self.mode = mode
        self.ivgen, _, ivhash = ivgen.partition(":")
        self.ivhash = ivhash or None

    @property
    def cipher_alg(self) -> str:
        """qemu-img's name (``aes-256``): the key size of one cipher (half an XTS key)."""
        bits = self.key_bytes * 8 // (2 if self.mode == "xts" else 1)
        return {"cast5": "cast5-128", "sm4": "sm4", "des": "des", "des3_ede": "3des"}.get(
            self.cipher_name, f"{self.cipher_name}-{bits}")


def parse_header(raw: bytes) -> Header:
    """Parse and validate (as QEMU does on open) the first 592 bytes of a LUKS volume."""
    if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
        raise QimgError("Volume is not in LUKS format")
    h = Header(raw)
    if h.version != 1:
        raise QimgError(f"LUKS version {h.version} is not supported")
    return h


def check_header(h: Header) -> None:
    """QEMU's checks of the key slots on every open (``info`` too; the fields are untrusted)."""
    hdr_sectors = -(-HEADER_SIZE // SECTOR)
    spans = []
    for i, s in enumerate(h.slots):
        if s.active not in (SLOT_ACTIVE, SLOT_INACTIVE):
            raise QimgError(f"Keyslot {i} state (active/disable) is corrupted")
        if s.stripes != STRIPES:
            raise QimgError(f"Keyslot {i} is corrupted (stripes {s.stripes} != {STRIPES})")
        end = s.key_offset + -(-h.key_bytes * s.stripes // SECTOR)
        if s.key_offset < hdr_sectors:
            raise QimgError(f"Keyslot {i} is overlapping with the LUKS header")
        if end > h.payload_offset:
            raise QimgError(f"Keyslot {i} is overlapping with the encrypted payload")
        spans.append((s.key_offset, end))
    for i in range(NUM_SLOTS):
        for j in range(i + 1, NUM_SLOTS):
            if spans[i][0] < spans[j][1] and spans[j][0] < spans[i][1]:
                raise QimgError(f"Keyslots {i} and {j} are overlapping in the header")


def validate_for_unlock(h: Header) -> None:
    """What qimg needs before touching key material: a cipher it has, sane key length."""
    check_header(h)
    if h.cipher_name != "aes":
        raise QimgError(f"Cipher '{h.cipher_name}' is not supported by qimg")
    if h.mode not in ("xts", "cbc", "ecb", "ctr"):
        raise QimgError(f"Unsupported cipher mode {h.mode}")
    if h.ivgen not in IVGEN_ALGS:
        raise QimgError(f"Unsupported IV generator '{h.ivgen}'")
    if h.hash_spec not in HASH_ALGS:
        raise QimgError(f"Unsupported hash algorithm '{h.hash_spec}'")
    if h.ivgen == "essiv" and (h.ivhash or "") not in HASH_ALGS:
        raise QimgError(f"Unsupported hash algorithm '{h.ivhash}'")
    if h.key_bytes not in ((32, 48, 64) if h.mode == "xts" else (16, 24, 32)):
        raise QimgError(f"Invalid master key length {h.key_bytes}")
    for i, s in enumerate(h.slots):
        if s.active == SLOT_ACTIVE and s.iterations == 0:
            raise QimgError(f"Keyslot {i} iteration count is zero")


def info(h: Header) -> dict:
    """qemu-img's ``encrypt`` dictionary (key order as QEMU's JSON)."""
    slots = []
    for s in h.slots:
        if s.active == SLOT_ACTIVE:
            slots.append({"active": True, "iters": s.iterations, "key-offset": s.key_offset * SECTOR,
                          "stripes": s.stripes})
        else:
            slots.append({"active": False, "key-offset": s.key_offset * SECTOR})
    out: dict = {"ivgen-alg": h.ivgen}
    if h.ivhash:
        out["ivgen-hash-alg"] = h.ivhash
    out.update({"hash-alg": h.hash_spec, "cipher-alg": h.cipher_alg, "uuid": h.uuid, "format": "luks",
                "cipher-mode": h.mode, "slots": slots, "payload-offset": h.payload_offset * SECTOR,
                "master-key-iters": h.mk_iterations})
    return out


# ------------------------------------------------------------------ anti-forensic splitter
def _diffuse(data: bytes, hash_name: str) -> bytes:
    """Hash every digest-sized block of ``data`` with its big-endian index in front."""
    ds = _DIGEST_SIZES[hash_name]
    out = []
    for i in range(0, len(data), ds):
        block = data[i : i + ds]
        out.append(hashlib.new(hash_name, struct.pack(">I", i // ds) + block).digest()[: len(block)])
    return b"".join(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    d = bytes(key_bytes)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, material[i * key_bytes : (i + 1) * key_bytes]), hash_name)
    return _xor(d, material[(stripes - 1) * key_bytes : stripes * key_bytes])


def af_split(key: bytes, stripes: int, hash_name: str) -> bytes:
    import os

    n = len(key)
    rand = os.urandom(n * (stripes - 1))
    d = bytes(n)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, rand[i * n : (i + 1) * n]), hash_name)
    return rand + _xor(d, key)


def _pbkdf2(hash_name: str, secret: bytes, salt: bytes, iters: int, n: int) -> bytes:
    try:
        return hashlib.pbkdf2_hmac(hash_name, secret, salt, iters, n)
    except ValueError:
        raise QimgError(f"Hash algorithm '{hash_name}' is not supported by this Python") from None


# ------------------------------------------------------------------ ciphers
def sector_cipher(h: Header, key: bytes):
    """The volume's sector cipher under ``key`` (a :class:`qimg.cipher.SectorCipher`)."""
    try:
        from .cipher import SectorCipher
    except ImportError:
        raise QimgError("LUKS encryption needs the Python package 'cryptography'") from None
    ivgen = None if h.mode == "ecb" else h.ivgen
    return SectorCipher(key, h.mode, ivgen, h.ivhash)


def try_slot(h: Header, s: KeySlot, read: Callable[[int, int], bytes], passphrase: bytes) -> bytes | None:
    """The master key if ``passphrase`` opens active slot ``s``, else None."""
    n = h.key_bytes * s.stripes
    material = read(s.key_offset * SECTOR, n)
    if len(material) < n:
        raise QimgError("Cannot read key material: Input/output error")
    derived = _pbkdf2(h.hash_spec, passphrase, s.salt, s.iterations, h.key_bytes)
    split = sector_cipher(h, derived).decrypt(0, material)
    key = af_merge(split, h.key_bytes, s.stripes, h.hash_spec)
    digest = _pbkdf2(h.hash_spec, key, h.mk_salt, h.mk_iterations, DIGEST_LEN)
    return key if digest == h.mk_digest else None


def unlock(h: Header, read: Callable[[int, int], bytes], passphrase: bytes) -> bytes:
    """The master key, from the first active slot ``passphrase`` opens.

    ``read(offset, length)`` reads the volume relative to the start of the LUKS header."""
    validate_for_unlock(h)
    for s in h.slots:
        if s.active == SLOT_ACTIVE:
            key = try_slot(h, s, read, passphrase)
            if key is not None:
                return key
    raise QimgError("Invalid password, cannot unlock any keyslot")


def slot_entry_offset(index: int) -> int:
    """Byte offset of key slot ``index``'s 48-byte entry in the header."""
    return PHDR.size + index * SLOT.size


def new_keyslot(h: Header, index: int, master: bytes, passphrase: bytes, iter_time: int) -> tuple[bytes, bytes]:
    """(the slot's packed entry, its encrypted key material) holding ``master`` under ``passphrase``."""
    import os

    s = h.slots[index]
    iters = max(MIN_SLOT_ITERS, _iters(_iters_per_second(h.hash_spec, h.key_bytes), iter_time))
    salt = os.urandom(SALT_LEN)
    derived = _pbkdf2(h.hash_spec, passphrase, salt, iters, h.key_bytes)
    material = sector_cipher(h, derived).encrypt(0, af_split(master, STRIPES, h.hash_spec))
    return SLOT.pack(SLOT_ACTIVE, iters, salt, s.key_offset, STRIPES), material


def erased_keyslot(h: Header, index: int) -> tuple[bytes, bytes]:
    """(the inactive entry, random bytes to overwrite the old key material with)."""
    import os

    s = h.slots[index]
    return SLOT.pack(SLOT_INACTIVE, 0, bytes(SALT_LEN), s.key_offset, s.stripes), os.urandom(h.key_bytes * s.stripes)


# ------------------------------------------------------------------ create
class CreateParams:
    """Validated ``encrypt.*`` creation options (QEMU's defaults)."""

    def __init__(self, cipher_alg: str = "aes-256", cipher_mode: str = "xts", ivgen_alg: str = "plain64",
                 ivgen_hash_alg: str | None = None, hash_alg: str = "sha256", iter_time: int = 2000) -> None:
        self.cipher_alg = cipher_alg
        self.cipher_mode = cipher_mode
        self.ivgen_alg = ivgen_alg
        self.ivgen_hash_alg = ivgen_hash_alg
        self.hash_alg = hash_alg
        self.iter_time = iter_time

    @classmethod
    def from_options(cls, opts: dict, prefix: str = "encrypt.") -> "CreateParams":
        """Check the options as qemu-img does, in its order."""
        def get(name: str, choices: tuple[str, ...], default: str | None) -> str | None:
            v = opts.get(prefix + name)
            if v is None:
                return default
            if v not in choices:
                raise QimgError(f"Parameter '{name}' does not accept value '{v}'")
            return v

        p = cls(get("cipher-alg", CIPHER_ALGS, "aes-256"), get("cipher-mode", CIPHER_MODES, "xts"),
                get("ivgen-alg", IVGEN_ALGS, "plain64"), get("ivgen-hash-alg", HASH_ALGS, None),
                get("hash-alg", HASH_ALGS, "sha256"))
        it = opts.get(prefix + "iter-time")
        if it is not None:
            p.iter_time = int(it)
        return p

    def key_bytes(self) -> int:
        alg, _, bits = self.cipher_alg.partition("-")
        n = int(bits) // 8 if bits.isdigit() else 16
        return 2 * n if self.cipher_mode == "xts" else n

    def check_supported(self) -> None:
        """What qemu-img refuses, then what qimg cannot do (ciphers ``cryptography`` lacks)."""
        alg = self.cipher_alg.partition("-")[0]
        if self.cipher_mode == "xts" and alg not in ("aes", "serpent", "twofish"):
            raise QimgError(f"Unsupported cipher mode {self.cipher_mode}")
        if self.ivgen_alg == "essiv":
            ds = _DIGEST_SIZES[self.ivgen_hash_alg or "sha256"]
            if alg == "aes" and ds not in (16, 24, 32):
                raise QimgError(f"No AES cipher with key size {ds} available")
        if alg != "aes":
            raise QimgError(f"Cipher algorithm '{self.cipher_alg}' is not supported by qimg")
        if self.key_bytes() * STRIPES % SECTOR:
            # QEMU 7.2 aborts on key material that is not whole sectors (an assertion)
            raise QimgError(f"Cipher '{self.cipher_alg}' in {self.cipher_mode.upper()} mode makes key material "
                            "of partial sectors, which QEMU cannot use")
        if self.cipher_mode == "xts" and self.cipher_alg == "aes-192":
            raise QimgError("Cipher 'aes-192' in XTS mode is not supported by qimg (OpenSSL lacks AES-192-XTS)")

    def mode_string(self) -> str:
        if self.ivgen_alg == "essiv":
            return f"{self.cipher_mode}-essiv:{self.ivgen_hash_alg or 'sha256'}"
        return f"{self.cipher_mode}-{self.ivgen_alg}"


def payload_bytes(p: CreateParams) -> int:
    """Bytes of the LUKS area (header and 8 key slots) ``create`` makes for ``p``."""
    split = -(-p.key_bytes() * STRIPES // ALIGN) * ALIGN
    return ALIGN + NUM_SLOTS * split


def _iters_per_second(hash_name: str, key_bytes: int) -> float:
    """PBKDF2 rate on this machine (a short benchmark; QEMU measures for half a second)."""
    import time

    n = 1 << 10
    while True:
        t = time.process_time()
        _pbkdf2(hash_name, b"qimg-benchmark", bytes(SALT_LEN), n, key_bytes)
        dt = time.process_time() - t
        if dt >= 0.05 or n >= 1 << 24:
            return n / max(dt, 1e-6)
        n *= 2


def _iters(rate: float, iter_time: int) -> int:
    if iter_time <= 0:
        raise QimgError(f"PBKDF iterations {int(rate)} too large to scale: Numerical result out of range")
    return int(rate * iter_time / 1000)


def create(p: CreateParams, passphrase: bytes) -> tuple[bytes, bytes]:
    """(the LUKS area: header and key material, ``payload_offset`` bytes long; master key)."""
    import os
    import uuid as _uuid

    p.check_supported()
    kb = p.key_bytes()
    master = os.urandom(kb)
    # two benchmarks, as QEMU: the digest check derives 20 bytes, a slot key_bytes
    mk_iters = max(MIN_MK_ITERS, _iters(_iters_per_second(p.hash_alg, DIGEST_LEN), p.iter_time) // 8)
    rate = _iters_per_second(p.hash_alg, kb)
    mk_salt = os.urandom(SALT_LEN)
    digest = _pbkdf2(p.hash_alg, master, mk_salt, mk_iters, DIGEST_LEN)
    split_sectors = -(-kb * STRIPES // ALIGN) * ALIGN // SECTOR
    first = ALIGN // SECTOR
    payload = first + NUM_SLOTS * split_sectors
    area = bytearray(payload * SECTOR)
    slot_iters = max(MIN_SLOT_ITERS, _iters(rate, p.iter_time))
    salt = os.urandom(SALT_LEN)
    slots = []
    for i in range(NUM_SLOTS):
        off = first + i * split_sectors
        if i == 0:
            slots.append(SLOT.pack(SLOT_ACTIVE, slot_iters, salt, off, STRIPES))
        else:
            slots.append(SLOT.pack(SLOT_INACTIVE, 0, bytes(SALT_LEN), off, STRIPES))
    mode = p.mode_string()
    raw = PHDR.pack(MAGIC, 1, b"aes", mode.encode(), p.hash_alg.encode(), payload, kb, digest, mk_salt,
                    mk_iters, str(_uuid.uuid4()).encode()) + b"".join(slots)
    area[: len(raw)] = raw
    h = parse_header(raw)
    derived = _pbkdf2(p.hash_alg, passphrase, salt, slot_iters, kb)
    material = sector_cipher(h, derived).encrypt(0, af_split(master, STRIPES, p.hash_alg))
    area[first * SECTOR : first * SECTOR + len(material)] = material
    return bytes(area), master
