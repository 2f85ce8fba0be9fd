"""Avro records written a column at a time: a batch's records in a few numpy passes.

The engine writes one prediction per event, and fastavro's writer costs a
few microseconds per record, most of it walking the schema and the record
dict. A batch's outputs arrive as columns anyway (the model scores a batch),
so ``ColumnWriter`` encodes each field for all rows at once (varints,
little-endian floats, length-prefixed strings) and cuts the joined buffer
into one payload per row. The bytes are exactly fastavro's (a property test
holds the two to the same output).

It covers the flat records the pipeline writes: fields of the primitive
types, enums, ``["null", T]`` unions of those, and arrays of numbers given as
a two-dimensional array. ``ColumnWriter.of`` returns None for any other
schema, and the caller writes record by record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

AvroSchema = dict[str, Any]

_FLOATS: dict[str, np.dtype[Any]] = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_INTS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # the ten 7-bit groups of a 64-bit varint


class Unsupported(Exception):
    """A schema or a column this writer does not take; write record by record instead."""


@dataclass
class _Segment:
    """Bytes of every row for one part of a record, in row order.

    ``width`` set: every row has that many bytes, ``data`` is (rows, width).
    Otherwise row i has ``lengths[i]`` bytes and ``data`` is flat.
    """

    data: np.ndarray
    width: int | None = None
    lengths: np.ndarray | None = None

    def sizes(self, rows: int) -> np.ndarray | int:
        if self.width is not None:
            return self.width
        assert self.lengths is not None
        return self.lengths


_Encode = Callable[[Any, int], list[_Segment]]


def _varints(values: np.ndarray) -> _Segment:
    """Avro's zig-zag varints of int64 ``values``."""
    v = values.astype(np.int64, copy=False)
    if v.size == 0:
        return _Segment(np.empty((0, 1), dtype=np.uint8), width=1)
    zigzag = ((v << 1) ^ (v >> 63)).view(np.uint64)
    groups = (zigzag[:, None] >> _SHIFTS) & np.uint64(0x7F)
    nbytes = 1 + (zigzag[:, None] >= (np.uint64(1) << _SHIFTS[1:])).sum(axis=1)
    if int(nbytes.max()) == 1:
        return _Segment(groups[:, :1].astype(np.uint8), width=1)
    keep = np.arange(10) < nbytes[:, None]
    more = np.arange(10) < (nbytes - 1)[:, None]
    encoded = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
    return _Segment(encoded[keep], lengths=nbytes.astype(np.int64))


def _constant(data: bytes, rows: int) -> _Segment:
    row = np.frombuffer(data, dtype=np.uint8)
    return _Segment(np.broadcast_to(row, (rows, row.size)), width=row.size)


def _blobs(values: Sequence[bytes], rows: int) -> list[_Segment]:
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=rows)
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    return [_varints(lengths), _Segment(data, lengths=lengths)]


def _encode_string(values: Any, rows: int) -> list[_Segment]:
    # Arrow's conversion checks and encodes the strings in C, into one buffer.
    try:
        array = pa.array(values, type=pa.string(), size=rows)
    except (pa.ArrowException, UnicodeEncodeError):
        raise Unsupported("a string column holds something else") from None
    if array.null_count:
        raise Unsupported("a string column holds a null")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[array.offset : array.offset + rows + 1]
    lengths = np.diff(offsets).astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return [_varints(lengths), _Segment(data, lengths=lengths)]


def _encode_bytes(values: Any, rows: int) -> list[_Segment]:
    if not all(type(v) is bytes for v in values):
        raise Unsupported("a bytes column holds something else")
    return _blobs(values, rows)


def _encode_boolean(values: Any, rows: int) -> list[_Segment]:
    if not all(type(v) is bool for v in values):
        raise Unsupported("a boolean column holds something else")
    return [_Segment(np.asarray(values, dtype=np.uint8).reshape(rows, 1), width=1)]


