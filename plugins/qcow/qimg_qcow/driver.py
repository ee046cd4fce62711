"""The qcow format: QEMU copy-on-write images, version 1.

Two-level tables map guest clusters to host clusters: the L1 table (in memory) points to L2
tables (cached), whose entries are host offsets, 0 (unallocated: the backing image or zeroes)
or compressed cluster descriptors. New L2 tables and clusters are appended at the end of the
file, aligned to the cluster size, as qemu-img does: data first, then the L2 entries, then
the L1 entry of a new table, so an interrupted write never exposes unwritten clusters.
"""
from __future__ import annotations

import errno
import sys
import zlib
from array import array
from collections import OrderedDict

from qimg.api import open_protocol
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, SECTOR, Status
from qimg.blockstatus import COMPRESSED as STORED_COMPRESSED
from qimg.driver import Format
from qimg.errors import QimgError, SilentFailure, os_error_text
from qimg.image import is_zero, zero_fill
from qimg.limits import MAX_TABLE_BYTES, eio, request_ok
from qimg.options import BOOL, SIZE, STRING, Option
from qimg.overlap import MetadataMap
from qimg.tables import be64_bytes as _be_bytes
from qimg.tables import be64_table as _be_array
from qimg.tables import equal_run

from .structs import COMPRESSED, CRYPT_AES, CRYPT_NONE, HEADER_SIZE, MAGIC, Header

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: L2 tables kept in memory (each at most 64 KiB)
L2_CACHE_TABLES = 64
#: raw deflate with a 4 KiB window, as qemu-img writes it
DEFLATE_WBITS = -12
#: one piece of an L1 table read at open, all zero (compared with what is read)
_ZEROS = bytes(4 << 20)


def _secret_check(opts: dict[str, Any]) -> int:
    """crypt_method for the create options, with qemu-img's errors."""
    fmt = opts.get("encrypt.format")
    if opts.get("encryption") and fmt is None:
        fmt = "aes"
    if fmt is None or fmt == "":
        return CRYPT_NONE
    if fmt != "aes":
        raise QimgError("Unsupported encryption format")
    key = opts.get("encrypt.key-secret")
    if not key:
        raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
    from qimg.secrets import get_secret

    get_secret(key)
    return CRYPT_AES


