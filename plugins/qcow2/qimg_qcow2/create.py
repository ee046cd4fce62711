"""qcow2 image creation (the same bytes as qemu-img 7.2 writes) and size measurement."""
from __future__ import annotations

import struct

from qimg.errors import QimgError, reworded

from . import structs as S
from .header import Header
from .refcount import refcount_metadata_clusters

TYPE_CHECKING = False  # no run-time typing import (start-up time)
if TYPE_CHECKING:
    from typing import Any

#: QEMU's largest request end: INT64_MAX rounded down to its largest alignment (1 GiB)
BDRV_MAX_LENGTH = ((1 << 63) - 1) & ~((1 << 30) - 1)
V3_MSG = "compatibility level 1.1 and above (use version=v3 or greater)"


#: the order qemu-img reports the first ``encrypt.*`` option the AES format does not take
#: (its option dictionary's iteration order, found by experiment)
_AES_UNEXPECTED_ORDER = ("cipher-alg", "iter-time", "cipher-mode", "ivgen-alg", "hash-alg", "ivgen-hash-alg")


def _encryption_format(opts: dict[str, Any]) -> str | None:
    """qemu-img's parsing checks of the encrypt.* options: the format ('aes', 'luks' or None)."""
    fmt = opts.get("encrypt.format")
    if opts.get("encryption") is not None and fmt is not None:
        raise QimgError("'encrypt.format' and its alias 'encryption' can't be used at the same time")
    if fmt is None and opts.get("encryption"):
        fmt = "aes"
    if fmt is None:
        if any(k.startswith("encrypt.") for k in opts):
            raise QimgError("Parameter 'encrypt.format' is missing")
        return None
    if fmt not in ("aes", "luks"):
        raise QimgError(f"Parameter 'format' does not accept value '{fmt}'")
    if fmt == "aes":
        for name in _AES_UNEXPECTED_ORDER:
            if opts.get("encrypt." + name) is not None:
                raise QimgError(f"Parameter 'encrypt.{name}' is unexpected")
    else:
        from qimg.luks import CreateParams

        CreateParams.from_options(opts, "encrypt.")
    return fmt


def _check_encryption_key(fmt: str | None, opts: dict[str, Any]) -> None:
    """The checks qemu-img makes when it sets encryption up: secret given and known, cipher usable."""
    if fmt is None:
        return
    if not opts.get("encrypt.key-secret"):
        raise QimgError("Parameter 'encrypt.key-secret' is required for cipher")
    if fmt == "luks":
        from qimg import luks

        luks.passphrase(opts["encrypt.key-secret"])
        luks.CreateParams.from_options(opts, "encrypt.").check_supported()
    else:
        from qimg.secrets import get_secret

        get_secret(opts["encrypt.key-secret"])


