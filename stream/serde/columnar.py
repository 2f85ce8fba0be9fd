"""Avro records a batch at a time: each field of every row in a few numpy passes.

The engine reads one event and writes one prediction per event, and fastavro
costs a few microseconds per record either way, most of it walking the
schema and building or reading a dict. A batch is scored as columns anyway,
so:

- ``ColumnWriter`` encodes each field for all rows at once (varints,
  little-endian floats, length-prefixed strings) and cuts the joined buffer
  into one payload per row: exactly fastavro's bytes.
- ``ColumnReader`` decodes a batch of payloads into columns
  (``EventColumns``: numpy arrays, Arrow strings). A row it cannot read
  exactly (truncated, trailing bytes, a varint too long, text that is not
  UTF-8, an enum index out of range) is flagged, and fastavro reads it to
  say why.

Property tests hold both to fastavro's results. They cover the flat records
of the pipeline's topics: fields of the primitive types, enums,
``["null", T]`` unions of those, and (written only) arrays of numbers given
as a two-dimensional array. ``of`` returns None for any other schema, and
the caller reads or writes record by record.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast, overload

import numpy as np
import pyarrow as pa
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import expand_schema

AvroSchema = dict[str, Any]

_FLOATS: dict[str, np.dtype[Any]] = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_INTS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # the ten 7-bit groups of a 64-bit varint


class Unsupported(Exception):
    """A schema or a column this module does not take; go record by record instead."""


@dataclass
class _Segment:
    """Bytes of every row for one part of a record, in row order.

    ``width`` set: every row has that many bytes, ``data`` is (rows, width).
    Otherwise row i has ``lengths[i]`` bytes and ``data`` is flat.
    """

    data: np.ndarray
    width: int | None = None
    lengths: np.ndarray | None = None

    def sizes(self) -> np.ndarray | int:
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
    # Most columns have one width (string lengths under 64, times of one magnitude):
    # one fixed-width block, which the payloads' assembly copies with its neighbours.
    low, high = (max(int(x).bit_length(), 1) for x in (zigzag.min(), zigzag.max()))
    width = -(-high // 7)
    if width == -(-low // 7):
        if width == 1:
            return _Segment(zigzag.astype(np.uint8).reshape(-1, 1), width=1)
        fixed = (zigzag[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)
        fixed[:, :-1] |= np.uint64(0x80)
        return _Segment(fixed.astype(np.uint8), width=width)
    groups = (zigzag[:, None] >> _SHIFTS) & np.uint64(0x7F)
    nbytes = 1 + (zigzag[:, None] >= (np.uint64(1) << _SHIFTS[1:])).sum(axis=1)
    keep = np.arange(10) < nbytes[:, None]
    more = np.arange(10) < (nbytes - 1)[:, None]
    encoded = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
    return _Segment(encoded[keep], lengths=nbytes.astype(np.int64))


def _varint(value: int) -> bytes:
    """One zig-zag varint, as the bytes every row shares (a length, an item count)."""
    return _varints(np.array([value], dtype=np.int64)).data.tobytes()


def _constant(data: bytes, rows: int) -> _Segment:
    row = np.frombuffer(data, dtype=np.uint8)
    return _Segment(np.broadcast_to(row, (rows, row.size)), width=row.size)


def _blobs(values: Sequence[bytes], rows: int) -> list[_Segment]:
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=rows)
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    return [_varints(lengths), _Segment(data, lengths=lengths)]


def _encode_string(values: Any, rows: int) -> list[_Segment]:
    # One text in every row (a variant column): written once, as a constant.
    if (
        isinstance(values, list)
        and rows
        and type(values[0]) is str
        and values.count(values[0]) == rows
    ):
        try:
            text = values[0].encode()
        except UnicodeEncodeError:
            raise Unsupported("a string column holds something else") from None
        return [_constant(_varint(len(text)) + text, rows)]
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
    if rows and set(map(type, values)) != {bytes}:  # each value's type, looked at in C
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
        head = _varint(n)
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
        if isinstance(values, list) and None not in values:  # a scan in C
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
            sizes = part.sizes()
            lengths[present] = sizes
            segments.append(_Segment(part.data.reshape(-1), lengths=lengths))
        return segments

    return encode_union


def _shape(schema: Any, named: Mapping[str, Any]) -> tuple[str, Any]:
    """A field's type as this module takes it: ``("nullable", (null_index, type))``,
    ``("enum", symbols)``, ``("array", items)`` or ``(primitive, None)``."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        if len(schema) == 2 and "null" in schema:
            other = schema[1 - schema.index("null")]
            if isinstance(other, list) or other == "null":
                raise Unsupported("union")
            return "nullable", (schema.index("null"), other)
        raise Unsupported("union of more than null and one type")
    if isinstance(schema, dict):
        if "logicalType" in schema:
            raise Unsupported("logical type")
        kind = schema.get("type")
        if kind == "enum":
            return "enum", list(schema["symbols"])
        if kind == "array" and (schema.get("items") in _FLOATS or schema.get("items") in _INTS):
            return "array", schema["items"]
        if isinstance(kind, str) and set(schema) <= {"type"}:
            return _shape(kind, named)
        raise Unsupported(str(kind))
    if schema in (*_FLOATS, *_INTS, "string", "bytes", "boolean", "null"):
        return schema, None
    raise Unsupported(str(schema))


