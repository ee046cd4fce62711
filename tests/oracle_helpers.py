"""Helpers shared by the vpc/vdi/qcow format tests: qemu-img map/convert vs qimg's own view."""
from __future__ import annotations

import json

import qimg
from qimg.blockstatus import ALLOCATED, DATA, OFFSET_VALID, ZERO


def qemu_map(qemu_img, path: str, fmt: str) -> list[tuple]:
    """``qemu-img map --output=json`` as (start, length, depth, present, zero, data, offset)."""
    r = qemu_img("map", "--output=json", "-f", fmt, path)
    assert r.returncode == 0, r.stderr
    return [(e["start"], e["length"], e["depth"], e["present"], e["zero"], e["data"], e.get("offset"))
            for e in json.loads(r.stdout)]


def qimg_map(path: str, fmt: str) -> list[tuple]:
    """qimg's chain block status in qemu-img map's shape (adjacent runs merged as qemu-img does)."""
    out: list[list] = []
    with qimg.open(path, fmt) as img:
        for st in img.extents():
            off = st.host_offset if st.flags & OFFSET_VALID else None
            depth = st.depth
            zero = bool(st.flags & ZERO)
            if not st.flags & ALLOCATED:
                # qemu-img map: a run allocated nowhere reads as zeroes from the bottom layer
                depth -= 1
                zero = True
            cur = [None, st.length, depth, bool(st.flags & ALLOCATED), zero, bool(st.flags & DATA), off]
            if out:
                p = out[-1]
                same = p[2:6] == cur[2:6] and (p[6] is None) == (off is None)
                if same and (off is None or p[6] + p[1] == off):
                    p[1] += st.length
                    continue
            cur[0] = (out[-1][0] + out[-1][1]) if out else 0
            out.append(cur)
        if not out:  # qemu-img map prints one empty run for an empty image
            out.append([0, 0, 0, False, False, False, None])
    return [tuple(e) for e in out]


def qemu_raw(qemu_img, path: str, fmt: str, tmp_path) -> bytes:
    raw = tmp_path / "converted.raw"
    r = qemu_img("convert", "-f", fmt, "-O", "raw", path, str(raw))
    assert r.returncode == 0, r.stderr
    return raw.read_bytes()


def qimg_read_all(path: str, fmt: str) -> bytes:
    with qimg.open(path, fmt) as img:
        return img.pread(0, img.size)


def info_json(qemu_img, path: str, fmt: str) -> dict:
    r = qemu_img("info", "--output=json", "-f", fmt, path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)
