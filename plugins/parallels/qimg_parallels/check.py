"""``check`` (and repair) of parallels images, as QEMU 7.2's and 10.0's parallels_co_check.

7.2: the unclean flag, BAT entries past the end of the file, the space leaked after the last
cluster. 10.0 adds the data offset, counts a cluster as outside when its end is, checks for
BAT entries sharing a cluster (a repair copies the cluster to a new one) and opens writable
images with a repair when anything is wrong. The lines go where QEMU's fprintf puts them
(stderr), ``Repairing`` when the matching repair mode is on, else ``ERROR``.
"""
from __future__ import annotations

from qimg.driver import CheckResult
from qimg.errors import QimgError
from qimg.limits import qemu_length
from qimg.tables import nonzero_max, nonzero_spans

from .structs import SECTOR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .driver import ParallelsFormat


def _word(fix: set[str], kind: str) -> str:
    return "Repairing" if kind in fix else "ERROR"


def check(drv: ParallelsFormat, fix: set[str], emit: Callable[[str], None] | None = None) -> CheckResult:
    """Check ``drv`` (``fix``: a subset of {"leaks", "errors"}). Lines go to ``emit`` as they are
    found (the CheckResult's messages when None)."""
    res = CheckResult(filename=drv.filename, format=drv.format_name)
    out = res.messages.append if emit is None else emit
    from .driver import _repairs

    try:
        if _repairs():
            _check_10(drv, res, fix, out)
        else:
            _check_72(drv, res, fix, out)
    except _CheckFailed as e:
        e.messages = list(res.messages)
        raise
    drv.flush()
    return res


def _unclean(drv: ParallelsFormat, res: CheckResult, fix: set[str], out) -> None:
    if not drv.header_unclean:
        return
    out(f"{_word(fix, 'errors')} image was not closed correctly")
    res.corruptions += 1
    if "errors" in fix:
        # the close clears the flag
        res.corruptions_fixed += 1
        drv.header_unclean = False