def _field_encoder(schema: Any, named: Mapping[str, Any]) -> _Encode:
    kind, detail = _shape(schema, named)
    if kind == "nullable":
        null_index, other = detail
        return _nullable(_field_encoder(other, named), null_index)
    if kind == "enum":
        return _enum(detail)
    if kind == "array":
        return _array(detail)
    if kind in _FLOATS:
        return _floats(kind)
    if kind in _INTS:
        return _integers(kind)
    simple: dict[str, _Encode] = {
        "string": _encode_string,
        "bytes": _encode_bytes,
        "boolean": _encode_boolean,
        "null": lambda values, rows: [],
    }
    return simple[kind]


class ColumnWriter:
    """Writes a batch of records of one flat schema from its columns.

    ``write`` takes each field either in ``columns`` (a value per row: a
    sequence, or a numpy array; a two-dimensional one for an array field) or
    in ``constants`` (one value for every row). ``header`` starts every
    payload (the Confluent wire header with a registry).
    """

    def __init__(self, fields: list[tuple[str, _Encode, AvroSchema]], header: bytes) -> None:
        self._fields = fields  # name, column encoder, a record of that field alone
        self._header = header

    @classmethod
    def of(cls, schema: AvroSchema, header: bytes = b"") -> ColumnWriter | None:
        """The writer of ``schema`` (parsed by fastavro), or None where it is not flat."""
        if schema.get("type") != "record":
            return None
        named = schema.get("__named_schemas", {})
        expanded = cast(AvroSchema, expand_schema(schema))["fields"]
        fields: list[tuple[str, _Encode, AvroSchema]] = []
        try:
            for field, whole in zip(schema["fields"], expanded, strict=True):
                alone = {"name": field["name"], "type": whole["type"]}
                record = cast(
                    AvroSchema,
                    parse_schema({"type": "record", "name": "_field", "fields": [alone]}),
                )
                fields.append((field["name"], _field_encoder(field["type"], named), record))
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
        same = io.BytesIO()  # the bytes every row has here: header, constant fields
        same.write(self._header)
        for name, encode, alone in self._fields:
            if name not in columns:
                schemaless_writer(same, alone, {name: constants[name]})
                continue
            if same.tell():
                segments.append(_constant(same.getvalue(), rows))
                same = io.BytesIO()
            segments += encode(columns[name], rows)
        if same.tell():
            segments.append(_constant(same.getvalue(), rows))
        return _assemble(segments, rows)


def _assemble(segments: list[_Segment], rows: int) -> list[bytes]:
    # Neighbouring fixed-width parts become one block: one copy for them all.
    merged: list[_Segment] = []
    run: list[_Segment] = []
    for segment in [*segments, None]:
        if segment is not None and segment.width is not None:
            run.append(segment)
            continue
        if len(run) == 1:
            merged.append(run[0])
        elif run:
            block = np.concatenate([part.data for part in run], axis=1)
            merged.append(_Segment(block, width=block.shape[1]))
        run = []
        if segment is not None:
            merged.append(segment)
    sizes = np.zeros(rows, dtype=np.int64)
    for segment in merged:
        sizes += segment.sizes()
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