def _integers(kind: str) -> _Encode:
    low, high = _INTS[kind]

    def encode(values: Any, rows: int) -> list[_Segment]:
        array = np.asarray(values)
        if array.dtype.kind not in "iu" or array.shape != (rows,):
            raise Unsupported(f"a {kind} column holds something else")
        if rows and (int(array.min()) < low or int(array.max()) > high):
            raise Unsupported(f"a {kind} column holds a number out of its range")
        return [_varints(array.astype(np.int64))]

    return encode


def _floats(kind: str) -> _Encode:
    dtype = _FLOATS[kind]

    def encode(values: Any, rows: int) -> list[_Segment]:
        array = np.asarray(values)
        if array.dtype.kind not in "fiu" or array.shape != (rows,):
            raise Unsupported(f"a {kind} column holds something else")
        data = np.ascontiguousarray(array, dtype=dtype).view(np.uint8)
        return [_Segment(data.reshape(rows, dtype.itemsize), width=dtype.itemsize)]

    return encode


def _enum(symbols: list[str]) -> _Encode:
    index = {s: i for i, s in enumerate(symbols)}

    def encode(values: Any, rows: int) -> list[_Segment]:
        try:
            codes = np.fromiter((index[v] for v in values), dtype=np.int64, count=rows)
        except (KeyError, TypeError):
            raise Unsupported("an enum column holds an unknown symbol") from None
        return [_varints(codes)]

    return encode


def _array(items: str) -> _Encode:
    """Arrays of numbers, given as (rows, n): one block of n items, then the end marker."""
    item = _FLOATS.get(items)

    def encode(values: Any, rows: int) -> list[_Segment]:
        array = np.asarray(values)
        if array.ndim != 2 or array.shape[0] != rows:
            raise Unsupported("an array column is not a (rows, items) array")
        n = array.shape[1]
        if n == 0:
            return [_constant(b"\x00", rows)]
        head = _varints(np.array([n], dtype=np.int64)).data.tobytes()
        if item is not None:
            if array.dtype.kind not in "fiu":
                raise Unsupported("a float array column holds something else")
            data = np.ascontiguousarray(array, dtype=item).view(np.uint8).reshape(rows, -1)
            body = [_Segment(data, width=data.shape[1])]
        else:
            if array.dtype.kind not in "iu":
                raise Unsupported("an integer array column holds something else")
            body = [_varints(array.reshape(-1).astype(np.int64))]
            body[0] = _regroup(body[0], rows, n)
        return [_constant(head, rows), *body, _constant(b"\x00", rows)]

    return encode


def _regroup(segment: _Segment, rows: int, per_row: int) -> _Segment:
    """A segment of ``rows * per_row`` values as one of ``rows`` rows."""
    if segment.width is not None:
        return _Segment(segment.data.reshape(rows, -1), width=segment.width * per_row)
    assert segment.lengths is not None
    return _Segment(segment.data, lengths=segment.lengths.reshape(rows, per_row).sum(axis=1))


def _nullable(encode: _Encode, null_index: int) -> _Encode:
    """``["null", T]`` or ``[T, "null"]``: the branch's index, then T where not null."""
    null_byte = bytes([null_index * 2])
    value_byte = bytes([(1 - null_index) * 2])

    def encode_union(values: Any, rows: int) -> list[_Segment]:
        if isinstance(values, np.ndarray) and values.dtype != object:
            return [_constant(value_byte, rows), *encode(values, rows)]
        nulls = np.fromiter((v is None for v in values), dtype=bool, count=rows)
        if not nulls.any():
            return [_constant(value_byte, rows), *encode(values, rows)]
        present = np.flatnonzero(~nulls)
        branch = np.where(nulls, null_byte[0], value_byte[0]).astype(np.uint8)
        segments = [_Segment(branch.reshape(rows, 1), width=1)]
        if not present.size:
            return segments
        for part in encode([values[i] for i in present], present.size):
            lengths = np.zeros(rows, dtype=np.int64)
            sizes = part.sizes(present.size)
            lengths[present] = sizes
            segments.append(_Segment(part.data.reshape(-1), lengths=lengths))
        return segments

    return encode_union


