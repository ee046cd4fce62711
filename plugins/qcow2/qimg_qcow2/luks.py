"""qcow2 encryption: the LUKS header (``crypt_method`` 2, header extension 0x0537BE77 naming the
clusters that hold it) and legacy AES-CBC (``crypt_method`` 1).

``info`` only decodes the header (no key material, no ``cryptography``). Opening for I/O
unlocks a key slot with the ``encrypt.key-secret`` passphrase (:func:`open_crypto`).

Sector numbers of the per-sector IVs, as QEMU (checked by experiment: qemu-io writes known
data, the host cluster is decrypted both ways): LUKS counts 512-byte sectors of the *host*
offset in the image file, legacy AES the *guest* offset.
"""
from __future__ import annotations

import struct

from qimg.errors import QimgError

TYPE_CHECKING = False  # typing costs start-up time (info imports this module)
if TYPE_CHECKING:
    from typing import Any

    from .driver import Qcow2Format

SECTOR = 512


def _header_ext(drv: "Qcow2Format") -> tuple[int, int] | None:
    ch = drv.header.crypto_header
    if ch is None or len(ch) != 16:
        return None
    return struct.unpack(">QQ", ch)


def luks_info(drv: "Qcow2Format") -> dict[str, Any] | None:
    """qemu-img's ``encrypt`` dict for a LUKS-encrypted qcow2 image (None if unreadable)."""
    from qimg import luks

    ext = _header_ext(drv)
    if ext is None:
        return None
    raw = drv.file.pread(ext[0], luks.HEADER_SIZE)
    try:
        return luks.info(luks.parse_header(raw))
    except QimgError:
        return None


