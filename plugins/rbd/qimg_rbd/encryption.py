"""Images librbd encrypts (LUKS1/LUKS2 headers librbd writes and reads), as QEMU's
qemu_rbd_encryption_load and qemu_rbd_encryption_format."""
from __future__ import annotations

import errno
import os

from qimg.errors import QimgError, with_errno

from .bindings import fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def load_encryption(rbd: Any, image: Any, enc: dict[str, Any]) -> None:
    """Open an image librbd encrypted (``encrypt.format``, ``encrypt.key-secret``), as QEMU's
    qemu_rbd_encryption_load: reads and writes are then the plaintext."""
    from qimg.secrets import get_secret

    if "parent" in enc:  # (librbd 16 has no rbd_encryption_load2)
        raise with_errno(QimgError("RBD library does not support layered encryption"), errno.ENOTSUP)
    fmt = {"luks": rbd.RBD_ENCRYPTION_FORMAT_LUKS1, "luks2": rbd.RBD_ENCRYPTION_FORMAT_LUKS2}.get(enc["format"])
    if fmt is None:  # luks-any: librbd 16 knows no such format; QEMU names it by its place
        raise with_errno(QimgError(f"unknown image encryption format: 2: {os.strerror(errno.ENOTSUP)}"),
                         errno.ENOTSUP)
    passphrase = get_secret(enc["key-secret"])
    try:
        image.encryption_load(fmt, passphrase.decode("utf-8", "surrogateescape"))
    except rbd.Error as e:
        raise fail("encryption load fail", e) from None


def encrypt_spec(enc: dict[str, Any]) -> dict[str, Any]:
    """The ``encrypt.*`` create options as QEMU's RbdEncryptionCreateOptions, checked."""
    fmt = enc.get("format")
    if fmt is None:
        raise QimgError("Parameter 'format' is missing")
    from qimg import compat

    if fmt == "luks-any" and compat.has("rbd-layered-encryption"):
        # a value of the enum without a branch of its own: nothing else is expected, and librbd
        # is then asked for a format it cannot write (format_encryption)
        from qimg.ops.qjson import qdict_order

        for key in qdict_order([k for k in enc if k != "format"]):
            raise QimgError(f"Parameter '{key}' is unexpected")
        return {"format": fmt, "alg": None, "secret": None}
    if fmt not in ("luks", "luks2"):
        raise QimgError(f"Parameter 'format' does not accept value '{fmt}'")
    alg = enc.get("cipher-alg")
    if alg is not None:
        from qimg.luks import cipher_algs

        if alg not in cipher_algs():  # QEMU's QCryptoCipherAlgorithm, this profile's
            raise QimgError(f"Parameter 'cipher-alg' does not accept value '{alg}'")
    if enc.get("key-secret") is None:
        raise QimgError("Parameter 'key-secret' is missing")
    for key in enc:
        if key not in ("format", "cipher-alg", "key-secret"):
            raise QimgError(f"Parameter '{key}' is unexpected")
    return {"format": fmt, "alg": alg, "secret": enc["key-secret"]}


def format_encryption(rbd: Any, ioctx: Any, name: str, enc: dict[str, Any]) -> None:
    """Write librbd's LUKS header into a new image (and grow it by what the header takes), as
    QEMU's qemu_rbd_encryption_format; a failure removes the image again."""
    from qimg.secrets import get_secret

    try:
        if enc["format"] not in ("luks", "luks2"):
            raise with_errno(QimgError(f"unknown image encryption format: 2: {os.strerror(errno.ENOTSUP)}"),
                             errno.ENOTSUP)
        passphrase = get_secret(enc["secret"])
        alg = enc["alg"]
        if alg not in (None, "aes-128", "aes-256"):
            # librbd's two; QEMU names any other by its place in QCryptoCipherAlgorithm
            from qimg.luks import cipher_algs

            raise with_errno(QimgError(f"unknown encryption algorithm: {cipher_algs().index(alg)}: "
                                       f"{os.strerror(errno.ENOTSUP)}"), errno.ENOTSUP)
        cipher = rbd.RBD_ENCRYPTION_ALGORITHM_AES128 if alg == "aes-128" else rbd.RBD_ENCRYPTION_ALGORITHM_AES256
        fmt = rbd.RBD_ENCRYPTION_FORMAT_LUKS1 if enc["format"] == "luks" else rbd.RBD_ENCRYPTION_FORMAT_LUKS2
        try:
            image = rbd.Image(ioctx, name)
        except rbd.Error as e:
            raise fail(f"error opening image '{name}' for encryption format", e) from None
        try:
            raw = image.size()
            try:
                image.encryption_format(fmt, passphrase.decode("utf-8", "surrogateescape"), cipher)
            except rbd.Error as e:
                raise fail("encryption format fail", e) from None
            effective = image.size()
            try:
                image.resize(raw + (raw - effective))
            except rbd.Error as e:
                raise fail("cannot resize image after format", e) from None
        finally:
            image.close()
    except BaseException:
        try:
            rbd.RBD().remove(ioctx, name)
        except Exception:  # noqa: BLE001 - the image may not exist
            pass
        raise
