"""The ``quorum`` driver: one node over several children that hold the same data. A write goes
to every child and succeeds when at least ``vote-threshold`` of them took it; a read reads every
child, and when they differ the version most children returned wins if it has at least
``vote-threshold`` votes (else EIO); ``read-pattern=fifo`` reads the first child that answers.

Options, as QEMU's: ``children`` (a list of child nodes: ``children.0.driver=file,
children.0.filename=a``, at least one), ``vote-threshold`` (1 to the number of children),
``blkverify`` (two children, threshold 2: a difference ends the program), ``rewrite-corrupted``
(a losing child is rewritten with the winning data), ``read-pattern`` (``quorum`` or ``fifo``).
Quorum has no directory of its own: a relative backing file name under it cannot be resolved
(``Cannot generate a base directory for quorum nodes``).
"""
from __future__ import annotations

import errno
import os
import sys
from collections import Counter

from qimg.blockstatus import DATA, ZERO
from qimg.errors import QimgError
from qimg.options import BOOL, NUMBER, STRING
from qimg.protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _errno_of(exc: BaseException) -> int:
    return getattr(exc, "errno", None) or errno.EIO


class QuorumProtocol(Protocol):
    protocol_name = "quorum"
    runtime_options = {"vote-threshold": NUMBER, "blkverify": BOOL, "rewrite-corrupted": BOOL,
                       "read-pattern": STRING, "children.": STRING}
    strong_runtime_options = ("vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern")
    can_create = False
    maps_offsets = False  # (its data is in every child: no one offset)

    @classmethod
    def parse_filename(cls, filename: str, options: Any = None) -> dict[str, Any]:
        raise QimgError("Unknown protocol 'quorum'")  # (QEMU's quorum has no filename syntax)

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> "QuorumProtocol":
        # the children: "children.N.<option>" (a nested node) or "children.N" (a node's name)
        groups: dict[int, dict[str, Any] | str] = {}
        for key, value in options.items():
            if not key.startswith("children."):
                continue
            index, _, rest = key[len("children."):].partition(".")
            if not index.isdigit() or (index != "0" and index.startswith("0")):
                raise QimgError("Option children is not a valid array")
            i = int(index)
            if rest:
                entry = groups.setdefault(i, {})
                if not isinstance(entry, dict):
                    raise QimgError("Option children is not a valid array")
                entry[rest] = value
            else:
                groups[i] = str(value)
        n = len(groups)
        if sorted(groups) != list(range(n)):
            raise QimgError("Option children is not a valid array")
        if n < 1:
            raise QimgError("Number of provided children must be 1 or more")
        threshold = int(options.get("vote-threshold", 0) or 0)
        if threshold < 1:
            raise QimgError("Parameter 'vote-threshold' expects a value >= 1")
        if threshold > n:
            raise QimgError("threshold may not exceed children count")
        pattern = options.get("read-pattern")
        if pattern is not None and pattern not in ("quorum", "fifo"):
            raise QimgError("Please set read-pattern as fifo or quorum")
        fifo = pattern == "fifo"
        blkverify = rewrite = False
        if not fifo:
            blkverify = bool(options.get("blkverify", False))
            if blkverify and (n != 2 or threshold != 2):
                raise QimgError("blkverify=on can only be set if there are exactly two files and vote-threshold is 2")
            rewrite = bool(options.get("rewrite-corrupted", False))
            if rewrite and blkverify:
                raise QimgError("rewrite-corrupted=on cannot be used with blkverify=on")
        from qimg.api import open_child

        children: list[Protocol] = []
        try:
            for i in range(n):
                spec = groups[i]
                if isinstance(spec, str):
                    raise QimgError(f"Cannot find device='{spec}' nor node-name='{spec}'")
                children.append(open_child(None, spec, writable=writable or rewrite))
        except BaseException:
            for c in children:
                c.close()
            raise
        if len({c.size() for c in children}) != 1:
            for c in children:
                c.close()
            raise QimgError("Could not refresh total sector count: Input/output error")
        proto = cls()
        proto.children = children
        proto.threshold, proto.fifo, proto.blkverify, proto.rewrite = threshold, fifo, blkverify, rewrite
        proto.writable = writable
        proto.filename = filename
        proto.extra = {k: options[k] for k in cls.strong_runtime_options if k in options}
        return proto

    # -- names ---------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        return None  # only a json:{...} name says what a quorum node is

    def json_options(self) -> dict[str, Any]:
        return {"driver": "quorum", **self.extra, "children": [c.json_options() for c in self.children]}

    def dirname(self) -> str:
        raise QimgError("Cannot generate a base directory for quorum nodes")

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        raise QimgError("Cannot generate a base directory for quorum nodes")

    def child_nodes(self) -> list[tuple[str, Protocol]]:
        # (the last attached first, as QEMU lists a node's children)
        return [(f"children.{i}", c) for i, c in reversed(list(enumerate(self.children)))]

    # -- votes -----------------------------------------------------------------------------------
    def _fail(self, errors: list[int]) -> OSError:
        """The error most children returned (QEMU's vote among the errors)."""
        code = Counter(errors).most_common(1)[0][0]
        return OSError(code, os.strerror(code))

    def _on_all(self, op: Callable[[Protocol], None]) -> None:
        """``op`` on every child; an error when fewer than the threshold succeeded."""
        errors = []
        for c in self.children:
            try:
                op(c)
            except OSError as e:
                errors.append(_errno_of(e))
        if len(self.children) - len(errors) < self.threshold:
            raise self._fail(errors)

    # -- I/O -------------------------------------------------------------------------------------
    def preadinto(self, offset: int, buf: memoryview) -> int:
        n = max(0, min(len(buf), self.size() - offset))
        view = buf[:n]
        if self.fifo:
            err: OSError | None = None
            for c in self.children:
                try:
                    _read_full(c, offset, view)
                    return n
                except OSError as e:
                    err = e
            raise err  # type: ignore[misc]
        versions: list[tuple[int, bytes]] = []
        errors = []
        for i, c in enumerate(self.children):
            tmp = bytearray(n)
            try:
                _read_full(c, offset, memoryview(tmp))
            except OSError as e:
                errors.append(_errno_of(e))
                continue
            versions.append((i, bytes(tmp)))
        if len(versions) < self.threshold:
            raise self._fail(errors)
        first = versions[0][1]
        if all(data == first for _, data in versions[1:]):
            view[:] = first
            return n
        if self.blkverify:
            at = next(k for k in range(n) if first[k] != versions[1][1][k])
            print(f"quorum: offset={offset} bytes={n} contents mismatch at offset {offset + at}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)  # as QEMU: blkverify mode ends the program at a difference
        votes = Counter(data for _, data in versions)
        best = max(votes.values())
        # a tie goes to the version first returned by the last child, as QEMU's vote (its
        # versions are listed newest first, and only a greater count replaces the winner)
        seen = list(dict.fromkeys(data for _, data in versions))
        winner = next(data for data in reversed(seen) if votes[data] == best)
        if best < self.threshold:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view[:] = winner
        if self.rewrite:
            for i, data in versions:
                if data != winner:
                    try:
                        self.children[i].pwrite(offset, winner)
                    except OSError:
                        pass  # a correction attempt only, as QEMU's
        return n

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._on_all(lambda c: c.pwrite(offset, data))

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._on_all(lambda c: c.write_zeroes(offset, length, unmap))

    def flush(self) -> None:
        self._on_all(lambda c: c.flush())

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        # zeroes where every child says zeroes (the shortest run), else data (the longest)
        n_zero, n_data = length, 0
        for c in self.children:
            n, flags = c.block_status(offset, length)
            if flags & ZERO:
                n_zero = min(n_zero, n)
            else:
                n_data = max(n_data, n)
        return (n_data, DATA) if n_data else (n_zero, ZERO)

    def size(self) -> int:
        sizes = {c.size() for c in self.children}
        if len(sizes) != 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return sizes.pop()

    def truncate(self, size: int) -> None:
        raise QimgError("Image format driver does not support resize")

    def allocated_size(self) -> int | None:
        sizes = [c.allocated_size() for c in self.children]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    def set_perms(self, perm: int, shared: int) -> None:
        for c in self.children:
            c.set_perms(perm, shared)

    def close(self) -> None:
        for c in self.children:
            c.close()


def _read_full(child: Protocol, offset: int, view: memoryview) -> None:
    got = child.preadinto(offset, view)
    if got < len(view):
        view[got:] = bytes(len(view) - got)
