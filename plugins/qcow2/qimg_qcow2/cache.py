"""A bounded LRU cache of metadata tables (L2 tables, refcount blocks) with dirty tracking.

Memory stays bounded whatever sizes an image claims: at most ``capacity`` tables live here.
A lock makes lookups safe from the copy engine's reader threads (``thread_safe_reads``).
"""
from __future__ import annotations

from _thread import RLock  # threading.RLock's C type, without importing threading
from collections import OrderedDict

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class TableCache:
    def __init__(self, capacity: int, load: Callable[[int], Any], store: Callable[[int, Any], None],
                 before_evict_dirty: Callable[[], None] | None = None) -> None:
        self.capacity = max(2, capacity)
        self._load = load
        self._store = store
        self._before = before_evict_dirty
        self.tables: OrderedDict[int, Any] = OrderedDict()
        self.dirty: set[int] = set()
        # reentrant: a store callback may flush another cache, never this one, but stay safe
        self._lock = RLock()

    def get(self, offset: int) -> Any:
        with self._lock:
            t = self.tables.get(offset)
            if t is not None:
                self.tables.move_to_end(offset)
                return t
            t = self._load(offset)
            self._put(offset, t, False)
            return t

    def put(self, offset: int, table: Any, dirty: bool = False) -> None:
        with self._lock:
            self._put(offset, table, dirty)

    def _put(self, offset: int, table: Any, dirty: bool) -> None:
        self.tables[offset] = table
        self.tables.move_to_end(offset)
        if dirty:
            self.dirty.add(offset)
        while len(self.tables) > self.capacity:
            old = next(iter(self.tables))
            if old in self.dirty:
                if self._before is not None:
                    self._before()
                self._store(old, self.tables[old])
                self.dirty.discard(old)
            del self.tables[old]

    def mark_dirty(self, offset: int) -> None:
        self.dirty.add(offset)

    def drop(self, offset: int) -> None:
        """Forget a table (its cluster was freed) without writing it."""
        with self._lock:
            self.tables.pop(offset, None)
            self.dirty.discard(offset)

    def flush(self) -> None:
        with self._lock:
            for off in sorted(self.dirty):
                self._store(off, self.tables[off])
            self.dirty.clear()

    def clear(self) -> None:
        with self._lock:
            self.flush()
            self.tables.clear()