# Reading: a batch of payloads decoded field by field, every row at once.


@dataclass
class Column:
    """One field of a decoded batch: a value per row, None where ``nulls`` is set.

    ``values`` is float64 (floats), int64 (ints: ``integer``), bool, an
    Arrow string or binary array, or int64 symbol codes for an enum.
    """

    values: Any
    nulls: np.ndarray | None = None
    symbols: list[str] | None = None
    integer: bool = False

    def take(self, index: np.ndarray) -> Column:
        values = (
            self.values.take(pa.array(index)) if isinstance(self.values, pa.Array)
            else self.values[index]
        )  # fmt: skip
        nulls = None if self.nulls is None else self.nulls[index]
        return Column(values, nulls, self.symbols, self.integer)

    def to_list(self) -> list[Any]:
        """The column as fastavro would give it: Python values, None where null."""
        if isinstance(self.values, pa.Array):
            out = self.values.to_pylist()
        elif self.symbols is not None:
            out = [self.symbols[c] for c in self.values.tolist()]
        else:
            out = self.values.tolist()
        if self.nulls is not None and self.nulls.any():
            out = [None if null else v for v, null in zip(out, self.nulls.tolist(), strict=True)]
        return out

    def value(self, i: int) -> Any:
        if self.nulls is not None and self.nulls[i]:
            return None
        if isinstance(self.values, pa.Array):
            return self.values[i].as_py()
        if self.symbols is not None:
            return self.symbols[int(self.values[i])]
        return self.values[i].item()


