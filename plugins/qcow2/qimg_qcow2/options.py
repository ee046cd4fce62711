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
    "extended_l2": Option("extended_l2", BOOL, "Extended L2 tables", False),
    "extent_size_hint": Option("extent_size_hint", SIZE, "Extent size hint for the image file, 0 to disable"),
    "lazy_refcounts": Option("lazy_refcounts", BOOL, "Postpone refcount updates", False),
    "nocow": Option("nocow", BOOL, "Turn off copy-on-write (valid only on btrfs)"),
    "preallocation": Option("preallocation", STRING,
                            "Preallocation mode (allowed values: off, metadata, falloc, full)"),
    "refcount_bits": Option("refcount_bits", NUMBER, "Width of a reference count entry in bits", 16),
    "size": Option("size", SIZE, "Virtual disk size"),
}

CREATE_OPTS: list[Option] = list(_O.values())

AMEND_OPTS: list[Option] = [_O[k] for k in (
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw", "lazy_refcounts",
    "refcount_bits", "size")]

#: option order of qemu-img's "Formatting ..." line; defaults shown even when not given
FORMAT_LINE_ORDER: list[str] = [
    "encryption", "cluster_size", "extended_l2", "preallocation", "compression_type", "size", "compat",
    "backing_file", "backing_fmt", "data_file", "data_file_raw", "lazy_refcounts", "refcount_bits",
    "nocow", "extent_size_hint",
]
FORMAT_LINE_DEFAULTS: dict[str, str] = {
    "cluster_size": "65536", "extended_l2": "off", "compression_type": "zlib",
    "lazy_refcounts": "off", "refcount_bits": "16",
}
