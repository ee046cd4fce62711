"""Deterministic, field-aware mutants of small valid images, for every format and variant.

A *seed* is a small valid image qemu-img and qemu-io make (one file, or a descriptor and its
extent files). A *mutant* is the seed with one change a hostile author would make:

* a header field set to a value that matters: 0, 1, the largest values of its width, powers
  of two around sizes, the offsets of the image's own structures (header, tables, the end of
  the file, just past it, unaligned), in the field's unit (bytes, sectors, clusters, MiB);
* a table entry (L1/L2, grain directory and tables, block maps, BATs, refcounts) pointing at
  those structures, at itself, past the end, at ~0, unaligned;
* a descriptor line (VMDK) with another access mode, size, type, file name, offset, createType,
  CID, parent name; file names planted where nothing may go (``/etc/passwd``, ``../SECRET``, a
  ``json:`` name, the sentinel file beside the image);
* random byte flips in the metadata, truncation at structure boundaries and elsewhere, bytes
  appended.

Checksummed structures (VHD footers, VHDX headers and region tables) are mutated twice: with
the checksum left stale and with it recomputed, so the mutation reaches the code behind the
check. Everything is deterministic: :func:`mutants` returns the same list for the same seed
bytes and ``rng_seed``. Formats without a table here (a third party's plugin) get the generic
mutations (header words, flips, truncation).
"""
from __future__ import annotations

import random
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"

MiB = 1 << 20
#: the sentinel file planted beside every case: nothing may read it in untrusted mode
SENTINEL = "SECRET"
#: names planted into images (backing files, extents, data files)
PLANTED = ("/etc/passwd", "../" * 6 + "etc/passwd", SENTINEL, "../" + SENTINEL, "/dev/zero",
           'json:{"file":{"driver":"file","filename":"SECRET"}}', "nbd://127.0.0.1:1/x", "")


@dataclass(frozen=True)
class Variant:
    """How to make one seed: ``qemu-img create`` options and qemu-io commands."""

    fmt: str
    name: str
    opts: tuple[str, ...] = ()
    size: str = "4M"
    io: tuple[str, ...] = ("write -P 0x41 0 64k", "write -P 0x42 1M 128k", "write -z 3M 64k")
    backing: bool = False  # made over a backing file "base.raw" (vmdk: "base.vmdk", qemu-img's rule)


VARIANTS: dict[str, list[Variant]] = {
    "qcow": [Variant("qcow", "plain"), Variant("qcow", "backing", backing=True)],
    "qed": [Variant("qed", "plain"), Variant("qed", "small", ("-o", "cluster_size=4096,table_size=2")),
            Variant("qed", "backing", backing=True)],
    "vdi": [Variant("vdi", "dynamic"), Variant("vdi", "static", ("-o", "static=on"))],
    "vpc": [Variant("vpc", "dynamic"), Variant("vpc", "fixed", ("-o", "subformat=fixed"))],
    "vhdx": [Variant("vhdx", "dynamic", ("-o", "block_size=1M"), "8M"),
             Variant("vhdx", "fixed", ("-o", "subformat=fixed,block_size=1M,block_state_zero=off"), "8M")],
    "vmdk": [Variant("vmdk", "monolithicSparse"),
             Variant("vmdk", "streamOptimized", ("-o", "subformat=streamOptimized"), io=()),
             Variant("vmdk", "monolithicFlat", ("-o", "subformat=monolithicFlat")),
             Variant("vmdk", "twoGbMaxExtentSparse", ("-o", "subformat=twoGbMaxExtentSparse")),
             Variant("vmdk", "zeroed", ("-o", "zeroed_grain=on")),
             Variant("vmdk", "backing", backing=True)],
    "qcow2": [Variant("qcow2", "v3"), Variant("qcow2", "v2", ("-o", "compat=0.10")),
              Variant("qcow2", "extl2", ("-o", "extended_l2=on")),
              Variant("qcow2", "compressed", io=("write -c -P 0x43 0 64k", "write -P 0x42 1M 64k")),
              Variant("qcow2", "backing", backing=True)],
    "raw": [Variant("raw", "plain")],
}


@dataclass
class Seed:
    variant: Variant
    image: str  # the file qemu-img opens
    files: dict[str, bytes]  # every file of the seed, by name


