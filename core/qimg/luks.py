"""LUKS1 volumes (the "LUKS On-Disk Format Specification" 1.2.x) as QEMU's qcrypto block layer
reads and writes them: raw ``luks`` images and the LUKS header inside encrypted qcow2 images.
The one implementation both the luks and the qcow2 plugins use.

Parsing, validation and ``info`` import nothing heavy. Unlocking a key slot, creating a
header and amending key slots need :mod:`qimg.cipher` (``cryptography``), imported only then.

Layout: a 592-byte header (magic, version 1, cipher name/mode, hash spec, payload offset in
512-byte sectors, master key length, master key digest, its salt and PBKDF2 iterations, UUID)
and 8 key slots (state, PBKDF2 iterations, salt, key material offset in sectors, AF stripes).
A slot's key material is the master key split by the anti-forensic splitter into ``stripes``
stripes, encrypted with the volume's cipher under the PBKDF2 of the passphrase (sector numbers
counted from the start of the key material). Payload sector ``n`` (counted from the payload
offset) is encrypted with IV ``n``.

Messages, checks and their order are QEMU's (crypto/block-luks.c); where qimg cannot do what
QEMU does (ciphers other than AES, which ``cryptography`` lacks in the modes LUKS uses) it says
so after QEMU's own checks.
"""
from __future__ import annotations

import hashlib
import struct

from . import compat
from .errors import QimgError, bad_value, missing_parameter
from .records import Record

TYPE_CHECKING = False  # typing costs start-up time (info imports this module)
if TYPE_CHECKING:
    from collections.abc import Callable

    ReadFn = Callable[[int, int], bytes]
    WriteFn = Callable[[int, bytes], None]

#: the first bytes of every LUKS volume (any version)
MAGIC = b"LUKS\xba\xbe"
VERSION = 1
SECTOR = 512
NUM_SLOTS = 8
STRIPES = 4000
DIGEST_LEN = 20
SALT_LEN = 32
SLOT_ACTIVE = 0x00AC71F3
SLOT_INACTIVE = 0x0000DEAD
#: where QEMU puts the first key material (bytes); also its alignment unit of key material
KEY_SLOT_OFFSET = 4096
HEADER_SECTORS = KEY_SLOT_OFFSET // SECTOR
MIN_SLOT_ITERS = 1000
MIN_MK_ITERS = 1000
DEFAULT_ITER_TIME = 2000
#: how often QEMU overwrites the key material of an erased slot
ERASE_ITERATIONS = 40

KeySlot = Record(
    ">",
    ("active", "I"),
    ("iterations", "I"),
    ("salt", "32s"),
    ("key_offset", "I"),  # sectors from the start of the header
    ("stripes", "I"),
    name="LUKS key slot",
)

PHDR = Record(
    ">",
    ("magic", "6s"),
    ("version", "H"),
    ("cipher_name", "32s"),
    ("cipher_mode", "32s"),
    ("hash_spec", "32s"),
    ("payload_offset", "I"),  # sectors
    ("key_bytes", "I"),
    ("mk_digest", "20s"),
    ("mk_salt", "32s"),
    ("mk_iterations", "I"),
    ("uuid", "40s"),
    ("slots", (KeySlot, NUM_SLOTS)),
    name="LUKS header",
)
HEADER_SIZE = PHDR.size  # 592
#: byte offset of the first key slot entry in the header
SLOTS_OFFSET = HEADER_SIZE - NUM_SLOTS * KeySlot.size

# -- QEMU's names ------------------------------------------------------------------------
#: cipher names in the header -> key sizes QEMU knows (its LUKS cipher name map)
_CIPHER_SIZES = {"aes": (16, 24, 32), "cast5": (16,), "serpent": (16, 24, 32), "twofish": (16, 24, 32)}
CIPHER_MODES = ("ecb", "cbc", "xts", "ctr")
IVGEN_ALGS = ("plain", "plain64", "essiv")
_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "ripemd160": 20,
                 "sm3": 32}


def cipher_algs() -> tuple[str, ...]:
    """QEMU's QCryptoCipherAlgo values in the selected profile (10.0 adds sm4)."""
    base = ("aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128", "serpent-192",
            "serpent-256", "twofish-128", "twofish-192", "twofish-256")
    return base + ("sm4",) if compat.has("qcrypto-sm3-sm4") else base


