"""Rows of the feedback table from ``{p}.feedback`` records."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from stream.errors import ValidationError
from stream.monitor.windows import utc_from_ms

FEEDBACK_COLUMNS = ["pipeline", "event_id", "label", "label_time", "received_at"]
MAX_LABEL_LENGTH = 256


def feedback_row(pipeline: str, record: Any, timestamp_ms: int, now: datetime) -> list[Any]:
    """A label from ``{p}.feedback``: JSON ``{"event_id", "label", "label_time"?}``.

    Raises ValidationError (the record goes to the dead-letter topic) when it is not one.
    """
    if not isinstance(record, dict):
        raise ValidationError("feedback: expected a JSON object")
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise ValidationError("feedback: event_id missing or not a non-empty string")
    label = record.get("label")
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise ValidationError("feedback: label missing or not a string or number")
    if isinstance(label, float) and not math.isfinite(label):
        raise ValidationError("feedback: label is not a finite number")
    text = label if isinstance(label, str) else repr(label)
    if not text or len(text) > MAX_LABEL_LENGTH:
        raise ValidationError(f"feedback: label empty or longer than {MAX_LABEL_LENGTH}")
    label_time = record.get("label_time", timestamp_ms)
    if isinstance(label_time, bool) or not isinstance(label_time, int) or label_time < 0:
        raise ValidationError("feedback: label_time must be epoch milliseconds >= 0")
    return [pipeline, event_id, text, utc_from_ms(label_time), now]
