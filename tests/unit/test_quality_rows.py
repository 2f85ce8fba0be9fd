from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.errors import ValidationError
from stream.quality.rows import Sampler, event_row, feedback_row, prediction_row
from stream.settings import PipelineConfig

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def pipeline(**quality: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "p", "model": {"name": "m", "version": "1"}, "quality": quality}
    )


def test_sampling_keeps_the_same_keys_at_about_the_rate() -> None:
    half, all_, none = Sampler(0.5), Sampler(1.0), Sampler(0.0)
    keys = [f"customer-{i}".encode() for i in range(20_000)]
    kept = [k for k in keys if half.keeps(k)]
    assert 0.48 < len(kept) / len(keys) < 0.52
    assert kept == [k for k in keys if half.keeps(k)], "the same keys every time"
    assert all(all_.keeps(k) for k in keys) and not any(none.keeps(k) for k in keys)
    assert none.keeps(None), "records without a key are kept"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"label": "fraud"}, "event_id missing"),
        ({"event_id": "e1"}, "label missing"),
        ({"event_id": "e1", "label": True}, "label missing"),
        ({"event_id": "e1", "label": float("nan")}, "not a finite number"),
        ({"event_id": "e1", "label": "x" * 300}, "longer than"),
        ({"event_id": "e1", "label": "fraud", "label_time": -1}, "label_time"),
        ({"event_id": "e1", "label": "fraud", "label_time": "yesterday"}, "label_time"),
    ],
)
def test_bad_feedback_says_why(record: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        feedback_row("p", record, 1000, NOW)


def test_feedback_rows() -> None:
    row = feedback_row("p", {"event_id": "e1", "label": "fraud", "label_time": 5000}, 1000, NOW)
    assert row == ["p", "e1", "fraud", datetime.fromtimestamp(5, UTC), NOW]
    number = feedback_row("p", {"event_id": "e2", "label": 12.5}, 1000, NOW)
    assert number[2] == "12.5" and number[3] == datetime.fromtimestamp(1, UTC), "message time"


def test_event_rows_keep_segments_always_and_features_when_asked() -> None:
    event = {"event_id": "e1", "event_time": 7000, "amount": 3, "gap": None, "channel": "web",
             "country": "DE", "flag": True}  # fmt: skip
    full = event_row(pipeline(), event, 1)
    assert full is not None
    assert full[2] == datetime.fromtimestamp(7, UTC)
    assert full[3]["amount"] == 3.0 and math.isnan(full[3]["gap"]) and "flag" not in full[3]
    assert full[4] == {"channel": "web", "country": "DE"}
    lean = event_row(pipeline(log_features=False, segments=["channel"]), event, 1)
    assert lean is not None and lean[3] == {} and lean[4] == {"channel": "web"}
    assert event_row(pipeline(), {"amount": 1.0}, 1) is None


def test_prediction_rows() -> None:
    row = prediction_row(
        "p",
        {"event_id": "e1", "model_name": "m", "model_version": "1", "variant": "shadow",
         "label": "fraud", "score": 0.9, "confidence": 0.9, "event_time": 1000,
         "scored_time": 1500, "latency_ms": 500.0},
    )  # fmt: skip
    assert row[:6] == ["p", "e1", "m", "1", "shadow", "fraud"]
    assert row[9] == datetime.fromtimestamp(1.5, UTC)
