from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stream.demo.data import CATEGORIES, FEATURES, NUMERIC
from stream.engine.features import FeatureBuilder
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
    raw, model_input = builder.matrix([row.values, builder.row(event()).values])
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