@dataclass
class Mutant:
    """A recipe, not bytes (thousands of mutants of a 4 MiB seed would not fit): the target
    file's edits, cut, appended bytes or replacement, and checksum fix-ups; :meth:`data`."""

    id: str  # stable: variant/kind/detail
    seed: Seed
    target: str  # the file changed
    edits: tuple = ()  # (offset, bytes)
    cut: int | None = None
    append: bytes = b""
    replace: bytes | None = None
    fixups: tuple = ()
    note: str = ""

    @property
    def fmt(self) -> str:
        return self.seed.variant.fmt

    def data(self) -> bytes:
        if self.replace is not None:
            return self.replace
        buf = bytearray(self.seed.files[self.target])
        for off, raw in self.edits:
            if off + len(raw) > len(buf):
                buf.extend(bytes(off + len(raw) - len(buf)))
            buf[off:off + len(raw)] = raw
        for fx in self.fixups:
            fx(buf)
        if self.cut is not None:
            del buf[self.cut:]
        return bytes(buf) + self.append


def make_seed(variant: Variant, work: Path) -> Seed | None:
    """Build a seed in ``work`` (its own folder); None when qemu-img cannot make it."""
    d = work / f"seed-{variant.fmt}-{variant.name}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    image = f"s.{variant.fmt}"
    args = [QEMU_IMG, "create", "-q", "-f", variant.fmt, *variant.opts]
    if variant.backing:
        base = bytearray(4 * MiB)
        base[2 * MiB:2 * MiB + 4096] = b"\x37" * 4096
        (d / "base.raw").write_bytes(bytes(base))
        if variant.fmt == "vmdk":  # a vmdk's parent must be a vmdk
            subprocess.run([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "vmdk", "base.raw", "base.vmdk"],
                           capture_output=True, cwd=d)
            (d / "base.raw").unlink()
            args += ["-b", "base.vmdk", "-F", "vmdk"]
        else:
            args += ["-b", "base.raw", "-F", "raw"]
    if subprocess.run([*args, image, variant.size], capture_output=True, cwd=d).returncode:
        return None
    if variant.io:
        cmd = [QEMU_IO, "-f", variant.fmt]
        for c in variant.io:
            cmd += ["-c", c]
        subprocess.run([*cmd, image], capture_output=True, cwd=d)
    if variant.fmt == "vmdk" and variant.name == "streamOptimized":
        # a stream-optimized image with data: converted from a sparse one, as tools make them
        src = d / "src.vmdk"
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "vmdk", str(src), variant.size], capture_output=True)
        subprocess.run([QEMU_IO, "-f", "vmdk", "-c", "write -P 0x41 0 64k", "-c", "write -P 0x42 1M 64k",
                        str(src)], capture_output=True)
        subprocess.run([QEMU_IMG, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(src), image],
                       capture_output=True, cwd=d)
        src.unlink()
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}
    return Seed(variant, image, files)


# -- layouts: where a seed keeps its structures ------------------------------------------------

@dataclass
class Field:
    name: str
    offset: int
    width: int  # bytes
    endian: str  # "<" or ">"
    kind: str = "size"  # "offset" | "size" | "count" | "flags" | "bits"
    unit: int = 1  # bytes per unit of the value (offsets in sectors: 512)


@dataclass
class Table:
    name: str
    offset: int
    count: int
    width: int
    endian: str
    unit: int = 1  # entries name file offsets in this unit
    state: int = 0  # low bits kept as a "present" state (vhdx: 6)
    shift: int = 0  # offset bits start here (vhdx: 20)


@dataclass
class Layout:
    file: str
    fields: list[Field] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    structs: list[tuple[str, int]] = field(default_factory=list)  # (name, offset) of structures
    fixups: list = field(default_factory=list)  # callables(bytearray) recomputing checksums


def _u(data: bytes, off: int, fmt: str) -> int:
    if off < 0 or off + struct.calcsize(fmt) > len(data):
        return 0
    return struct.unpack_from(fmt, data, off)[0]