class _Reading:
    """The state of one batch being read: the joined payloads and each row's position."""

    def __init__(self, payloads: Sequence[bytes], widest: int) -> None:
        self.rows = len(payloads)
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=self.rows)
        self.ends = np.cumsum(lengths)
        self.pos = self.ends - lengths
        # Zeros after the last payload: every gather has its width of bytes to read.
        self.buf = np.frombuffer(b"".join(payloads) + bytes(widest), dtype=np.uint8)
        self.bad = np.zeros(self.rows, dtype=bool)

    def gather(self, width: int) -> np.ndarray:
        """(rows, width): the next ``width`` bytes of every row (from the buffer's end
        where a row would run past it: such a row is bad anyway)."""
        # Every row's window as a strided view of the buffer, read-only as the buffer is:
        # sliding_window_view makes the same view after checks that cost ten times more,
        # paid a dozen times a batch.
        last = self.buf.size - width
        windows = np.ndarray((last + 1, width), np.uint8, buffer=self.buf, strides=(1, 1))
        return windows[np.minimum(self.pos, last)]

    def advance(self, sizes: np.ndarray | int, active: np.ndarray | None) -> None:
        self.pos += sizes if active is None else np.where(active, sizes, 0)

    def flag(self, wrong: np.ndarray, active: np.ndarray | None) -> None:
        self.bad |= wrong if active is None else wrong & active

    def varints(self, active: np.ndarray | None) -> np.ndarray:
        """Every row's next zig-zag varint, as int64; one beyond 64 bits makes its row bad."""
        first = self.gather(1)[:, 0]
        if not (first >= 0x80).any():  # one byte in every row (enum indexes, short lengths)
            self.advance(1, active)
            z = first.astype(np.int64)
            return (z >> 1) ^ -(z & 1)
        head = self.gather(10)
        more = head >= 0x80
        nbytes = np.argmin(more, axis=1) + 1
        # Ten bytes at most, and the tenth holds bit 63 alone: anything else overflows.
        self.flag(more.all(axis=1) | ((nbytes == 10) & (head[:, 9] > 1)), active)
        keep = np.arange(10) < nbytes[:, None]
        groups = (head & 0x7F).astype(np.uint64) * keep
        z = np.bitwise_or.reduce(groups << _SHIFTS, axis=1)
        self.advance(nbytes, active)
        return ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64)

    def blobs(self, active: np.ndarray | None, binary: bool) -> pa.Array:
        lengths = self.varints(active)
        if active is not None:
            lengths = np.where(active, lengths, 0)
        starts = self.pos.copy()
        # Against the bytes left, not start + length: a length near 2**63 would overflow.
        wrong = (lengths < 0) | (lengths > self.ends - starts)
        self.flag(wrong, active)
        lengths = np.where(wrong | self.bad, 0, lengths)
        self.pos += lengths
        offsets, data = _compact(self.buf, starts, lengths)
        kind = pa.large_binary() if binary else pa.large_string()
        array = pa.Array.from_buffers(
            kind, self.rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        if not binary:
            try:
                array.validate(full=True)
            except pa.ArrowInvalid:  # not UTF-8 somewhere: those rows are bad, left empty
                self._flag_text(data, offsets)
                kept, text = _compact(data, offsets[:-1], np.where(self.bad, 0, lengths))
                return pa.Array.from_buffers(
                    kind, self.rows, [None, pa.py_buffer(kept), pa.py_buffer(text)]
                )
        return array

    def _flag_text(self, data: np.ndarray, offsets: np.ndarray) -> None:
        raw = data.tobytes()
        for i, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
            try:
                raw[a:b].decode()
            except UnicodeDecodeError:
                self.bad[i] = True


def _compact(
    source: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The slices ``source[starts[i] : starts[i] + lengths[i]]`` back to back, and the
    offsets of each in that buffer (Arrow's layout of a string or binary array)."""
    offsets = np.zeros(starts.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = source[np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))]
    return offsets, data


_Read = Callable[[_Reading, "np.ndarray | None"], Column]


def _read_floats(dtype: np.dtype[Any]) -> _Read:
    def read(reading: _Reading, active: np.ndarray | None) -> Column:
        raw = reading.gather(dtype.itemsize)
        reading.advance(dtype.itemsize, active)
        with np.errstate(invalid="ignore"):  # a signalling NaN stays a NaN
            return Column(raw.view(dtype).reshape(reading.rows).astype(np.float64))

    return read


def _read_integers(kind: str) -> _Read:
    low, high = _INTS[kind]

    def read(reading: _Reading, active: np.ndarray | None) -> Column:
        values = reading.varints(active)
        if kind == "int":
            reading.flag((values < low) | (values > high), active)
        return Column(values, integer=True)

    return read


def _read_boolean(reading: _Reading, active: np.ndarray | None) -> Column:
    raw = reading.gather(1)[:, 0]
    reading.flag(raw > 1, active)
    reading.advance(1, active)
    return Column(raw == 1)


def _read_enum(symbols: list[str]) -> _Read:
    def read(reading: _Reading, active: np.ndarray | None) -> Column:
        codes = reading.varints(active)
        wrong = (codes < 0) | (codes >= len(symbols))
        reading.flag(wrong, active)
        return Column(np.where(wrong, 0, codes), symbols=symbols)

    return read


def _read_nullable(read: _Read, null_index: int) -> _Read:
    def read_union(reading: _Reading, active: np.ndarray | None) -> Column:
        branch = reading.varints(active)
        reading.flag((branch != 0) & (branch != 1), active)
        present = branch == 1 - null_index
        column = read(reading, present if active is None else present & active)
        column.nulls = ~present
        return column

    return read_union


def _field_reader(schema: Any, named: Mapping[str, Any]) -> _Read:
    kind, detail = _shape(schema, named)
    if kind == "nullable":
        null_index, other = detail
        return _read_nullable(_field_reader(other, named), null_index)
    if kind == "enum":
        return _read_enum(detail)
    if kind in _FLOATS:
        return _read_floats(_FLOATS[kind])
    if kind in _INTS:
        return _read_integers(kind)
    readers: dict[str, _Read] = {
        "string": lambda reading, active: Column(reading.blobs(active, binary=False)),
        "bytes": lambda reading, active: Column(reading.blobs(active, binary=True)),
        "boolean": _read_boolean,
    }
    if kind not in readers:  # arrays and nulls are written, not read
        raise Unsupported(kind)
    return readers[kind]


class ColumnReader:
    """Reads a batch of payloads of one flat schema (``ColumnWriter``'s) into columns.

    ``read`` flags the rows it could not read; fastavro says why (or reads
    them after all: the checks here are stricter where in doubt).
    """

    def __init__(self, steps: list[tuple[list[str], _Read | list[np.dtype[Any]]]]) -> None:
        # Each step reads one field, or a run of float fields (fixed width) in one gather.
        self._steps = steps
        self._widest = max(
            [10] + [sum(d.itemsize for d in s) for _, s in steps if isinstance(s, list)]
        )

    @classmethod
    def of(cls, schema: AvroSchema) -> ColumnReader | None:
        if schema.get("type") != "record":
            return None
        named = schema.get("__named_schemas", {})
        steps: list[tuple[list[str], _Read | list[np.dtype[Any]]]] = []
        try:
            for field in schema["fields"]:
                kind, _ = _shape(field["type"], named)
                last = steps[-1] if steps else None
                if kind in _FLOATS and last is not None and isinstance(last[1], list):
                    last[0].append(field["name"])
                    last[1].append(_FLOATS[kind])
                elif kind in _FLOATS:
                    steps.append(([field["name"]], [_FLOATS[kind]]))
                else:
                    steps.append(([field["name"]], _field_reader(field["type"], named)))
        except Unsupported:
            return None
        return cls(steps)

    def read(self, payloads: Sequence[bytes]) -> tuple[EventColumns, np.ndarray]:
        """The batch's columns, and which rows are bad (their values are not to be used)."""
        reading = _Reading(payloads, self._widest)
        columns: dict[str, Column] = {}
        for names, step in self._steps:
            if isinstance(step, list):
                columns.update(zip(names, _read_float_run(reading, step), strict=True))
            else:
                columns[names[0]] = step(reading, None)
        reading.bad |= reading.pos != reading.ends
        return EventColumns(columns, reading.rows), reading.bad


def _read_float_run(reading: _Reading, dtypes: list[np.dtype[Any]]) -> list[Column]:
    """Neighbouring float fields, every row's bytes for them gathered at once."""
    width = sum(d.itemsize for d in dtypes)
    raw = reading.gather(width)
    reading.advance(width, None)
    columns = []
    at = 0
    with np.errstate(invalid="ignore"):  # a signalling NaN stays a NaN
        for dtype in dtypes:
            part = np.ascontiguousarray(raw[:, at : at + dtype.itemsize])
            columns.append(Column(part.view(dtype).reshape(reading.rows).astype(np.float64)))
            at += dtype.itemsize
    return columns


class EventColumns(Sequence[Mapping[str, Any]]):
    """Decoded events as columns; indexing gives a row's mapping, read from the columns."""

    def __init__(self, columns: dict[str, Column], rows: int) -> None:
        self.columns = columns
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    @overload
    def __getitem__(self, i: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return self.take(np.arange(self.rows)[i])
        if not -self.rows <= i < self.rows:
            raise IndexError(i)
        return EventRow(self, i % self.rows)

    def take(self, index: Sequence[int] | np.ndarray) -> EventColumns:
        positions = np.asarray(index, dtype=np.int64)
        return EventColumns(
            {name: c.take(positions) for name, c in self.columns.items()}, positions.size
        )

    def values(self, name: str) -> list[Any]:
        """The field's value in every row (None where null or where there is no such field)."""
        column = self.columns.get(name)
        return [None] * self.rows if column is None else column.to_list()


class EventRow(Mapping[str, Any]):
    """One row of ``EventColumns``, read field by field as asked."""

    def __init__(self, events: EventColumns, i: int) -> None:
        self._columns = events.columns
        self._i = i

    def __getitem__(self, name: str) -> Any:
        return self._columns[name].value(self._i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def take(events: Sequence[Mapping[str, Any]], index: list[int]) -> Sequence[Mapping[str, Any]]:
    """The events at ``index``, in that order, columns staying columns."""
    if isinstance(events, EventColumns):
        return events.take(index)
    return [events[i] for i in index]


def field_values(events: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """Every event's value of field ``name`` (None where null or absent)."""
    if isinstance(events, EventColumns):
        return events.values(name)
    return [event.get(name) for event in events]
