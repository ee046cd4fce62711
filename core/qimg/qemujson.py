"""QEMU's JSON dialect, read as QEMU reads a ``json:{...}`` name, with its error messages.

The dialect: RFC 8259 JSON plus strings in single quotes (which may hold ``"``) and the escape
``\\'`` in either kind of string. How QEMU reads it decides which error a broken text reports,
so the three stages are kept apart as in QEMU:

- a lexer over the UTF-8 bytes: a byte no token can continue with is an error at once
  (``stray 'TEXT'``, the token so far and that byte), wherever it stands;
- a streamer that counts brackets and hands the tokens of one top-level value to the parser
  only once its brackets balance (so a lexer error anywhere in an object wins over a grammar
  error before it), and refuses nesting deeper than :data:`MAX_NESTING` as it goes;
- a parser whose first error stands (``expected separator in dict``, ``invalid keyword
  'x'``, ``duplicate key``...).

The first error or the second value ends reading (``Expecting at most one JSON value``).
"""
from __future__ import annotations

import sys

from .errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

#: brackets and braces open at once, at most (QEMU's streamer)
MAX_NESTING = 1024

# token kinds
_LCURLY, _RCURLY, _LSQUARE, _RSQUARE, _COLON, _COMMA = "{", "}", "[", "]", ":", ","
_STRING, _INTEGER, _FLOAT, _KEYWORD = "string", "integer", "float", "keyword"
_STRUCTURAL = frozenset(b"{}[],:")

_DIGITS = frozenset(b"0123456789")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_SPACE = frozenset(b" \t\r\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")

# lexer states: the value is the token kind a state ends as when the next byte cannot continue
# it (None: that byte is an error)
_START, _DQ, _DQ_ESC, _SQ, _SQ_ESC = "start", "dq", "dq-esc", "sq", "sq-esc"
_ZERO, _NONZERO, _NEG, _MANT, _MANT_DIGITS = "zero", "nonzero", "neg", "mant", "mant-digits"
_EXP_E, _EXP_SIGN, _EXP_DIGITS, _WORD, _WS = "exp-e", "exp-sign", "exp-digits", "word", "ws"
_ENDS_AS = {_ZERO: _INTEGER, _NONZERO: _INTEGER, _MANT_DIGITS: _FLOAT, _EXP_DIGITS: _FLOAT,
            _WORD: _KEYWORD, _WS: ""}


class _Error(Exception):
    """The first error of a read: its message, as QEMU words it."""


def _next_state(state: str, b: int) -> str | None:
    """Where ``state`` goes on byte ``b`` (consumed); None when ``b`` does not continue the
    token (an error, or the end of a token in a state of :data:`_ENDS_AS`)."""
    if state in (_DQ, _SQ):
        if b == (0x22 if state == _DQ else 0x27):
            return "end-string"
        if b == 0x5C:
            return _DQ_ESC if state == _DQ else _SQ_ESC
        return state if 0x20 <= b <= 0xFD else None
    if state in (_DQ_ESC, _SQ_ESC):
        # any printable byte: the parser checks the escape
        return (_DQ if state == _DQ_ESC else _SQ) if 0x20 <= b <= 0xFD else None
    if state == _ZERO:
        return _MANT if b == 0x2E else ("error" if b in _DIGITS else None)
    if state == _NONZERO:
        if b in _DIGITS:
            return _NONZERO
        return _EXP_E if b in b"eE" else (_MANT if b == 0x2E else None)
    if state == _NEG:
        return _ZERO if b == 0x30 else (_NONZERO if b in _DIGITS else None)
    if state == _MANT:
        return _MANT_DIGITS if b in _DIGITS else None
    if state == _MANT_DIGITS:
        return _MANT_DIGITS if b in _DIGITS else (_EXP_E if b in b"eE" else None)
    if state == _EXP_E:
        return _EXP_SIGN if b in b"+-" else (_EXP_DIGITS if b in _DIGITS else None)
    if state in (_EXP_SIGN, _EXP_DIGITS):
        return _EXP_DIGITS if b in _DIGITS else None
    if state == _WORD:
        return _WORD if b in _LOWER else None
    if state == _WS:
        return _WS if b in _SPACE else None
    # start
    if b in _STRUCTURAL:
        return "structural"
    if b == 0x22:
        return _DQ
    if b == 0x27:
        return _SQ
    if b == 0x30:
        return _ZERO
    if b in _DIGITS:
        return _NONZERO
    if b == 0x2D:
        return _NEG
    if b in _LOWER:
        return _WORD
    return _WS if b in _SPACE else None


def _tokens(data: bytes):
    """The lexer: (kind, bytes) per token, whitespace left out; ("error", bytes) at the first
    byte that fits no token (the token so far with that byte), then nothing more."""
    state, start = _START, 0
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        nxt = _next_state(state, b)
        if nxt is None and state in _ENDS_AS:
            kind = _ENDS_AS[state]
            if kind:
                yield kind, data[start:i]
            state, start = _START, i
            continue  # the byte starts the next token
        if nxt is None or nxt == "error":
            yield "error", data[start:i + 1]
            return
        i += 1
        if nxt == "structural":
            yield chr(b), data[start:i]
            state, start = _START, i
        elif nxt == "end-string":
            yield _STRING, data[start:i]
            state, start = _START, i
        else:
            state = nxt
    if state in _ENDS_AS:
        if _ENDS_AS[state]:
            yield _ENDS_AS[state], data[start:]
    elif state != _START:
        yield "error", data[start:]  # the end of the text inside a token


# -- the parser --------------------------------------------------------------------------------

