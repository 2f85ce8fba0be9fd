"""Rows of the log tables from decoded records: pure functions, unit-tested."""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime
from typing import Any

from stream.errors import ValidationError
from stream.settings import PipelineConfig

PREDICTION_LOG_COLUMNS = [
    "pipeline", "event_id", "model", "model_version", "variant", "label", "score", "confidence",
    "event_time", "scored_time", "latency_ms",
]  # fmt: skip
EVENT_LOG_COLUMNS = ["pipeline", "event_id", "event_time", "numbers", "strings"]
FEEDBACK_COLUMNS = ["pipeline", "event_id", "label", "label_time", "received_at"]
MAX_LABEL_LENGTH = 256


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


class Sampler:
    """Keeps a share of keys, the same keys on every topic and in every worker."""

    def __init__(self, rate: float) -> None:
        self._bound = int(rate * 2**32)

    def keeps(self, key: bytes | None) -> bool:
        # Records without a key are all kept: there is nothing to choose them by.
        return key is None or zlib.crc32(key) < self._bound


def prediction_row(pipeline: str, prediction: dict[str, Any]) -> list[Any]:
    return [
        pipeline, prediction["event_id"], prediction["model_name"], prediction["model_version"],
        prediction.get("variant", "champion"), prediction["label"], float(prediction["score"]),
        float(prediction["confidence"]), _ts(int(prediction["event_time"])),
        _ts(int(prediction["scored_time"])), float(prediction["latency_ms"]),
    ]  # fmt: skip


def event_row(
    pipeline: PipelineConfig, event: dict[str, Any], timestamp_ms: int
) -> list[Any] | None:
    """The event's fields by kind; None for an event without an id (the engine dead-letters it)."""
    spec = pipeline.input
    event_id = event.get(spec.event_id_field)
    if not isinstance(event_id, str) or not event_id:
        return None
    event_time = event.get(spec.event_time_field) if spec.event_time_field else None
    if isinstance(event_time, bool) or not isinstance(event_time, int) or event_time < 0:
        event_time = timestamp_ms
    skip = {spec.event_id_field, spec.event_time_field}
    numbers: dict[str, float] = {}
    strings: dict[str, str] = {}
    everything = pipeline.quality.log_features
    for name, value in event.items():
        if name in skip:
            continue
        if isinstance(value, str):
            if everything or name in pipeline.quality.segments:
                strings[name] = value
        elif everything and isinstance(value, int | float) and not isinstance(value, bool):
            numbers[name] = float(value)
        elif everything and value is None:
            numbers[name] = math.nan
    return [pipeline.name, event_id, _ts(event_time), numbers, strings]


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
    return [pipeline, event_id, text, _ts(label_time), now]