def _check_72(drv: ParallelsFormat, res: CheckResult, fix: set[str], out) -> None:
    size = qemu_length(drv.file.size())
    _unclean(drv, res, fix, out)
    cs = drv.cs
    res.total_clusters = drv.bat_size
    res.compressed_clusters = 0
    res.allocated_clusters = res.fragmented_clusters = 0
    high = prev = 0
    flush_bat = False
    unit = drv.off_multiplier * SECTOR
    last = -2
    for i, v in _entries(drv):
        off = v * unit
        if i != last + 1:
            prev = 0  # unallocated entries (skipped) lay between
        last = i
        if off > size:
            out(f"{_word(fix, 'errors')} cluster {i} is outside image")
            res.corruptions += 1
            if "errors" in fix:
                prev = 0
                drv._set_bat(i, 0)
                res.corruptions_fixed += 1
                flush_bat = True
                continue
        res.allocated_clusters += 1
        high = max(high, off)
        if prev and prev + cs != off:
            res.fragmented_clusters += 1
        prev = off
    if flush_bat:
        drv._write_meta()
    res.image_end_offset = high + cs
    if size > res.image_end_offset:
        count = -(-(size - res.image_end_offset) // cs)
        out(f"{_word(fix, 'leaks')} space leaked at the end of the image {size - res.image_end_offset}")
        res.leaks += count
        if "leaks" in fix:
            drv.file.truncate(res.image_end_offset)
            res.leaks_fixed += count


def _check_10(drv: ParallelsFormat, res: CheckResult, fix: set[str], out) -> None:
    _unclean(drv, res, fix, out)
    # the data offset
    ok, data_off = drv._test_data_off(qemu_length(drv.file.size()) // SECTOR)
    if not ok:
        res.corruptions += 1
        if "errors" in fix:
            drv._set_data_off(data_off)
            drv._fill_used(drv.file.size())
            res.corruptions_fixed += 1
        out(f"{_word(fix, 'errors')} data_off field has incorrect value")
    # clusters outside the image
    cs = drv.cs
    size = qemu_length(drv.file.size())
    unit = drv.off_multiplier * SECTOR
    outside = [(i, v) for i, v in _entries(drv, -(-(size - cs + 1) // unit)) if v * unit + cs > size]
    if outside:
        high = max((v for v in drv.bat if v * unit + cs <= size), default=0) * unit
    else:
        high = nonzero_max(drv.bat) * unit
    for i, _v in outside:
        out(f"{_word(fix, 'errors')} cluster {i} is outside image")
        res.corruptions += 1
        if "errors" in fix:
            drv._set_bat(i, 0)
            res.corruptions_fixed += 1
    if high == 0:
        res.image_end_offset = drv.data_end * SECTOR
    else:
        res.image_end_offset = high + cs
        drv.data_end = res.image_end_offset // SECTOR
    _leak(drv, res, fix, out, explicit=True)
    _duplicates(drv, res, fix, out)
    # statistics
    res.total_clusters = drv.bat_size
    res.compressed_clusters = 0
    res.allocated_clusters = res.fragmented_clusters = 0
    prev = 0
    end = res.image_end_offset
    last = -2
    for i, v in _entries(drv):
        off = v * unit
        if i != last + 1:
            prev = 0  # unallocated entries (skipped) lay between
        last = i
        if off + cs > end:
            prev = 0
            continue
        if prev and prev + cs != off:
            res.fragmented_clusters += 1
        prev = off
        res.allocated_clusters += 1


def _leak(drv: ParallelsFormat, res: CheckResult, fix: set[str], out, *, explicit: bool) -> None:
    size = qemu_length(drv.file.size())
    if size <= res.image_end_offset:
        return
    count = -(-(size - res.image_end_offset) // drv.cs)
    if explicit:
        out(f"{_word(fix, 'leaks')} space leaked at the end of the image {size - res.image_end_offset}")
        res.leaks += count
    if "leaks" in fix:
        drv.file.truncate(res.image_end_offset)
        if explicit:
            res.leaks_fixed += count


def _entries(drv: ParallelsFormat, least: int = 1):
    """(index, value) of the BAT entries of at least ``least`` (1: the allocated ones; 0 and
    below: all), in order; runs of smaller entries are skipped at C speed."""
    bat = drv.bat
    if least <= 0:
        yield from enumerate(bat)
        return
    step = 1 << 14
    for i, j in nonzero_spans(bat):  # zero (unallocated) runs skipped by memcmp
        if least == 1:
            yield from enumerate(bat[i:j], i)
            continue
        for start in range(i, j, step):
            piece = bat[start : min(j, start + step)]
            if max(piece) < least:
                continue
            for k, v in enumerate(piece, start):
                if v >= least:
                    yield k, v


class _CheckFailed(QimgError):
    """The check itself failed (qemu-img: ``Check failed: <errno text>``) after printing lines."""


def _duplicates(drv: ParallelsFormat, res: CheckResult, fix: set[str], out) -> None:
    """BAT entries sharing a host cluster. QEMU 10.0 asserts that every entry lies inside the
    image by now (an entry left outside, or one below the data area, aborts qemu-img): qimg
    skips those, already reported or not its business."""
    cs = drv.cs
    size = drv._cluster_index(res.image_end_offset)
    if size == 0:
        return
    if res.image_end_offset % cs:
        size += 1
    if size > 1 << 32:
        return
    used = bytearray(size)
    ret = 0
    fixed = False
    unit = drv.off_multiplier * SECTOR
    for i, v in _entries(drv):
        host = v * unit
        if host == 0:
            continue
        ci = drv._cluster_index(host)
        if ci >= size:
            continue  # QEMU: assertion failure
        if not used[ci]:
            used[ci] = 1
            ret = 0
            continue
        ret = -1
        out(f"{_word(fix, 'errors')} duplicate offset in BAT entry {i}")
        res.corruptions += 1
        if "errors" not in fix:
            continue
        # a copy of the shared cluster in a new one, placed as a write would place it
        data = drv.file.pread(host, cs).ljust(cs, b"\0")
        old = drv.bat[i]
        drv._set_bat(i, 0)
        try:
            drv._allocate(i, 1)
            new = drv._host(i)
            drv.file.pwrite(new, data)
        except (QimgError, OSError):
            drv._set_bat(i, old)
            res.check_errors += 1
            return
        ret = 0
        res.image_end_offset = max(res.image_end_offset, new + cs)
        nci = drv._cluster_index(new)
        if nci < size:
            used[nci] = 1
        fixed = True
        res.corruptions_fixed += 1
    if fixed:
        # the allocation grew the file by the preallocation: trimmed silently
        _leak(drv, res, fix, out, explicit=False)
        ret = 0
    if ret < 0:
        import os

        raise _CheckFailed(os.strerror(16))  # EBUSY: mark_used's last answer