def _field_encoder(schema: Any, named: Mapping[str, Any]) -> _Encode:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        if len(schema) == 2 and "null" in schema:
            other = schema[1 - schema.index("null")]
            if isinstance(other, list) or other == "null":
                raise Unsupported("union")
            return _nullable(_field_encoder(other, named), schema.index("null"))
        raise Unsupported("union of more than null and one type")
    if isinstance(schema, dict):
        if "logicalType" in schema:
            raise Unsupported("logical type")
        kind = schema.get("type")
        if kind == "enum":
            return _enum(list(schema["symbols"]))
        if kind == "array":
            items = schema.get("items")
            if items in _FLOATS or items in _INTS:
                return _array(items)
            raise Unsupported("array of non-numbers")
        if isinstance(kind, str) and set(schema) <= {"type"}:
            return _field_encoder(kind, named)
        raise Unsupported(str(kind))
    if schema in _FLOATS:
        return _floats(schema)
    if schema in _INTS:
        return _integers(schema)
    simple: dict[str, _Encode] = {
        "string": _encode_string,
        "bytes": _encode_bytes,
        "boolean": _encode_boolean,
        "null": lambda values, rows: [],
    }
    if schema in simple:
        return simple[schema]
    raise Unsupported(str(schema))


class ColumnWriter:
    """Writes a batch of records of one flat schema from its columns.

    ``write`` takes each field either in ``columns`` (a value per row: a
    sequence, or a numpy array; a two-dimensional one for an array field) or
    in ``constants`` (one value for every row). ``header`` starts every
    payload (the Confluent wire header with a registry).
    """

    def __init__(self, fields: list[tuple[str, _Encode]], header: bytes) -> None:
        self._fields = fields
        self._header = header

    @classmethod
    def of(cls, schema: AvroSchema, header: bytes = b"") -> ColumnWriter | None:
        """The writer of ``schema`` (parsed by fastavro), or None where it is not flat."""
        if schema.get("type") != "record":
            return None
        named = schema.get("__named_schemas", {})
        try:
            fields = [(f["name"], _field_encoder(f["type"], named)) for f in schema["fields"]]
        except Unsupported:
            return None
        return cls(fields, header)

    def write(
        self, columns: Mapping[str, Any], constants: Mapping[str, Any], rows: int
    ) -> list[bytes]:
        """One payload per row. Raises Unsupported for a column it cannot write (write
        those records one by one) and KeyError for a field given nowhere."""
        if rows == 0:
            return []
        segments: list[_Segment] = []
        if self._header:
            segments.append(_constant(self._header, rows))
        for name, encode in self._fields:
            if name in columns:
                segments += encode(columns[name], rows)
            else:
                row = encode([constants[name]], 1)
                segments += [_constant(_one_row(part), rows) for part in row]
        return _assemble(segments, rows)


def _one_row(segment: _Segment) -> bytes:
    return np.asarray(segment.data).reshape(-1).tobytes()


def _assemble(segments: list[_Segment], rows: int) -> list[bytes]:
    # Neighbouring fixed-width parts become one block: one copy for them all.
    merged: list[_Segment] = []
    for segment in segments:
        last = merged[-1] if merged else None
        if segment.width is not None and last is not None and last.width is not None:
            merged[-1] = _Segment(
                np.hstack([last.data, segment.data]), width=last.width + segment.width
            )
        else:
            merged.append(segment)
    sizes = np.zeros(rows, dtype=np.int64)
    for segment in merged:
        sizes += segment.sizes(rows)
    ends = np.cumsum(sizes)
    offsets = ends - sizes  # where the next part of each row goes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for segment in merged:
        if segment.width is not None:
            if segment.width:
                out[offsets[:, None] + np.arange(segment.width)] = segment.data
                offsets += segment.width
            continue
        assert segment.lengths is not None
        total = int(segment.lengths.sum())
        if total:
            source_starts = np.cumsum(segment.lengths) - segment.lengths
            out[np.repeat(offsets - source_starts, segment.lengths) + np.arange(total)] = (
                segment.data
            )
        offsets += segment.lengths
    buffer = out.tobytes()
    return [buffer[a:b] for a, b in zip((ends - sizes).tolist(), ends.tolist(), strict=True)]
