"""What the library functions (:mod:`qimg.library`) return: typed, immutable dataclasses, and
the :class:`Allocation` flags.

Loaded on first use of the library API only: ``qimg info``/``map``/``check`` on the command
line never import it (``dataclasses`` and ``enum`` cost more start-up time than such a command).
Every result keeps qemu-img's own JSON object where it has one (``to_dict()``), so a program can
move between the typed fields and what ``qemu-img --output=json`` prints.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Allocation(enum.IntFlag):
    """Block status flags of a guest range (QEMU's ``BDRV_BLOCK_*``): what
    :meth:`qimg.Image.extents` yields as ``Status.allocation`` and :class:`MapEntry` as ``flags``."""

    #: reads come from this layer's storage
    DATA = 0x01
    #: reads return zeroes
    ZERO = 0x02
    #: the data lives at a known offset of a file (``Status.host_offset``, ``MapEntry.offset``)
    OFFSET_VALID = 0x04
    #: this layer answers for the range (without it, reads fall through to the backing image)
    ALLOCATED = 0x08
    #: the data is stored compressed
    COMPRESSED = 0x40


@dataclass(frozen=True)
class Progress:
    """One progress report of a long operation, as passed to a ``progress`` callback and
    written to ``QIMG_PROGRESS_FD`` (docs/library.md, docs/progress.md).

    ``done`` and ``total`` count bytes of the operation's guest data (``total`` may grow while
    the operation finds more work, never shrinks below ``done``); ``phase`` names the step
    (``"copy"``, ``"compare"``, ``"commit"``, ``"rebase"``, ``"done"``)."""

    operation: str
    phase: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (1 when there is nothing to do)."""
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


@dataclass(frozen=True)
class Snapshot:
    """An internal snapshot (``qemu-img snapshot -l``, ``info``'s snapshot table)."""

    id: str
    name: str
    vm_state_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    icount: int | None = None


@dataclass(frozen=True)
class ImageInfo:
    """``qemu-img info`` of one image; ``backing`` is the backing image's when asked for
    (``backing_chain=True``). ``data`` is qemu-img's JSON object for this image (without
    ``backing-image``), with every key a format adds (``format_specific`` holds the part under
    ``format-specific``)."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    dirty: bool | None
    cluster_size: int | None
    encrypted: bool
    backing_filename: str | None
    full_backing_filename: str | None
    backing_format: str | None
    snapshots: tuple[Snapshot, ...]
    format_specific: dict[str, Any] | None
    backing: ImageInfo | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], backing: ImageInfo | None = None) -> ImageInfo:
        snaps = tuple(Snapshot(id=s["id"], name=s["name"], vm_state_size=s["vm-state-size"],
                               date_sec=s["date-sec"], date_nsec=s["date-nsec"],
                               vm_clock_nsec=s["vm-clock-sec"] * 1_000_000_000 + s["vm-clock-nsec"],
                               icount=s.get("icount")) for s in d.get("snapshots", ()))
        spec = d.get("format-specific")
        return cls(filename=d["filename"], format=d["format"], virtual_size=d["virtual-size"],
                   actual_size=d.get("actual-size"), dirty=d.get("dirty-flag"), cluster_size=d.get("cluster-size"),
                   encrypted=bool(d.get("encrypted")), backing_filename=d.get("backing-filename"),
                   full_backing_filename=d.get("full-backing-filename"),
                   backing_format=d.get("backing-filename-format"), snapshots=snaps,
                   format_specific=spec.get("data") if isinstance(spec, dict) else None, backing=backing,
                   data={k: v for k, v in d.items() if k != "backing-image"})

    @property
    def chain(self) -> list[ImageInfo]:
        """This image's info and its backing images', top first."""
        out: list[ImageInfo] = []
        cur: ImageInfo | None = self
        while cur is not None:
            out.append(cur)
            cur = cur.backing
        return out

    def to_dict(self) -> dict[str, Any]:
        """qemu-img's ``info --output=json`` object (backing images nested under ``backing-image``)."""
        d = dict(self.data)
        if self.backing is not None:
            d["backing-image"] = self.backing.to_dict()
        return d


@dataclass(frozen=True)
class CheckReport:
    """``qemu-img check``: the counts QEMU's ImageCheck has (None where the format has none)
    and the driver's diagnostic lines (``messages``, printed on stderr by the CLI)."""

    filename: str
    format: str
    check_errors: int
    corruptions: int
    leaks: int
    corruptions_fixed: int
    leaks_fixed: int
    image_end_offset: int | None
    total_clusters: int | None
    allocated_clusters: int | None
    fragmented_clusters: int | None
    compressed_clusters: int | None
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No corruption, leak or internal error."""
        return not (self.check_errors or self.corruptions or self.leaks)

    @property
    def exit_code(self) -> int:
        """qemu-img check's exit status: 0 clean, 1 check errors, 2 corruptions, 3 leaks."""
        return 1 if self.check_errors else 2 if self.corruptions else 3 if self.leaks else 0

    def to_dict(self) -> dict[str, Any]:
        """qemu-img's ``check --output=json`` object."""
        from .driver import CheckResult
        from .ops.check import to_dict

        return to_dict(CheckResult(**{k: getattr(self, k) for k in CheckResult._fields if k != "messages"}))


@dataclass(frozen=True)
class MapEntry:
    """One run of ``qemu-img map --output=json``: ``depth`` is the chain layer that holds it
    (0: the top image), ``offset`` where the data lives in ``filename`` when known."""

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    compressed: bool = False
    offset: int | None = None
    filename: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def flags(self) -> Allocation:
        f = Allocation(0)
        if self.data:
            f |= Allocation.DATA
        if self.zero:
            f |= Allocation.ZERO
        if self.present:
            f |= Allocation.ALLOCATED
        if self.offset is not None:
            f |= Allocation.OFFSET_VALID
        if self.compressed:
            f |= Allocation.COMPRESSED
        return f

    def to_dict(self) -> dict[str, Any]:
        """The entry as qemu-img's JSON object (its key order; ``compressed`` as 10.0 prints it)."""
        d: dict[str, Any] = {"start": self.start, "length": self.length, "depth": self.depth,
                             "present": self.present, "zero": self.zero, "data": self.data,
                             "compressed": self.compressed}
        if self.offset is not None:
            d["offset"] = self.offset
        return d


@dataclass(frozen=True)
class Measurement:
    """``qemu-img measure``: bytes a new image needs (``required``), fully allocated, and for
    persistent bitmaps (None when the source has none or the format cannot hold them)."""

    required: int
    fully_allocated: int
    bitmaps: int | None = None


@dataclass(frozen=True)
class Comparison:
    """``qemu-img compare``: ``identical`` (exit status 0), else where the first difference is
    (``offset``; None for a size mismatch in strict mode) and qemu-img's message."""

    identical: bool
    offset: int | None
    message: str

    def __bool__(self) -> bool:
        return self.identical
