"""``qemu-img check``: run a driver's check (and repair), and report as qemu-img does.

The driver returns a :class:`qimg.driver.CheckResult`; its ``messages`` (``Leaked cluster 5
refcount=1 reference=0``...) go to stderr, as QEMU's drivers print them. With a repair mode
and something fixed, qemu-img prints what was repaired and checks again without repairing;
the ``*_fixed`` counts of the first pass are kept in the final report.

Exit codes: 0 clean, 1 check failed / internal errors, 2 corruptions, 3 leaks only,
63 format without checks.
"""
from __future__ import annotations

import sys

from .. import trace
from ..driver import CheckResult, Format
from ..errors import NotSupported, QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..image import Image

FIX_MODES = {"leaks": {"leaks"}, "all": {"leaks", "errors"}}


def parse_repair(value: str) -> set[str]:
    try:
        return set(FIX_MODES[value])
    except KeyError:
        raise QimgError(f"Unknown option value for -r (expecting 'leaks' or 'all'): {value}") from None


def _run(img: "Image", fix: set[str], emit: Callable[[str], None]) -> CheckResult:
    drv = img.driver
    if type(drv).check is Format.check:
        raise NotSupported("This image format does not support checks", exit_code=63)
    trace.event("check_start", filename=img.filename, fix=",".join(sorted(fix)))
    try:
        result = drv.check(fix)
    except NotSupported as e:
        if e.exit_code == 63:
            raise
        raise QimgError(f"Check failed: {e.message}") from None
    except QimgError as e:
        # a driver may have printed diagnostics before giving up (``messages`` on the error)
        for m in getattr(e, "messages", ()):
            emit(m)
        raise QimgError(f"Check failed: {e.message}") from None
    except OSError as e:
        raise QimgError(f"Check failed: {e.strerror or e}") from None
    for m in result.messages:
        emit(m)
    result.messages = []
    return result


def check_image(img: "Image", fix: set[str] | None = None, *,
                emit: Callable[[str], None] | None = None,
                on_repaired: Callable[[CheckResult], None] | None = None) -> CheckResult:
    """Check (and repair) ``img``: qemu-img's collect/repair/double-check sequence.

    ``emit`` receives the driver's diagnostic lines (default: stderr). ``on_repaired`` is
    called with the first pass's result when something was fixed, before the second pass.
    """
    if emit is None:
        def emit(line: str) -> None:
            sys.stderr.write(line + "\n")
    fix = set(fix or ())
    result = _run(img, fix, emit)
    if fix and (result.corruptions_fixed or result.leaks_fixed):
        if on_repaired is not None:
            on_repaired(result)
        first = result
        result = _run(img, set(), emit)
        result.leaks_fixed = first.leaks_fixed
        result.corruptions_fixed = first.corruptions_fixed
    result.filename = result.filename or img.filename
    result.format = result.format or img.format
    trace.event("check_result", corruptions=result.corruptions, leaks=result.leaks,
                check_errors=result.check_errors, corruptions_fixed=result.corruptions_fixed,
                leaks_fixed=result.leaks_fixed)
    return result


def repaired_text(result: CheckResult) -> str:
    return ("The following inconsistencies were found and repaired:\n\n"
            f"    {result.leaks_fixed} leaked clusters\n"
            f"    {result.corruptions_fixed} corruptions\n\n"
            "Double checking the fixed image now...\n")


def to_dict(result: CheckResult) -> dict[str, Any]:
    """QEMU's ImageCheck: optional counters appear only when non-zero."""
    d: dict[str, Any] = {"filename": result.filename, "format": result.format,
                         "check-errors": result.check_errors}
    for key, value in (("image-end-offset", result.image_end_offset), ("corruptions", result.corruptions),
                       ("leaks", result.leaks), ("corruptions-fixed", result.corruptions_fixed),
                       ("leaks-fixed", result.leaks_fixed), ("total-clusters", result.total_clusters),
                       ("allocated-clusters", result.allocated_clusters),
                       ("fragmented-clusters", result.fragmented_clusters),
                       ("compressed-clusters", result.compressed_clusters)):
        if value:
            d[key] = value
    return d


def format_human(result: CheckResult) -> str:
    out: list[str] = []
    if not result.corruptions and not result.leaks and not result.check_errors:
        out.append("No errors were found on the image.\n")
    else:
        if result.corruptions:
            out.append(f"\n{result.corruptions} errors were found on the image.\n"
                       "Data may be corrupted, or further writes to the image may corrupt it.\n")
        if result.leaks:
            out.append(f"\n{result.leaks} leaked clusters were found on the image.\n"
                       "This means waste of disk space, but no harm to data.\n")
        if result.check_errors:
            out.append(f"\n{result.check_errors} internal errors have occurred during the check.\n")
    total, alloc = result.total_clusters or 0, result.allocated_clusters or 0
    if total and alloc:
        frag, comp = result.fragmented_clusters or 0, result.compressed_clusters or 0
        out.append(f"{alloc}/{total} = {alloc * 100.0 / total:0.2f}% allocated, "
                   f"{frag * 100.0 / alloc:0.2f}% fragmented, {comp * 100.0 / alloc:0.2f}% compressed clusters\n")
    if result.image_end_offset:
        out.append(f"Image end offset: {result.image_end_offset}\n")
    return "".join(out)


def format_json(result: CheckResult) -> str:
    from .qjson import dumps

    return dumps(to_dict(result)) + "\n"


def format_report(result: CheckResult, output: str = "human") -> str:
    return format_json(result) if output == "json" else format_human(result)


def exit_code(result: CheckResult) -> int:
    """0 clean, 2 corruptions, 3 leaks; internal errors are reported by the caller (1)."""
    if result.check_errors:
        return 1
    if result.corruptions:
        return 2
    if result.leaks:
        return 3
    return 0
