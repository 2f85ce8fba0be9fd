"""Validation of decoded events and the feature matrix in the model's order."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.errors import UnknownCategory, ValidationError
from stream.models.manifest import ModelManifest
from stream.serde.columnar import Column, EventColumns

MAX_EVENT_ID_LENGTH = 256
# Models take float32 input: a larger number would reach the model as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# The last millisecond ClickHouse's DateTime64(3) holds (2299-12-31 23:59:59.999 UTC):
# event times go to ClickHouse with the predictions.
MAX_EVENT_TIME_MS = 10_413_791_999_999
_MISSING = object()
_NONE = type(None)
_TIME_TYPES = {int, _NONE}
_NUMBER_TYPES = {float, int, _NONE}


@dataclass(frozen=True)
class EventRow:
    event_id: str
    event_time_ms: int | None
    values: list[float]  # raw feature values; NaN where the input was null


@dataclass
class FeatureRows:
    """The events of a group that passed validation, in their order, as columns."""

    accepted: list[int]  # each row's position in the group
    event_ids: list[str]
    event_times: list[int | None]
    raw: np.ndarray  # (rows, features) float64, NaN where the input was null
    rejected: list[tuple[int, ValidationError]]

    def take(self, i: int) -> FeatureRows:
        """Accepted row ``i`` alone."""
        return FeatureRows(
            [self.accepted[i]], [self.event_ids[i]], [self.event_times[i]], self.raw[i : i + 1], []
        )


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
        names = [f.name for f in manifest.features]
        # The bulk path reads every feature of a record in one C-level call.
        self._values: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        if len(names) == 1:
            self._values = lambda record: (record[names[0]],)
        elif names:
            self._values = itemgetter(*names)
        self._categorical = [j for j, *_, categories in self._plan if categories is not None]

    def rows(self, records: Sequence[Mapping[str, Any]]) -> FeatureRows:
        """``row`` of every record, with the same outcome, the common case in bulk.

        A batch of plain values (non-empty string ids, epoch integers for
        times, in-range numbers, known categories, nulls where allowed) is
        checked and converted a column at a time in C (on the decoded
        columns themselves for ``EventColumns``); a batch with anything else
        goes through ``row`` one record at a time, which gives each rejected
        record its reason.
        """
        bulk = None
        if records:
            bulk = (
                self._columns(records) if isinstance(records, EventColumns) else self._bulk(records)
            )
        if bulk is not None:
            return bulk
        accepted: list[int] = []
        event_ids: list[str] = []
        event_times: list[int | None] = []
        values: list[list[float]] = []
        rejected: list[tuple[int, ValidationError]] = []
        for i, record in enumerate(records):
            try:
                row = self.row(record)
            except ValidationError as exc:
                rejected.append((i, exc))
                continue
            accepted.append(i)
            event_ids.append(row.event_id)
            event_times.append(row.event_time_ms)
            values.append(row.values)
        raw = np.asarray(values, dtype=np.float64).reshape(len(values), len(self._plan))
        return FeatureRows(accepted, event_ids, event_times, raw, rejected)

    def _bulk(self, records: Sequence[Mapping[str, Any]]) -> FeatureRows | None:
        """The rows when every value of the batch is a plain one; None for the careful path."""
        if self._values is None:
            return None
        found = [r.get(self.event_id_field) for r in records]
        if set(map(type, found)) != {str}:
            return None
        event_ids = cast(list[str], found)
        lengths = list(map(len, event_ids))
        if min(lengths) == 0 or max(lengths) > MAX_EVENT_ID_LENGTH:
            return None
        event_times: list[Any] = [None] * len(records)
        if self.event_time_field is not None:
            event_times = [r.get(self.event_time_field) for r in records]
            kinds = set(map(type, event_times))
            if not kinds <= _TIME_TYPES:
                return None
            if int in kinds:
                known = [t for t in event_times if t is not None]
                if min(known) < 0 or max(known) > MAX_EVENT_TIME_MS:
                    return None
        try:
            columns = list(zip(*map(self._values, records), strict=True))
        except KeyError:
            return None  # a feature is missing: the careful path names it
        converted: list[Sequence[Any]] = []
        nulls: list[tuple[int, list[bool]]] = []
        for column, (j, _, nullable, categories) in zip(columns, self._plan, strict=True):
            if categories is None:
                kinds = set(map(type, column))
                if not kinds <= _NUMBER_TYPES:
                    return None
                if _NONE in kinds:
                    if not nullable:
                        return None
                    nulls.append((j, [v is None for v in column]))
                    converted.append([math.nan if v is None else v for v in column])
                else:
                    converted.append(column)
                continue
            try:
                codes = list(map(categories.get, column))
            except TypeError:  # not hashable: certainly not a category
                return None
            if None in codes:
                if not nullable:
                    return None
                if any(c is None and v is not None for c, v in zip(codes, column, strict=True)):
                    return None  # an unknown category, not a null
                codes = [math.nan if c is None else c for c in codes]
            converted.append(codes)
        try:
            raw = np.ascontiguousarray(np.array(converted, dtype=np.float64).T)
        except OverflowError:
            return None
        if not self._in_range(raw, nulls):
            return None
        return FeatureRows(list(range(len(records))), event_ids, event_times, raw, [])

    def _columns(self, events: EventColumns) -> FeatureRows | None:
        """``_bulk`` for events decoded as columns: the same checks, on the arrays."""
        columns = events.columns
        ids = columns.get(self.event_id_field)
        if ids is None or not isinstance(ids.values, pa.Array):
            return None
        if ids.nulls is not None and ids.nulls.any():
            return None
        if not pa.types.is_large_string(ids.values.type):
            return None
        chars = pc.utf8_length(ids.values)
        if pc.min(chars).as_py() == 0 or pc.max(chars).as_py() > MAX_EVENT_ID_LENGTH:
            return None
        event_times: list[int | None] = [None] * events.rows
        times = None if self.event_time_field is None else columns.get(self.event_time_field)
        if times is not None:
            if not times.integer:
                return None
            known = times.values if times.nulls is None else times.values[~times.nulls]
            if known.size and (known.min() < 0 or known.max() > MAX_EVENT_TIME_MS):
                return None
            event_times = times.to_list()
        raw = np.empty((events.rows, len(self._plan)), dtype=np.float64)
        nulls: list[tuple[int, np.ndarray]] = []
        for j, name, nullable, categories in self._plan:
            column = columns.get(name)
            if column is None:
                return None  # the careful path names the missing feature
            values = _numbers(column) if categories is None else _codes(column, categories)
            if values is None:
                return None
            if column.nulls is not None and column.nulls.any():
                if not nullable:
                    return None
                values = np.where(column.nulls, np.nan, values)
                if categories is None:
                    nulls.append((j, column.nulls))
            raw[:, j] = values
        if not self._in_range(raw, nulls):
            return None
        return FeatureRows(list(range(events.rows)), ids.values.to_pylist(), event_times, raw, [])

    def _in_range(self, raw: np.ndarray, nulls: Sequence[tuple[int, Any]]) -> bool:
        """Every number within float32's range, but where ``nulls`` (feature, mask) says
        the value was null; categorical columns hold codes, or NaN for a checked null."""
        within = np.abs(raw) <= FLOAT32_MAX  # false for NaN and infinity too
        within[:, self._categorical] = True
        for j, mask in nulls:
            within[:, j] |= mask
        return bool(within.all())

    def row(self, record: Mapping[str, Any]) -> EventRow:
        event_id = record.get(self.event_id_field)
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError(f"{self.event_id_field}: missing or not a non-empty string")
        if len(event_id) > MAX_EVENT_ID_LENGTH:
            raise ValidationError(f"{self.event_id_field}: longer than {MAX_EVENT_ID_LENGTH}")
        event_time: int | None = None
        if self.event_time_field is not None:
            raw_time = record.get(self.event_time_field)
            if raw_time is not None:
                if (
                    isinstance(raw_time, bool)
                    or not isinstance(raw_time, int)
                    or not 0 <= raw_time <= MAX_EVENT_TIME_MS
                ):
                    raise ValidationError(
                        f"{self.event_time_field}: expected epoch milliseconds from 0 to "
                        f"{MAX_EVENT_TIME_MS} (year 2299), got {raw_time!r:.40}"
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

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """The model's float32 input: ``raw`` with nulls filled."""
        return np.where(np.isnan(raw), self.fill, raw).astype(np.float32)


def _numbers(column: Column) -> np.ndarray | None:
    """A numeric feature's values as float64 (any at null rows); None: not a number column."""
    if not isinstance(column.values, np.ndarray) or column.symbols is not None:
        return None
    if column.values.dtype.kind not in "fi":
        return None  # booleans are not numbers here, as on the careful path
    return column.values.astype(np.float64, copy=False)


def _codes(column: Column, categories: dict[str, float]) -> np.ndarray | None:
    """A categorical feature's codes (NaN at null rows); None: an unknown category or
    values that are not strings."""
    if column.symbols is not None:
        lookup = np.array([categories.get(s, np.nan) for s in column.symbols], dtype=np.float64)
        codes = lookup[column.values]
    elif isinstance(column.values, pa.Array) and pa.types.is_large_string(column.values.type):
        found = [categories.get(v) for v in column.values.to_pylist()]
        codes = np.array([np.nan if c is None else c for c in found], dtype=np.float64)
    else:
        return None
    unknown = np.isnan(codes)
    if column.nulls is not None:
        unknown &= ~column.nulls
    return None if unknown.any() else codes
