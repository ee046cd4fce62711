"""qimg.records: every driver's declarative Records agree with their construct form.

Headers are parsed with ``struct`` (importing construct costs more than a whole ``qimg info``);
each Record's ``.construct`` is the same layout as a construct Struct, the reference form. Both
must give identical bytes for the same values, identical values for the same bytes, and both
must refuse short buffers and values that do not fit.
"""
from __future__ import annotations

import importlib
import random

import pytest
from qimg.errors import CorruptImage, QimgError
from qimg.records import Fields, Record, RecordError

construct = pytest.importorskip("construct")

#: modules holding on-disk Records (each plugin that is installed)
MODULES = ("qimg_qcow2.structs", "qimg_qcow2.snapshot", "qimg_qcow2.bitmap", "qimg_qcow.structs",
           "qimg_qed.structs", "qimg_vdi.structs", "qimg_vpc.structs", "qimg_vhdx.structs",
           "qimg_vmdk.structs", "qimg_bochs.structs", "qimg_cloop.structs", "qimg_dmg.structs")
_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64, "b": 8, "h": 16, "i": 32, "q": 64}


def _records() -> list[tuple[str, Record]]:
    out = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out += [(f"{name}.{attr}", obj) for attr, obj in vars(mod).items() if isinstance(obj, Record)]
    return out


RECORDS = _records()


def test_every_format_has_records() -> None:
    """The collection is not empty by accident (each installed header module contributes)."""
    found = {name.rsplit(".", 1)[0] for name, _ in RECORDS}
    for name in MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            assert name in found, name


def random_values(rec: Record, rnd: random.Random) -> dict:
    out: dict = {}
    for fname, code in rec.fields:
        if isinstance(code, Record):
            out[fname] = random_values(code, rnd)
        elif isinstance(code, tuple):
            out[fname] = [random_values(code[0], rnd) for _ in range(code[1])]
        elif code[-1] == "x":
            continue
        elif code[-1] == "s":
            out[fname] = rnd.randbytes(int(code[:-1]))
        else:
            bits = _BITS[code]
            edge = rnd.random() < 0.3  # extremes matter most for byte order and width
            if code.islower():
                lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            else:
                lo, hi = 0, (1 << bits) - 1
            out[fname] = rnd.choice((lo, hi)) if edge else rnd.randint(lo, hi)
    return out


def _plain(v):
    """A parse result without construct's private keys (``_io``), as plain dicts and lists."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_record_matches_construct(name: str, rec: Record) -> None:
    ref = rec.construct
    assert rec.size == ref.sizeof()
    rnd = random.Random(name)
    for _ in range(200):
        values = random_values(rec, rnd)
        raw = rec.build(values)
        assert raw == ref.build(values)
        assert len(raw) == rec.size
        parsed = rec.parse(raw)
        assert _plain(parsed) == _plain(ref.parse(raw)) == {k: v for k, v in values.items()}
        # the parsed object builds the same bytes again (drivers rebuild modified headers)
        assert rec.build(parsed) == raw
    # arbitrary bytes (padding not zero) parse alike, at an offset too
    for _ in range(50):
        buf = rnd.randbytes(rec.size + 16)
        off = rnd.randrange(17)
        assert _plain(rec.parse(buf, off)) == _plain(ref.parse(buf[off:]))
        assert _plain(rec.parse(memoryview(buf))) == _plain(ref.parse(buf))


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_short_buffers_are_refused_alike(name: str, rec: Record) -> None:
    raw = rec.build(random_values(rec, random.Random(name)))
    for n in (0, 1, rec.size // 2, rec.size - 1):
        with pytest.raises(construct.StreamError):
            rec.construct.parse(raw[:n])
        with pytest.raises(CorruptImage) as e:
            rec.parse(raw[:n])
        # one clean line for the user (qimg: ...), never a traceback
        assert "\n" not in e.value.message and e.value.message.startswith("Truncated ")
    with pytest.raises(CorruptImage):
        rec.parse(raw, 1)


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_values_that_do_not_fit_are_refused_alike(name: str, rec: Record) -> None:
    values = random_values(rec, random.Random(name))
    flat = [(f, c) for f, c in rec.fields if isinstance(c, str) and c[-1] != "x"]
    for fname, code in flat:
        bad = dict(values)
        if code[-1] == "s":
            bad[fname] = values[fname] + b"!"
        else:
            bad[fname] = 1 << _BITS[code]
        with pytest.raises(construct.ConstructError):
            rec.construct.build(bad)
        with pytest.raises(RecordError):
            rec.build(bad)
        missing = {k: v for k, v in values.items() if k != fname}
        with pytest.raises(KeyError):
            rec.construct.build(missing)
        with pytest.raises(KeyError):
            rec.build(missing)


def test_fields_object() -> None:
    rec = Record("<", ("a", "H"), (None, "2x"), ("b", "3s"), name="demo")
    f = rec.parse(b"\x01\x02\0\0xyz")
    assert isinstance(f, Fields) and isinstance(f, dict)
    assert (f.a, f["b"]) == (0x201, b"xyz") and list(f) == ["a", "b"]
    f.a = 7  # drivers update parsed headers in place and build them again
    assert f["a"] == 7 and rec.build(f) == b"\x07\0\0\0xyz"
    with pytest.raises(AttributeError):
        f.nothing  # noqa: B018
    assert rec.names == ("a", "b") and rec.sizeof() == 7
    assert issubclass(CorruptImage, QimgError)


def test_nested_and_arrays() -> None:
    inner = Record(">", ("x", "H"), ("y", "B"))
    rec = Record(">", ("head", "I"), ("one", inner), ("many", (inner, 3)), (None, "1x"))
    assert rec.size == 4 + 3 + 9 + 1
    values = {"head": 5, "one": {"x": 1, "y": 2}, "many": [{"x": i, "y": i} for i in range(3)]}
    raw = rec.build(values)
    assert raw == rec.construct.build(values)
    p = rec.parse(raw)
    assert p.one.y == 2 and p.many[2].x == 2 and _plain(p) == values
    with pytest.raises(RecordError):
        rec.build({**values, "many": values["many"][:2]})
    with pytest.raises(ValueError):
        Record("<", ("one", inner))  # byte orders must agree


def test_bad_declarations() -> None:
    with pytest.raises(ValueError):
        Record("=", ("a", "I"))
    with pytest.raises(ValueError):
        Record(">", ("a", "f"))
    with pytest.raises(ValueError):
        Record(">", ("a", "4x"))
    with pytest.raises(ValueError):
        Record(">", (None, "I"))