def _qcow_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    for n, o, w, k in [("version", 4, 4, "enum"), ("backing_file_offset", 8, 8, "offset"),
                       ("backing_file_size", 16, 4, "size"), ("mtime", 20, 4, "size"), ("size", 24, 8, "size"),
                       ("cluster_bits", 32, 1, "bits"), ("l2_bits", 33, 1, "bits"), ("crypt_method", 36, 4, "enum"),
                       ("l1_table_offset", 40, 8, "offset")]:
        lay.fields.append(Field(n, o, w, ">", k))
    cb, l2b = data[32] if len(data) > 32 else 12, data[33] if len(data) > 33 else 9
    size = _u(data, 24, ">Q")
    l1 = _u(data, 40, ">Q")
    n1 = -(-size >> (cb + l2b)) if cb + l2b < 64 else 0
    lay.tables.append(Table("L1", l1, min(n1, 64), 8, ">"))
    lay.structs += [("header", 0), ("L1", l1)]
    for i in range(min(n1, 4)):
        l2 = _u(data, l1 + 8 * i, ">Q")
        if l2:
            lay.tables.append(Table(f"L2[{i}]", l2, min(1 << l2b, 64), 8, ">"))
            lay.structs.append((f"L2[{i}]", l2))
    return lay


def _qcow2_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    for n, o, w, k in [("version", 4, 4, "enum"), ("backing_file_offset", 8, 8, "offset"),
                       ("backing_file_size", 16, 4, "size"), ("cluster_bits", 20, 4, "bits"), ("size", 24, 8, "size"),
                       ("crypt_method", 32, 4, "enum"), ("l1_size", 36, 4, "count"), ("l1_table_offset", 40, 8, "offset"),
                       ("refcount_table_offset", 48, 8, "offset"), ("refcount_table_clusters", 56, 4, "count"),
                       ("nb_snapshots", 60, 4, "count"), ("snapshots_offset", 64, 8, "offset"),
                       ("incompatible_features", 72, 8, "flags"), ("compatible_features", 80, 8, "flags"),
                       ("autoclear_features", 88, 8, "flags"), ("refcount_order", 96, 4, "bits"),
                       ("header_length", 100, 4, "size"), ("compression_type", 104, 1, "enum")]:
        lay.fields.append(Field(n, o, w, ">", k))
    cs = 1 << min(_u(data, 20, ">I"), 30)
    l1, l1n = _u(data, 40, ">Q"), _u(data, 36, ">I")
    rt, rtc = _u(data, 48, ">Q"), _u(data, 56, ">I")
    lay.tables.append(Table("L1", l1, min(l1n, 64), 8, ">"))
    lay.tables.append(Table("refcount table", rt, min(rtc * cs // 8, 64), 8, ">"))
    lay.structs += [("header", 0), ("L1", l1), ("refcount table", rt)]
    l2 = _u(data, l1, ">Q") & 0x00FFFFFFFFFFFE00
    if l2:
        lay.tables.append(Table("L2", l2, 64, 8, ">"))
        lay.structs.append(("L2", l2))
    rb = _u(data, rt, ">Q")
    if rb:
        lay.tables.append(Table("refcount block", rb, 64, 2, ">"))
        lay.structs.append(("refcount block", rb))
    return lay


def _qed_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    for n, o, w, k in [("cluster_size", 4, 4, "size"), ("table_size", 8, 4, "count"), ("header_size", 12, 4, "count"),
                       ("features", 16, 8, "flags"), ("compat_features", 24, 8, "flags"),
                       ("autoclear_features", 32, 8, "flags"), ("l1_table_offset", 40, 8, "offset"),
                       ("image_size", 48, 8, "size"), ("backing_filename_offset", 56, 4, "offset"),
                       ("backing_filename_size", 60, 4, "size")]:
        lay.fields.append(Field(n, o, w, "<", k))
    l1 = _u(data, 40, "<Q")
    lay.tables.append(Table("L1", l1, 16, 8, "<"))
    lay.structs += [("header", 0), ("L1", l1)]
    l2 = _u(data, l1, "<Q")
    if l2:
        lay.tables.append(Table("L2", l2, 64, 8, "<"))
        lay.structs.append(("L2", l2))
    return lay


def _vdi_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    for n, o, w, k in [("signature", 64, 4, "enum"), ("version", 68, 4, "enum"), ("header_size", 72, 4, "size"),
                       ("image_type", 76, 4, "enum"), ("image_flags", 80, 4, "flags"), ("offset_bmap", 340, 4, "offset"),
                       ("offset_data", 344, 4, "offset"), ("sector_size", 360, 4, "size"), ("disk_size", 368, 8, "size"),
                       ("block_size", 376, 4, "size"), ("block_extra", 380, 4, "size"),
                       ("blocks_in_image", 384, 4, "count"), ("blocks_allocated", 388, 4, "count"),
                       ("uuid_link", 424, 8, "flags"), ("uuid_parent", 440, 8, "flags")]:
        lay.fields.append(Field(n, o, w, "<", k))
    bmap, doff = _u(data, 340, "<I"), _u(data, 344, "<I")
    lay.tables.append(Table("block map", bmap, min(_u(data, 384, "<I"), 16), 4, "<", unit=MiB))
    lay.structs += [("header", 0), ("block map", bmap), ("data", doff)]
    return lay


def _vpc_checksum(buf: bytearray, start: int) -> None:
    buf[start + 64:start + 68] = bytes(4)
    s = sum(buf[start:start + 512]) & 0xFFFFFFFF
    buf[start + 64:start + 68] = struct.pack(">I", ~s & 0xFFFFFFFF)


def _vpc_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    dynamic = data[:8] == b"conectix"
    foot = 0 if dynamic else max(0, len(data) - 512)
    for n, o, w, k in [("features", 8, 4, "flags"), ("version", 12, 4, "enum"), ("data_offset", 16, 8, "offset"),
                       ("creator_app", 28, 4, "enum"), ("current_size", 48, 8, "size"), ("cylinders", 56, 2, "count"),
                       ("heads", 58, 1, "count"), ("sectors", 59, 1, "count"), ("disk_type", 60, 4, "enum")]:
        lay.fields.append(Field(n, foot + o, w, ">", k))
    lay.fixups.append(lambda b, f=foot: _vpc_checksum(b, f))
    lay.structs += [("footer", foot), ("end", len(data))]
    if dynamic:
        dh = _u(data, 16, ">Q")
        for n, o, w, k in [("table_offset", 16, 8, "offset"), ("max_table_entries", 28, 4, "count"),
                           ("block_size", 32, 4, "size")]:
            lay.fields.append(Field(n, dh + o, w, ">", k))
        bat = _u(data, dh + 16, ">Q")
        lay.tables.append(Table("BAT", bat, min(_u(data, dh + 28, ">I"), 16), 4, ">", unit=512))
        lay.structs += [("dynamic header", dh), ("BAT", bat)]
    return lay


def _vhdx_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    try:
        from qimg_vhdx.structs import crc_with_zero_field
    except ImportError:  # the vhdx plugin is not installed: stale checksums only
        def crc_with_zero_field(b, off=4):
            return 0

    def fix(buf: bytearray, start: int, size: int) -> None:
        buf[start + 4:start + 8] = struct.pack("<I", crc_with_zero_field(bytes(buf[start:start + size])))

    for h in (64 * 1024, 128 * 1024):
        for n, o, w, k in [("sequence_number", 8, 8, "count"), ("log_version", 64, 2, "enum"), ("version", 66, 2, "enum"),
                           ("log_length", 68, 4, "size"), ("log_offset", 72, 8, "offset")]:
            lay.fields.append(Field(f"header@{h // 1024}K.{n}", h + o, w, "<", k))
        lay.fixups.append(lambda b, s=h: fix(b, s, 4096))
    rt = 192 * 1024
    count = _u(data, rt + 8, "<I")
    lay.fields.append(Field("region.entry_count", rt + 8, 4, "<", "count"))
    lay.fixups.append(lambda b: fix(b, rt, 64 * 1024))
    bat = meta = 0
    for i in range(min(count, 4)):
        e = rt + 16 + 32 * i
        lay.fields += [Field(f"region[{i}].file_offset", e + 16, 8, "<", "offset"),
                       Field(f"region[{i}].length", e + 24, 4, "<", "size"),
                       Field(f"region[{i}].required", e + 28, 4, "<", "flags")]
        if data[e:e + 4] == bytes.fromhex("6677c22d"):
            bat = _u(data, e + 16, "<Q")
        else:
            meta = _u(data, e + 16, "<Q")
    lay.structs += [("header section", 0), ("log", _u(data, 64 * 1024 + 72, "<Q")), ("BAT", bat), ("metadata", meta)]
    if meta:
        lay.fields.append(Field("metadata.entry_count", meta + 10, 2, "<", "count"))
        for i in range(5):
            e = meta + 32 + 32 * i
            lay.fields += [Field(f"metadata[{i}].offset", e + 16, 4, "<", "offset"),
                           Field(f"metadata[{i}].length", e + 20, 4, "<", "size")]
        lay.fields += [Field("block_size", meta + 0x10000, 4, "<", "size"),
                       Field("file_parameters.flags", meta + 0x10004, 4, "<", "flags"),
                       Field("virtual_disk_size", meta + 0x10008, 8, "<", "size"),
                       Field("logical_sector_size", meta + 0x10020, 4, "<", "size")]
    if bat:
        lay.tables.append(Table("BAT", bat, 16, 8, "<", unit=MiB, state=6, shift=20))
    return lay


def _vmdk_sparse_layout(data: bytes, name: str) -> Layout:
    lay = Layout(name)
    for n, o, w, k, unit in [("version", 4, 4, "enum", 1), ("flags", 8, 4, "flags", 1), ("capacity", 12, 8, "size", 512),
                             ("grain_size", 20, 8, "size", 512), ("desc_offset", 28, 8, "offset", 512),
                             ("desc_size", 36, 8, "size", 512), ("num_gtes_per_gt", 44, 4, "count", 1),
                             ("rgd_offset", 48, 8, "offset", 512), ("gd_offset", 56, 8, "offset", 512),
                             ("overhead", 64, 8, "offset", 512), ("compress_algorithm", 77, 2, "enum", 1)]:
        lay.fields.append(Field(n, o, w, "<", k, unit))
    gd, rgd = _u(data, 56, "<Q"), _u(data, 48, "<Q")
    if gd == 2**64 - 1:  # the header is in the footer (stream-optimized from other tools)
        gd = 0
    lay.structs += [("header", 0), ("descriptor", _u(data, 28, "<Q") * 512), ("grain directory", gd * 512),
                    ("redundant grain directory", rgd * 512), ("end", len(data))]
    lay.tables.append(Table("grain directory", gd * 512, 4, 4, "<", unit=512))
    lay.tables.append(Table("redundant grain directory", rgd * 512, 4, 4, "<", unit=512))
    gt = _u(data, gd * 512, "<I")
    if gt:
        lay.tables.append(Table("grain table", gt * 512, 64, 4, "<", unit=512))
        lay.structs.append(("grain table", gt * 512))
    return lay


LAYOUTS = {"qcow": _qcow_layout, "qcow2": _qcow2_layout, "qed": _qed_layout, "vdi": _vdi_layout, "vpc": _vpc_layout,
           "vhdx": _vhdx_layout}


# -- values --------------------------------------------------------------------------------------------

def _edge(width: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    vals = {0, 1, 2, 7, 8, 9, 16, 63, 64, 512, 4096, 65536, top, top - 1, top >> 1, (top >> 1) + 1}
    vals |= {1 << b for b in (12, 16, 20, 21, 24, 30, 31, 32, 40, 48, 56, 62, 63) if (1 << b) <= top}
    vals.add(2**63 - 2**30 & top)
    return sorted(v for v in vals if v <= top)


def field_values(f: Field, data: bytes, lay: Layout) -> list[int]:
    cur = _u(data, f.offset, f.endian + {1: "B", 2: "H", 4: "I", 8: "Q"}[f.width])
    top = (1 << (8 * f.width)) - 1
    vals = set(_edge(f.width))
    vals |= {cur + 1, cur - 1, cur * 2, cur // 2, cur ^ (1 << (8 * f.width - 1))}
    if f.kind in ("offset", "size"):
        for _n, off in lay.structs:
            for o in (off, off + 8, off + 1, off - f.unit):
                if o >= 0:
                    vals.add(o // f.unit)
        vals.add((len(data) + (1 << 20)) // f.unit)
    if f.kind == "bits":
        vals |= set(range(0, 34))
    if f.kind == "flags":
        vals |= {cur | (1 << b) for b in range(min(64, 8 * f.width))}
    return sorted(v & top for v in vals if v >= 0)


def entry_values(t: Table, data: bytes, lay: Layout) -> list[int]:
    top = (1 << (8 * t.width)) - 1
    vals = {0, 1, top, top - 1}
    for _n, off in lay.structs + [("self", t.offset), ("past the end", len(data) + 4 * MiB)]:
        for o in (off, off + 8, off + 512):
            v = o // t.unit if t.unit > 1 else o
            vals.add((v << t.shift) | t.state if t.shift else v)
    if t.shift:
        vals |= {t.state, 7, 2, 3, (1 << 63) | t.state}
    return sorted(v & top for v in vals if v >= 0)


# -- mutants ---------------------------------------------------------------------------------------------

def _raw(width: int, endian: str, value: int) -> bytes:
    return value.to_bytes(width, "little" if endian == "<" else "big")


def _descriptor_mutants(text: bytes, prefix: str) -> list[tuple[str, bytes]]:
    """VMDK descriptor lines changed one at a time (``text`` is the descriptor's bytes)."""
    out: list[tuple[str, bytes]] = []
    lines = text.split(b"\n")
    ext = [i for i, ln in enumerate(lines) if ln[:3] in (b"RW ", b"RDO", b"NOA")]

    def with_line(i: int, new: bytes) -> bytes:
        ls = list(lines)
        ls[i] = new
        return b"\n".join(ls)

    for i in ext[:2]:
        parts = lines[i].split(b" ", 3)
        name = parts[3] if len(parts) > 3 else b'"x"'
        for acc in (b"RDONLY", b"NOACCESS", b"rw", b"RWX", b"RW\t"):
            out.append((f"{prefix}line{i}.access={acc.decode()!r}", with_line(i, b" ".join([acc, *parts[1:]]))))
        for size in (b"0", b"-1", b"1", b"99999999999999", b"9223372036854775807", b"99999999999999999999",
                     b"18446744073709551615", b"0x10", b"+5"):
            out.append((f"{prefix}line{i}.size={size.decode()}", with_line(i, b" ".join([parts[0], size, *parts[2:]]))))
        for typ in (b"FLAT", b"SPARSE", b"VMFS", b"VMFSSPARSE", b"SESPARSE", b"ZERO", b"VMFSRDM", b"flat", b"X" * 12):
            out.append((f"{prefix}line{i}.type={typ[:12].decode()}", with_line(i, b" ".join([parts[0], parts[1], typ, name]))))
        base = b" ".join(parts[:3])
        for tail in (b'"x" 0', b'"x" -1', b'"x" 99999999999999', b'"x" 9223372036854775807', b'"x"', b'""',
                     b'"' + b"a" * 600 + b'"', b'"x', b"x", b""):
            out.append((f"{prefix}line{i}.tail={tail[:20].decode()}", with_line(i, base + b" " + tail)))
        for planted in PLANTED:
            q = planted.encode()
            out.append((f"{prefix}line{i}.name={planted[:24]}", with_line(i, base + b' "' + q + b'"' + (
                b" 0" if b"FLAT" in parts[2:3] else b""))))
        out.append((f"{prefix}line{i}.dup", b"\n".join(lines[:i + 1] + [lines[i]] * 300 + lines[i + 1:])))
        out.append((f"{prefix}line{i}.deleted", b"\n".join(lines[:i] + lines[i + 1:])))
        out.append((f"{prefix}line{i}.crlf", with_line(i, lines[i] + b"\r")))
        out.append((f"{prefix}line{i}.nul", with_line(i, lines[i][:5] + b"\0" + lines[i][5:])))
    for key, vals in ((b"createType", (b'"custom"', b'"streamOptimized"', b'"monolithicSparse"', b'"vmfs"', b'"seSparse"',
                                       b'"' + b"t" * 200 + b'"', b'"monolithicFlat', b"")),
                      (b"CID", (b"0", b"ffffffff", b"fffffffff", b"-1", b"zz", b"")),
                      (b"parentCID", (b"0", b"ffffffff", b"zz", b"")),
                      (b"version", (b"2", b"3", b"4", b""))):
        idx = [i for i, ln in enumerate(lines) if ln.startswith(key + b"=")]
        for v in vals:
            if idx:
                out.append((f"{prefix}{key.decode()}={v[:20].decode(errors='replace')}",
                            with_line(idx[0], key + b"=" + v)))
        if idx:
            out.append((f"{prefix}{key.decode()}.deleted", b"\n".join(lines[:idx[0]] + lines[idx[0] + 1:])))
    for planted in PLANTED:
        hint = b'parentFileNameHint="' + planted.encode() + b'"'
        out.append((f"{prefix}parent={planted[:24]}", b"\n".join(lines[:5] + [hint] + lines[5:])))
    out.append((f"{prefix}parent.unterminated", b"\n".join(lines[:5] + [b'parentFileNameHint="x'] + lines[5:])))
    out.append((f"{prefix}comment-first", b"# createType=\"custom\" CID=0 parentCID\n" + text))
    out.append((f"{prefix}empty", b""))
    out.append((f"{prefix}binary", bytes(range(256)) * 4))
    return out


def mutants(seed: Seed, rng_seed: int = 0, random_count: int = 24) -> list[Mutant]:
    """Every mutant of ``seed``, in a fixed order (ids are stable)."""
    v = seed.variant
    tag = f"{v.fmt}/{v.name}"
    out: list[Mutant] = []
    target = seed.image
    data = seed.files[target]

    def add(kind: str, tgt: str = target, **recipe) -> None:
        out.append(Mutant(f"{tag}/{kind}", seed, tgt, **recipe))

    # field-aware mutations
    layouts: list[Layout] = []
    if v.fmt == "vmdk":
        sparse = [n for n, b in seed.files.items() if b[:4] == b"KDMV"]
        for n in sparse[:1]:
            layouts.append(_vmdk_sparse_layout(seed.files[n], n))
        if data[:4] != b"KDMV":
            for kind, new in _descriptor_mutants(data, "desc."):
                add(kind, replace=new)
        else:
            dsec, dsize = _u(data, 28, "<Q"), _u(data, 36, "<Q")
            area = data[dsec * 512:(dsec + dsize) * 512]
            text = area.split(b"\0", 1)[0]
            for kind, new in _descriptor_mutants(text, "embedded."):
                if len(new) <= len(area):
                    add(kind, edits=((dsec * 512, new.ljust(len(area), b"\0")),))
    elif v.fmt in LAYOUTS:
        layouts.append(LAYOUTS[v.fmt](data, target))
    for lay in layouts:
        base = seed.files[lay.file]
        for f in lay.fields:
            for val in field_values(f, base, lay):
                edit = ((f.offset, _raw(f.width, f.endian, val)),)
                if lay.fixups:
                    add(f"{f.name}={val:#x}", lay.file, edits=edit, fixups=tuple(lay.fixups))
                    add(f"{f.name}={val:#x}/stale-checksum", lay.file, edits=edit)
                else:
                    add(f"{f.name}={val:#x}", lay.file, edits=edit)
        for t in lay.tables:
            for idx in sorted({0, 1, t.count - 1} & set(range(max(t.count, 0)))):
                for val in entry_values(t, base, lay):
                    add(f"{t.name}[{idx}]={val:#x}", lay.file, edits=((t.offset + idx * t.width,
                                                                      _raw(t.width, t.endian, val)),))
        for name, off in lay.structs:
            for cut in (off, off + 1, off + 512, off - 1):
                if 0 < cut < len(base):
                    add(f"truncated@{name}{cut - off:+d}", lay.file, cut=cut)
    # generic: header words (any format), truncation, appended bytes, flips
    rng = random.Random(f"{tag}/{rng_seed}")
    for pos in range(0, min(len(data), 512), 8):
        for val in (b"\xff" * 8, b"\x00" * 8, b"\x7f" + b"\xff" * 7):
            if data[pos:pos + 8] != val:
                add(f"word@{pos}={val[:2].hex()}", edits=((pos, val),))
    for cut in sorted({0, 1, 4, 6, 63, 100, 511, 512, 513, len(data) // 2, len(data) - 512, len(data) - 1}):
        if 0 <= cut < len(data):
            add(f"truncated@{cut}", cut=cut)
    add("appended-sector", append=b"\x5a" * 512)
    add("appended-1000", append=b"\x5a" * 1000)
    hot = _hot(data)
    for i in range(random_count):
        edits = tuple((p, bytes([rng.randrange(256)])) for p in (rng.choice(hot) for _ in range(rng.randint(1, 8))))
        add(f"flips#{i}", edits=edits)
    return out


def _hot(data: bytes) -> list[int]:
    """Offsets of metadata-looking sectors (not one repeated byte) and the first 4 KiB."""
    hot = list(range(0, min(4096, len(data))))
    for s in range(4096, len(data), 512):
        sec = data[s:s + 512]
        if sec and sec.count(sec[:1]) != len(sec):
            hot.extend(range(s, s + len(sec), 4))
    return hot or [0]


def sample(items: list, n: int | None) -> list:
    """A deterministic spread of ``n`` items (all of them when ``n`` is None)."""
    if n is None or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
