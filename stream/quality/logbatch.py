"""The prediction log as the engine writes it: Arrow record batches on ``{p}.log``.

Per scored group the engine adds its columns (numpy arrays and the lists it
already has) to a ``PredictionLogBatch``; every ``MAX_ROWS`` rows and at each
checkpoint, ``drain`` encodes them as Arrow IPC streams of at most
``MAX_ROWS`` rows, produced to ``{p}.log`` with the predictions and
acknowledged with them before the offsets are committed (in exactly-once
mode, in the same transaction). The logger joins a second's batches into one
stream for ClickHouse (``FORMAT ArrowStream``) without converting a row.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stream.serde.columnar import field_values, take
from stream.settings import PipelineConfig

MAX_ROWS = 1000
SCHEMA = pa.schema(
    [
        ("pipeline", pa.string()),
        ("event_id", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("variant", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("confidence", pa.float64()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("scored_time", pa.timestamp("ms", tz="UTC")),
        ("latency_ms", pa.float64()),
        # The names once per row as a one-value dictionary (ClickHouse: LowCardinality),
        # the values as a list: a Map repeated every name as a string in every row.
        ("feature_names", pa.dictionary(pa.int32(), pa.string())),
        ("feature_values", pa.list_(pa.float64())),
        ("segments", pa.map_(pa.string(), pa.string())),
    ]
)
COLUMNS = SCHEMA.names
# What engines wrote before: the features as a Map. A logger still reads it.
MAP_SCHEMA = pa.schema(
    [f for f in SCHEMA if f.name not in ("feature_names", "feature_values", "segments")]
    + [pa.field("features", pa.map_(pa.string(), pa.float64())), SCHEMA.field("segments")]
)


class Sampler:
    """Keeps a share of keys, the same keys in every worker and on every restart."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._bound = int(rate * 2**32)

    def keeps(self, key: bytes | None) -> bool:
        # Records without a key are all kept: there is nothing to choose them by.
        return key is None or zlib.crc32(key) < self._bound


def names_json(names: Sequence[str]) -> str:
    """The feature names as the log stores them (as ClickHouse's toJSONString writes them)."""
    return json.dumps(list(names), separators=(",", ":"), ensure_ascii=False)


def _map(names: Sequence[str], values: pa.Array, rows: int) -> pa.MapArray:
    """Every row maps the same ``names`` to its slice of ``values`` (row-major)."""
    width = len(names)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    # Repeating the names in Arrow, not as Python strings: a copy in C, not a conversion.
    index = pa.array(np.tile(np.arange(width, dtype=np.int32), rows))
    keys = pa.array(names, pa.string()).take(index)
    return pa.MapArray.from_arrays(offsets, keys, values)


def _repeat(text: str, rows: int) -> pa.Array:
    """``text`` on every row, made in C: a list of ``rows`` Python strings converted costs
    about 25 times more (86 µs against 3.7 for 500 rows)."""
    return pa.repeat(pa.scalar(text, pa.string()), rows)


@dataclass
class _Group:
    """One scored group's rows as the engine has them; Arrow is made once per drain."""

    model: str
    version: str
    event_ids: list[str]
    variants: list[str]
    labels: list[str]
    score: np.ndarray
    confidence: np.ndarray
    event_time_ms: np.ndarray
    scored_ms: int
    latency_ms: np.ndarray
    names: str  # the feature names as the log stores them (names_json)
    values: np.ndarray  # the inputs, row-major: len(names) a row, or none
    width: int
    segment_values: list[str]  # the segment fields, row-major


