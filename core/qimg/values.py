"""Plain value classes: ``==`` and ``repr`` over declared fields.

What the ``dataclasses`` these replaced gave, without importing ``dataclasses`` (with
``inspect``, ``ast`` and ``dis`` it took ~22 ms measured on the reference machine, more start-up
time than a whole ``qimg info`` of a raw image). The one substitute, used everywhere in qimg;
tests/test_values.py checks it against ``dataclasses`` (``==``, ``repr``, hashing, frozen
fields, copy and pickle). Subclasses list their
fields in ``_fields`` (usually their ``__slots__``) and write their own ``__init__``.
"""
from __future__ import annotations


class Value:
    """``==`` (same class, same field values) and ``repr`` over ``_fields``; unhashable, as
    mutable dataclasses are."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields) + ")"


class FrozenValue(Value):
    """A :class:`Value` whose fields ``__init__`` sets once (through :meth:`_set`) and nothing
    changes later: hashable, and copied or pickled by calling the class with the field values
    in ``_fields`` order, as a frozen dataclass."""

    __slots__ = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field '{name}'")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field '{name}'")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())

    def __reduce__(self) -> tuple:
        return (type(self), self._values())
