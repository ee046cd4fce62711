"""``qemu-img info``: an image's facts as QEMU's ImageInfo, and their human rendering.

:func:`image_info` builds the dict with QEMU's JSON keys (inserted in the QAPI schema's order,
which decides the printed order of colliding keys, see :mod:`qimg.ops.qjson`). The human
text is derived from the same dict, so every driver gets both outputs from
``format_specific_info()``/``info_extra()`` alone.
"""
from __future__ import annotations

import time

from .. import trace
from ..units import size_to_str

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

    from ..driver import SnapshotInfo
    from ..image import Image

#: ImageInfo's fields in QAPI schema order (QEMU inserts them in this order)
_FIELD_ORDER = ("filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size",
                "encrypted", "compressed", "backing-filename", "full-backing-filename",
                "backing-filename-format", "snapshots", "backing-image", "format-specific")


def snapshot_dict(sn: "SnapshotInfo") -> dict[str, Any]:
    """One SnapshotInfo as QEMU's JSON (``vm-clock-sec``/``-nsec`` split)."""
    d: dict[str, Any] = {
        "id": sn.id,
        "name": sn.name,
        "vm-state-size": sn.vm_state_size,
        "date-sec": sn.date_sec,
        "date-nsec": sn.date_nsec,
        "vm-clock-sec": sn.vm_clock_nsec // 1_000_000_000,
        "vm-clock-nsec": sn.vm_clock_nsec % 1_000_000_000,
    }
    if sn.icount is not None:
        d["icount"] = sn.icount
    return d


def image_info(img: "Image", backing_chain: bool = False) -> dict[str, Any]:
    """qemu-img's ImageInfo for ``img``; with ``backing_chain`` the backing images nest
    under ``backing-image`` (use :func:`flatten_chain` for ``--backing-chain`` output)."""
    from ..api import full_backing_name, resolve_backing_name
    from ..protocol import FileProtocol, Protocol

    drv = img.driver
    extra = dict(drv.info_extra() or {})
    # QEMU shows the file protocol's name without its "file:" prefix
    shown = img.filename[5:] if img.filename.startswith("file:") else img.filename
    shown = img.display_name or shown
    d: dict[str, Any] = {"filename": shown, "format": img.format}
    dirty = extra.pop("dirty-flag", False)
    if dirty is not None:  # None: the driver has no bdrv_get_info, QEMU then prints no dirty-flag
        d["dirty-flag"] = bool(dirty)
    actual = drv.allocated_file_size()
    if actual is not None and actual >= 0:
        d["actual-size"] = actual
    d["virtual-size"] = img.size
    cluster = extra.pop("cluster-size", None)
    if cluster is None:
        try:
            cluster = drv.cluster_size
        except Exception:  # noqa: BLE001 - a broken property must not break info
            cluster = None
    if cluster:
        d["cluster-size"] = cluster
    for key in ("encrypted", "compressed"):
        if extra.get(key):
            d[key] = extra.pop(key)
        else:
            extra.pop(key, None)
    if drv.backing_filename:
        d["backing-filename"] = drv.backing_filename
        if img.backing is not None:
            full = img.backing.filename
        elif isinstance(getattr(drv, "file", None), Protocol) and not isinstance(drv.file, FileProtocol):
            full = full_backing_name(drv.file, img.filename, drv.backing_filename)
        else:
            full = resolve_backing_name(img.filename, drv.backing_filename)
        if full:
            d["full-backing-filename"] = full
        if drv.backing_format:
            d["backing-filename-format"] = drv.backing_format
    snaps = drv.snapshot_list()
    if snaps:
        d["snapshots"] = [snapshot_dict(s) for s in snaps]
    if backing_chain and img.backing is not None:
        d["backing-image"] = image_info(img.backing, True)
    spec = drv.format_specific_info()
    if spec is not None:
        if set(spec) == {"type", "data"}:
            d["format-specific"] = spec
        else:
            d["format-specific"] = {"type": img.format, "data": spec}
    d.update(extra)
    trace.event("info_image", filename=img.filename, format=img.format, virtual_size=img.size)
    return d


def flatten_chain(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The list ``--backing-chain`` prints: each image without its ``backing-image``."""
    out = []
    cur: dict[str, Any] | None = info
    while cur is not None:
        nxt = cur.get("backing-image")
        out.append({k: v for k, v in cur.items() if k != "backing-image"})
        cur = nxt
    return out


# -- human rendering ----------------------------------------------------------------------

def snapshot_header() -> str:
    return "%-10s%-17s%8s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")  # noqa: UP031 - printf layout as QEMU


def snapshot_row(sn: dict[str, Any]) -> str:
    """One row of the snapshot table from a snapshot's JSON dict (local time, as QEMU)."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn.get("date-sec", 0)))
    secs = sn.get("vm-clock-sec", 0)
    msecs = sn.get("vm-clock-nsec", 0) // 1_000_000
    clock = "%02d:%02d:%02d.%03d" % (secs // 3600, (secs // 60) % 60, secs % 60, msecs)  # noqa: UP031
    icount = str(sn["icount"]) if sn.get("icount") is not None else ""
    # rows keep a space after ID and TAG even when they overflow their columns (unlike the header)
    return "%-9s %-16s %8s%20s%13s%11s" % (sn["id"], sn["name"], size_to_str(sn.get("vm-state-size", 0)),  # noqa: UP031 - printf layout as QEMU
                                              date, clock, icount)


def snapshot_table(snaps: list[dict[str, Any]]) -> list[str]:
    return [snapshot_header()] + [snapshot_row(s) for s in snaps]


def _dump_value(value: Any, indent: int, lines: list[str], head: str) -> None:
    composite = isinstance(value, (dict, list, tuple))
    if composite:
        lines.append(head)
        _dump(value, indent + 1, lines)
    else:
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        lines.append(f"{head} {text}")


def _dump(value: Any, indent: int, lines: list[str]) -> None:
    """QEMU's dump_qobject: dict keys with '-' as ' ', list items as ``[i]:``."""
    from .qjson import qdict_order

    pad = " " * (4 * indent)
    if isinstance(value, dict):
        for k in qdict_order(list(value)):
            _dump_value(value[k], indent, lines, f"{pad}{k.replace('-', ' ')}:")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _dump_value(item, indent, lines, f"{pad}[{i}]:")


def format_specific_lines(spec: dict[str, Any]) -> list[str]:
    """The block under ``Format specific information:`` for a ``format-specific`` dict."""
    lines: list[str] = []
    data = spec.get("data", spec)
    if isinstance(data, (dict, list)):
        _dump(data, 1, lines)
    return lines


def format_human(info: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The human text of ``qemu-img info`` (a list: the ``--backing-chain`` form)."""
    if isinstance(info, list):
        return "\n".join(format_human(i) for i in info)
    lines = [
        f"image: {info['filename']}",
        f"file format: {info['format']}",
        f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)",
        "disk size: " + (size_to_str(info["actual-size"]) if "actual-size" in info else "unavailable"),
    ]
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {full})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("snapshots"):
        lines.append("Snapshot list:")
        lines += snapshot_table(info["snapshots"])
    if "format-specific" in info:
        lines.append("Format specific information:")
        lines += format_specific_lines(info["format-specific"])
    return "\n".join(lines) + "\n"


def format_json(info: dict[str, Any] | list[dict[str, Any]]) -> str:
    from .qjson import dumps

    return dumps(info) + "\n"