class PredictionLogBatch:
    """The log's rows since the last drain.

    ``add`` keeps each group's columns as they are; ``drain`` makes one Arrow
    table of them all. Arrow's conversions cost about as much for 50 rows as
    for 1,000, so the engine drains every ``MAX_ROWS`` rows and at each
    checkpoint, not after every batch.
    """

    def __init__(self, pipeline: PipelineConfig) -> None:
        self.pipeline = pipeline.name
        self.sampler = Sampler(pipeline.quality.log_sample_rate)
        self.features = pipeline.quality.log_features
        self.segments = list(pipeline.quality.segments)
        self._groups: list[_Group] = []
        self.rows = 0  # added since the last drain

    @property
    def enabled(self) -> bool:
        return self.sampler.rate > 0

    def add(
        self,
        model: str,
        version: str,
        keys: list[bytes | None],
        event_ids: list[str],
        variants: list[str],
        labels: list[str],
        score: np.ndarray,
        confidence: np.ndarray,
        event_time_ms: np.ndarray,
        scored_ms: int,
        latency_ms: np.ndarray,
        feature_names: list[str],
        raw: np.ndarray,
        events: Sequence[Mapping[str, Any]],
    ) -> None:
        """One scored group: every column has a row per event (``raw``: NaN where null)."""
        rows = len(event_ids)
        if self.sampler.rate < 1:
            keep = np.fromiter((self.sampler.keeps(k) for k in keys), dtype=bool, count=rows)
            if not keep.any():
                return
            index = np.flatnonzero(keep)
            event_ids = [event_ids[i] for i in index]
            variants = [variants[i] for i in index]
            labels = [labels[i] for i in index]
            events = take(events, index.tolist())
            score, confidence = score[index], confidence[index]
            event_time_ms, latency_ms, raw = event_time_ms[index], latency_ms[index], raw[index]
            rows = len(index)
        names = feature_names if self.features else []
        segment_columns = [field_values(events, field) for field in self.segments]
        self._groups.append(
            _Group(
                model, version, event_ids, variants, labels, score, confidence,
                event_time_ms.astype(np.int64), scored_ms, latency_ms, names_json(names),
                raw.ravel() if names else np.empty(0), len(names),
                [
                    "" if v is None else str(v)
                    for row in zip(*segment_columns, strict=True)
                    for v in row
                ],
            )
        )  # fmt: skip
        self.rows += rows

    def drain(self) -> list[bytes]:
        """Everything added since the last drain, as Arrow IPC streams of at most MAX_ROWS rows."""
        groups, self._groups = self._groups, []
        rows, self.rows = self.rows, 0
        if not rows:
            return []
        counts = np.array([len(g.event_ids) for g in groups], dtype=np.int64)
        models = _strings_per_group([g.model for g in groups], counts)
        versions = _strings_per_group([g.version for g in groups], counts)
        widths = np.repeat(np.array([g.width for g in groups], dtype=np.int32), counts)
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(widths, out=offsets[1:])
        values = np.concatenate([g.values for g in groups])
        scored = np.repeat(np.array([g.scored_ms for g in groups], dtype=np.int64), counts)
        columns = [
            _repeat(self.pipeline, rows),
            pa.array(_joined(g.event_ids for g in groups), pa.string()),
            models,
            versions,
            pa.array(_joined(g.variants for g in groups), pa.string()),
            pa.array(_joined(g.labels for g in groups), pa.string()),
            pa.array(np.concatenate([g.score for g in groups]), pa.float64()),
            pa.array(np.concatenate([g.confidence for g in groups]), pa.float64()),
            pa.array(
                np.concatenate([g.event_time_ms for g in groups]), pa.timestamp("ms", tz="UTC")
            ),
            pa.array(scored, pa.timestamp("ms", tz="UTC")),
            pa.array(np.concatenate([g.latency_ms for g in groups]), pa.float64()),
            _per_group([g.names for g in groups], counts),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float64())),
            _map(
                self.segments,
                pa.array(_joined(g.segment_values for g in groups), pa.string()),
                rows,
            ),
        ]
        table = pa.Table.from_arrays(columns, schema=SCHEMA)
        return [encode(batch) for batch in table.to_batches(max_chunksize=MAX_ROWS)]


def _joined(lists: Iterable[list[str]]) -> list[str]:
    return list(itertools.chain.from_iterable(lists))


def _per_group(values: list[str], counts: np.ndarray) -> pa.DictionaryArray:
    """Each group's one value on each of its rows, as indices into the distinct values."""
    distinct = list(dict.fromkeys(values))
    codes = np.array([distinct.index(v) for v in values], dtype=np.int32)
    return pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(codes, counts)), pa.array(distinct, pa.string())
    )


def _strings_per_group(values: list[str], counts: np.ndarray) -> pa.Array:
    if len(set(values)) == 1:  # one model version: the common case, and the cheapest
        return _repeat(values[0], int(counts.sum()))
    return _per_group(values, counts).cast(pa.string())


def encode(batch: pa.RecordBatch | pa.Table) -> bytes:
    if isinstance(batch, pa.Table):
        batch = batch.unify_dictionaries()  # one dictionary in the stream, not one per chunk
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def decode(payloads: list[bytes]) -> pa.Table:
    """Log messages back into one table; raises ValueError for bytes that are not one."""
    tables = []
    for payload in payloads:
        try:
            table = pa.ipc.open_stream(payload).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"not a prediction log batch: {exc}") from None
        if table.schema == MAP_SCHEMA:
            table = _from_map(table)
        elif table.schema != SCHEMA:
            raise ValueError("a prediction log batch of another schema")
        tables.append(table)
    return pa.concat_tables(tables)


def _from_map(table: pa.Table) -> pa.Table:
    """A batch with the features as a Map, as engines wrote it before, in today's columns."""
    features = table.column("features").combine_chunks()
    keys = pa.ListArray.from_arrays(features.offsets, features.keys).to_pylist()
    names = pa.array([names_json(row) for row in keys], pa.string()).dictionary_encode()
    values = pa.ListArray.from_arrays(features.offsets, features.items)
    at = table.schema.get_field_index("features")
    table = table.remove_column(at).add_column(at, "feature_values", values)
    return table.add_column(at, "feature_names", names).cast(SCHEMA)
