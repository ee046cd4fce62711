"""VHDX on-disk structures (Microsoft "VHDX Format Specification" v1.00); little-endian.

Checksums are CRC-32C over the whole structure with the checksum field zeroed
(:func:`crc_with_zero_field`, the crc32c package's C function); GUIDs are kept as their 16 on-disk bytes (``uuid.bytes_le``).
"""
import os
import sys

from qimg.records import Record

KiB, MiB = 1 << 10, 1 << 20
FILE_SIGNATURE = b"vhdxfile"
HEADER1_OFFSET, HEADER2_OFFSET = 64 * KiB, 128 * KiB
REGION1_OFFSET, REGION2_OFFSET = 192 * KiB, 256 * KiB
HEADER_SIZE = 4 * KiB
REGION_TABLE_SIZE = 64 * KiB
HEADER_SECTION_END = 1 * MiB
METADATA_TABLE_SIZE = 64 * KiB
LOG_SECTOR = 4 * KiB


def guid(text: str) -> bytes:
    """A GUID's 16 on-disk bytes (``uuid.UUID(text).bytes_le``, without importing uuid):
    the first three fields little-endian, the last eight bytes as written."""
    b = bytes.fromhex(text.replace("-", ""))
    if len(b) != 16:
        raise ValueError(f"badly formed GUID {text!r}")
    return b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:]


BAT_GUID = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_GUID = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_GUID = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
ZERO_GUID = bytes(16)

# metadata entry flags
META_IS_USER, META_IS_VIRTUAL_DISK, META_IS_REQUIRED = 1, 2, 4
# file parameters flags
FP_LEAVE_BLOCKS_ALLOCATED, FP_HAS_PARENT = 1, 2

# BAT entry states (low 3 bits); the file offset in MiB is in bits 20..63
PAYLOAD_NOT_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_ZERO, PAYLOAD_UNMAPPED = 0, 1, 2, 3
PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT = 6, 7
SB_PRESENT = 6
BAT_STATE_MASK = 7
BAT_OFFSET_SHIFT = 20

FileIdentifier = Record(
    "<",
    ("signature", "8s"),
    ("creator", "512s"),
    name="VHDX file identifier",
)

Header = Record(
    "<",
    ("signature", "4s"),  # "head"
    ("checksum", "I"),
    ("sequence_number", "Q"),
    ("file_write_guid", "16s"),
    ("data_write_guid", "16s"),
    ("log_guid", "16s"),
    ("log_version", "H"),
    ("version", "H"),
    ("log_length", "I"),
    ("log_offset", "Q"),
    ("reserved", "4016s"),
    name="VHDX header",
)

RegionTableHeader = Record(
    "<",
    ("signature", "4s"),  # "regi"
    ("checksum", "I"),
    ("entry_count", "I"),
    ("reserved", "I"),
    name="VHDX region table header",
)
RegionEntry = Record(
    "<",
    ("guid", "16s"),
    ("file_offset", "Q"),
    ("length", "I"),
    ("required", "I"),
    name="VHDX region table entry",
)

MetadataTableHeader = Record(
    "<",
    ("signature", "8s"),  # "metadata"
    ("reserved", "H"),
    ("entry_count", "H"),
    ("reserved2", "20s"),
    name="VHDX metadata table header",
)
MetadataEntry = Record(
    "<",
    ("item_id", "16s"),
    ("offset", "I"),
    ("length", "I"),
    ("flags", "I"),
    ("reserved", "I"),
    name="VHDX metadata table entry",
)
FileParameters = Record(
    "<",
    ("block_size", "I"),
    ("flags", "I"),
    name="VHDX file parameters",
)

LogEntryHeader = Record(
    "<",
    ("signature", "4s"),  # "loge"
    ("checksum", "I"),
    ("entry_length", "I"),
    ("tail", "I"),
    ("sequence_number", "Q"),
    ("descriptor_count", "I"),
    ("reserved", "I"),
    ("log_guid", "16s"),
    ("flushed_file_offset", "Q"),
    ("last_file_offset", "Q"),
    name="VHDX log entry header",
)
# "desc": trailing bytes, leading bytes; "zero": reserved, zero length
LogDescriptor = Record(
    "<",
    ("signature", "4s"),
    ("trailing_bytes", "I"),
    ("leading_bytes", "Q"),
    ("file_offset", "Q"),
    ("sequence_number", "Q"),
    name="VHDX log descriptor",
)
LOG_DESCRIPTOR_SIZE = 32
LOG_HEADER_SIZE = 64


def crc_with_zero_field(data: bytes, field_offset: int = 4) -> int:
    """CRC-32C of ``data`` with its 4-byte checksum field taken as zero."""
    crc = _crc32c()
    c = crc(data[:field_offset])
    c = crc(b"\0\0\0\0", c)
    return crc(data[field_offset + 4 :], c)


_crc = None


def _crc32c():
    """The ``crc32c.crc32c(data, value=0)`` function, loaded once.

    The crc32c package's ``__init__`` asks ``importlib.metadata`` for its own version, which
    imports zipfile, email, csv... (~35 ms, more than the rest of ``qimg info``). The function
    lives in the package's C extension module, so that module is loaded by itself (public
    importlib.machinery API) when it sits where ``import crc32c`` would find it; anything
    unusual imports the package as usual.
    """
    global _crc
    if _crc is None:
        pkg = sys.modules.get("crc32c")
        _crc = pkg.crc32c if pkg is not None else (_load_extension() or _import_package())
    return _crc


def _import_package():
    import crc32c

    return crc32c.crc32c


def _load_extension():
    try:
        from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec

        for entry in sys.path:
            base = os.path.join(entry or ".", "crc32c")
            if not os.path.isfile(os.path.join(base, "__init__.py")):
                continue
            for suffix in EXTENSION_SUFFIXES:
                path = os.path.join(base, "_crc32c" + suffix)
                if os.path.isfile(path):
                    loader = ExtensionFileLoader("crc32c._crc32c", path)
                    module = loader.create_module(ModuleSpec("crc32c._crc32c", loader, origin=path))
                    loader.exec_module(module)
                    fn = module.crc32c
                    return fn if fn(b"123456789") == 0xE3069283 else None  # the CRC-32C check value
            return None  # the first crc32c package on the path is the one import would use
    except Exception:  # noqa: BLE001 - any surprise: the ordinary import decides
        return None
    return None
