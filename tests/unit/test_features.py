from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.demo.data import CATEGORIES, FEATURES, NUMERIC
from stream.engine.features import MAX_EVENT_TIME_MS, FeatureBuilder
from stream.errors import ValidationError
from stream.models.manifest import ModelManifest
from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.serde.columnar import ColumnReader, EventColumns
from stream.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def builder(trained_model: tuple[bytes, ModelManifest]) -> FeatureBuilder:
    return FeatureBuilder(trained_model[1], "event_id", "event_time")


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": "e1", "event_time": 5, "customer_id": "c"}
    base.update({name: float(i) for i, name in enumerate(NUMERIC)})
    base.update({name: cats[-1] for name, cats in CATEGORIES.items()})
    base.update(changes)
    return base


def test_row_in_model_feature_order(builder: FeatureBuilder) -> None:
    row = builder.row(event())
    assert row.event_id == "e1"
    assert row.event_time_ms == 5
    expected = [float(i) for i in range(len(NUMERIC))] + [
        float(len(CATEGORIES[c]) - 1) for c in CATEGORIES
    ]
    assert row.values == expected
    assert builder.manifest.feature_names == FEATURES


def test_nullable_feature_is_nan_then_filled(builder: FeatureBuilder) -> None:
    row = builder.row(event(distance_from_home_km=None))
    j = FEATURES.index("distance_from_home_km")
    assert math.isnan(row.values[j])
    raw = builder.rows([event(distance_from_home_km=None), event()]).raw
    model_input = builder.model_input(raw)
    assert np.isnan(raw[0, j])
    assert model_input.dtype == np.float32
    assert model_input[0, j] == np.float32(builder.manifest.features[j].fill)
    assert not np.isnan(model_input).any()