def _power_of_2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def _validate(size: int, opts: dict[str, Any]) -> dict[str, Any]:
    """QEMU's option checks, in its order; returns normalized settings."""
    if size % 512:
        raise QimgError("Image size must be a multiple of 512 bytes")
    encrypt = _encryption_format(opts)
    compat = opts.get("compat")
    if compat is None:
        version = 3
    elif compat in ("0.10", "v2"):
        version = 2
    elif compat in ("1.1", "v3"):
        version = 3
    else:
        raise QimgError(f"Parameter 'version' does not accept value '{compat}'")
    # the QAPI visitor's checks, in its field order: preallocation, refcount-bits (an int64
    # there, a uint64 to the option parser before it), compression-type
    prealloc = opts.get("preallocation") or "off"
    if prealloc not in ("off", "metadata", "falloc", "full"):
        raise QimgError(f"Parameter 'preallocation' does not accept value '{prealloc}'")
    rb = opts.get("refcount_bits")
    if getattr(rb, "int64_overflow", False):
        raise QimgError("Parameter 'refcount-bits' expects integer")
    ctype = opts.get("compression_type")
    if ctype is not None and ctype not in ("zlib", "zstd"):
        raise QimgError(f"Parameter 'compression-type' does not accept value '{ctype}'")
    cs = opts.get("cluster_size")
    cs = 65536 if cs is None else int(cs)
    ext = bool(opts.get("extended_l2"))
    if ext:
        if version < 3:
            raise QimgError("Extended L2 entries are only supported with " + V3_MSG)
        if cs < 16384:
            raise QimgError("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
    if cs < 512 or cs > 2 << 20 or cs & (cs - 1):
        raise QimgError("Cluster size must be a power of two between 512 and 2048k")
    esz = 16 if ext else 8
    l2_span = cs * (cs // esz)
    if size <= BDRV_MAX_LENGTH and -(-size // l2_span) * 8 > S.MAX_L1_SIZE:
        raise QimgError("The image size is too large for file format 'qcow2' (try using a larger cluster size)")
    backing = opts.get("backing_file")
    if backing and prealloc != "off" and not ext:
        raise QimgError("Backing file and preallocation can only be used at the same time if extended_l2 is on")
    if opts.get("backing_fmt") and not backing:
        raise QimgError("Backing format cannot be used without backing file")
    lazy = bool(opts.get("lazy_refcounts"))
    if version < 3 and lazy:
        raise QimgError("Lazy refcounts only supported with " + V3_MSG)
    rb = opts.get("refcount_bits")
    rb = 16 if rb is None else int(rb)
    # QEMU's test of the int64: -2^63 is a power of two as a uint64 (and not above 64)
    if rb > 64 or not _power_of_2(rb & ((1 << 64) - 1)):
        raise QimgError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and rb != 16:
        raise QimgError("Different refcount widths than 16 bits require compatibility level 1.1 or above "
                        "(use version=v3 or greater)")
    data_file = opts.get("data_file")
    raw = bool(opts.get("data_file_raw"))
    if raw and not data_file:
        raise QimgError("data-file-raw requires data-file")
    if raw and backing:
        raise QimgError("Backing file and data-file-raw cannot be used at the same time")
    if raw and prealloc == "off":
        prealloc = "metadata"
    if data_file and version < 3:
        raise QimgError("External data files are only supported with " + V3_MSG)
    if ctype == "zstd" and version < 3:
        raise QimgError("Non-zlib compression type is only supported with " + V3_MSG)
    if rb < 0:  # written as refcount order 63, which the open of the new image refuses
        raise QimgError("Reference count entry width too large; may not exceed 64 bits")
    _check_encryption_key(encrypt, opts)
    # QEMU creates the image empty and then resizes it: the block layer's limits come last
    if size >= 1 << 63:
        raise QimgError("Could not resize image: Image size cannot be negative")
    if size > BDRV_MAX_LENGTH:
        raise QimgError(f"Could not resize image: offset({size}) exceeds maximum({BDRV_MAX_LENGTH})")
    return dict(encrypt=encrypt, version=version, cluster_size=cs, cluster_bits=cs.bit_length() - 1, extended_l2=ext,
                prealloc=prealloc, lazy=lazy, refcount_order=rb.bit_length() - 1, data_file=data_file,
                data_file_raw=raw, compression_type=1 if ctype == "zstd" else 0, backing_file=backing,
                backing_fmt=opts.get("backing_fmt"))


def create_image(cls: type, filename: str, size: int, opts: dict[str, Any]) -> None:
    """Create a qcow2 image: its bare structure, then opened with ``cls`` (the driver) to size,
    preallocate, name the backing file and set up encryption as QEMU does."""
    from qimg.api import open_protocol

    # qemu-img's option path rounds the size up to whole sectors (its QMP path would refuse),
    # on a uint64: within 511 bytes of 2^64 it wraps to 0
    from qimg.units import sector_round

    size = sector_round(size)
    o = _validate(size, opts)
    cs = o["cluster_size"]
    if o["data_file"]:
        df = open_protocol(o["data_file"], create=True, writable=True)
        df.truncate(0)
        df.close()
    h = Header(version=o["version"], cluster_bits=o["cluster_bits"], refcount_table_offset=cs,
               refcount_table_clusters=1, refcount_order=o["refcount_order"],
               compression_type=o["compression_type"])
    if o["lazy"]:
        h.compatible_features |= S.COMPAT_LAZY_REFCOUNTS
    if o["data_file"]:
        h.incompatible_features |= S.INCOMPAT_DATA_FILE
    if o["data_file_raw"]:
        h.autoclear_features |= S.AUTOCLEAR_DATA_FILE_RAW
    if o["compression_type"]:
        h.incompatible_features |= S.INCOMPAT_COMPRESSION
    if o["extended_l2"]:
        h.incompatible_features |= S.INCOMPAT_EXTL2
    # first the bare structure: a reftable and one refblock counting clusters 0-2, then the
    # header (written last, so a crash never leaves a qcow2 header over missing refcounts)
    h.data_file = o["data_file"]
    order = o["refcount_order"]
    blk = bytearray(cs)
    for ci in range(3):
        if order >= 3:
            w = 1 << (order - 3)
            blk[ci * w + w - 1] = 1
        else:
            blk[(ci << order) // 8] |= 1 << ((ci << order) % 8)
    f = open_protocol(filename, create=True, writable=True)
    try:
        f.truncate(0)
        from .header import encode_header

        f.pwrite(cs, struct.pack(">Q", 2 * cs) + bytes(cs - 8) + bytes(blk))
        f.pwrite(0, encode_header(h, cs))
    finally:
        f.close()
    f = open_protocol(filename, writable=True)
    dopts: dict[str, Any] = {}
    if o["data_file"]:
        dopts["data-file"] = o["data_file"]  # (as QEMU: from the working folder, as created)
    drv = cls(f, filename=filename, writable=True, options=dopts)
    try:
        drv.header.data_file = o["data_file"]
        drv.flush_caches()
        drv.update_header()
        from .resize import truncate

        try:
            truncate(drv, size, preallocation=o["prealloc"])
        except QimgError as e:  # QEMU's qcow2_co_create words what sizing the new image met
            raise reworded(e, f"Could not resize image: {e.message}") from None
        if o["backing_file"]:
            drv.change_backing_file(o["backing_file"], o["backing_fmt"])
        drv.flush_caches()
        if o["encrypt"]:
            # as QEMU: encryption is set up on the sized (and preallocated) image
            from .luks import create_encryption

            create_encryption(drv, opts, o["encrypt"])
    finally:
        drv.close()


# ---------------------------------------------------------------------------- measure
def prealloc_size(total: int, cs: int, refcount_order: int, extended_l2: bool) -> int:
    """Bytes of a fully allocated image (QEMU's qcow2_calc_prealloc_size semantics)."""
    aligned = -(-total // cs) * cs
    esz = 16 if extended_l2 else 8
    meta = cs
    nl2e = aligned // cs
    nl2e = -(-nl2e // (cs // esz)) * (cs // esz)
    meta += nl2e * esz
    nl1e = nl2e * esz // cs
    nl1e = -(-nl1e // (cs // 8)) * (cs // 8)
    meta += nl1e * 8
    blocks, table = refcount_metadata_clusters((meta + aligned) // cs, cs, refcount_order)
    meta += (blocks + table) * cs
    return meta + aligned


def _measure_checks(size: int | None, opts: dict[str, Any]) -> dict[str, Any]:
    """The checks of qemu-img measure, which are not create's: in its order and words, and
    without create's checks of lazy_refcounts, compression_type, extended_l2 with compat=0.10
    and AES encryption. Returns the options left for :func:`_validate`."""
    cs = opts.get("cluster_size")
    cs = 65536 if cs is None else int(cs)
    if cs < 512 or cs > 2 << 20 or cs & (cs - 1):
        raise QimgError("Cluster size must be a power of two between 512 and 2048k")
    ext = bool(opts.get("extended_l2"))
    if ext and cs < 16384:
        raise QimgError("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
    compat = opts.get("compat")
    if compat is not None and compat not in ("0.10", "1.1"):  # measure knows no v2/v3
        raise QimgError(f"Invalid compatibility level: '{compat}'")
    rb = opts.get("refcount_bits")
    rb = 16 if rb is None else int(rb)
    if rb < 1 or rb > 64 or rb & (rb - 1):
        raise QimgError("Refcount width must be a power of two and may not exceed 64 bits")
    if compat == "0.10" and rb != 16:
        raise QimgError("Different refcount widths than 16 bits require compatibility level 1.1 or above "
                        "(use compat=1.1 or greater)")
    prealloc = opts.get("preallocation")
    if prealloc is not None and prealloc not in ("off", "metadata", "falloc", "full"):
        raise QimgError(f"invalid parameter value: {prealloc}")
    left = {k: v for k, v in opts.items() if k not in (
        "backing_file", "backing_fmt", "data_file", "data_file_raw", "lazy_refcounts", "compression_type", "compat")}
    if opts.get("encrypt.format") != "luks":
        left = {k: v for k, v in left.items() if k != "encryption" and not k.startswith("encrypt.")}
    l2_span = cs * (cs // (16 if ext else 8))
    sizes = [size or 0]
    if opts.get("size") is not None:
        # QEMU checks the size option, rounded up to a cluster on a uint64, even when a source
        # image gives the size
        sizes.append(-(-opts["size"] // cs) * cs & ((1 << 64) - 1))
    if any(-(-n // l2_span) * 8 > S.MAX_L1_SIZE for n in sizes):
        raise QimgError("The image size is too large (try using a larger cluster size)")
    return left


def measure(size: int | None, opts: dict[str, Any], source=None) -> dict[str, int]:
    from qimg.blockstatus import ALLOCATED, DATA, ZERO

    o = _validate(0, _measure_checks(size if source is None else source.size, opts))
    cs = o["cluster_size"]
    if source is not None:
        ssize = source.size
        virtual = -(-ssize // cs) * cs
        required = 0
        off = 0
        while off < ssize:
            st = source.chain_status(off, ssize - off)
            n = st.length
            if st.flags & ZERO:
                pass
            elif st.flags & (DATA | ALLOCATED) == (DATA | ALLOCATED):
                n = -(-(off + n) // cs) * cs - off
                required += off % cs + n
            off += n
    else:
        virtual = -(-(size or 0) // cs) * cs
        required = 0
    if o["prealloc"] in ("full", "falloc") or (source is not None and opts.get("backing_file")):
        # with a backing file qemu-img counts every cluster of the source as data
        required = virtual
    full = prealloc_size(virtual, cs, o["refcount_order"], o["extended_l2"])
    if o["encrypt"] == "luks":
        from qimg.luks import CreateParams, payload_bytes

        full += -(-payload_bytes(CreateParams.from_options(opts, "encrypt.")) // cs) * cs
    out = {"required": full - virtual + required, "fully-allocated": full}
    if source is not None and opts.get("compat") != "0.10":
        from .bitmap import measure_bitmaps

        bitmaps = measure_bitmaps(source, cs)
        if bitmaps is not None:
            out["bitmaps"] = bitmaps
    return out