class Qcow2Crypto:
    """Encrypts/decrypts data clusters; holds only immutable cipher objects (thread-safe)."""

    def __init__(self, cipher: Any, physical: bool, master: bytes | None = None) -> None:
        self.cipher = cipher
        self.physical = physical  # LUKS: IVs from host sectors; AES: from guest sectors
        self.master = master  # LUKS master key (amend writes new key slots with it)

    def decrypt(self, host: int, guest: int, data: bytes | bytearray | memoryview) -> bytes:
        return self.cipher.decrypt((host if self.physical else guest) // SECTOR, data)

    def encrypt(self, host: int, guest: int, data: bytes | bytearray | memoryview) -> bytes:
        return self.cipher.encrypt((host if self.physical else guest) // SECTOR, data)


def _secret(options: dict[str, Any]) -> bytes:
    from qimg.secrets import get_secret

    key_id = options.get("encrypt.key-secret")
    if not key_id:
        raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
    return get_secret(key_id)


def check_plain_options(options: dict[str, Any]) -> None:
    """An unencrypted image opened with ``encrypt.format`` (QEMU refuses; a bare secret is fine)."""
    fmt = options.get("encrypt.format")
    if fmt is not None:
        raise QimgError(f"No encryption in image header, but options specified format '{fmt}'")


def read_luks_header(drv: "Qcow2Format") -> tuple[Any, int, int]:
    """(parsed and checked LUKS header, its offset, the extension's length): QEMU's checks on
    every open of a LUKS-encrypted qcow2 image, ``info``'s too."""
    from qimg import luks

    ext = _header_ext(drv)
    if ext is None:
        raise QimgError("Missing CRYPTO header for crypt method 2")
    offset, length = ext
    hdr = luks.parse_header(drv.file.pread(offset, luks.HEADER_SIZE))
    luks.check_header(hdr)
    if hdr.payload_offset * SECTOR > length:
        # the key material must lie inside the clusters the extension names
        raise QimgError("LUKS payload is overlapping with the header")
    return hdr, offset, length


def open_crypto(drv: "Qcow2Format", options: dict[str, Any]) -> Qcow2Crypto:
    """Unlock the image's encryption with the ``encrypt.key-secret`` passphrase (QEMU's open)."""
    h = drv.header
    fmt = options.get("encrypt.format")
    want = {1: "aes", 2: "luks"}[h.crypt_method]
    if fmt is not None and fmt != want:
        raise QimgError(f"Header reported '{want}' encryption format but options specify '{fmt}'")
    if h.crypt_method == 1:
        secret = _secret(options)
        try:
            from qimg.cipher import SectorCipher
        except ImportError:
            raise QimgError("AES-encrypted qcow2 images need the Python package 'cryptography'") from None
        key = secret.split(b"\0", 1)[0][:16].ljust(16, b"\0")
        return Qcow2Crypto(SectorCipher(key, "cbc", "plain64"), physical=False)
    from qimg import luks

    if _header_ext(drv) is None:
        raise QimgError("Missing CRYPTO header for crypt method 2")
    secret = _secret(options)
    hdr, offset, length = read_luks_header(drv)

    def read(off: int, n: int) -> bytes:
        if off + n > length:
            return b""
        return drv.file.pread(offset + off, n)

    master = luks.unlock(hdr, read, secret)
    return Qcow2Crypto(luks.sector_cipher(hdr, master), physical=True, master=master)


def create_encryption(drv: "Qcow2Format", opts: dict[str, Any], fmt: str) -> None:
    """Set up encryption on a freshly created image (QEMU does this after sizing it)."""
    h = drv.header
    secret = _secret(opts)
    if fmt == "aes":
        h.crypt_method = 1
        drv.update_header()
        return
    from qimg import luks

    params = luks.CreateParams.from_options(opts)
    area, _master = luks.create(params, secret)
    cs = drv.cluster_size
    n = -(-len(area) // cs)
    off = drv.alloc_clusters(n)
    drv.refblock_cache.flush()
    # the clusters are written whole (zeroes after the area), as QEMU zero-fills them first
    drv.file.pwrite(off, area + bytes(n * cs - len(area)))
    h.crypt_method = 2
    h.crypto_header = struct.pack(">QQ", off, len(area))
    drv.flush_caches()
    drv.update_header()


def amend_encryption(drv: "Qcow2Format", opts: dict[str, Any], force: bool) -> None:
    """``amend -o encrypt.state=active|inactive,...``: add or erase LUKS key slots (QEMU's rules
    and messages). The master key is the one the image was opened (unlocked) with."""
    from qimg import luks
    from qimg.secrets import get_secret

    if drv.header.crypt_method != 2:
        raise QimgError("Only LUKS encryption options can be amended")
    state = opts.get("encrypt.state")
    if state is None:
        raise QimgError("Parameter 'state' is missing")
    if state not in ("active", "inactive"):
        raise QimgError(f"Parameter 'state' does not accept value '{state}'")
    crypt = drv._crypt
    if crypt is None or crypt.master is None:
        raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
    offset, length = _header_ext(drv) or (0, 0)
    hdr = luks.parse_header(drv.file.pread(offset, luks.HEADER_SIZE))
    keyslot = opts.get("encrypt.keyslot")
    if keyslot is not None:
        keyslot = int(keyslot)
        if not 0 <= keyslot < luks.NUM_SLOTS:
            raise QimgError(f"Invalid keyslot {keyslot & 0xFFFFFFFF} specified, must be between 0 and 7")

    def read(off: int, n: int) -> bytes:
        return drv.file.pread(offset + off, n) if off + n <= length else b""

    def write_slot(index: int, entry: bytes, material: bytes) -> None:
        # key material first, then the entry that makes it count (or no longer count)
        if not erase:
            drv.file.pwrite(offset + hdr.slots[index].key_offset * SECTOR, material)
        drv.file.pwrite(offset + luks.slot_entry_offset(index), entry)
        if erase:
            drv.file.pwrite(offset + hdr.slots[index].key_offset * SECTOR, material)

    active = [i for i, sl in enumerate(hdr.slots) if sl.active == luks.SLOT_ACTIVE]
    if state == "active":
        erase = False
        if opts.get("encrypt.old-secret") is not None:
            raise QimgError("'old-secret' must not be given when activating keyslots")
        new_id = opts.get("encrypt.new-secret")
        if not new_id:
            raise QimgError("'new-secret' is required to activate a keyslot")
        if keyslot is None:
            free = [i for i in range(luks.NUM_SLOTS) if i not in active]
            if not free:
                raise QimgError("Can't add a keyslot - all keyslots are in use")
            keyslot = free[0]
        elif keyslot in active and not force:
            raise QimgError(f"Refusing to overwrite active keyslot {keyslot} - please erase it first")
        secret = get_secret(new_id)
        it = opts.get("encrypt.iter-time")
        entry, material = luks.new_keyslot(hdr, keyslot, crypt.master, secret, 2000 if it is None else int(it))
        write_slot(keyslot, entry, material)
    else:
        erase = True
        if opts.get("encrypt.new-secret") is not None:
            raise QimgError("'new-secret' must not be given when erasing keyslots")
        old_id = opts.get("encrypt.old-secret")
        old = get_secret(old_id) if old_id is not None else None
        if keyslot is not None:
            if keyslot not in active:
                raise QimgError(f"Given keyslot {keyslot} is already erased (inactive) ")
            if old is not None and luks.try_slot(hdr, hdr.slots[keyslot], read, old) is None:
                raise QimgError(f"Given keyslot {keyslot} doesn't contain the given old password for erase operation")
            if active == [keyslot] and not force:
                raise QimgError(f"Attempt to erase the only active keyslot {keyslot} which will erase all the data "
                                "in the image irreversibly - refusing operation")
            victims = [keyslot]
        elif old is not None:
            victims = [i for i in active if luks.try_slot(hdr, hdr.slots[i], read, old) is not None]
            if not victims:
                raise QimgError("No keyslots match given (old) password for erase operation")
            if len(victims) == len(active) and not force:
                raise QimgError("All the active keyslots match the (old) password that was given and erasing them "
                                "will erase all the data in the image irreversibly - refusing operation")
        else:
            raise QimgError("To erase keyslot(s), either explicit keyslot index or the password currently "
                            "contained in them must be given")
        for i in victims:
            write_slot(i, *luks.erased_keyslot(hdr, i))
    drv.file.flush()
