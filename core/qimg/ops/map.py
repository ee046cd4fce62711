"""``qemu-img map``: where each guest range lives, across the backing chain.

The walk follows qemu-img's: for each run, ask the top layer; a layer answering DATA or ZERO
ends the search (ALLOCATED alone does not), otherwise go down one layer (``depth`` + 1). An
unallocated range of a layer with no backing image, or past the end of its backing image,
reads as zeroes (ZERO, not present). Runs are merged as qemu-img merges them: same
zero/data/depth/present, both with or without an offset, and contiguous offsets.
"""
from __future__ import annotations

from .. import trace
from ..blockstatus import ALLOCATED, COMPRESSED, DATA, OFFSET_VALID, ZERO
from ..errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

    from ..image import Image

#: qemu-img asks block status in chunks of at most 1 GiB
_CHUNK = 1 << 30
#: the first query's length; later ones ask 4x the last run found (at least this). A driver's
#: cost may follow the length asked rather than the run found, so asking about what the last
#: runs suggest keeps each query near the size of its answer; the entries are merged
#: afterwards, so the output is the same as with 1 GiB queries.
_FIRST_WINDOW = 1 << 20


def _status(img: "Image", offset: int, length: int) -> dict[str, Any]:
    layer: Image = img
    depth = 0
    while True:
        size = layer.size
        if offset >= size:
            flags, n, host, fname = ZERO, length, None, None
        else:
            st = layer.driver.block_status(offset, min(length, size - offset))
            if st.length <= 0:
                raise QimgError(f"'{layer.filename}': driver returned an empty block status run")
            flags, n, host, fname = st.flags, min(st.length, length), st.host_offset, st.file
        if flags & (DATA | ZERO):
            break
        if layer.driver.raw_status and layer.backing is None:
            # a protocol's "neither data nor zeroes" ends qemu-img's walk with nothing at all
            flags, host = 0, None
            break
        if not flags & ALLOCATED:
            backing = layer.backing
            if backing is None:
                flags |= ZERO
                break
            if offset >= backing.size:
                flags |= ZERO
                break
            length = n
            layer = backing
            depth += 1
            continue
        break
    entry: dict[str, Any] = {"start": offset, "length": n, "depth": depth,
                             "present": bool(flags & ALLOCATED), "zero": bool(flags & ZERO),
                             "data": bool(flags & DATA), "compressed": bool(flags & COMPRESSED)}
    if flags & OFFSET_VALID and host is not None:
        entry["offset"] = host
    if fname is not None:
        entry["filename"] = fname
    return entry


#: what two runs must share to merge (qemu-img 10.0 adds "compressed")
_MERGE_KEYS = ("zero", "data", "depth", "present")


def _mergeable(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...] = _MERGE_KEYS) -> bool:
    if a["length"] == 0:
        return False
    for k in keys:
        if a[k] != b[k]:
            return False
    if ("offset" in a) != ("offset" in b):
        return False
    if "offset" in a and a["offset"] + a["length"] != b["offset"]:
        return False
    return True


class MapError(QimgError):
    """A block status query failed: qemu-img has printed the entries before it (``entries``)."""

    def __init__(self, message: str, entries: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.entries = entries


def format_json_partial(entries: list[dict[str, Any]]) -> str:
    """What qemu-img's JSON map has printed when a query fails: ``[`` and the finished entries."""
    if not entries:
        return "["
    return "[" + "".join(line[1:] if i == 0 else line for i, line in enumerate(
        ln if ln.endswith(",\n") else ln[:-2] + ",\n" for ln in iter_lines_json(entries)))


def map_extents(img: "Image", start: int = 0, length: int | None = None) -> list[dict[str, Any]]:
    """Merged map entries (dicts with qemu-img's JSON keys, plus ``filename`` when known)."""
    from ..formatnode import skip_filters

    img = skip_filters(img)  # qemu-img's map looks through filter nodes (blkdebug over qcow2)
    size = img.size
    end = size if length is None else min(size, start + length)
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    offset = start
    window = _FIRST_WINDOW
    from ..compat import has

    # qemu-img 10.0 tells compressed runs apart (7.2 merges them with their neighbours)
    keys = _MERGE_KEYS + ("compressed",) if has("map-compressed") else _MERGE_KEYS
    while offset < end:
        ask = min(window, end - offset)
        try:
            e = _status(img, offset, ask)
        except (OSError, QimgError) as exc:
            text = exc.message if isinstance(exc, QimgError) else (exc.strerror or str(exc))
            raise MapError(f"Could not read file metadata: {text}", out) from None
        # the next query: 4x the run found (a run that ended at an L2 table's end says the
        # next one may be as long), at least the first window
        window = min(_CHUNK, max(_FIRST_WINDOW, 4 * e["length"]))
        offset += e["length"]
        if cur is not None and _mergeable(cur, e, keys):
            cur["length"] += e["length"]
            continue
        if cur is not None:
            out.append(cur)
        cur = e
    if cur is not None:
        out.append(cur)
    if trace.active:
        for e in out:
            trace.event("map_entry", start=e["start"], length=e["length"], depth=e["depth"],
                        present=e["present"], zero=e["zero"], data=e["data"], offset=e.get("offset"))
    return out


def iter_lines_json(entries: list[dict[str, Any]]):
    """qemu-img's hand-written JSON: one entry a line, inside ``[`` ``]`` (10.0: with
    ``"compressed"``)."""
    from ..compat import has

    compressed = has("map-compressed")
    for i, e in enumerate(entries):
        text = ('{ "start": %d, "length": %d, "depth": %d, "present": %s, "zero": %s, "data": %s'  # noqa: UP031
                % (e["start"], e["length"], e["depth"], _b(e["present"]), _b(e["zero"]), _b(e["data"])))
        if compressed:
            text += f', "compressed": {_b(e.get("compressed", False))}'
        if "offset" in e:
            text += f', "offset": {e["offset"]}'
        text += "}"
        yield ("[" if i == 0 else "") + text + (",\n" if i < len(entries) - 1 else "]\n")


def _b(v: bool) -> str:
    return "true" if v else "false"


def format_json(entries: list[dict[str, Any]], start: int = 0) -> str:
    if not entries:  # qemu-img prints its empty starting entry
        entries = [{"start": start, "length": 0, "depth": 0, "present": False, "zero": False, "data": False,
                    "compressed": False}]
    return "".join(iter_lines_json(entries))


def _hex(v: int) -> str:
    return f"{v:#x}" if v else "0"


def human_lines(entries: list[dict[str, Any]]):
    """Lines of the human map: only data ranges with a host offset are listed; data without
    one (compressed, encrypted) raises, after the lines before it, as qemu-img does."""
    yield "%-16s%-16s%-16s%s" % ("Offset", "Length", "Mapped to", "File")  # noqa: UP031
    for e in entries:
        if e["data"] and "offset" not in e:
            raise QimgError("File contains external, encrypted or compressed clusters.")
        if e["data"] and not e["zero"]:
            yield (f"{_hex(e['start']):<16}{_hex(e['length']):<16}{_hex(e.get('offset', 0)):<16}"
                   f"{e.get('filename', '')}")


def format_human(entries: list[dict[str, Any]]) -> str:
    return "".join(line + "\n" for line in human_lines(entries))
