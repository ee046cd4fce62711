"""The LUKS header of an encrypted qcow2 image, decoded for ``info`` (no key material is used)."""
from __future__ import annotations

import struct
import uuid as _uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import Qcow2Format

LUKS_MAGIC = b"LUKS\xba\xbe"
# magic, version, cipher name, cipher mode, hash, payload offset, key bytes, digest, salt, iterations, uuid
_PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")
SLOT_ACTIVE = 0x00AC71F3


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


def luks_info(drv: "Qcow2Format") -> dict[str, Any] | None:
    """qemu-img's ``encrypt`` dict for a LUKS-encrypted qcow2 image (None if unreadable)."""
    ch = drv.header.crypto_header
    if ch is None or len(ch) != 16:
        return None
    offset, length = struct.unpack(">QQ", ch)
    raw = drv.file.pread(offset, _PHDR.size + 8 * _SLOT.size)
    if len(raw) < _PHDR.size + 8 * _SLOT.size or not raw.startswith(LUKS_MAGIC):
        return None
    (_m, _v, cname, cmode, hspec, payload, key_bytes, _dg, _salt, mk_iters, uid) = _PHDR.unpack_from(raw)
    cname, cmode, hspec = _cstr(cname), _cstr(cmode), _cstr(hspec)
    mode, _, ivgen = cmode.partition("-")
    ivgen_alg, _, ivhash = ivgen.partition(":")
    bits = key_bytes * 8 // (2 if mode == "xts" else 1)
    alg = {"cast5": "cast5-128", "sm4": "sm4"}.get(cname, f"{cname}-{bits}")
    slots = []
    for i in range(8):
        active, iters, _s, koff, stripes = _SLOT.unpack_from(raw, _PHDR.size + i * _SLOT.size)
        if active == SLOT_ACTIVE:
            slots.append({"active": True, "iters": iters, "key-offset": koff * 512, "stripes": stripes})
        else:
            slots.append({"active": False, "key-offset": koff * 512})
    out: dict[str, Any] = {"ivgen-alg": ivgen_alg}
    if ivhash:
        out["ivgen-hash-alg"] = ivhash
    try:
        u = str(_uuid.UUID(_cstr(uid)))
    except ValueError:
        u = _cstr(uid)
    out.update({"hash-alg": hspec, "cipher-alg": alg, "uuid": u, "format": "luks", "cipher-mode": mode,
                "slots": slots, "payload-offset": payload * 512, "master-key-iters": mk_iters})
    del length
    return out
