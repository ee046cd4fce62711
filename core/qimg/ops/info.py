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
    from collections.abc import Callable
    from typing import Any

    from ..driver import SnapshotInfo
    from ..image import Image
    from ..protocol import Protocol

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
        elif isinstance(drv.file, Protocol) and not isinstance(drv.file, FileProtocol):
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
    from ..compat import has

    if has("info-child-nodes"):
        d["children"] = [{"name": name, "info": protocol_info(proto)} for name, proto in drv.child_nodes()]
    trace.event("info_image", filename=img.filename, format=img.format, virtual_size=img.size)
    return d


def collect(name: str, fmt: str | None = None, *, image_opts: bool = False, force_share: bool = False,
            backing_chain: bool = False, opener: Callable[..., Image] | None = None) -> list[dict[str, Any]]:
    """``qemu-img info`` of ``name``: the image's info, and with ``backing_chain`` each backing
    image's after it (each opened by the name the one above records, as qemu-img walks it).
    ``opener`` opens one image as :func:`qimg.open` (the CLI's own, which words warnings)."""
    import os

    from ..errors import QimgError

    if opener is None:
        from ..api import open as opener
    infos: list[dict[str, Any]] = []
    seen: set[str] = set()
    f, iopts = fmt, image_opts
    while True:
        key = os.path.realpath(name) if not iopts else name
        if key in seen:
            raise QimgError(f"Backing file '{name}' creates an infinite loop.")
        seen.add(key)
        # "_no_io": info reads metadata only; encrypted images open without their key (QEMU)
        img = opener(name, f, image_opts=iopts, force_share=force_share, backing=False, options={"_no_io": True})
        try:
            infos.append(image_info(img))
        finally:
            img.close()
        cur = infos[-1]
        if not backing_chain or "backing-filename" not in cur:
            return infos
        from ..untrusted import check_follow

        check_follow(name, cur["backing-filename"])  # untrusted mode opens nothing an image names
        if "full-backing-filename" not in cur:  # a protocol without folders (nbd)
            raise QimgError("Could not determine absolute backing filename, but backing filename "
                            f"'{cur['backing-filename']}' present")
        name = cur["full-backing-filename"]
        f = cur.get("backing-filename-format")
        iopts = False


def protocol_info(proto: "Protocol") -> dict[str, Any]:
    """A protocol node of the block graph (a child in qemu-img 10.0's ``info``), with
    BlockGraphInfo's keys: the file's length (in whole sectors) as ``virtual-size``, the
    protocol as ``format``."""
    from ..formatnode import FormatNode

    if isinstance(proto, FormatNode):
        # a format node under a filter (blkdebug over qcow2): an image's info, with the backing
        # file its node opened as a child of its own
        d = image_info(proto.image)
        if proto.image.backing is not None and "children" in d:
            # (QEMU lists the child attached last first)
            d["children"].insert(0, {"name": "backing", "info": image_info(proto.image.backing)})
        return d
    name = proto.exact_filename()
    if name is None:  # options say more than a name: QEMU shows them
        from .qjson import dumps

        name = "json:" + dumps(proto.json_options(), pretty=False)
    from ..protocol import file_path

    # a file node's name without "file:" (and "./" before a name that reads as a protocol)
    d: dict[str, Any] = {"filename": file_path(name) if name.startswith("file:") else name,
                         "format": proto.driver_name}
    if proto.reports_dirty_flag:
        d["dirty-flag"] = False
    actual = proto.allocated_size()
    if actual is not None and actual >= 0:
        d["actual-size"] = actual
    # the block layer counts a node's length in whole sectors (bdrv_getlength rounds up)
    d["virtual-size"] = -(-proto.size() // 512) * 512
    if proto.cluster_size:
        d["cluster-size"] = proto.cluster_size
    snaps = proto.snapshot_list()
    if snaps:
        d["snapshots"] = [snapshot_dict(s) for s in snaps]
    spec = proto.specific_info()
    if spec is not None:
        d["format-specific"] = spec
    d["children"] = [{"name": n, "info": protocol_info(child)} for n, child in proto.child_nodes()]
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
    from ..compat import text

    return text("snapshot-table-header")


def snapshot_row(sn: dict[str, Any]) -> str:
    """One row of the snapshot table from a snapshot's JSON dict (local time, as QEMU)."""
    from ..compat import text

    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn.get("date-sec", 0)))
    secs = sn.get("vm-clock-sec", 0)
    msecs = sn.get("vm-clock-nsec", 0) // 1_000_000
    clock = text("snapshot-vm-clock") % (secs // 3600, (secs // 60) % 60, secs % 60, msecs)
    icount = str(sn["icount"]) if sn.get("icount") is not None else text("snapshot-no-icount")
    # rows keep a space after ID and TAG even when they overflow their columns (unlike 7.2's header)
    return text("snapshot-table-row") % (sn["id"], sn["name"], size_to_str(sn.get("vm-state-size", 0)),
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


def format_specific_lines(spec: dict[str, Any], indent: int = 0) -> list[str]:
    """The block under ``Format specific information:`` for a ``format-specific`` dict."""
    lines: list[str] = []
    data = spec.get("data", spec)
    if isinstance(data, (dict, list)):
        _dump(data, indent + 1, lines)
    return lines


def _node_lines(info: dict[str, Any], indent: int, path: str, lines: list[str]) -> None:
    """One node of the block graph and its children, as QEMU's bdrv_node_info_dump and
    dump_human_image_info: a node below the top without children of its own is a protocol
    node (``filename``, ``protocol type``, ``file length``)."""
    pad = " " * (4 * indent)
    protocol = indent > 0 and not info.get("children")
    lines += [
        f"{pad}{'filename' if protocol else 'image'}: {info['filename']}",
        f"{pad}{'protocol type' if protocol else 'file format'}: {info['format']}",
        f"{pad}{'file length' if protocol else 'virtual size'}: {size_to_str(info['virtual-size'])} "
        f"({info['virtual-size']} bytes)",
        f"{pad}disk size: " + (size_to_str(info["actual-size"]) if "actual-size" in info else "unavailable"),
    ]
    if info.get("encrypted"):
        lines.append(f"{pad}encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"{pad}cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append(f"{pad}cleanly shut down: no")
    if "backing-filename" in info:
        line = f"{pad}backing file: {info['backing-filename']}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {full})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"{pad}backing file format: {info['backing-filename-format']}")
    if info.get("snapshots"):
        lines.append(f"{pad}Snapshot list:")
        lines += [pad + row for row in snapshot_table(info["snapshots"])]
    spec = info.get("format-specific")
    # nothing at all for empty data (the file protocol's), as QEMU's qobject_is_empty_dump
    # (7.2 prints the heading alone)
    from ..compat import has

    if spec is not None and (spec.get("data", spec) not in ({}, []) or not has("info-empty-specific-hidden")):
        lines.append(f"{pad}Format specific information:")
        lines += format_specific_lines(spec, indent)
    for child in info.get("children", ()):
        lines.append(f"{pad}Child node '{path}{child['name']}':")
        _node_lines(child["info"], indent + 1, f"{path}{child['name']}/", lines)


def format_human(info: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The human text of ``qemu-img info`` (a list: the ``--backing-chain`` form)."""
    if isinstance(info, list):
        return "\n".join(format_human(i) for i in info)
    lines: list[str] = []
    _node_lines(info, 0, "/", lines)
    return "\n".join(lines) + "\n"


def format_json(info: dict[str, Any] | list[dict[str, Any]]) -> str:
    from .qjson import dumps

    return dumps(info) + "\n"
