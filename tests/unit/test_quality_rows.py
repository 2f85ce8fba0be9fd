from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stream.errors import ValidationError
from stream.quality.rows import feedback_row
from stream.settings import PipelineConfig

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def pipeline(**quality: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "p", "model": {"name": "m", "version": "1"}, "quality": quality}
    )


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