def hash_algs() -> tuple[str, ...]:
    """QEMU's QCryptoHashAlgo values in the selected profile (10.0 adds sm3)."""
    base = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
    return base + ("sm3",) if compat.has("qcrypto-sm3-sm4") else base


def _key_len(alg: str) -> int:
    """Key bytes of one of QEMU's cipher algorithms."""
    if alg == "des":
        return 8
    if alg == "3des":
        return 24
    if alg == "sm4":
        return 16
    return int(alg.rpartition("-")[2]) // 8


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ header
class Header:
    """A LUKS1 header: the record's fields plus what QEMU derives from them on open
    (``mode``, ``ivgen``, ``ivhash``, ``cipher_alg``, ``hash_alg``)."""

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw[:HEADER_SIZE]).ljust(HEADER_SIZE, b"\0")
        self.raw = raw
        f = PHDR.parse(raw)
        self.fields = f
        self.magic: bytes = f.magic
        self.version: int = f.version
        self.payload_offset: int = f.payload_offset
        self.key_bytes: int = f.key_bytes
        self.mk_digest: bytes = f.mk_digest
        self.mk_salt: bytes = f.mk_salt
        self.mk_iterations: int = f.mk_iterations
        self.cipher_name = _cstr(f.cipher_name)
        self.cipher_mode = _cstr(f.cipher_mode)
        self.hash_spec = _cstr(f.hash_spec)
        self.uuid = _cstr(f.uuid)
        self.slots = f.slots
        # set by parse_params
        self.mode = self.ivgen = self.cipher_alg = self.hash_alg = ""
        self.ivhash: str | None = None

    def build(self) -> bytes:
        """The 592 header bytes for the current field values (slots included)."""
        return PHDR.build(self.fields)

    def active(self, index: int) -> bool:
        return self.slots[index].active == SLOT_ACTIVE

    def active_slots(self) -> list[int]:
        return [i for i in range(NUM_SLOTS) if self.active(i)]


def has_format(head: bytes) -> bool:
    """QEMU's probe: the magic and version 1 (a LUKS2 volume is not a ``luks`` image)."""
    return len(head) >= 8 and head[:6] == MAGIC and head[6:8] == b"\0\1"