def test_missing_event_time_is_allowed(builder: FeatureBuilder) -> None:
    data = event()
    del data["event_time"]
    assert builder.row(data).event_time_ms is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"amount": None}, "amount: null"),
        ({"amount": "12.5"}, "amount: expected a number, got str"),
        ({"amount": True}, "amount: expected a number, got bool"),
        ({"amount": float("nan")}, "amount: not a finite number"),
        ({"amount": float("inf")}, "amount: not a finite number"),
        ({"amount": -float("inf")}, "amount: not a finite number"),
        ({"amount": 10**400}, "amount: number out of range"),
        ({"amount": 1e39}, "amount: 1e.39 is beyond the model.s float32 range"),
        ({"amount": -(2**200)}, "amount: .* is beyond the model's float32 range"),
        ({"channel": "fax"}, "channel: unknown category 'fax'"),
        ({"channel": 1}, "channel: expected a category, got int"),
        ({"event_id": ""}, "event_id: missing"),
        ({"event_id": 17}, "event_id: missing"),
        ({"event_id": "x" * 300}, "event_id: longer than"),
        ({"event_time": -1}, "event_time: expected epoch milliseconds"),
        ({"event_time": "yesterday"}, "event_time: expected epoch milliseconds"),
        ({"event_time": 2**63}, "event_time: expected epoch milliseconds from 0 to"),
    ],
)
def test_invalid_events_name_the_field(
    builder: FeatureBuilder, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        builder.row(event(**changes))


def test_missing_required_feature(builder: FeatureBuilder) -> None:
    data = event()
    del data["merchant_risk_score"]
    with pytest.raises(ValidationError, match="merchant_risk_score: missing"):
        builder.row(data)


# Values that each take a different branch of the checks, good and bad alike.
ODD_VALUES: list[Any] = [
    None, 0, -3, 2**70, 10**400, 1e39, -1e39, True, float("nan"), float("inf"), "12.5", "",
    [1.0], {"a": 1}, 3.5, -0.0, 3.4e38,
]  # fmt: skip
IDS: list[Any] = ["e", "", None, 7, "x" * 256, "x" * 257]
TIMES: list[Any] = [0, 5, -1, None, 1.5, True, "5", MAX_EVENT_TIME_MS, MAX_EVENT_TIME_MS + 1, 2**64]


def outcomes(builder: FeatureBuilder, records: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Per record what ``rows`` gave: (id, time, values) or the rejection's message."""
    rows = builder.rows(records)
    got: list[Any] = [None] * len(records)
    for n, i in enumerate(rows.accepted):
        got[i] = (rows.event_ids[n], rows.event_times[n], rows.raw[n].tolist())
    for i, exc in rows.rejected:
        got[i] = str(exc)
    assert rows.raw.shape == (len(rows.accepted), len(FEATURES))
    return got


def one_by_one(builder: FeatureBuilder, records: list[dict[str, Any]]) -> list[Any]:
    expected: list[Any] = []
    for record in records:
        try:
            row = builder.row(record)
        except ValidationError as exc:
            expected.append(str(exc))
            continue
        expected.append((row.event_id, row.event_time_ms, row.values))
    return expected


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal outcomes, NaN equal to NaN."""
    return np.array_equal(
        np.array([json_safe(x) for x in a], dtype=object),
        np.array([json_safe(x) for x in b], dtype=object),
    )


def json_safe(outcome: Any) -> Any:
    if isinstance(outcome, tuple):
        return repr((outcome[0], outcome[1], ["nan" if math.isnan(v) else v for v in outcome[2]]))
    return outcome


@given(
    st.lists(
        st.tuples(
            st.sampled_from([*FEATURES, "event_id", "event_time", "missing"]),
            st.integers(0, len(ODD_VALUES) - 1),
            st.sampled_from(["value", "category", "null"]),
        ),
        max_size=6,
    ),
    st.integers(1, 8),
)
@settings(max_examples=300, deadline=None)
def test_a_batch_gets_what_each_record_gets_alone(
    builder: FeatureBuilder, changes: list[tuple[str, int, str]], size: int
) -> None:
    records = [event(event_id=f"e{i}", device_age_days=None if i % 2 else 3.0) for i in range(size)]
    for n, (name, index, kind) in enumerate(changes):
        record = records[n % size]
        if name == "missing":
            record.pop(FEATURES[index % len(FEATURES)], None)
        elif name == "event_id":
            record[name] = IDS[index % len(IDS)]
        elif name == "event_time":
            record[name] = TIMES[index % len(TIMES)]
        elif kind == "category" and name in CATEGORIES:
            record[name] = [*CATEGORIES[name], "fax"][index % (len(CATEGORIES[name]) + 1)]
        else:
            record[name] = None if kind == "null" else ODD_VALUES[index]
    assert same(outcomes(builder, records), one_by_one(builder, records))


def test_plain_batch_takes_the_bulk_path(builder: FeatureBuilder) -> None:
    records = [
        event(event_id=f"e{i}", distance_from_home_km=None if i % 3 else 1.5) for i in range(50)
    ]
    bulk = builder._bulk(records)
    assert bulk is not None
    assert same(outcomes(builder, records), one_by_one(builder, records))
    assert bulk.raw.flags.c_contiguous


# Field types an Avro schema may give a field, with values of that type; each list's
# first value is one the model takes (CATEGORY stands for the feature's first category).
CATEGORY = object()
NUMBER_VALUES = [0.0, -0.0, 3.5, -1.25, 3.4e38, 1e39, float("nan"), float("inf")]
AVRO_FIELDS: dict[str, list[tuple[Any, list[Any]]]] = {
    "numeric": [
        ("double", NUMBER_VALUES),
        (["null", "double"], [3.5, None, *NUMBER_VALUES]),
        ("float", [0.5, -2.0, float("nan")]),
        ("long", [0, -3, 2**62]),
        ("boolean", [True, False]),
        ("string", ["12.5", ""]),
    ],
    "categorical": [
        ("enum", [CATEGORY, "web", "DE", "debit", "fax"]),
        (["null", "enum"], [CATEGORY, None, "web", "DE", "debit", "fax"]),
        ("string", [CATEGORY, "web", "app", "DE", "credit", "fax", ""]),
        (["string", "null"], [CATEGORY, None, "web", "FR", "prepaid"]),
        ("double", [1.0]),
    ],
    "event_id": [
        ("string", ["e", "", "x" * 256, "x" * 257, "é" * 200]),
        (["null", "string"], ["e2", None]),
        ("long", [7]),
    ],
    "event_time": [
        ("long", [0, 5, -1, MAX_EVENT_TIME_MS, MAX_EVENT_TIME_MS + 1]),
        (["null", "long"], [5, None]),
        ("int", [3]),
        ("double", [1.5]),
    ],
}

USABLE = {"numeric": 4, "categorical": 4, "event_id": 2, "event_time": 2}


@st.composite
def avro_batches(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A schema for the demo model's fields, each of some type or left out, and events:
    each row's values drawn from its field's, or its fields' first values."""
    fields: list[dict[str, Any]] = []
    choices: list[tuple[str, list[Any]]] = []
    usable = draw(st.booleans())  # every field there, of a type the model can take
    for name in ["event_id", "event_time", *FEATURES]:
        role = name if name in ("event_id", "event_time") else (
            "categorical" if name in CATEGORIES else "numeric"
        )  # fmt: skip
        if not usable and name != "event_id" and draw(st.integers(0, 9)) == 0:
            continue  # the field is not in the schema
        types = AVRO_FIELDS[role][: USABLE[role]] if usable else AVRO_FIELDS[role]
        avro_type, values = draw(st.sampled_from(types))
        values = [CATEGORIES[name][0] if v is CATEGORY else v for v in values]
        if "enum" in avro_type:
            symbols = list(dict.fromkeys([*CATEGORIES[name], "web", "DE", "debit", "fax"]))
            enum = {"type": "enum", "name": f"E_{name}", "symbols": symbols}
            avro_type = enum if avro_type == "enum" else ["null", enum]
        fields.append({"name": name, "type": avro_type})
        choices.append((name, values))
    events = []
    for _ in range(draw(st.integers(1, 6))):
        plain = draw(st.booleans())
        events.append(
            {
                name: values[0] if plain else draw(st.sampled_from(values))
                for name, values in choices
            }
        )
    schema = parse_schema({"type": "record", "name": "Ev", "fields": fields})
    return schema, events


def _writable(schema: dict[str, Any], record: dict[str, Any]) -> bool:
    try:
        schemaless_writer(io.BytesIO(), schema, record)
    except Exception:
        return False
    return True


@given(avro_batches())
@settings(max_examples=300, deadline=None)
def test_events_read_as_columns_get_what_each_record_gets_alone(
    builder: FeatureBuilder, batch: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    schema, records = batch
    records = [r for r in records if _writable(schema, r)]
    serde = AvroSerde(schema)
    ctx = SerdeContext("t")
    reader = ColumnReader.of(schema)
    assert reader is not None
    events, bad = reader.read([serde.serialize(r, ctx) for r in records])
    assert not bad.any()
    decoded = [serde.deserialize(serde.serialize(r, ctx), ctx) for r in records]
    assert same(outcomes(builder, events), one_by_one(builder, decoded))


def test_plain_events_read_as_columns_take_the_column_path(builder: FeatureBuilder) -> None:
    serde = AvroSerde(load_schema(PROJECT_ROOT / "schemas", "payments_event.avsc"))
    ctx = SerdeContext("t")
    records = [
        event(event_id=f"e{i}", distance_from_home_km=None if i % 3 else 1.5,
              device_age_days=None if i % 2 else 3.0)
        for i in range(50)
    ]  # fmt: skip
    events, _ = serde.deserialize_many([serde.serialize(r, ctx) for r in records], ctx)
    assert isinstance(events, EventColumns)
    assert builder._columns(events) is not None
    assert same(outcomes(builder, events), one_by_one(builder, records))
