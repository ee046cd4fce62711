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
    try:
        return luks.info(luks.read_header(drv.file.pread(ext[0], luks.HEADER_SIZE)), with_format=True)
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

    # Encryption works on whole 512-byte sectors; host and guest offsets share their position
    # within a sector, so both widen alike. Writes of partial sectors read, patch and rewrite.
    def read_into(self, dfile: Any, host: int, guest: int, view: memoryview) -> None:
        """Read and decrypt the data stored at ``host`` (guest offset ``guest``) into ``view``."""
        head = host % SECTOR
        n = len(view)
        span = -(-(head + n) // SECTOR) * SECTOR
        raw = dfile.pread(host - head, span)
        if len(raw) < span:
            raw += bytes(span - len(raw))
        view[:] = memoryview(self.decrypt(host - head, guest - head, raw))[head : head + n]

    def write(self, dfile: Any, host: int, guest: int, data: Any) -> None:
        """Encrypt guest data and store it at ``host``."""
        n = len(data)
        head = host % SECTOR
        tail = -(host + n) % SECTOR
        if head or tail:
            buf = bytearray(head + n + tail)
            mv = memoryview(buf)
            if head:
                self.read_into(dfile, host - head, guest - head, mv[:SECTOR])
            if tail:
                self.read_into(dfile, host + n + tail - SECTOR, guest + n + tail - SECTOR, mv[-SECTOR:])
            mv[head : head + n] = data
            data = buf
        dfile.pwrite(host - head, self.encrypt(host - head, guest - head, data))


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
    if length < luks.HEADER_SIZE:
        raise QimgError("Request for data outside of extension header")
    hdr = luks.read_header(drv.file.pread(offset, luks.HEADER_SIZE))
    if hdr.payload_offset * SECTOR > length:
        # the key material must lie inside the clusters the extension names
        raise QimgError("LUKS payload is overlapping with the header")
    return hdr, offset, length


def _header_io(drv: "Qcow2Format", offset: int, length: int):
    """QEMU's read and write functions of the LUKS header inside the extension's clusters."""
    def read(off: int, n: int) -> bytes:
        if off + n > length:
            raise QimgError("Request for data outside of extension header")
        return drv.file.pread(offset + off, n)

    def write(off: int, data: bytes) -> None:
        if off + len(data) > length:
            raise QimgError("Request for data outside of extension header")
        drv.file.pwrite(offset + off, data)

    return read, write


def open_crypto(drv: "Qcow2Format", options: dict[str, Any]) -> Qcow2Crypto:
    """Unlock the image's encryption with the ``encrypt.key-secret`` passphrase (QEMU's open)."""
    h = drv.header
    fmt = options.get("encrypt.format")
    want = {1: "aes", 2: "luks"}[h.crypt_method]
    if fmt is not None and fmt != want:
        raise QimgError(f"Header reported '{want}' encryption format but options specify '{fmt}'")
    if h.crypt_method == 1:
        from qimg.secrets import get_secret

        key_id = options.get("encrypt.key-secret")
        if not key_id:
            raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
        secret = get_secret(key_id)
        try:
            from qimg.cipher import SectorCipher
        except ImportError:
            raise QimgError("AES-encrypted qcow2 images need the Python package 'cryptography'") from None
        key = secret.split(b"\0", 1)[0][:16].ljust(16, b"\0")
        return Qcow2Crypto(SectorCipher(key, "cbc", "plain64"), physical=False)
    from qimg import luks

    if _header_ext(drv) is None:
        raise QimgError("Missing CRYPTO header for crypt method 2")
    password = luks.require_secret(options, "encrypt.key-secret")
    hdr, offset, length = read_luks_header(drv)
    read, _write = _header_io(drv, offset, length)
    master = luks.unlock(hdr, read, password)
    return Qcow2Crypto(luks.sector_cipher(hdr, master), physical=True, master=master)


def create_encryption(drv: "Qcow2Format", opts: dict[str, Any], fmt: str) -> None:
    """Set up encryption on a freshly created image (QEMU does this after sizing it)."""
    from qimg import luks

    h = drv.header
    password = luks.require_secret(opts, "encrypt.key-secret")
    if fmt == "aes":
        h.crypt_method = 1
        drv.update_header()
        return
    params = luks.CreateParams.from_options(opts, "encrypt.")
    area, _master = luks.create(params, password)
    cs = drv.cluster_size
    n = -(-len(area) // cs)
    off = drv.refcounts.alloc(n)
    drv.refcounts.cache.flush()
    # the clusters are written whole (zeroes after the area), as QEMU zero-fills them first
    drv.file.pwrite(off, area + bytes(n * cs - len(area)))
    h.crypt_method = 2
    h.crypto_header = struct.pack(">QQ", off, len(area))
    drv.flush_caches()
    drv.update_header()


def amend_encryption(drv: "Qcow2Format", opts: dict[str, Any], force: bool) -> None:
    """``amend -o encrypt.state=active|inactive,...``: add or erase LUKS key slots (QEMU's rules
    and messages, :func:`qimg.luks.amend_keyslots`). The master key is the one the image was
    opened (unlocked) with."""
    from qimg import luks

    if drv.header.crypt_method != 2:
        raise QimgError("Only LUKS encryption options can be amended")
    if opts.get("encrypt.state") is None:
        raise QimgError("Parameter 'state' is missing")
    crypt = drv.crypt
    if crypt is None or crypt.master is None:
        raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
    hdr, offset, length = read_luks_header(drv)
    read, write = _header_io(drv, offset, length)
    luks.amend_keyslots(hdr, read, write, crypt.master, opts, force=force, prefix="encrypt.")
    drv.file.flush()
