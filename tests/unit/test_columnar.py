"""The column writer's payloads are fastavro's, byte for byte."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.serde.avro import COLUMNS_FROM
from stream.serde.base import records_of
from stream.serde.columnar import ColumnReader, ColumnWriter
from stream.settings import PROJECT_ROOT

CTX = SerdeContext("t")
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLES = st.floats(allow_nan=False, width=64)
FLOATS = st.floats(allow_nan=False, width=32)
TEXT = st.text(max_size=40)
BLOBS = st.binary(max_size=40)
SYMBOLS = ["a", "b", "c", "d"]
# (schema type, values of one row, whether a column of them is a numpy array)
TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "string": ("string", TEXT),
    "bytes": ("bytes", BLOBS),
    "int": ("int", INT32),
    "long": ("long", INT64),
    "float": ("float", FLOATS),
    "double": ("double", DOUBLES),
    "boolean": ("boolean", st.booleans()),
    "enum": ({"type": "enum", "name": "E", "symbols": SYMBOLS}, st.sampled_from(SYMBOLS)),
}


def fastavro_payloads(schema: dict[str, Any], records: list[dict[str, Any]]) -> list[bytes]:
    out = []
    for record in records:
        buf = io.BytesIO()
        schemaless_writer(buf, schema, record)
        out.append(buf.getvalue())
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]:
    """A flat schema, and a batch for it as columns and constants."""
    rows = draw(st.integers(1, 12))
    fields: list[dict[str, Any]] = []
    columns: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    enum_used = False
    for i in range(draw(st.integers(1, 8))):
        name = f"f{i}"
        kind = draw(st.sampled_from([*TYPES, "array"]))
        if kind == "enum":
            if enum_used:  # a named type is defined once
                kind = "long"
            enum_used = True
        nullable = kind != "array" and draw(st.booleans())
        if kind == "array":
            items = draw(st.sampled_from(["double", "float", "long", "int"]))
            width = draw(st.integers(0, 3))
            value_type: Any = {"type": "array", "items": items}
            cell = st.lists(TYPES[items][1], min_size=width, max_size=width)
        else:
            value_type, cell = TYPES[kind]
        if nullable:
            value_type = ["null", value_type] if draw(st.booleans()) else [value_type, "null"]
            cell = st.none() | cell
        fields.append({"name": name, "type": value_type})
        if draw(st.booleans()) and kind != "array":
            constants[name] = draw(cell)
            continue
        values = draw(st.lists(cell, min_size=rows, max_size=rows))
        if kind == "array":
            dtype = np.float64 if items in ("double", "float") else np.int64
            columns[name] = np.array(values, dtype=dtype).reshape(rows, width)
        elif kind in ("double", "long", "int") and not nullable and draw(st.booleans()):
            columns[name] = np.array(values, dtype=np.float64 if kind == "double" else np.int64)
        else:
            columns[name] = values
    schema = parse_schema({"type": "record", "name": "R", "fields": fields})
    return schema, columns, constants, rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_payloads_are_fastavros(batch: tuple[dict[str, Any], dict[str, Any], Any, int]) -> None:
    schema, columns, constants, rows = batch
    writer = ColumnWriter.of(schema)
    assert writer is not None
    expected = fastavro_payloads(schema, records_of(columns, constants, rows))
    assert writer.write(columns, constants, rows) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 62), st.booleans(), st.integers(2, 12), st.integers(0, 2**32))
def test_longs_of_one_varint_width_are_fastavros(
    bits: int, negative: bool, rows: int, seed: int
) -> None:
    # Every row's varint as long as the others' (lengths, times of one magnitude): the
    # writer's fixed-width path. Mixed widths are in the batches above.
    rng = np.random.default_rng(seed)
    values = rng.integers(2**bits, 2 ** (bits + 1), rows, dtype=np.uint64).astype(np.int64)
    if negative:
        values = -values - 1  # zig-zag maps -1 - v next to v: the same width
    schema = parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "t", "type": "long"}]}
    )
    writer = ColumnWriter.of(schema)
    assert writer is not None
    columns = {"t": values}
    expected = fastavro_payloads(schema, records_of(columns, {}, rows))
    assert writer.write(columns, {}, rows) == expected
    assert len({len(p) for p in expected}) == 1


@pytest.mark.parametrize("text", ["champion", "", "rule:country=DÉ", "分流"])
def test_a_string_column_of_one_value_is_fastavros(text: str) -> None:
    # A variant column: the same text in every row, written as a constant.
    fields = [{"name": "variant", "type": "string"}, {"name": "n", "type": "long"}]
    schema = parse_schema({"type": "record", "name": "R", "fields": fields})
    writer = ColumnWriter.of(schema)
    assert writer is not None
    columns = {"variant": [text] * 5, "n": np.arange(5)}
    expected = fastavro_payloads(schema, records_of(columns, {}, 5))
    assert writer.write(columns, {}, 5) == expected


def test_predictions_with_a_registry_header_are_fastavros() -> None:
    schema = load_schema(PROJECT_ROOT / "schemas", "prediction.avsc")
    serde = AvroSerde(schema, registry=None, schema_id=42)
    rows = COLUMNS_FROM
    rng = np.random.default_rng(3)
    probabilities = rng.random((rows, 2))
    columns = {
        "event_id": [f"e-{i}" for i in range(rows)],
        "key": [None if i % 3 else f"k{i}".encode() for i in range(rows)],
        "variant": ["main"] * rows,
        "label": [["legit", "fraud"][i % 2] for i in range(rows)],
        "score": probabilities[:, 1],
        "probabilities": probabilities,
        "confidence": probabilities.max(axis=1),
        "event_time": rng.integers(0, 2**40, rows),
        "latency_ms": rng.random(rows),
    }
    constants = {
        "pipeline": "p", "model_name": "m", "model_version": "1", "scored_time": 7,
        "inference_ms": 0.5,
    }  # fmt: skip
    payloads = serde.serialize_many(columns, constants, rows, CTX)
    records = records_of(columns, constants, rows)
    assert payloads == [serde.serialize(r, CTX) for r in records]
    assert payloads[0][:5] == b"\x00\x00\x00\x00\x2a"


@pytest.mark.parametrize("rows", [2, COLUMNS_FROM])
def test_what_it_cannot_write_goes_to_fastavro_which_says_what_is_wrong(rows: int) -> None:
    schema = parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    )
    serde = AvroSerde(schema)
    texts = [f"x{i}" for i in range(rows)]
    expected = [serde.serialize({"s": t}, CTX) for t in texts]
    assert serde.serialize_many({"s": texts}, {}, rows, CTX) == expected
    with pytest.raises((TypeError, ValueError, AttributeError)):
        serde.serialize_many({"s": [*texts[1:], None]}, {}, rows, CTX)


def test_schemas_it_does_not_cover_are_written_record_by_record() -> None:
    nested = parse_schema(
        {
            "type": "record",
            "name": "Outer",
            "fields": [
                {"name": "inner", "type": {"type": "record", "name": "I", "fields": []}},
            ],
        }
    )
    assert ColumnWriter.of(nested) is None
    assert ColumnReader.of(nested) is None
    serde = AvroSerde(nested)
    rows = COLUMNS_FROM
    assert serde.serialize_many({"inner": [{}] * rows}, {}, rows, CTX) == [b""] * rows
    assert serde.deserialize_many([b""] * rows, CTX) == ([{"inner": {}}] * rows, [])


def fastavro_reads(schema: dict[str, Any], payload: bytes) -> dict[str, Any] | None:
    """The record fastavro reads from ``payload``, None where it cannot (or leaves bytes over)."""
    buf = io.BytesIO(payload)
    try:
        record = schemaless_reader(buf, schema, None)
    except Exception:
        return None
    return record if buf.tell() == len(payload) and isinstance(record, dict) else None


@st.composite
def payload_batches(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes]]:
    """A flat schema and payloads for it, some of them damaged."""
    schema, columns, constants, rows = draw(batches())
    schema = parse_schema(
        {"type": "record", "name": "R", "fields": [
            f for f in schema["fields"]
            if not isinstance(f["type"], dict) or f["type"].get("type") != "array"
        ]}
    )  # fmt: skip
    keep = {f["name"] for f in schema["fields"]}
    columns = {k: v for k, v in columns.items() if k in keep}
    records = records_of(columns, {k: v for k, v in constants.items() if k in keep}, rows)
    payloads = fastavro_payloads(schema, records)
    for i in range(rows):
        damage = draw(st.sampled_from(["none", "none", "cut", "extra", "flip", "random"]))
        p = payloads[i]
        if damage == "cut" and p:
            p = p[: draw(st.integers(0, len(p) - 1))]
        elif damage == "extra":
            p = p + draw(st.binary(min_size=1, max_size=3))
        elif damage == "flip" and p:
            at = draw(st.integers(0, len(p) - 1))
            p = p[:at] + bytes([draw(st.integers(0, 255))]) + p[at + 1 :]
        elif damage == "random":
            p = draw(st.binary(max_size=30))
        payloads[i] = p
    return schema, payloads


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_batches())
def test_rows_read_are_fastavros_and_rows_it_cannot_read_are_flagged(
    batch: tuple[dict[str, Any], list[bytes]],
) -> None:
    schema, payloads = batch
    reader = ColumnReader.of(schema)
    assert reader is not None
    events, bad = reader.read(payloads)
    assert len(events) == len(payloads)
    for i, payload in enumerate(payloads):
        expected = fastavro_reads(schema, payload)
        if expected is None:
            assert bad[i], f"row {i} read though fastavro cannot: {payload!r}"
        elif not bad[i]:
            assert repr(dict(events[i])) == repr(expected)
            for name in expected:
                assert repr(events.values(name)[i]) == repr(expected[name])
    good = np.flatnonzero(~bad)
    subset = events.take(good)
    for j, i in enumerate(good.tolist()):
        assert repr(dict(subset[j])) == repr(fastavro_reads(schema, payloads[i]))


def test_undamaged_payloads_are_all_read() -> None:
    schema = load_schema(PROJECT_ROOT / "schemas", "payments_event.avsc")
    serde = AvroSerde(schema)
    from stream.demo.data import events as demo_events

    records = list(demo_events(300, np.random.default_rng(5), now_ms=1_000))
    payloads = [serde.serialize(r, CTX) for r in records]
    reader = ColumnReader.of(schema)
    assert reader is not None
    events, bad = reader.read(payloads)
    assert not bad.any()
    assert [dict(e) for e in events] == records


def string_and_long_reader() -> ColumnReader:
    schema = parse_schema(
        {"type": "record", "name": "R", "fields": [
            {"name": "s", "type": "string"}, {"name": "n", "type": "long"},
        ]}
    )  # fmt: skip
    reader = ColumnReader.of(schema)
    assert reader is not None
    return reader


def test_a_string_that_is_not_utf8_flags_its_row_only() -> None:
    reader = string_and_long_reader()
    events, bad = reader.read([b"\x04ab\x02", b"\x04\xff\xfe\x04", b"\x06xyz\x06"])
    assert bad.tolist() == [False, True, False]
    assert [dict(events[i]) for i in (0, 2)] == [{"s": "ab", "n": 1}, {"s": "xyz", "n": 3}]


def test_a_string_length_near_the_largest_long_flags_its_row_only() -> None:
    reader = string_and_long_reader()
    largest = b"\xfe" + b"\xff" * 8 + b"\x01"  # 2**63 - 1 as Avro writes a long
    events, bad = reader.read([b"\x04ab\x02", largest + b"\x02", b"\x06xyz\x06"])
    assert bad.tolist() == [False, True, False]
    assert [dict(events[i]) for i in (0, 2)] == [{"s": "ab", "n": 1}, {"s": "xyz", "n": 3}]