def split_sectors(key_bytes: int, stripes: int) -> int:
    """Sectors of a slot's key material as QEMU counts them (rounded up to 4 KiB)."""
    n = -(-key_bytes * stripes // SECTOR)
    return -(-n // HEADER_SECTORS) * HEADER_SECTORS


def check_header(h: Header, detached: bool = False) -> None:
    """QEMU's sanity checks on every open (``info`` too: the fields are untrusted), in its order."""
    if h.magic != MAGIC:
        raise QimgError("Volume is not in LUKS format")
    if h.version != VERSION:
        raise QimgError(f"LUKS version {h.version} is not supported")
    f = h.fields
    if b"\0" not in f.cipher_name:
        raise QimgError("LUKS header cipher name is not NUL terminated")
    if b"\0" not in f.cipher_mode:
        raise QimgError("LUKS header cipher mode is not NUL terminated")
    if b"\0" not in f.hash_spec:
        raise QimgError("LUKS header hash spec is not NUL terminated")
    if not detached and h.payload_offset < HEADER_SECTORS:
        raise QimgError("LUKS payload is overlapping with the header")
    if h.mk_iterations == 0:
        raise QimgError("LUKS key iteration count is zero")
    # QEMU's arithmetic: lengths truncated to 32 bits, sums of unsigned 32-bit numbers
    spans = [(s.key_offset, split_sectors(h.key_bytes, s.stripes) & 0xFFFFFFFF) for s in h.slots]
    for i, s in enumerate(h.slots):
        start, n = spans[i]
        if s.stripes != STRIPES:
            # QEMU prints the stripes with %d
            got = s.stripes - (1 << 32) if s.stripes >= 1 << 31 else s.stripes
            raise QimgError(f"Keyslot {i} is corrupted (stripes {got} != {STRIPES})")
        if s.active not in (SLOT_ACTIVE, SLOT_INACTIVE):
            raise QimgError(f"Keyslot {i} state (active/disable) is corrupted")
        if s.active == SLOT_ACTIVE and s.iterations == 0:
            raise QimgError(f"Keyslot {i} iteration count is zero")
        if start < HEADER_SECTORS:
            raise QimgError(f"Keyslot {i} is overlapping with the LUKS header")
        if not detached and (start + n) & 0xFFFFFFFF > h.payload_offset:
            raise QimgError(f"Keyslot {i} is overlapping with the encrypted payload")
        for j in range(i + 1, NUM_SLOTS):
            s2, n2 = spans[j]
            if _overlap(start, n, s2, n2):
                raise QimgError(f"Keyslots {i} and {j} are overlapping in the header")


def _overlap(s1: int, n1: int, s2: int, n2: int) -> bool:
    """Whether two key material ranges overlap, as QEMU computes it (10.0: 64-bit last sectors;
    7.2: 32-bit ends)."""
    if compat.has("luks-ranges-overlap"):
        m = 0xFFFFFFFFFFFFFFFF
        last1, last2 = (s1 + n1 - 1) & m, (s2 + n2 - 1) & m
        return not (last2 < s1 or last1 < s2)
    m = 0xFFFFFFFF
    return (s1 + n1) & m > s2 and (s2 + n2) & m > s1


def _lookup(kind: str, name: str, choices: tuple[str, ...]) -> str:
    if name not in choices:
        raise QimgError(f"{kind} '{name}' not supported")
    return name


def _essiv_cipher(cipher_alg: str, hash_name: str) -> str:
    """The cipher ESSIV uses: the volume's family, keyed by the whole hash digest (dm-crypt)."""
    digest = _DIGEST_SIZES[hash_name]
    if digest == _key_len(cipher_alg):
        return cipher_alg
    family = cipher_alg.partition("-")[0]
    if family in ("aes", "serpent", "twofish"):
        if digest in (16, 24, 32):
            return f"{family}-{digest * 8}"
        pretty = {"aes": "AES", "serpent": "Serpent", "twofish": "Twofish"}[family]
        raise QimgError(f"No {pretty} cipher with key size {digest} available")
    raise QimgError(f"Cipher {cipher_alg} not supported with essiv")


def parse_params(h: Header) -> None:
    """QEMU's parse of the cipher mode string (``<mode>-<ivgen>[:<hash>]``), cipher name, key size
    and hashes, with its messages; fills ``h.mode``, ``h.ivgen``, ``h.ivhash``, ``h.cipher_alg``,
    ``h.hash_alg``."""
    mode, sep, ivgen = h.cipher_mode.partition("-")
    if not sep:
        raise QimgError(f"Unexpected cipher mode string format '{h.cipher_mode}'")
    ivgen, sep, ivhash = ivgen.partition(":")
    hashes = hash_algs()
    h.ivhash = _lookup("Hash algorithm", ivhash, hashes) if sep else None
    h.mode = _lookup("Cipher mode", mode, CIPHER_MODES)
    key = h.key_bytes // 2 if h.mode == "xts" else h.key_bytes
    if key not in _CIPHER_SIZES.get(h.cipher_name, ()):
        raise QimgError(f"Algorithm '{h.cipher_name}' with key size {key & 0xFFFFFFFF} bytes not supported")
    h.cipher_alg = "cast5-128" if h.cipher_name == "cast5" else f"{h.cipher_name}-{key * 8}"
    h.hash_alg = _lookup("Hash algorithm", h.hash_spec, hashes)
    h.ivgen = _lookup("IV generator", ivgen, IVGEN_ALGS)
    if h.ivgen == "essiv":
        if h.ivhash is None:
            raise QimgError("Missing IV generator hash specification")
        _essiv_cipher(h.cipher_alg, h.ivhash)


def read_header(raw: bytes, *, detached: bool = False) -> Header:
    """Parse and validate the first 592 bytes of a LUKS volume as QEMU's open does (short
    input reads as zeroes, as a short file does in QEMU)."""
    h = Header(raw)
    check_header(h, detached)
    parse_params(h)
    return h


def info(h: Header, *, with_format: bool = False, detached: bool = False) -> dict:
    """qemu-img's LUKS information (QCryptoBlockInfoLUKS, keys in the schema's order); with
    ``with_format`` the union's ``format`` member first (qcow2's ``encrypt`` dictionary)."""
    out: dict = {"format": "luks"} if with_format else {}
    out["cipher-alg"] = h.cipher_alg
    out["cipher-mode"] = h.mode
    out["ivgen-alg"] = h.ivgen
    if h.ivgen == "essiv" and h.ivhash:
        out["ivgen-hash-alg"] = h.ivhash
    out["hash-alg"] = h.hash_alg
    if compat.has("luks-detached-header"):
        out["detached-header"] = detached
    out["payload-offset"] = h.payload_offset * SECTOR
    out["master-key-iters"] = h.mk_iterations
    out["uuid"] = h.uuid
    slots = []
    for s in h.slots:
        if s.active == SLOT_ACTIVE:
            slots.append({"active": True, "iters": s.iterations, "stripes": s.stripes,
                          "key-offset": s.key_offset * SECTOR})
        else:
            slots.append({"active": False, "key-offset": s.key_offset * SECTOR})
    out["slots"] = slots
    return out


# ------------------------------------------------------------------ secrets
def passphrase(secret_id: str) -> bytes:
    """A secret as QEMU's LUKS code takes it: valid UTF-8 without NUL bytes."""
    from .secrets import get_secret

    data = get_secret(secret_id)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        data = b"\0"
    if b"\0" in data:
        raise QimgError(f"Data from secret {secret_id} is not valid UTF-8")
    return data


def require_secret(options: dict, key: str = "key-secret") -> bytes:
    """The passphrase the open option ``key`` names (QEMU's message names the option)."""
    ident = options.get(key)
    if not ident:
        raise QimgError(f"Parameter '{key}' is required for cipher")
    return passphrase(ident)


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
def check_cipher(cipher_alg: str, mode: str) -> None:
    """What qimg cannot do that QEMU can: ciphers other than AES (``cryptography`` has no
    Serpent or Twofish, and no CAST5 in the sector modes)."""
    if not cipher_alg.startswith("aes-"):
        raise QimgError(f"Cipher algorithm '{cipher_alg}' is not supported by qimg")


def sector_cipher(h: Header, key: bytes):
    """The volume's sector cipher under ``key`` (a :class:`qimg.cipher.SectorCipher`)."""
    check_cipher(h.cipher_alg, h.mode)
    try:
        from .cipher import SectorCipher
    except ImportError:
        raise QimgError("LUKS encryption needs the Python package 'cryptography'") from None
    ivgen = None if h.mode == "ecb" else h.ivgen
    return SectorCipher(key, h.mode, ivgen, h.ivhash)


def load_key(h: Header, index: int, read: ReadFn, password: bytes) -> bytes | None:
    """The master key if ``password`` opens slot ``index`` (active), else None (QEMU's load_key)."""
    s = h.slots[index]
    if s.active != SLOT_ACTIVE:
        return None
    n = h.key_bytes * s.stripes
    derived = _pbkdf2(h.hash_alg, password, s.salt, s.iterations, h.key_bytes)
    material = read(s.key_offset * SECTOR, n)
    if len(material) < n:
        material = material.ljust(n, b"\0")
    split = sector_cipher(h, derived).decrypt(0, material)
    key = af_merge(split, h.key_bytes, s.stripes, h.hash_alg)
    digest = _pbkdf2(h.hash_alg, key, h.mk_salt, h.mk_iterations, DIGEST_LEN)
    return key if digest == h.mk_digest else None


def unlock(h: Header, read: ReadFn, password: bytes) -> bytes:
    """The master key, from the first active slot ``password`` opens (QEMU's find_key).

    ``read(offset, length)`` reads the volume relative to the start of the LUKS header."""
    check_cipher(h.cipher_alg, h.mode)
    for i in range(NUM_SLOTS):
        key = load_key(h, i, read, password)
        if key is not None:
            return key
    raise QimgError("Invalid password, cannot unlock any keyslot")


# ------------------------------------------------------------------ PBKDF2 iteration counts
def _iters_per_second(hash_name: str, key_bytes: int) -> int:
    """PBKDF2 iterations per second on this machine (QEMU measures for half a second of CPU;
    a shorter benchmark gives the same order of magnitude)."""
    import time

    n = 1 << 10
    while True:
        t = time.process_time()
        _pbkdf2(hash_name, b"qimg-benchmark", bytes(SALT_LEN), n, key_bytes)
        dt = time.process_time() - t
        if dt >= 0.05 or n >= 1 << 24:
            return int(n / max(dt, 1e-6))
        n *= 2


def scaled_iters(rate: int, iter_time: int) -> int:
    """``rate * iter_time / 1000`` with QEMU's range errors (``iter_time`` is an unsigned 64-bit
    number there: a negative one is huge)."""
    t = iter_time & 0xFFFFFFFFFFFFFFFF
    if t and rate > (0xFFFFFFFFFFFFFFFF // t):
        raise QimgError(f"PBKDF iterations {rate} too large to scale: Numerical result out of range")
    return rate * t // 1000


def _slot_iters(hash_name: str, key_bytes: int, iter_time: int) -> int:
    iters = scaled_iters(_iters_per_second(hash_name, key_bytes), iter_time)
    if iters > 0xFFFFFFFF:
        raise QimgError(f"PBKDF iterations {iters} larger than {0xFFFFFFFF}: Numerical result out of range")
    return max(iters, MIN_SLOT_ITERS)


def store_key(h: Header, index: int, master: bytes, password: bytes, iter_time: int) -> bytes:
    """Fill slot ``index`` of ``h`` (active, new salt and iterations) holding ``master`` under
    ``password``; returns its encrypted key material (``key_bytes * stripes`` bytes)."""
    import os

    s = h.slots[index]
    s.salt = os.urandom(SALT_LEN)
    s.iterations = _slot_iters(h.hash_alg, h.key_bytes, iter_time)
    derived = _pbkdf2(h.hash_alg, password, s.salt, s.iterations, h.key_bytes)
    material = sector_cipher(h, derived).encrypt(0, af_split(master, s.stripes, h.hash_alg))
    s.active = SLOT_ACTIVE
    return material


# ------------------------------------------------------------------ create
class CreateParams:
    """Validated LUKS creation options (QEMU's defaults)."""

    def __init__(self, cipher_alg: str = "aes-256", cipher_mode: str = "xts", ivgen_alg: str = "plain64",
                 ivgen_hash_alg: str | None = None, hash_alg: str = "sha256",
                 iter_time: int = DEFAULT_ITER_TIME) -> None:
        self.cipher_alg = cipher_alg
        self.cipher_mode = cipher_mode
        self.ivgen_alg = ivgen_alg
        if ivgen_alg == "essiv" and ivgen_hash_alg is None:
            ivgen_hash_alg = "sha256"
        self.ivgen_hash_alg = ivgen_hash_alg
        self.hash_alg = hash_alg
        self.iter_time = iter_time

    @classmethod
    def from_options(cls, opts: dict, prefix: str = "") -> "CreateParams":
        """Check the option values as QEMU's option visitor does, in its order (``prefix``:
        ``"encrypt."`` for qcow2's options; the messages name the option without it)."""
        def get(name: str, choices: tuple[str, ...], default: str | None) -> str | None:
            v = opts.get(prefix + name)
            if v is None:
                return default
            if v not in choices:
                raise bad_value(name, v)
            return v

        hashes = hash_algs()
        p = cls(get("cipher-alg", cipher_algs(), "aes-256"), get("cipher-mode", CIPHER_MODES, "xts"),
                get("ivgen-alg", IVGEN_ALGS, "plain64"), get("ivgen-hash-alg", hashes, None),
                get("hash-alg", hashes, "sha256"))
        it = opts.get(prefix + "iter-time")
        if it is not None:
            p.iter_time = int(it)
        return p

    def key_bytes(self) -> int:
        n = _key_len(self.cipher_alg)
        return 2 * n if self.cipher_mode == "xts" else n

    def mode_string(self) -> str:
        """The header's cipher mode (QEMU writes a given IV hash even for plain/plain64)."""
        if self.ivgen_hash_alg is not None:
            return f"{self.cipher_mode}-{self.ivgen_alg}:{self.ivgen_hash_alg}"
        return f"{self.cipher_mode}-{self.ivgen_alg}"

    def check_qemu(self) -> None:
        """QEMU's refusals after the option checks, in its order (what its measure checks too)."""
        family = self.cipher_alg.partition("-")[0]
        if family not in _CIPHER_SIZES:
            raise QimgError(f"Algorithm '{self.cipher_alg}' not supported")
        if self.ivgen_alg == "essiv":
            _essiv_cipher(self.cipher_alg, self.ivgen_hash_alg or "sha256")
        if self.cipher_mode == "xts" and family not in ("aes", "serpent", "twofish"):
            raise QimgError(f"Unsupported cipher mode {self.cipher_mode}")
        if self.key_bytes() * STRIPES % SECTOR:
            # QEMU aborts on key material that is not whole sectors (an assertion)
            raise QimgError(f"Cipher '{self.cipher_alg}' in {self.cipher_mode.upper()} mode makes key material "
                            "of partial sectors, which QEMU cannot use")

    def check_iter_time(self) -> None:
        """QEMU's range error for an ``iter-time`` whose scaling overflows (a negative one: it is
        unsigned there), without a benchmark when no rate could overflow it."""
        if self.iter_time & 0xFFFFFFFFFFFFFFFF > 1 << 40:
            scaled_iters(_iters_per_second(self.hash_alg, DIGEST_LEN), self.iter_time)

    def check_supported(self) -> None:
        """QEMU's refusals, then what qimg cannot do (ciphers other than AES)."""
        self.check_qemu()
        check_cipher(self.cipher_alg, self.cipher_mode)


def layout(p: CreateParams) -> tuple[list[int], int]:
    """(key material offset of each slot, payload offset), in sectors, as QEMU lays them out."""
    n = split_sectors(p.key_bytes(), STRIPES)
    return [HEADER_SECTORS + i * n for i in range(NUM_SLOTS)], HEADER_SECTORS + NUM_SLOTS * n


def payload_bytes(p: CreateParams) -> int:
    """Bytes of the LUKS area (header and 8 key slots) ``create`` makes for ``p``."""
    return layout(p)[1] * SECTOR


def new_header(p: CreateParams, *, detached: bool = False) -> tuple[Header, bytes]:
    """(a header for ``p`` with every slot inactive and a new master key's digest, the master key):
    QEMU's create up to storing the first key slot (benchmarks included)."""
    import os
    import uuid as _uuid

    p.check_supported()
    kb = p.key_bytes()
    master = os.urandom(kb)
    mk_salt = os.urandom(SALT_LEN)
    # QEMU benchmarks the digest (20 bytes) and spends an eighth of the time (as cryptsetup)
    mk_iters = scaled_iters(_iters_per_second(p.hash_alg, DIGEST_LEN), p.iter_time) // 8
    if mk_iters > 0xFFFFFFFF:
        raise QimgError(f"PBKDF iterations {mk_iters} larger than {0xFFFFFFFF}: Numerical result out of range")
    mk_iters = max(mk_iters, MIN_MK_ITERS)
    offsets, payload = layout(p)
    slots = [dict(active=SLOT_INACTIVE, iterations=0, salt=bytes(SALT_LEN), key_offset=o, stripes=STRIPES)
             for o in offsets]
    raw = PHDR.build(dict(
        magic=MAGIC, version=VERSION, cipher_name=p.cipher_alg.partition("-")[0].encode().ljust(32, b"\0"),
        cipher_mode=p.mode_string().encode().ljust(32, b"\0"), hash_spec=p.hash_alg.encode().ljust(32, b"\0"),
        payload_offset=0 if detached else payload, key_bytes=kb,
        mk_digest=_pbkdf2(p.hash_alg, master, mk_salt, mk_iters, DIGEST_LEN), mk_salt=mk_salt,
        mk_iterations=mk_iters, uuid=str(_uuid.uuid4()).encode().ljust(40, b"\0"), slots=slots))
    return read_header(raw, detached=detached), master


def create(p: CreateParams, password: bytes, *, detached: bool = False) -> tuple[bytes, bytes]:
    """(the LUKS area: header and key material, up to the payload; the master key), slot 0
    holding the master key under ``password``."""
    h, master = new_header(p, detached=detached)
    area = bytearray(layout(p)[1] * SECTOR)
    material = store_key(h, 0, master, password, p.iter_time)
    off = h.slots[0].key_offset * SECTOR
    area[off : off + len(material)] = material
    area[:HEADER_SIZE] = h.build()
    return bytes(area), master


# ------------------------------------------------------------------ amend (key slots)
def amend_keyslots(h: Header, read: ReadFn, write: WriteFn, master: bytes, opts: dict, *, force: bool,
                   prefix: str = "") -> None:
    """``amend -o state=active|inactive,...``: add or erase key slots with QEMU's rules, messages
    and write order (key material, then the header that makes it count; the header, then the
    overwritten material). ``master`` is the key the volume was opened with; ``prefix`` the
    option names' (``"encrypt."`` in qcow2). ``h`` is updated."""
    state = opts.get(prefix + "state")
    if state is None:
        raise missing_parameter("state")
    if state not in ("active", "inactive"):
        raise bad_value("state", state)
    keyslot = opts.get(prefix + "keyslot")
    if keyslot is not None:
        keyslot = int(keyslot)
        # QAPI parses an int; QEMU prints it as int32 (%i) or unsigned (%u)
        keyslot = (keyslot + (1 << 31)) % (1 << 32) - (1 << 31)
    new_id = opts.get(prefix + "new-secret")
    old_id = opts.get(prefix + "old-secret")
    iter_time = opts.get(prefix + "iter-time")
    if state == "active":
        if new_id is None:
            raise QimgError("'new-secret' is required to activate a keyslot")
        if old_id is not None:
            raise QimgError("'old-secret' must not be given when activating keyslots")
        if keyslot is not None:
            if not 0 <= keyslot < NUM_SLOTS:
                raise QimgError(f"Invalid keyslot {keyslot & 0xFFFFFFFF} specified, must be between 0 and "
                                f"{NUM_SLOTS - 1}")
        else:
            free = [i for i in range(NUM_SLOTS) if not h.active(i)]
            if not free:
                raise QimgError("Can't add a keyslot - all keyslots are in use")
            keyslot = free[0]
        if not force and h.active(keyslot):
            raise QimgError(f"Refusing to overwrite active keyslot {keyslot} - please erase it first")
        password = passphrase(new_id)
        material = store_key(h, keyslot, master, password,
                             DEFAULT_ITER_TIME if iter_time is None else int(iter_time))
        write(h.slots[keyslot].key_offset * SECTOR, material)
        write(0, h.build())
        return
    if new_id is not None:
        raise QimgError("'new-secret' must not be given when erasing keyslots")
    if iter_time is not None:
        raise QimgError("'iter-time' must not be given when erasing keyslots")
    old = passphrase(old_id) if old_id is not None else None
    if keyslot is not None:
        if not 0 <= keyslot < NUM_SLOTS:
            raise QimgError(f"Invalid keyslot {keyslot} specified, must be between 0 and {NUM_SLOTS - 1}")
        if old is not None and load_key(h, keyslot, read, old) is None:
            raise QimgError(f"Given keyslot {keyslot} doesn't contain the given old password for erase operation")
        if not force and not h.active(keyslot):
            raise QimgError(f"Given keyslot {keyslot} is already erased (inactive) ")
        if not force and len(h.active_slots()) == 1:
            raise QimgError(f"Attempt to erase the only active keyslot {keyslot} which will erase all the data "
                            "in the image irreversibly - refusing operation")
        victims = [keyslot]
    elif old is not None:
        victims = [i for i in range(NUM_SLOTS) if load_key(h, i, read, old) is not None]
        if not victims:
            raise QimgError("No keyslots match given (old) password for erase operation")
        if not force and len(victims) == len(h.active_slots()):
            raise QimgError("All the active keyslots match the (old) password that was given and erasing them "
                            "will erase all the data in the image irreversibly - refusing operation")
    else:
        raise QimgError("To erase keyslot(s), either explicit keyslot index or the password currently "
                        "contained in them must be given")
    import os

    for i in victims:
        s = h.slots[i]
        s.salt = bytes(SALT_LEN)
        s.iterations = 0
        s.active = SLOT_INACTIVE
        write(0, h.build())
        n = h.key_bytes * s.stripes
        for _ in range(ERASE_ITERATIONS):
            write(s.key_offset * SECTOR, os.urandom(n))