class QcowFormat(Format):
    #: open options besides the block layer's (QEMU's runtime options of this driver)
    runtime_options = {"encrypt.": STRING}
    strong_runtime_options = ("encrypt.key-secret",)
    format_name = "qcow"
    #: QEMU creates the (empty) file before checking the options: a refused create leaves it
    create_failure = "empty"
    supports_backing = True
    supports_compression = True
    create_opts = [
        Option("backing_file", STRING, "File name of a base image"),
        Option("backing_fmt", STRING, "Format of the backing image"),
        Option("encrypt.format", STRING, "Encrypt the image, format choices: 'aes'"),
        Option("encrypt.key-secret", STRING, "ID of the secret that provides the AES encryption key"),
        Option("encryption", BOOL, "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
        Option("size", SIZE, "Virtual disk size"),
    ]
    # the order of qemu-img's "Formatting ..." line
    create_print_order = ("size", "backing_file", "backing_fmt", "encryption", "encrypt.format",
                          "encrypt.key-secret")
    create_print_defaults: dict[str, str] = {}

    # -- create -------------------------------------------------------------------
    @classmethod
    def create_check(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        bfmt = opts.get("backing_fmt")
        if bfmt:
            # qcow v1 stores no backing format, but QEMU checks that the one asked for exists
            # (before it makes the file)
            from qimg.plugins import get_registry

            reg = get_registry()
            if bfmt not in reg.formats and reg.protocol(bfmt) is None and bfmt != "file":
                raise QimgError(f"unrecognized backing format '{bfmt}'")

    @classmethod
    def create(cls, filename: str, size: int, opts: dict[str, Any]) -> None:
        from qimg.units import sector_round

        size = sector_round(size)
        if size == 0:
            raise QimgError("Image size is too small, cannot be zero length")
        crypt = _secret_check(opts)
        backing = opts.get("backing_file") or None
        name = backing.encode() if backing else b""
        if backing:
            # 512-byte clusters: a guest sector write never needs copy-on-write
            cluster_bits, l2_bits = 9, 12
        else:
            cluster_bits, l2_bits = 12, 9
        l1_offset = -(-(HEADER_SIZE + len(name)) // 8) * 8
        shift = cluster_bits + l2_bits
        l1_size = -(-size >> shift)
        # QEMU counts the L1 entries in a signed 32-bit int: from 4 PiB (64k clusters) the count
        # wraps to zero or below and no table is written (the image then fails to open)
        l1_size = (l1_size + (1 << 31)) % (1 << 32) - (1 << 31)
        l1_size = max(l1_size, 0)
        header = Header.build(dict(
            magic=MAGIC, version=1,
            backing_file_offset=HEADER_SIZE if name else 0,
            backing_file_size=len(name),
            mtime=0, size=size, cluster_bits=cluster_bits, l2_bits=l2_bits, padding=0,
            crypt_method=crypt, l1_table_offset=l1_offset,
        ))
        l1_bytes = -(-l1_size * 8 // SECTOR) * SECTOR
        file = open_protocol(filename, create=True, writable=True)
        try:
            file.truncate(0)
            file.pwrite(0, header + name)
            # the (empty) L1 table is written, not left a hole, as qemu-img does
            chunk = bytes(min(l1_bytes, 1 << 20))
            pos = 0
            while pos < l1_bytes:
                n = min(len(chunk), l1_bytes - pos)
                file.pwrite(l1_offset + pos, memoryview(chunk)[:n])
                pos += n
        finally:
            file.close()

    # -- open -----------------------------------------------------------------------
    def __init__(self, file, *, filename: str, writable: bool, options: dict[str, Any]) -> None:
        super().__init__(file, filename=filename, writable=writable, options=options)
        raw = file.pread(0, HEADER_SIZE).ljust(HEADER_SIZE, b"\0")
        h = Header.parse(raw)
        if h.magic != MAGIC:
            raise QimgError("Image not in qcow format")
        if h.version != 1:
            hint = "\nTry the 'qcow2' driver instead." if h.version in (2, 3) else ""
            raise QimgError(f"qcow (v1) does not support qcow version {h.version}{hint}")
        if h.size <= 1:
            raise QimgError("Image size is too small (must be at least 2 bytes)")
        if not 9 <= h.cluster_bits <= 16:
            raise QimgError("Cluster size must be between 512 and 64k")
        if not 6 <= h.l2_bits <= 13:
            raise QimgError("L2 table size must be between 512 and 64k")
        if h.crypt_method > CRYPT_AES:
            raise QimgError("invalid encryption method in qcow header")
        shift = h.cluster_bits + h.l2_bits
        if h.size > (1 << 64) - 1 - (1 << shift):
            raise QimgError("Image too large")
        l1_size = -(-h.size >> shift)
        if l1_size > 0x7FFFFFFF // 8:
            raise QimgError("Image too large")
        if not request_ok(h.l1_table_offset, l1_size * 8):
            raise QimgError(f"Could not open '{filename}': Could not open '{filename}': Input/output error")
        self.header = h
        self.cluster_bits = h.cluster_bits
        self.l2_bits = h.l2_bits
        self._cs = 1 << h.cluster_bits
        self._l2_entries = 1 << h.l2_bits
        self._size = h.size // SECTOR * SECTOR
        self.encrypted = h.crypt_method == CRYPT_AES
        self.l1_offset = h.l1_table_offset
        self._l1_size = l1_size
        self.l1 = self._read_l1(file, h.l1_table_offset, l1_size)
        #: entries written beyond what the array may hold (a huge table's far end)
        self._l1_far: dict[int, int] = {}
        if h.backing_file_offset:
            n = h.backing_file_size
            if n > 1023:
                raise QimgError("Backing file name too long")
            if not request_ok(h.backing_file_offset, n):
                raise QimgError(f"Could not open '{filename}': Could not open '{filename}': Input/output error")
            name = file.pread(h.backing_file_offset, n).split(b"\0", 1)[0]
            if name:
                self.backing_filename = name.decode("utf-8", "surrogateescape")
        self._eof = file.size()
        self._l2_cache: OrderedDict[int, array] = OrderedDict()
        self._zcache: tuple[int, bytes] | None = None  # last decompressed cluster
        # compressed descriptors: the offset has 63 - cluster_bits bits, the length the rest
        self._coff_mask = (1 << (63 - h.cluster_bits)) - 1
        self._aes = None
        self._meta: MetadataMap | None = None  # built on the first write
        key_id = options.get("encrypt.key-secret")
        if self.encrypted and key_id:
            from qimg.secrets import get_secret

            secret = get_secret(key_id)
            try:
                from .crypto import QcowAES
            except ImportError:
                raise QimgError("AES-encrypted qcow images need the Python package 'cryptography'") from None
            self._aes = QcowAES(secret)
        elif self.encrypted and not options.get("_no_io"):
            # as QEMU: every open but info's (metadata only) needs the key
            raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")

    @staticmethod
    def _read_l1(file, offset: int, count: int) -> array:
        """The L1 table up to its last nonzero entry: the rest, and what lies past the end of
        the file, reads as zeroes (QEMU allocates the whole table; a 2^48-byte image's is 1 GiB,
        mostly beyond a small file). What is held is capped by qimg's table limit."""
        end = max(0, min(count * 8, file.size() - offset))
        held = array("Q")  # the entries so far, big-endian until the end (one buffer, no copies)
        pending = 0  # zero bytes read after the last nonzero entry (whole entries)
        pos, chunk = 0, len(_ZEROS)
        while pos < end:
            data = file.pread(offset + pos, min(chunk, end - pos))
            if not data:
                break
            pos += len(data)
            if data == (_ZEROS if len(data) == len(_ZEROS) else bytes(len(data))):
                pending += len(data)  # (a comparison: rstrip looks at each byte in Python's loop)
                continue
            nz = len(data.rstrip(b"\0"))
            nz += -nz % 8  # whole entries (a partial one at the end of the file: zeroes follow)
            if len(held) * 8 + pending + nz > MAX_TABLE_BYTES:
                raise QimgError(f"Image too large: an L1 table of {count * 8} bytes exceeds qimg's "
                                f"limit of {MAX_TABLE_BYTES}")
            if pending:
                held.frombytes(bytes(pending))
            held.frombytes(data[:nz].ljust(nz, b"\0"))
            pending = max(0, len(data) - nz)
        if sys.byteorder == "little":
            held.byteswap()
        return held

    def _l1(self, l1i: int) -> int:
        if l1i < len(self.l1):
            return self.l1[l1i]
        return self._l1_far.get(l1i, 0)

    # -- facts ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def qemu_status_end(self, offset: int) -> int:
        """End of the run one QEMU block-status call reports: one cluster (``compare -s``)."""
        return (offset // self._cs + 1) * self._cs

    @property
    def cluster_size(self) -> int | None:
        return self._cs

    def info_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"cluster-size": self._cs}
        if self.encrypted:
            extra["encrypted"] = True
        return extra

    # -- tables ---------------------------------------------------------------------------
    def _l2(self, l2_offset: int) -> array:
        tbl = self._l2_cache.get(l2_offset)
        if tbl is not None:
            self._l2_cache.move_to_end(l2_offset)
            return tbl
        n = self._l2_entries * 8
        # QEMU reads the table whatever the entry says: past the end of the file it is zeroes,
        # past the block layer's limit (an entry of ~0 among them) the read fails
        if not request_ok(l2_offset, n):
            raise eio()
        raw = self.file.pread(l2_offset, n)
        tbl = _be_array(raw.ljust(n, b"\0"))
        self._l2_cache[l2_offset] = tbl
        if len(self._l2_cache) > L2_CACHE_TABLES:
            self._l2_cache.popitem(last=False)
        return tbl

    def _check_crypto(self) -> None:
        # qemu-img refuses to open the image for I/O at all; qimg opens it (info needs no key)
        # and fails on first use with the same words
        if self.encrypted and self._aes is None:
            raise QimgError(f"Could not open '{self.filename}': Parameter 'encrypt.key-secret' is required "
                            "for cipher")

    def truncate(self, size: int, *, shrink: bool = False, preallocation: str = "off") -> None:
        self._check_crypto()  # qemu-img fails to open it for the resize before saying it cannot
        super().truncate(size, shrink=shrink, preallocation=preallocation)

    # -- block status --------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> Status:
        # qemu-img needs the key to open an encrypted image for I/O at all
        self._check_crypto()
        cb, cs = self.cluster_bits, self._cs
        cluster = offset >> cb
        l1i, l2i = divmod(cluster, self._l2_entries)
        within = offset & (cs - 1)
        end = offset + length
        # clusters of this L2 table the request covers
        last = min(self._l2_entries, -(-(end - (l1i << (cb + self.l2_bits))) >> cb))
        l2off = self._l1(l1i)
        if l2off == 0:
            # whole L2 ranges without a table, as far as the request goes (past the entries
            # held, all of them)
            last_l1 = -(-end >> (cb + self.l2_bits))
            held = min(last_l1, len(self.l1))
            run = min([last_l1, *(k for k, v in self._l1_far.items() if k >= l1i and v)])
            if l1i < held:
                k = equal_run(self.l1, l1i, 0, held - l1i)
                if l1i + k < held:
                    run = l1i + k
            run_end = run << (cb + self.l2_bits)
            return Status(0, min(end, run_end) - offset)
        tbl = self._l2(l2off)
        entry = tbl[l2i]
        if entry == 0:
            run_end = ((l1i << self.l2_bits) + l2i + equal_run(tbl, l2i, 0, last - l2i)) << cb
            return Status(0, min(end, run_end) - offset)
        j = l2i + 1
        if entry & COMPRESSED:
            while j < last and tbl[j] & COMPRESSED:
                j += 1
            n = min(end, ((l1i << self.l2_bits) + j) << cb) - offset
            return Status(DATA | ALLOCATED | STORED_COMPRESSED, n)
        while j < last and tbl[j] == entry + ((j - l2i) << cb):
            j += 1
        n = min(end, ((l1i << self.l2_bits) + j) << cb) - offset
        if self.encrypted:
            return Status(DATA | ALLOCATED, n)
        return Status(DATA | ALLOCATED | OFFSET_VALID, n, entry + within, self.file.filename)

    # -- reads --------------------------------------------------------------------------
    def _decompress(self, entry: int) -> bytes:
        if self._zcache is not None and self._zcache[0] == entry:
            return self._zcache[1]
        cs = self._cs
        csize = (entry >> (63 - self.cluster_bits)) & (cs - 1)
        coff = entry & self._coff_mask
        if not request_ok(coff, csize):
            raise eio()
        raw = self.file.pread(coff, csize)
        try:
            d = zlib.decompressobj(DEFLATE_WBITS)
            out = d.decompress(raw, cs)
        except zlib.error:
            out = b""
        if len(out) != cs:
            raise eio()
        self._zcache = (entry, out)
        return out

    def read(self, offset: int, buf: memoryview) -> None:
        self._check_crypto()
        pos, total = 0, len(buf)
        cs = self._cs
        while pos < total:
            off = offset + pos
            st = self.block_status(off, total - pos)
            n = st.length
            view = buf[pos : pos + n]
            if not st.flags & ALLOCATED:
                self.read_backing(off, view)
            elif st.flags & OFFSET_VALID:
                self._check_host(st.host_offset - (off & (cs - 1)), st.host_offset, n)
                got = self.file.preadinto(st.host_offset, view)
                if got < n:
                    zero_fill(view[got:])
            else:  # compressed or encrypted clusters, one by one
                p = 0
                while p < n:
                    o = off + p
                    entry = self._entry(o)
                    w = o & (cs - 1)
                    k = min(n - p, cs - w)
                    if entry & COMPRESSED:
                        view[p : p + k] = self._decompress(entry)[w : w + k]
                    else:
                        self._check_host(entry, entry + w, k)
                        view[p : p + k] = self._read_decrypted(entry + w, o, k)
                    p += k
            pos += n

    def _read_decrypted(self, host: int, guest: int, length: int) -> bytes:
        """Guest bytes of an encrypted cluster: whole sectors read and decrypted."""
        head = guest % SECTOR
        n = -(-(head + length) // SECTOR) * SECTOR
        raw = self.file.pread(host - head, n).ljust(n, b"\0")
        return self._aes.decrypt(guest - head, raw)[head : head + length]

    def _pwrite_encrypted(self, host: int, guest: int, data: memoryview) -> None:
        """Encrypt and write; partial sectors are read, decrypted and patched first."""
        head = guest % SECTOR
        n = -(-(head + len(data)) // SECTOR) * SECTOR
        if head or n != len(data):
            buf = bytearray(self._aes.decrypt(guest - head, self.file.pread(host - head, n).ljust(n, b"\0")))
            buf[head : head + len(data)] = data
            data = memoryview(buf)
        self.file.pwrite(host - head, self._aes.encrypt(guest - head, data))

    @staticmethod
    def _check_host(cluster_offset: int, host: int, length: int) -> None:
        """QEMU fails (EIO) data clusters that do not start on a sector and requests the block
        layer cannot address."""
        if cluster_offset & (SECTOR - 1) or not request_ok(host, length):
            raise eio()

    def _entry(self, offset: int) -> int:
        l1i, l2i = divmod(offset >> self.cluster_bits, self._l2_entries)
        l2off = self._l1(l1i)
        return self._l2(l2off)[l2i] if l2off else 0

    # -- writes -------------------------------------------------------------------------
    def _alloc_end(self, length: int) -> int:
        """Reserve ``length`` bytes at the cluster-aligned end of the file."""
        cs = self._cs
        # an L1 table that starts in the file and reaches past its end (a 2^48-byte image's
        # 1 GiB one) keeps its place: QEMU allocates at the end of the file, where a later L1
        # entry lands on the new cluster; qimg allocates after the table
        end = self._eof
        if self.l1_offset < end < self.l1_offset + self._l1_size * 8:
            end = self.l1_offset + self._l1_size * 8
        start = -(-end // cs) * cs
        if not request_ok(start, length) or start & COMPRESSED:
            raise QimgError(f"'{self.filename}': image file too large")
        # metadata a hostile header places past the end of the file is not overwritten
        self._metadata().guard(start, length)
        self._eof = start + length
        return start

    def _l2_for_write(self, l1i: int) -> tuple[int, array]:
        l2off = self._l1(l1i)
        n = self._l2_entries * 8
        if l2off:
            return l2off, self._l2(l2off)
        l2off = self._alloc_end(n)
        self.file.pwrite(l2off, bytes(n))
        self._metadata().add(l2off, n, "L2 table")
        tbl = array("Q", bytes(n))
        self._l2_cache[l2off] = tbl
        if len(self._l2_cache) > L2_CACHE_TABLES:
            self._l2_cache.popitem(last=False)
        return l2off, tbl

    def _metadata(self) -> MetadataMap:
        """Header, backing file name, L1 and L2 tables: what a write must not overwrite."""
        if self._meta is None:
            h = self.header
            n = self._l2_entries * 8
            ranges = [(0, HEADER_SIZE, "the header"), (self.l1_offset, self._l1_size * 8, "L1 table")]
            if h.backing_file_offset:
                ranges.append((h.backing_file_offset, h.backing_file_size, "the backing file name"))
            ranges += [(off, n, "L2 table") for off in set(self.l1) if off]
            self._meta = MetadataMap(ranges)
        return self._meta

    def _meta_pwrite(self, offset: int, data: bytes, what: str, table: tuple[int, int, str]) -> None:
        """Write entries of ``table`` (start, end, name); an offset the file system refuses
        (corrupt table offset) is a QimgError."""
        self._metadata().guard(offset, len(data), own=table)
        try:
            self.file.pwrite(offset, data)
        except OSError as e:
            if e.errno not in (errno.EFBIG, errno.EINVAL):
                raise
            raise QimgError(f"'{self.filename}': could not write {what} at offset {offset:#x}: "
                            f"{os_error_text(e)}") from None

    def _l2_range(self, l2off: int) -> tuple[int, int, str]:
        return l2off, l2off + self._l2_entries * 8, "L2 table"

    def _commit_l1(self, l1i: int, l2off: int) -> None:
        if self._l1(l1i) != l2off:
            self._meta_pwrite(self.l1_offset + l1i * 8, l2off.to_bytes(8, "big"), "L1 table",
                              (self.l1_offset, self.l1_offset + self._l1_size * 8, "L1 table"))
            if l1i >= len(self.l1) and (l1i + 1) * 8 <= MAX_TABLE_BYTES:
                self.l1.extend(array("Q", bytes((l1i + 1 - len(self.l1)) * 8)))
            if l1i < len(self.l1):
                self.l1[l1i] = l2off
            else:
                self._l1_far[l1i] = l2off

    def write(self, offset: int, data: memoryview) -> None:
        self._check_crypto()
        span = self._cs << self.l2_bits
        pos, total = 0, len(data)
        while pos < total:
            off = offset + pos
            l1i = off // span
            n = min(total - pos, (l1i + 1) * span - off)
            l2off, tbl = self._l2_for_write(l1i)
            self._write_in_table(tbl, l2off, off, data[pos : pos + n])
            self._commit_l1(l1i, l2off)
            pos += n

    def _write_in_table(self, tbl: array, l2off: int, offset: int, data: memoryview) -> None:
        """A write within one L2 table's range: in place where allocated, else new clusters."""
        cb, cs = self.cluster_bits, self._cs
        base = (offset >> (cb + self.l2_bits)) << (cb + self.l2_bits)
        pos, total = 0, len(data)
        while pos < total:
            off = offset + pos
            i = (off - base) >> cb
            first_entry = tbl[i]
            j = i + 1
            end_i = -(-(offset + total - base) >> cb)
            if first_entry and not first_entry & COMPRESSED:
                # allocated: extend over host-contiguous clusters and write in place
                while j < end_i and tbl[j] == first_entry + ((j - i) << cb):
                    j += 1
                n = min(total - pos, base + (j << cb) - off)
                host = first_entry + (off & (cs - 1))
                self._check_host(first_entry, host, n)
                self._metadata().guard(host, n)
                self.file.debug_event("write_aio")  # (QEMU's blkdebug events)
                if self._aes is not None:
                    self._pwrite_encrypted(host, off, data[pos : pos + n])
                else:
                    self.file.pwrite(host, data[pos : pos + n])
                pos += n
                continue
            if not first_entry:
                while j < end_i and tbl[j] == 0:
                    j += 1
            n = min(total - pos, base + (j << cb) - off)
            self.file.debug_event("write_aio")
            self._write_new(tbl, l2off, i, j, off, data[pos : pos + n], first_entry)
            pos += n

    def _write_new(self, tbl: array, l2off: int, i: int, j: int, off: int, data: memoryview,
                   old_entry: int) -> None:
        """Clusters i..j of a table get fresh host clusters holding ``data`` at guest ``off``."""
        cb, cs = self.cluster_bits, self._cs
        run_start = off - (off & (cs - 1))
        run_len = (j - i) << cb
        head = off - run_start
        tail = run_len - head - len(data)
        host = self._alloc_end(run_len)
        if head == 0 and tail == 0:
            if self._aes is not None:
                self.file.pwrite(host, self._aes.encrypt(run_start, data))
            else:
                self.file.pwrite(host, data)
        elif old_entry & COMPRESSED or self.backing is not None or self._aes is not None:
            # copy-on-write: the old (decompressed) cluster or the backing data around the write
            buf = bytearray(run_len)
            view = memoryview(buf)
            if old_entry & COMPRESSED:
                view[:] = self._decompress(old_entry)
            else:
                if head:
                    self.read_backing(run_start, view[:head])
                if tail:
                    self.read_backing(run_start + run_len - tail, view[run_len - tail :])
            view[head : head + len(data)] = data
            # encrypted: the sectors around the write hold encrypted zeroes, as qemu-img writes them
            self.file.pwrite(host, self._aes.encrypt(run_start, view) if self._aes is not None else view)
        else:
            # no backing: the rest of the new clusters reads as zeroes from the grown file
            if host + run_len > self.file.size():
                self.file.truncate(host + run_len)
            if not is_zero(data):
                self.file.pwrite(host + head, data)
        entries = array("Q", range(host, host + run_len, cs))
        tbl[i:j] = entries
        self._meta_pwrite(l2off + i * 8, _be_bytes(entries), "L2 table", self._l2_range(l2off))

    def write_compressed(self, offset: int, data: memoryview) -> None:
        """One whole cluster, deflated (stored plainly when that does not save space)."""
        if not len(data):
            # QEMU's qcow driver rejects qemu-img convert's end-of-stream signal (an empty
            # compressed write), so qemu-img convert -c -O qcow exits 1 without a message
            raise SilentFailure("qcow: empty compressed write")
        self._check_crypto()
        if self.encrypted:
            raise QimgError("Compression is not supported for encrypted images")
        cs = self._cs
        if offset & (cs - 1) or (len(data) != cs and offset + len(data) != self._size):
            raise QimgError("Compression is supported only for whole clusters")
        if len(data) < cs:  # the last, partial cluster of the image
            data = memoryview(bytes(data).ljust(cs, b"\0"))
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, DEFLATE_WBITS)
        packed = c.compress(data) + c.flush()
        l1i, l2i = divmod(offset >> self.cluster_bits, self._l2_entries)
        l2off, tbl = self._l2_for_write(l1i)
        if len(packed) >= cs or (tbl[l2i] and not tbl[l2i] & COMPRESSED):
            self._write_in_table(tbl, l2off, offset, data)
        else:
            # compressed data is appended at the end of the file, which QEMU counts in sectors
            host = -(-self._eof // SECTOR) * SECTOR
            if not request_ok(host, len(packed)):
                raise QimgError(f"'{self.filename}': image file too large")
            self._metadata().guard(host, len(packed))
            self.file.pwrite(host, packed)
            self._eof = host + len(packed)
            entry = COMPRESSED | (len(packed) << (63 - self.cluster_bits)) | host
            tbl[l2i] = entry
            self._meta_pwrite(l2off + l2i * 8, entry.to_bytes(8, "big"), "L2 table", self._l2_range(l2off))
        self._commit_l1(l1i, l2off)

    def make_empty(self) -> None:
        """Drop every mapping (``commit`` without ``-d``): an empty L1 table, the file cut after it."""
        l1_bytes = self._l1_size * 8
        zeroes = memoryview(bytes(min(l1_bytes, 1 << 20)))
        for pos in range(0, l1_bytes, len(zeroes) or 1):
            self.file.pwrite(self.l1_offset + pos, zeroes[:min(len(zeroes), l1_bytes - pos)])
        self.l1 = array("Q")
        self._l1_far = {}
        self._l2_cache.clear()
        self._zcache = None
        self._meta = None
        h = self.header
        # never cut the header or the backing file name
        end = max(self.l1_offset + l1_bytes, HEADER_SIZE, h.backing_file_offset + h.backing_file_size)
        self.file.truncate(end)
        self._eof = end
