"""Validation of decoded events and the feature matrix in the model's order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.errors import UnknownCategory, ValidationError
from stream.models.manifest import ModelManifest

MAX_EVENT_ID_LENGTH = 256
# Models take float32 input: a larger number would reach the model as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_MISSING = object()


@dataclass(frozen=True)
class EventRow:
    event_id: str
    event_time_ms: int | None
    values: list[float]  # raw feature values; NaN where the input was null


class FeatureBuilder:
    """Checks one event against the model's features and returns its row.

    Numeric features must be finite numbers (null only where the manifest says
    the feature is nullable); categorical features must be one of the
    manifest's categories. Anything else raises ValidationError with the field.
    """

    def __init__(
        self, manifest: ModelManifest, event_id_field: str, event_time_field: str | None
    ) -> None:
        self.manifest = manifest
        self.event_id_field = event_id_field
        self.event_time_field = event_time_field
        self._plan: list[tuple[int, str, bool, dict[str, float] | None]] = [
            (
                j,
                f.name,
                f.nullable,
                {c: float(i) for i, c in enumerate(f.categories)}
                if f.type == "categorical"
                else None,
            )
            for j, f in enumerate(manifest.features)
        ]
        self.fill = np.asarray([f.fill for f in manifest.features], dtype=np.float64)

    def row(self, record: dict[str, Any]) -> EventRow:
        event_id = record.get(self.event_id_field)
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError(f"{self.event_id_field}: missing or not a non-empty string")
        if len(event_id) > MAX_EVENT_ID_LENGTH:
            raise ValidationError(f"{self.event_id_field}: longer than {MAX_EVENT_ID_LENGTH}")
        event_time: int | None = None
        if self.event_time_field is not None:
            raw_time = record.get(self.event_time_field)
            if raw_time is not None:
                if isinstance(raw_time, bool) or not isinstance(raw_time, int) or raw_time < 0:
                    raise ValidationError(
                        f"{self.event_time_field}: expected epoch milliseconds >= 0, "
                        f"got {raw_time!r:.40}"
                    )
                event_time = raw_time
        values: list[float] = []
        append = values.append
        get = record.get
        for j, name, nullable, categories in self._plan:
            value = get(name, _MISSING)
            # The common cases first, with one check each: a float within float32's
            # range (the chained comparison is false for NaN and infinity too), and
            # a known category. Everything else takes the careful path.
            if categories is None:
                if type(value) is float and -FLOAT32_MAX <= value <= FLOAT32_MAX:
                    append(value)
                    continue
            elif type(value) is str:
                index = categories.get(value)
                if index is not None:
                    append(index)
                    continue
            append(self._checked(j, name, nullable, categories, value))
        return EventRow(event_id, event_time, values)

    @staticmethod
    def _checked(
        j: int, name: str, nullable: bool, categories: dict[str, float] | None, value: Any
    ) -> float:
        """The value of one feature that is not a plain in-range float or known category."""
        if value is None or value is _MISSING:
            if not nullable:
                raise ValidationError(f"{name}: {'missing' if value is _MISSING else 'null'}")
            return math.nan
        if categories is not None:
            index = categories.get(value) if isinstance(value, str) else None
            if index is None:
                expected = f"expected one of {sorted(categories)}"
                if not isinstance(value, str):
                    kind = type(value).__name__
                    raise ValidationError(f"{name}: expected a category, got {kind} ({expected})")
                raise UnknownCategory(f"{name}: unknown category {value!r:.60} ({expected})", j)
            return index
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"{name}: expected a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:
            raise ValidationError(f"{name}: number out of range") from None
        if not math.isfinite(number):
            raise ValidationError(f"{name}: not a finite number ({value!r})")
        if abs(number) > FLOAT32_MAX:
            raise ValidationError(f"{name}: {value!r} is beyond the model's float32 range")
        return number

    def matrix(self, rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        """(raw values with NaN for nulls, float32 model input with nulls filled)."""
        raw = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self._plan))
        model_input = np.where(np.isnan(raw), self.fill, raw).astype(np.float32)
        return raw, model_input
