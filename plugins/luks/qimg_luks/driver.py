"""The luks format: a LUKS1 volume (header, 8 key slots, then the encrypted payload) as QEMU's
block/crypto.c driver sees it. The LUKS code is the core's :mod:`qimg.luks`.

Guest sector ``n`` is payload sector ``n``: the file holds it at ``payload_offset + n * 512``,
encrypted with IV ``n``. There is no allocation map: every sector is data (QEMU's driver has no
block status), zeroes are written encrypted, and a new image does not read as zeroes.

Opening reads and checks the header as QEMU does; every open but ``info``'s (``_no_io``) needs
the passphrase (``key-secret``) and unlocks the master key.
"""
from __future__ import annotations

from qimg import compat, luks
from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, SECTOR, Status
from qimg.driver import Format
from qimg.errors import QimgError
from qimg.options import BOOL, NUMBER, SIZE, STRING, Option

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: bytes encrypted or decrypted per pass (bounds the buffers of one request)
CHUNK = 1 << 20
INT64_MAX = (1 << 63) - 1

_CREATE_OPTS = [
    Option("size", SIZE, "Virtual disk size"),
    Option("key-secret", STRING, "ID of the secret that provides the keyslot passphrase"),
    Option("cipher-alg", STRING, "Name of encryption cipher algorithm"),
    Option("cipher-mode", STRING, "Name of encryption cipher mode"),
    Option("ivgen-alg", STRING, "Name of IV generator algorithm"),
    Option("ivgen-hash-alg", STRING, "Name of IV generator hash algorithm"),
    Option("hash-alg", STRING, "Name of encryption hash algorithm"),
    Option("iter-time", NUMBER, "Time to spend in PBKDF in milliseconds"),
]
_DETACHED = Option("detached-header", BOOL, "Create a detached LUKS header")


class _ProfileCreateOpts:
    """``LuksFormat.create_opts``: QEMU 10.0 adds ``detached-header`` (read per access, so the
    selected profile decides)."""

    def __get__(self, obj: object, owner: type | None = None) -> list[Option]:
        if compat.has("luks-detached-header"):
            return [*_CREATE_OPTS, _DETACHED]
        return list(_CREATE_OPTS)


