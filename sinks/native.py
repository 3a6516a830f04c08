"""ClickHouse's Native format, as far as the HTTP interface needs it.

chDB writes Native blocks as for a client of protocol revision 0. Clients that name a newer revision
(`client_protocol_version=…` in the URL: clickhouse-go, and so Grafana's ClickHouse data source) read
what a server writes for that revision:

* from revision 51903, each block starts with its BlockInfo (field 1: is_overflows, a bool; field 2:
  bucket_num, an Int32; 0 ends it);
* from revision 54454, each column's type is followed by one byte saying whether the column has a
  custom serialization (never, here: chDB's result columns are written whole).

`upgrade` inserts those bytes. The column data is copied as chDB wrote it (one difference stays: at
revision 0 a top-level DateTime column's type loses its time zone, `DateTime` for `DateTime('UTC')`,
so a client shows its instants in the server's time zone, which is UTC for the embedded engine); it is read only to find where each column ends, which needs
every type's layout: the types below, nested in any way. A type not among them (AggregateFunction,
Dynamic, Variant, JSON, Object) raises Unsupported, and the client is told to ask for another format.
"""

from __future__ import annotations

from typing import Optional

BLOCK_INFO_REVISION = 51903
CUSTOM_SERIALIZATION_REVISION = 54454
# is_overflows = false, bucket_num = -1, end of the fields
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

_FIXED = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "IPv4": 4, "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}
_INDEX_BYTES = {0: 1, 1: 2, 2: 4, 3: 8}  # LowCardinality index types: UInt8 … UInt64
_HAS_ADDITIONAL_KEYS = 1 << 9
_NEED_GLOBAL_DICTIONARY = 1 << 8


class Unsupported(ValueError):
    """A column type whose layout this module does not know."""


class Truncated(ValueError):
    """The data ends inside a block."""


Type = tuple[str, list]  # (name, arguments: types or literal text)


def parse_type(text: str) -> Type:
    """`Array(Nullable(String))` -> ("Array", [("Nullable", [("String", [])])]). Arguments that are no
    type (numbers, quoted strings, enum members) are kept as their text."""
    text = text.strip()
    open_at = text.find("(")
    if open_at < 0 or not text.endswith(")"):
        return text, []
    name, inner = text[:open_at].strip(), text[open_at + 1:-1]
    parts, depth, quote, escaped, start = [], 0, "", False, 0
    for i, ch in enumerate(inner):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    if not inner.strip():
        parts = []
    if name == "Tuple":
        # Named elements: `name Type`; an element's type follows its name.
        return name, [parse_type(_element_type(p)) for p in parts]
    if name == "Nested":  # stored as an array of tuples
        return "Array", [("Tuple", [parse_type(_element_type(p)) for p in parts])]
    if name in ("Array", "Nullable", "LowCardinality", "Map"):
        return name, [parse_type(p) for p in parts]
    if name == "SimpleAggregateFunction":
        return parse_type(parts[-1])
    return name, [p.strip() for p in parts]


def _element_type(part: str) -> str:
    """The type of a tuple element: `Type`, `name Type` or `` `any name` Type``."""
    part = part.strip()
    if part.startswith("`"):
        i, escaped = 1, False
        while i < len(part):
            if escaped:
                escaped = False
            elif part[i] == "\\":
                escaped = True
            elif part[i] == "`":
                return part[i + 1:].strip()
            i += 1
        return part
    if " " in part.split("(")[0].strip():  # `name Type…`
        return part.partition(" ")[2].strip()
    return part


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise Truncated(f"Native data ends at byte {len(self.data)}, inside a block")
        self.pos += n

    def varint(self) -> int:
        shift = value = 0
        while True:
            if self.pos >= len(self.data):
                raise Truncated("Native data ends inside a length")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def string(self) -> None:
        self.take(self.varint())

    def uint64(self) -> int:
        start = self.pos
        self.take(8)
        return int.from_bytes(self.data[start:self.pos], "little")


def _fixed_size(t: Type) -> Optional[int]:
    name, args = t
    if name == "Decimal":
        precision = int(args[0])
        return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
    if name == "FixedString":
        return int(args[0])
    if name.startswith("Interval"):
        return 8
    return _FIXED.get(name)


def _skip_prefix(r: _Reader, t: Type) -> None:
    name, args = t
    if name == "LowCardinality":
        r.take(8)  # the keys' serialization version
    elif name in ("Array", "Nullable", "Tuple", "Map"):
        for arg in args:
            _skip_prefix(r, arg)


def _skip_data(r: _Reader, t: Type, rows: int) -> None:
    if not rows:
        return  # no rows, no bytes: not even a LowCardinality's flags (an empty array's elements)
    name, args = t
    size = _fixed_size(t)
    if size is not None:
        r.take(size * rows)
    elif name == "String":
        for _ in range(rows):
            r.string()
    elif name == "Nullable":
        r.take(rows)  # the null map
        _skip_data(r, args[0], rows)
    elif name in ("Array", "Map"):
        if not rows:
            return
        r.take(8 * (rows - 1))
        total = r.uint64()  # the last offset: the nested rows of the whole column
        elements = args if name == "Array" else [("Tuple", args)]
        _skip_data(r, elements[0], total)
    elif name == "Tuple" and not args:
        r.take(rows)  # an empty tuple is written as one byte per row
    elif name == "Tuple":
        for arg in args:
            _skip_data(r, arg, rows)
    elif name == "LowCardinality":
        flags = r.uint64()
        if flags & _NEED_GLOBAL_DICTIONARY:
            raise Unsupported("LowCardinality with a global dictionary")
        if flags & _HAS_ADDITIONAL_KEYS:
            keys = r.uint64()
            inner = args[0]
            _skip_data(r, inner[1][0] if inner[0] == "Nullable" else inner, keys)
        indexes = r.uint64()
        r.take(_INDEX_BYTES[flags & 0xFF] * indexes)
    else:
        raise Unsupported(f"the type {name}")


def upgrade(data: bytes, revision: int) -> bytes:
    """Native blocks written for revision 0, rewritten for a client of `revision`."""
    if revision < BLOCK_INFO_REVISION:
        return data
    custom = revision >= CUSTOM_SERIALIZATION_REVISION
    r, out = _Reader(data), bytearray()
    while r.pos < len(data):
        out += _BLOCK_INFO
        start = r.pos
        columns, rows = r.varint(), r.varint()
        out += data[start:r.pos]
        for _ in range(columns):
            start = r.pos
            r.string()  # name
            type_start = r.pos
            r.string()
            out += data[start:r.pos]
            if custom:
                out += b"\x00"
            start = r.pos
            if rows:
                t = parse_type(_string_value(data, type_start))
                _skip_prefix(r, t)
                _skip_data(r, t, rows)
            out += data[start:r.pos]
    return bytes(out)


def _string_value(data: bytes, at: int) -> str:
    """The string whose length prefix starts at `at`."""
    r = _Reader(data)
    r.pos = at
    length = r.varint()
    return data[r.pos:r.pos + length].decode()
