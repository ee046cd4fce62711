"""qcow2 create/amend options as data (help texts as ``qemu-img create -f qcow2 -o help``)."""
from __future__ import annotations

from qimg.options import BOOL, NUMBER, SIZE, STRING, Option

_O = {
    "backing_file": Option("backing_file", STRING, "File name of a base image"),
    "backing_fmt": Option("backing_fmt", STRING, "Image format of the base image"),
    "cluster_size": Option("cluster_size", SIZE, "qcow2 cluster size", 65536),
    "compat": Option("compat", STRING, "Compatibility level (v2 [0.10] or v3 [1.1])"),
    "compression_type": Option("compression_type", STRING,
                               "Compression method used for image cluster compression", "zlib"),
    "data_file": Option("data_file", STRING, "File name of an external data file"),
    "data_file_raw": Option("data_file_raw", BOOL, "The external data file must stay valid as a raw image"),
    "encrypt.cipher-alg": Option("encrypt.cipher-alg", STRING, "Name of encryption cipher algorithm"),
    "encrypt.cipher-mode": Option("encrypt.cipher-mode", STRING, "Name of encryption cipher mode"),
    "encrypt.format": Option("encrypt.format", STRING, "Encrypt the image, format choices: 'aes', 'luks'"),
    "encrypt.hash-alg": Option("encrypt.hash-alg", STRING, "Name of encryption hash algorithm"),
    "encrypt.iter-time": Option("encrypt.iter-time", NUMBER, "Time to spend in PBKDF in milliseconds"),
    "encrypt.ivgen-alg": Option("encrypt.ivgen-alg", STRING, "Name of IV generator algorithm"),
    "encrypt.ivgen-hash-alg": Option("encrypt.ivgen-hash-alg", STRING, "Name of IV generator hash algorithm"),
    "encrypt.key-secret": Option("encrypt.key-secret", STRING, "ID of secret providing qcow AES key or LUKS passphrase"),
    "encryption": Option("encryption", BOOL,
                         "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
    "extended_l2": Option("extended_l2", BOOL, "Extended L2 tables", False),
    "extent_size_hint": Option("extent_size_hint", SIZE, "Extent size hint for the image file, 0 to disable"),
    "lazy_refcounts": Option("lazy_refcounts", BOOL, "Postpone refcount updates", False),
    "nocow": Option("nocow", BOOL, "Turn off copy-on-write (valid only on btrfs)"),
    "preallocation": Option("preallocation", STRING,
                            "Preallocation mode (allowed values: off, metadata, falloc, full)"),
    "refcount_bits": Option("refcount_bits", NUMBER, "Width of a reference count entry in bits", 16),
    "size": Option("size", SIZE, "Virtual disk size"),
}

# nocow and extent_size_hint belong to the file protocol: qemu-img lists them only when a
# filename is given, which the core's create does by appending the protocol's options
CREATE_OPTS: list[Option] = [o for k, o in _O.items() if k not in ("nocow", "extent_size_hint")]

#: LUKS keyslot options amend accepts (qimg does not write encrypted qcow2: they are refused)
_AMEND_ENCRYPT: list[Option] = [
    _O["encrypt.iter-time"],
    Option("encrypt.keyslot", NUMBER, "Select a single keyslot to modify explicitly"),
    Option("encrypt.new-secret", STRING, "New secret to set in the matching keyslots. Empty string to erase"),
    Option("encrypt.old-secret", STRING, "Select all keyslots that match this password"),
    Option("encrypt.state", STRING, "Select new state of affected keyslots (active/inactive)"),
]

AMEND_OPTS: list[Option] = [_O[k] for k in (
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw", "lazy_refcounts",
    "refcount_bits", "size")] + _AMEND_ENCRYPT

#: option order of qemu-img's "Formatting ..." line; defaults shown even when not given
FORMAT_LINE_ORDER: list[str] = [
    "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode",
    "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time", "cluster_size", "extended_l2", "preallocation", "compression_type", "size", "compat",
    "backing_file", "backing_fmt", "data_file", "data_file_raw", "lazy_refcounts", "refcount_bits",
    "nocow", "extent_size_hint",
]
FORMAT_LINE_DEFAULTS: dict[str, str] = {
    "cluster_size": "65536", "extended_l2": "off", "compression_type": "zlib",
    "lazy_refcounts": "off", "refcount_bits": "16",
}


#: the structures the overlap checks protect, one boolean open option each (overlap.py)
OVERLAP_AREAS = ("main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
                 "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory")

#: QEMU 7.2's qcow2 open options (``--image-opts``/``json:``) and their types; others are
#: refused as QEMU does ("overlap-check.<area>" are booleans, the template a string)
RUNTIME_OPTIONS = {
    "lazy-refcounts": BOOL, "pass-discard-request": BOOL, "pass-discard-snapshot": BOOL,
    "pass-discard-other": BOOL, "overlap-check": STRING, "overlap-check.template": STRING,
    **{"overlap-check." + area: BOOL for area in OVERLAP_AREAS}, "cache-size": SIZE, "l2-cache-size": SIZE, "l2-cache-entry-size": SIZE,
    "refcount-cache-size": SIZE, "cache-clean-interval": NUMBER, "encrypt.": STRING,
    "data-file": STRING, "data-file.": STRING,
}
_OVERLAP_TEMPLATES = ("none", "constant", "cached", "all")


def check_runtime_options(options: dict, cluster_size: int, version: int) -> None:
    """The meaning of the (already typed) open options, checked in QEMU's order."""
    from qimg.errors import QimgError

    combined, l2, refcount = (options.get(k) for k in ("cache-size", "l2-cache-size", "refcount-cache-size"))
    if combined is not None:
        if l2 is not None and refcount is not None:
            raise QimgError("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
        if l2 is not None and l2 > combined:
            raise QimgError("l2-cache-size may not exceed cache-size")
        if refcount is not None and refcount > combined:
            raise QimgError("refcount-cache-size may not exceed cache-size")
    entry = options.get("l2-cache-entry-size")
    if entry is not None and (entry < 512 or entry > cluster_size or entry & (entry - 1)):
        raise QimgError(f"L2 cache entry size must be a power of two between 512 and the cluster size ({cluster_size})")
    interval = options.get("cache-clean-interval")
    if interval is not None and interval > 0xFFFFFFFF:
        raise QimgError("Cache clean interval too big")
    if options.get("lazy-refcounts") and version < 3:
        raise QimgError("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
    mode, template = options.get("overlap-check"), options.get("overlap-check.template")
    if mode is not None and template is not None and mode != template:
        raise QimgError(f"Conflicting values for qcow2 options 'overlap-check' ('{mode}') and "
                        f"'overlap-check.template' ('{template}')")
    chosen = template if template is not None else mode
    if chosen is not None and chosen not in _OVERLAP_TEMPLATES:
        raise QimgError(f"Unsupported value '{chosen}' for qcow2 option 'overlap-check'. "
                        f"Allowed are any of the following: {', '.join(_OVERLAP_TEMPLATES)}")
