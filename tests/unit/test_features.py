from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.demo.data import CATEGORIES, FEATURES, NUMERIC
from stream.engine.features import MAX_EVENT_TIME_MS, FeatureBuilder
from stream.errors import ValidationError
from stream.models.manifest import ModelManifest


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


def outcomes(builder: FeatureBuilder, records: list[dict[str, Any]]) -> list[Any]:
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