def _string(tok: bytes) -> str:
    """A string token's value: escapes decoded, the bytes checked as (modified) UTF-8."""
    body = tok[1:-1]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        b = body[i]
        if b == 0x5C:
            e = body[i + 1]
            simple = {0x22: '"', 0x27: "'", 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f", 0x6E: "\n",
                      0x72: "\r", 0x74: "\t"}
            if e in simple:
                out.append(simple[e])
                i += 2
                continue
            if e != 0x75:  # u
                raise _Error("invalid escape sequence in string")
            cp = _hex4(body, i + 2)
            end = i + 6
            if 0xD800 <= cp <= 0xDBFF and body[end:end + 2] == b"\\u":
                trail = _hex4(body, end + 2)
                if 0xDC00 <= trail <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) + (trail & 0x3FF)
                    end += 6
                else:
                    cp = -1
            if cp < 0 or 0xD800 <= cp <= 0xDFFF:
                shown = body[i:end].decode("utf-8", "surrogateescape")
                raise _Error(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
            i = end
            continue
        # one UTF-8 sequence (QEMU's modified UTF-8 also takes C0 80 for U+0000)
        if b < 0x80:
            out.append(chr(b))
            i += 1
            continue
        size = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 0
        seq = body[i:i + size]
        if size and seq == b"\xc0\x80":
            out.append("\0")
            i += 2
            continue
        try:
            ch = seq.decode("utf-8") if size and len(seq) == size else ""
        except UnicodeDecodeError:
            ch = ""
        if len(ch) != 1:
            raise _Error("invalid UTF-8 sequence in string")
        out.append(ch)
        i += size
    return "".join(out)


def _hex4(body: bytes, at: int) -> int:
    digits = body[at:at + 4]
    if len(digits) < 4 or any(c not in _HEX for c in digits):
        return -1
    return int(digits, 16)


class _Parser:
    def __init__(self, tokens: list[tuple[str, bytes]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, bytes]:
        if self.pos >= len(self.tokens):
            raise _Error("premature EOI")
        return self.tokens[self.pos]

    def pop(self) -> tuple[str, bytes]:
        tok = self.peek()
        self.pos += 1
        return tok

    def value(self) -> Any:
        kind, text = self.peek()
        if kind == _LCURLY:
            return self.obj()
        if kind == _LSQUARE:
            return self.array()
        self.pos += 1
        if kind == _STRING:
            return _string(text)
        if kind == _INTEGER:
            return int(text)  # past int64/uint64 a double: flatten_options turns it
        if kind == _FLOAT:
            return float(text)
        if kind == _KEYWORD:
            words = {b"true": True, b"false": False, b"null": None}
            if text in words:
                return words[text]
            raise _Error(f"invalid keyword '{text.decode()}'")
        raise _Error("expecting value")

    def pair(self, into: dict[str, Any]) -> None:
        key = self.value()
        if not isinstance(key, str):
            raise _Error("key is not a string in object")
        if self.pop()[0] != _COLON:
            raise _Error("missing : in object pair")
        value = self.value()
        if key in into:
            raise _Error("duplicate key")
        into[key] = value

    def obj(self) -> dict[str, Any]:
        self.pop()
        out: dict[str, Any] = {}
        if self.peek()[0] == _RCURLY:
            self.pop()
            return out
        self.pair(out)
        while (kind := self.pop()[0]) != _RCURLY:
            if kind != _COMMA:
                raise _Error("expected separator in dict")
            self.pair(out)
        return out

    def array(self) -> list[Any]:
        self.pop()
        out: list[Any] = []
        if self.peek()[0] == _RSQUARE:
            self.pop()
            return out
        out.append(self.value())
        while (kind := self.pop()[0]) != _RSQUARE:
            if kind != _COMMA:
                raise _Error("expected separator in list")
            out.append(self.value())
        return out


def _parse(tokens: list[tuple[str, bytes]]) -> Any:
    # QEMU's parser recurses per level, as this one does (up to MAX_NESTING levels)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_NESTING))
    return _Parser(tokens).value()


def loads(text: str) -> Any:
    """The one JSON value in ``text`` (objects as dicts in their order, arrays as lists,
    integers as int, others as float); QimgError with QEMU's message (without the
    ``Could not parse the JSON options: `` prefix its callers add) when there is none or more."""
    data = text.encode("utf-8", "surrogateescape")
    values: list[Any] = []
    pending: list[tuple[str, bytes]] = []
    braces = brackets = 0

    def emit(value: Any) -> None:
        if values:
            raise _Error("Expecting at most one JSON value")
        values.append(value)

    def parse_and_emit(tokens: list[tuple[str, bytes]]) -> None:
        try:
            value = _parse(tokens)
        except _Error as e:
            if values:
                raise _Error("Expecting at most one JSON value") from None
            raise _Error(f"JSON parse error, {e}") from None
        emit(value)

    try:
        for kind, tok in _tokens(data):
            if kind == "error":
                if values:
                    raise _Error("Expecting at most one JSON value")
                raise _Error("JSON parse error, stray '" + tok.decode("utf-8", "surrogateescape") + "'")
            braces += (kind == _LCURLY) - (kind == _RCURLY)
            brackets += (kind == _LSQUARE) - (kind == _RSQUARE)
            if braces + brackets > MAX_NESTING:
                if values:
                    raise _Error("Expecting at most one JSON value")
                raise _Error("JSON nesting depth limit exceeded")
            pending.append((kind, tok))
            if (braces > 0 or brackets > 0) and braces >= 0 and brackets >= 0:
                continue  # the value is not complete yet
            parse_and_emit(pending)
            pending, braces, brackets = [], 0, 0
        if pending:  # the text ends inside a value: QEMU parses what there is
            parse_and_emit(pending)
        if not values:
            raise _Error("Expecting a JSON value")
    except _Error as e:
        raise QimgError(str(e)) from None
    return values[0]
