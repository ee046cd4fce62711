"""Declarative fixed-layout records: on-disk headers as data, parsed by ``struct`` at C speed.

A format's header is a :class:`Record`: its byte order and an ordered list of
``(field name, struct format code)`` pairs::

    Header = Record(">", ("magic", "I"), ("version", "I"), ("size", "Q"), ("name", "46s"),
                    (None, "6x"), name="qcow2 header")

Codes are ``struct``'s: ``B H I Q`` (``b h i q`` signed), ``Ns`` bytes of length N, ``Nx``
N bytes of padding (name None: zeroes when built, skipped when parsed). A field may also be a
nested Record (``("geometry", Geometry)``) or an array of them (``("locators", (Locator, 8))``).

:meth:`Record.parse` returns :class:`Fields`, a dict with attribute access (what drivers used
of construct's ``Container``); :meth:`Record.build` packs a mapping of the field values.
:attr:`Record.construct` builds the equivalent ``construct.Struct`` on demand: construct stays
the reference form of every layout (tests/test_records.py checks both agree on random values),
while opening an image imports nothing but ``struct`` (importing construct took ~33 ms measured
on the reference machine, more than a whole ``qimg info`` of a raw image). This is qimg's one
implementation of header layouts; construct is not used at run time.
"""
from __future__ import annotations

import struct

_INT_CODES = "bBhHiIqQ"


class RecordError(ValueError):
    """A value that does not fit its field (wrong bytes length, integer out of range)."""


class Fields(dict):
    """Parsed field values: a dict whose keys are also attributes (``h.version``)."""

    __slots__ = ()

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return "Fields(" + ", ".join(f"{k}={v!r}" for k, v in self.items()) + ")"


def _split_code(code: str) -> tuple[int, str]:
    """``"46s"`` -> (46, "s"), ``"I"`` -> (1, "I")."""
    n = code[:-1]
    return (int(n) if n else 1), code[-1]


class Record:
    """One fixed-layout record (see the module docstring)."""

    __slots__ = ("byteorder", "fields", "name", "size", "names", "_struct", "_flat", "_plan", "_construct")

    def __init__(self, byteorder: str, *fields: tuple, name: str = "") -> None:
        if byteorder not in ("<", ">"):
            raise ValueError("byteorder must be '<' or '>'")
        self.byteorder = byteorder
        self.fields = fields
        self.name = name
        self._construct = None
        codes: list[str] = []
        plan: list[tuple] = []  # per field: (name, kind, extra)
        for fname, code in fields:
            if isinstance(code, Record) or isinstance(code, tuple):
                sub, count = (code, None) if isinstance(code, Record) else code
                if sub.byteorder != byteorder:
                    raise ValueError(f"nested record {fname!r} has another byte order")
                codes.append(sub._format() * (1 if count is None else count))
                plan.append((fname, "record" if count is None else "array", (sub, count)))
                continue
            n, kind = _split_code(code)
            if kind == "x":
                if fname is not None:
                    raise ValueError(f"padding field {fname!r} must be unnamed (None)")
                codes.append(code)
                continue
            if fname is None:
                raise ValueError(f"field of code {code!r} needs a name")
            if kind == "s":
                codes.append(code)
                plan.append((fname, "bytes", n))
            elif kind in _INT_CODES and n == 1:
                codes.append(kind)
                plan.append((fname, "int", kind))
            else:
                raise ValueError(f"unsupported format code {code!r} for field {fname!r}")
        self._struct = struct.Struct(byteorder + "".join(codes))
        self.size = self._struct.size
        #: every field is a plain int or bytes: parse is one zip
        self._flat = all(kind in ("int", "bytes") for _, kind, _ in plan)
        self._plan = tuple(plan)
        #: the field names, in order (padding has none)
        self.names = tuple(p[0] for p in plan)

    def _format(self) -> str:
        return self._struct.format[1:]

    def sizeof(self) -> int:
        """The size in bytes (construct's spelling)."""
        return self.size

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Fields:
        """The fields of the record at ``buf[offset:]``; a shorter buffer is a corrupt image."""
        have = len(buf) - offset
        if have < self.size:
            from .errors import CorruptImage

            what = self.name or "record"
            raise CorruptImage(f"Truncated {what}: {max(have, 0)} of {self.size} bytes")
        values = self._struct.unpack_from(buf, offset)
        if self._flat:
            return Fields(zip(self.names, values, strict=True))
        out, _ = self._regroup(values, 0)
        return out

    def _regroup(self, values: tuple, i: int) -> tuple[Fields, int]:
        out = Fields()
        for fname, kind, extra in self._plan:
            if kind == "record":
                out[fname], i = extra[0]._regroup(values, i)
            elif kind == "array":
                sub, count = extra
                items = []
                for _ in range(count):
                    item, i = sub._regroup(values, i)
                    items.append(item)
                out[fname] = items
            else:
                out[fname] = values[i]
                i += 1
        return out, i

    # -- building ---------------------------------------------------------------------------
    def build(self, values) -> bytes:
        """The record's bytes for a mapping of field values (extra keys are ignored)."""
        flat: list = []
        self._flatten(values, flat)
        try:
            return self._struct.pack(*flat)
        except struct.error as e:
            raise RecordError(f"{self.name or 'record'}: {e}") from None

    def _flatten(self, values, flat: list) -> None:
        for fname, kind, extra in self._plan:
            v = values[fname]
            if kind == "int":
                flat.append(v)
            elif kind == "bytes":
                if len(v) != extra:
                    raise RecordError(f"{self.name or 'record'}: field {fname!r} needs {extra} bytes, "
                                      f"got {len(v)}")
                flat.append(v)
            elif kind == "record":
                extra[0]._flatten(v, flat)
            else:
                sub, count = extra
                if len(v) != count:
                    raise RecordError(f"{self.name or 'record'}: field {fname!r} needs {count} items, "
                                      f"got {len(v)}")
                for item in v:
                    sub._flatten(item, flat)

    # -- the construct form -----------------------------------------------------------------
    @property
    def construct(self):
        """The equivalent ``construct.Struct`` (imports construct on first use)."""
        if self._construct is None:
            self._construct = self._make_construct()
        return self._construct

    def _make_construct(self):
        import construct as c

        little = self.byteorder == "<"
        ints = {
            "B": c.Int8ul if little else c.Int8ub, "b": c.Int8sl if little else c.Int8sb,
            "H": c.Int16ul if little else c.Int16ub, "h": c.Int16sl if little else c.Int16sb,
            "I": c.Int32ul if little else c.Int32ub, "i": c.Int32sl if little else c.Int32sb,
            "Q": c.Int64ul if little else c.Int64ub, "q": c.Int64sl if little else c.Int64sb,
        }
        subcons = []
        for fname, code in self.fields:
            if isinstance(code, Record):
                subcons.append(fname / code.construct)
                continue
            if isinstance(code, tuple):
                subcons.append(fname / code[0].construct[code[1]])
                continue
            n, kind = _split_code(code)
            if kind == "x":
                subcons.append(c.Padding(n))
            elif kind == "s":
                subcons.append(fname / c.Bytes(n))
            else:
                subcons.append(fname / ints[kind])
        return c.Struct(*subcons)

    def __repr__(self) -> str:
        return f"Record({self.byteorder!r}, {', '.join(repr(f) for f in self.fields)})"
