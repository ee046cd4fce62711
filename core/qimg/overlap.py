"""Where a format keeps its own metadata in its file, so that no write lands on it.

A hostile image can point a table entry at the header or at another table: a guest write
through that entry then overwrites the metadata (QEMU's qcow2 stops it with its overlap check;
most other drivers of QEMU write blindly). Drivers record the byte ranges of their metadata in
a :class:`MetadataMap` and call :meth:`MetadataMap.guard` before every write:

* guest data must not overlap any metadata range;
* an update of a table must stay inside that table (``own=`` names it) and overlap no other
  range: a table placed over the header or over another table is refused too.

A refused write raises :class:`MetadataOverlap` (``Preventing invalid write on metadata
(overlaps with ...)``, QEMU's words for qcow2) before anything is written. Ranges may overlap
each other (a hostile image makes them so); lookups stay logarithmic.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

from .errors import CorruptImage


class MetadataOverlap(CorruptImage):
    """A write would land on the image's own metadata; nothing was written."""


class MetadataMap:
    """Byte ranges ``[start, end)`` of metadata, each with a name (``"L1 table"``)."""

    __slots__ = ("_starts", "_ends", "_names", "_reach")

    def __init__(self, ranges: "list[tuple[int, int, str]] | None" = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._names: list[str] = []
        self._reach: list[int] = []  # running maximum of the ends
        if ranges:
            self.extend(ranges)

    def __len__(self) -> int:
        return len(self._starts)

    def _rebuild_reach(self, frm: int) -> None:
        reach = self._reach
        del reach[frm:]
        top = reach[-1] if reach else -1
        for e in self._ends[frm:]:
            if e > top:
                top = e
            reach.append(top)

    def add(self, offset: int, length: int, name: str) -> None:
        """Record ``length`` bytes of metadata ``name`` at ``offset`` (empty ranges are ignored)."""
        if length <= 0:
            return
        i = bisect_right(self._starts, offset)
        self._starts.insert(i, offset)
        self._ends.insert(i, offset + length)
        self._names.insert(i, name)
        self._rebuild_reach(i)

    def extend(self, ranges: "list[tuple[int, int, str]]") -> None:
        """Record many ``(offset, length, name)`` at once (one sort)."""
        items = sorted(zip(self._starts, self._ends, self._names, strict=True))
        items += [(o, o + n, w) for o, n, w in ranges if n > 0]
        items.sort()
        self._starts = [s for s, _, _ in items]
        self._ends = [e for _, e, _ in items]
        self._names = [w for _, _, w in items]
        self._rebuild_reach(0)

    def remove(self, offset: int, name: str) -> None:
        """Forget the range ``name`` that starts at ``offset`` (a table that moved)."""
        i = bisect_left(self._starts, offset)
        while i < len(self._starts) and self._starts[i] == offset:
            if self._names[i] == name:
                del self._starts[i], self._ends[i], self._names[i]
                self._rebuild_reach(i)
                return
            i += 1

    def overlaps(self, offset: int, length: int, own: "tuple[int, int, str] | None" = None) -> str | None:
        """The name of a range that ``[offset, offset+length)`` overlaps, or None.

        ``own``: ``(start, end, name)`` of the table being updated; that exact range (however
        many tables share it) is not a hit.
        """
        if length <= 0:
            return None
        end = offset + length
        i = bisect_left(self._starts, end) - 1
        while i >= 0 and self._reach[i] > offset:
            if self._ends[i] > offset and (own is None or (self._starts[i], self._ends[i], self._names[i]) != own):
                return self._names[i]
            i -= 1
        return None

    def guard(self, offset: int, length: int, own: "tuple[int, int, str] | None" = None) -> None:
        """Raise :class:`MetadataOverlap` if the write would touch metadata (see :meth:`overlaps`).

        With ``own``, the write must also lie inside that table.
        """
        if own is not None and (offset < own[0] or offset + length > own[1]):
            raise MetadataOverlap("Preventing invalid write on metadata (outside the table it updates)")
        hit = self.overlaps(offset, length, own)
        if hit is not None:
            raise MetadataOverlap(f"Preventing invalid write on metadata (overlaps with {hit})")