class LuksFormat(Format):
    format_name = "luks"
    #: QEMU's luks takes the size out of the options before it creates the file
    create_reparses_options = False
    #: QEMU's runtime options of the luks driver
    runtime_options = {"key-secret": STRING}
    #: the secret's name is part of what the image is (``json:{..., "key-secret": ...}``)
    strong_runtime_options = ("key-secret",)
    create_opts = _ProfileCreateOpts()  # type: ignore[assignment]
    amend_opts = [
        Option("state", STRING, "Select new state of affected keyslots (active/inactive)"),
        Option("keyslot", NUMBER, "Select a single keyslot to modify explicitly"),
        Option("old-secret", STRING, "Select all keyslots that match this password"),
        Option("new-secret", STRING, "New secret to set in the matching keyslots. Empty string to erase"),
        Option("iter-time", NUMBER, "Time to spend in PBKDF in milliseconds"),
    ]
    #: unwritten sectors decrypt to noise: convert writes zeroes explicitly
    zero_init = False
    takes_preallocation = True
    #: every image needs a passphrase (qimg.testing's conformance suite cannot run it)
    needs_secret = True

    # -- create -------------------------------------------------------------------------
    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        """QEMU's order: option values (nothing created yet), the file (emptied), the secret and
        cipher checks, the PBKDF benchmarks, the file sized (and preallocated), slot 0's key
        material, the header. A failure after the file exists removes it."""
        import os

        mode = opts.get("preallocation") or "off"
        if mode == "metadata":
            mode = "off"
        params = luks.CreateParams.from_options(opts)
        detached = bool(opts.get("detached-header")) and compat.has("luks-detached-header")
        file = open_protocol(filename, create=True, writable=True)
        done = False
        try:
            password = luks.require_secret(opts)
            h, master = luks.new_header(params, detached=detached)
            area = luks.payload_bytes(params)
            total = area if detached else area + size
            if size > INT64_MAX or total > INT64_MAX:
                raise QimgError("The requested file size is too large")
            from qimg.protocol import preallocate

            preallocate(file, 0, total, mode)
            material = luks.store_key(h, 0, master, password, params.iter_time)
            file.pwrite(h.slots[0].key_offset * SECTOR, material)
            file.pwrite(0, h.build())
            file.flush()
            done = True
        finally:
            file.close()
            if not done and os.path.isfile(filename):
                try:
                    os.unlink(filename)
                except OSError:
                    pass

    @classmethod
    def measure(cls, size: int | None, opts: dict[str, Any], source=None) -> dict[str, int]:
        """Header and key material plus the virtual size, allocated or not (QEMU makes a header
        in memory to know its size: the secret and cipher checks apply)."""
        if source is not None:
            size = source.size
        params = luks.CreateParams.from_options(opts)
        luks.require_secret(opts)
        params.check_qemu()
        params.check_iter_time()
        n = luks.payload_bytes(params) + (size or 0)
        return {"required": n, "fully-allocated": n}

    # -- open ---------------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        no_io = bool(options.get("_no_io"))
        password = None if no_io else luks.require_secret(options)
        h = luks.read_header(file.pread(0, luks.HEADER_SIZE))
        self.header = h
        self.payload = h.payload_offset * SECTOR
        self.cipher = None
        self.master: bytes | None = None
        if password is not None:
            self.master = luks.unlock(h, self._read_header_area, password)
            self.cipher = luks.sector_cipher(h, self.master)
        fsize = file.size()
        if self.payload > fsize:
            raise QimgError("Could not refresh total sector count: Input/output error")
        self._size = -(-(fsize - self.payload) // SECTOR) * SECTOR

    def _read_header_area(self, offset: int, length: int) -> bytes:
        """Key material, as QEMU reads it: past the end of the file it reads zeroes."""
        return self.file.pread(offset, length).ljust(length, b"\0")

    @property
    def size(self) -> int:
        return self._size

    def info_extra(self) -> dict[str, Any]:
        return {"encrypted": True}

    @property
    def cluster_size(self) -> int | None:
        return self.file.cluster_size  # QEMU's luks passes its file's bdrv_get_info on (rbd)

    def format_specific_info(self) -> dict[str, Any] | None:
        return {"type": "luks", "data": luks.info(self.header)}

    # -- data ---------------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        # QEMU's luks driver has no block status: the generic answer, all data, no offset
        return Status(DATA | ALLOCATED, length)

    def _need_key(self) -> None:
        if self.cipher is None:
            raise QimgError("Parameter 'key-secret' is required for cipher")

    def _plain(self, start: int, length: int) -> bytes:
        """Decrypted whole sectors ``[start, start + length)`` (past the file's end: its zeroes)."""
        ct = self.file.pread(self.payload + start, length)
        if len(ct) < length:
            ct = ct.ljust(length, b"\0")
        return self.cipher.decrypt(start // SECTOR, ct)

    def read(self, offset: int, buf: memoryview) -> None:
        self._need_key()
        n = len(buf)
        end = offset + n
        pos = offset - offset % SECTOR
        stop = -(-end // SECTOR) * SECTOR
        while pos < stop:
            k = min(CHUNK, stop - pos)
            plain = self._plain(pos, k)
            lo, hi = max(pos, offset), min(pos + k, end)
            buf[lo - offset : hi - offset] = memoryview(plain)[lo - pos : hi - pos]
            pos += k

    def write(self, offset: int, data: memoryview) -> None:
        self._need_key()
        n = len(data)
        end = offset + n
        start = offset - offset % SECTOR
        stop = -(-end // SECTOR) * SECTOR
        if start != offset or stop != end:
            # partial sectors: read, merge, write whole sectors (QEMU's block layer does the same)
            merged = bytearray(stop - start)
            if start != offset:
                merged[:SECTOR] = self._plain(start, SECTOR)
            if stop != end and (stop - SECTOR > start or start == offset):
                merged[-SECTOR:] = self._plain(stop - SECTOR, SECTOR)
            merged[offset - start : offset - start + n] = data
            data = memoryview(merged)
            offset = start
            n = len(data)
        pos = 0
        while pos < n:
            k = min(CHUNK, n - pos)
            self.file.pwrite(self.payload + offset + pos, self.cipher.encrypt((offset + pos) // SECTOR,
                                                                               data[pos : pos + k]))
            pos += k

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        from qimg.protocol import PREALLOC_MODES, preallocate

        if size > INT64_MAX - self.payload:
            raise QimgError("The requested file size is too large")
        old = self.file.size()
        new = self.payload + size
        if new < old:
            self.file.truncate(new)
        else:
            if preallocation not in PREALLOC_MODES:
                raise QimgError(f"Unsupported preallocation mode: {preallocation}")
            preallocate(self.file, old, new, preallocation)
        self._size = -(-size // SECTOR) * SECTOR

    # -- amend --------------------------------------------------------------------------
    def amend(self, opts: dict[str, Any], progress=None, force: bool = False) -> None:
        if self.master is None:
            raise QimgError("Parameter 'key-secret' is required for cipher")

        def write(offset: int, data: bytes) -> None:
            self.file.pwrite(offset, data)

        luks.amend_keyslots(self.header, self._read_header_area, write, self.master, opts, force=force)
        self.file.flush()
