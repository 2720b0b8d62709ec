"""Hypothesis strategies for confbus's wire contract: garbage, and garbage that looks right.

``wire(T)`` draws JSON documents for a msgspec type ``T`` (a Struct, a tagged union, …),
read from ``msgspec.inspect``: mostly well-typed (so decoding gets past the first field and
into the constraints, the tags, the nested Structs), with a share of each field dropped, retyped
or given a value at the edge of its constraint. ``garbage()`` draws bytes and JSON of any shape.
Everything is small: the whole fuzz suite runs in CI in well under a minute.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

JsonValue = Any


def _json_values(bound: int) -> tuple[st.SearchStrategy[JsonValue], st.SearchStrategy[JsonValue]]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-bound, max_value=bound),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    values = st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=10), children, max_size=4),
        ),
        max_leaves=12,
    )
    return scalars, values


_scalars, json_values = _json_values(2**70)
_scalars64, json_values64 = _json_values(2**63 - 1)

# Raw JSON texts that no Python value encodes to, but a sender may write.
_odd_json = st.sampled_from(
    [
        b"1e999",
        b"-1e999",
        b"NaN",
        b"-0",
        b"1" * 400,
        b'"\\ud800"',
        b'"\\u0000"',
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 500 + b"1" + b"}" * 500,  # deeper: see DEEP below
        b'{"type": "\x00"}',
        b"\xef\xbb\xbf{}",
        b"{} {}",
        b"",
        b"   ",
    ]
)


# A document nested past the interpreter's recursion limit inside a field the decoder skips.
# msgspec raises RecursionError for it (not a msgspec error): tests/fuzz/test_decoders.py.
DEEP = b'{"x":' * 1200 + b"1" + b"}" * 1200


def garbage() -> st.SearchStrategy[bytes]:
    """Bytes of any kind, and JSON of any shape."""
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        _odd_json,
    )


INT64 = (-(2**63), 2**63 - 1)


def _edge_ints(t: mi.IntType, int64: bool) -> st.SearchStrategy[int]:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
    edges = [v for v in (lo, hi) if v is not None]
    edges += [v - 1 for v in edges] + [v + 1 for v in edges]
    edges += [0, -1, *INT64] + ([] if int64 else [2**63, -(2**63) - 1, 2**64])
    if int64:
        edges = [v for v in edges if INT64[0] <= v <= INT64[1]]
        lo = INT64[0] if lo is None else max(lo, INT64[0])
        hi = INT64[1] if hi is None else min(hi, INT64[1])
    return st.one_of(st.integers(min_value=lo, max_value=hi), st.sampled_from(edges))


def _str(t: mi.StrType) -> st.SearchStrategy[str]:
    options: list[st.SearchStrategy[str]] = [st.text(max_size=30)]
    if t.pattern is not None:
        options.append(st.from_regex(t.pattern, fullmatch=True).filter(lambda s: len(s) < 200))
    if t.max_length is not None:
        options.append(st.text(min_size=t.max_length, max_size=t.max_length + 1))
    return st.one_of(options)


def _value(t: mi.Type, depth: int, int64: bool = False) -> st.SearchStrategy[JsonValue]:
    """A JSON value for ``t``, usually of the right type."""
    if depth > 4:
        return _scalars64 if int64 else _scalars
    if isinstance(t, mi.Metadata):
        return _value(t.type, depth, int64)
    if isinstance(t, mi.AnyType):
        return json_values64 if int64 else json_values
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return _edge_ints(t, int64)
    if isinstance(t, mi.FloatType):
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers())
    if isinstance(t, mi.StrType):
        return _str(t)
    if isinstance(t, mi.BytesType | mi.ByteArrayType):
        return st.one_of(
            st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
            st.text(max_size=10),  # not base64
        )
    if isinstance(t, mi.DateTimeType):
        return st.one_of(
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
            st.sampled_from(["2024-13-01T00:00:00Z", "yesterday", "0000-00-00", ""]),
        )
    if isinstance(t, mi.LiteralType):
        return st.one_of(st.sampled_from(list(t.values)), _scalars64 if int64 else _scalars)
    if isinstance(t, mi.UnionType):
        return st.one_of([_value(u, depth + 1, int64) for u in t.types])
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return st.lists(_value(t.item_type, depth + 1, int64), max_size=3)
    if isinstance(t, mi.DictType):
        keys = _value(t.key_type, depth + 1, int64).filter(lambda k: type(k) in (str, int))
        return st.dictionaries(
            st.one_of(keys, st.text(max_size=8)), _value(t.value_type, depth + 1, int64), max_size=3
        )
    if isinstance(t, mi.StructType):
        return _struct(t, depth + 1, int64)
    return json_values64 if int64 else json_values


def _struct(t: mi.StructType, depth: int, int64: bool) -> st.SearchStrategy[dict[str, JsonValue]]:
    fields = {f.encode_name: _field(f, depth, int64) for f in t.fields}
    base = st.fixed_dictionaries(
        {k: v for k, v in fields.items() if _required(t, k)},
        optional={k: v for k, v in fields.items() if not _required(t, k)},
    )
    if t.tag_field is not None:
        # Mostly the right tag.
        tag = st.one_of(st.just(t.tag), st.just(t.tag), _scalars64 if int64 else _scalars)
        base = st.tuples(base, tag).map(lambda bt: {**bt[0], t.tag_field: bt[1]})
    return base


def _required(t: mi.StructType, name: str) -> bool:
    return any(f.encode_name == name and f.required for f in t.fields)


def _field(f: mi.Field, depth: int, int64: bool) -> st.SearchStrategy[JsonValue]:
    # Mostly the declared type; now and then any JSON at all (a retyped field).
    typed = _value(f.type, depth, int64)
    return st.one_of(typed, typed, typed, json_values64 if int64 else json_values)


def wire(t: Any, *, int64: bool = False) -> st.SearchStrategy[bytes]:
    """JSON documents for the msgspec type ``t`` (a Struct class, a union of them, ...).

    ``int64``: keep integers within a signed 64-bit range (what SQLite stores).
    """
    info = mi.type_info(t)

    @st.composite
    def draw(data: st.DrawFn) -> bytes:
        doc = data(_value(info, 0, int64))
        if isinstance(doc, dict) and doc and data(st.integers(0, 3)) == 0:
            key = data(st.sampled_from(sorted(doc)))
            doc = {k: v for k, v in doc.items() if k != key}  # a required field may go
        return msgspec.json.encode(doc)

    return draw()
