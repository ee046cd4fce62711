"""qimg.values, the start-up substitute for dataclasses, behaves as dataclasses do."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from qimg.values import FrozenValue, Value


class Point(Value):
    __slots__ = ("x", "y")
    _fields = ("x", "y")

    def __init__(self, x: int, y: object = None) -> None:
        self.x = x
        self.y = y


class FPoint(FrozenValue):
    __slots__ = ("x", "y")
    _fields = ("x", "y")

    def __init__(self, x: int, y: object = None) -> None:
        self._set(x=x, y=y)


@dataclasses.dataclass
class Point_:  # noqa: N801 - the reference, named apart only by the underscore
    x: int
    y: object = None


@dataclasses.dataclass(frozen=True)
class FPoint_:  # noqa: N801
    x: int
    y: object = None


CASES = [(1, None), (2, "a"), (3, (1, 2)), (-4, b"\0")]


@pytest.mark.parametrize(("ours", "ref"), [(Point, Point_), (FPoint, FPoint_)])
def test_eq_and_repr_as_dataclasses(ours, ref) -> None:
    for a in CASES:
        for b in CASES:
            assert (ours(*a) == ours(*b)) == (ref(*a) == ref(*b))
            assert (ours(*a) != ours(*b)) == (ref(*a) != ref(*b))
        assert repr(ours(*a)).replace(ours.__name__, ref.__name__.rstrip("_")) == \
            repr(ref(*a)).replace(ref.__qualname__, ref.__name__.rstrip("_"))
        assert ours(*a) != ref(*a)  # another class is never equal, as dataclasses
        assert (ours(*a) == object()) is False


def test_hashing_as_dataclasses() -> None:
    with pytest.raises(TypeError):
        hash(Point_(1))
    with pytest.raises(TypeError):
        hash(Point(1))
    for a in CASES:
        assert hash(FPoint(*a)) == hash(FPoint(*a))
        assert {FPoint(*a): 1}[FPoint(*a)] == 1
        assert hash(FPoint_(*a)) == hash(FPoint_(*a))


def test_frozen_as_dataclasses() -> None:
    ref, ours = FPoint_(1), FPoint(1)
    for obj in (ref, ours):
        with pytest.raises(AttributeError):
            obj.x = 2
        with pytest.raises(AttributeError):
            del obj.x
        assert obj.x == 1
    mut = Point(1)
    mut.x = 2
    assert mut == Point(2)


@pytest.mark.parametrize("cls", [Point, FPoint])
def test_copy_and_pickle(cls) -> None:
    for a in CASES:
        v = cls(*a)
        for w in (copy.copy(v), copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
            assert w == v and w is not v and type(w) is cls
