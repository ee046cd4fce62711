"""``qemu-img snapshot``: list/create/apply/delete internal snapshots through the driver.

A driver without snapshot support keeps :class:`qimg.driver.Format`'s methods; the messages
are then qemu-img's for such a format (raw): create ``-95 (Operation not supported)`` (10.0:
``Operation not supported``), apply ``Block driver does not support snapshots``, delete
``snapshot not found``.
"""
from __future__ import annotations

import errno
import os
import time

from .. import trace
from ..driver import Format, SnapshotInfo
from ..errors import QimgError

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from ..image import Image


def _overridden(drv: Format, name: str) -> bool:
    """Whether the driver (or, for a format without snapshots, its protocol) does ``name``."""
    return drv.snapshots_fall_back(name)


def _create_failed(name: str, message: str) -> QimgError:
    """snapshot -c's failure: ``-95 (Operation not supported)`` when the message is a strerror
    text (qemu-img 10.0 prints the text alone)."""
    from ..compat import text

    for code in range(1, 134):
        if os.strerror(code) == message:
            return QimgError(text("snapshot-create-failed").format(name=name, errno=code, strerror=message))
    return QimgError(f"Could not create snapshot '{name}': {message}")


def list_snapshots(img: "Image") -> list[SnapshotInfo]:
    return list(img.driver.snapshot_list())


def find_snapshot(img: "Image", id_or_name: str) -> SnapshotInfo | None:
    """By name first, then by ID (QEMU's bdrv_snapshot_find order)."""
    snaps = list_snapshots(img)
    for sn in snaps:
        if sn.name == id_or_name:
            return sn
    for sn in snaps:
        if sn.id == id_or_name:
            return sn
    return None


def create_snapshot(img: "Image", name: str) -> None:
    trace.event("snapshot_op", filename=img.filename, op="create", name=name)
    drv = img.driver
    if not _overridden(drv, "snapshot_create"):
        raise _create_failed(name, os.strerror(errno.ENOTSUP))
    try:
        drv.snapshot_create(name)
    except QimgError as e:
        raise _create_failed(name, e.message) from None


def apply_snapshot(img: "Image", name: str) -> None:
    trace.event("snapshot_op", filename=img.filename, op="apply", name=name)
    drv = img.driver
    if not _overridden(drv, "snapshot_goto"):
        raise QimgError(f"Could not apply snapshot '{name}': Block driver does not support snapshots")
    try:
        drv.snapshot_goto(name)
    except QimgError as e:
        raise QimgError(f"Could not apply snapshot '{name}': {e.message}") from None


def delete_snapshot(img: "Image", name: str) -> None:
    trace.event("snapshot_op", filename=img.filename, op="delete", name=name)
    # qemu-img snapshot -d looks the snapshot up by name only (apply takes an ID or a name)
    sn = next((s for s in list_snapshots(img) if s.name == name), None)
    if sn is None:
        raise QimgError(f"Could not delete snapshot '{name}': snapshot not found")
    try:
        img.driver.snapshot_delete(sn.id, sn.name)
    except QimgError as e:
        raise QimgError(f"Could not delete snapshot '{name}': {e.message}") from None


def format_list(snaps: list[SnapshotInfo]) -> str:
    """``snapshot -l``: nothing at all for no snapshots, else the table."""
    from .info import snapshot_dict, snapshot_table

    if not snaps:
        return ""
    return "Snapshot list:\n" + "".join(line + "\n" for line in snapshot_table([snapshot_dict(s) for s in snaps]))


def now() -> tuple[int, int]:
    """(date_sec, date_nsec) for a new snapshot, at microsecond precision as QEMU."""
    t = time.time_ns() // 1000
    return t // 1_000_000, (t % 1_000_000) * 1000
