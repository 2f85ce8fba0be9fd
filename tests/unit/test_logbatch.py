from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from stream.quality.logbatch import (
    MAP_SCHEMA,
    MAX_ROWS,
    SCHEMA,
    PredictionLogBatch,
    Sampler,
    decode,
)
from stream.settings import PipelineConfig


def pipeline(**quality: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "p", "model": {"name": "m", "version": "1"}, "quality": quality}
    )


def add(batch: PredictionLogBatch, n: int, first: int = 0) -> None:
    ids = [f"e{first + i}" for i in range(n)]
    raw = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    raw[0, 1] = np.nan
    batch.add(
        "m", "1", [i.encode() for i in ids], ids, ["champion"] * n, ["fraud"] * n,
        np.full(n, 0.9), np.full(n, 0.9), np.full(n, 1_000, np.int64), 1_500, np.full(n, 500.0),
        ["amount", "gap"], raw,
        [{"channel": "web" if i % 2 else "app", "country": None} for i in range(n)],
    )  # fmt: skip


def test_sampling_keeps_the_same_keys_at_about_the_rate() -> None:
    half, everything, nothing = Sampler(0.5), Sampler(1.0), Sampler(0.0)
    keys = [f"customer-{i}".encode() for i in range(20_000)]
    kept = [k for k in keys if half.keeps(k)]
    assert 0.48 < len(kept) / len(keys) < 0.52
    assert kept == [k for k in keys if half.keeps(k)], "the same keys every time"
    assert all(everything.keeps(k) for k in keys) and not any(nothing.keeps(k) for k in keys)
    assert nothing.keeps(None), "records without a key are kept"


def test_batches_round_trip_with_features_and_segments() -> None:
    batch = PredictionLogBatch(pipeline(segments=["channel", "country"]))
    add(batch, 3)
    add(batch, MAX_ROWS, first=3)
    messages = batch.drain()
    assert len(messages) == 2 and batch.drain() == []
    table = decode(messages)
    assert table.num_rows == MAX_ROWS + 3
    rows = table.to_pylist()
    first = rows[0]
    assert (first["event_id"], first["model"], first["label"]) == ("e0", "m", "fraud")
    assert json.loads(first["feature_names"]) == ["amount", "gap"]
    features = dict(zip(json.loads(first["feature_names"]), first["feature_values"], strict=True))
    assert features["amount"] == 0.0 and math.isnan(features["gap"])
    assert rows[-1]["feature_values"] == [2.0 * (MAX_ROWS - 1), 2.0 * MAX_ROWS - 1]
    assert dict(first["segments"]) == {"channel": "app", "country": ""}
    assert first["scored_time"].timestamp() == 1.5


def test_without_features_and_sampled() -> None:
    batch = PredictionLogBatch(pipeline(log_features=False, log_sample_rate=0.5))
    add(batch, 400)
    rows = decode(batch.drain()).to_pylist()
    assert 150 < len(rows) < 250
    assert all(r["feature_names"] == "[]" and r["feature_values"] == [] for r in rows)
    assert all(dict(r["segments"]) == {} for r in rows)
    kept = {r["event_id"] for r in rows}
    assert kept == {f"e{i}" for i in range(400) if Sampler(0.5).keeps(f"e{i}".encode())}


def test_bytes_that_are_not_a_batch_are_refused() -> None:
    with pytest.raises(ValueError, match="not a prediction log batch"):
        decode([b"\x00garbage"])


def test_a_batch_with_the_features_as_a_map_is_read_as_todays_columns() -> None:
    """What engines wrote before the log had two feature columns: a logger still takes it."""
    batch = PredictionLogBatch(pipeline(segments=["channel"]))
    add(batch, 3)
    today = decode(batch.drain())
    rows = today.to_pylist()
    features = [
        list(zip(json.loads(r["feature_names"]), r["feature_values"], strict=True)) for r in rows
    ]
    features[1] = []  # a row without features (they were not logged)
    before = today.drop_columns(["feature_names", "feature_values"]).add_column(
        11, "features", pa.array(features, MAP_SCHEMA.field("features").type)
    )
    assert before.schema == MAP_SCHEMA
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, MAP_SCHEMA) as writer:
        writer.write(before)
    read = decode([sink.getvalue().to_pybytes()])
    assert read.schema == SCHEMA
    again = read.to_pylist()
    assert [r["feature_names"] for r in again] == ['["amount","gap"]', "[]", '["amount","gap"]']
    assert again[2]["feature_values"] == rows[2]["feature_values"]
    assert [r["event_id"] for r in again] == [r["event_id"] for r in rows]
    assert [dict(r["segments"]) for r in again] == [dict(r["segments"]) for r in rows]


def test_groups_of_other_versions_and_inputs_drain_into_one_batch() -> None:
    # A split or a shadow: groups of two model versions whose inputs differ, added in turns.
    batch = PredictionLogBatch(pipeline(segments=["channel"]))
    add(batch, 2)
    batch.add(
        "m", "2", [b"x0", b"x1", b"x2"], ["x0", "x1", "x2"], ["shadow"] * 3, ["legit"] * 3,
        np.full(3, 0.2), np.full(3, 0.8), np.full(3, 2_000, np.int64), 2_500, np.full(3, 500.0),
        ["amount", "gap", "hour"], np.arange(9, dtype=np.float64).reshape(3, 3),
        [{"channel": "pos"}] * 3,
    )  # fmt: skip
    add(batch, 1, first=2)
    assert batch.rows == 6
    (message,) = batch.drain()
    assert batch.rows == 0 and batch.drain() == []
    rows = decode([message]).to_pylist()
    assert [(r["event_id"], r["model_version"], r["variant"]) for r in rows] == [
        ("e0", "1", "champion"), ("e1", "1", "champion"),
        ("x0", "2", "shadow"), ("x1", "2", "shadow"), ("x2", "2", "shadow"),
        ("e2", "1", "champion"),
    ]  # fmt: skip
    assert [json.loads(r["feature_names"]) for r in rows[1:4]] == [
        ["amount", "gap"], ["amount", "gap", "hour"], ["amount", "gap", "hour"]
    ]  # fmt: skip
    assert rows[3]["feature_values"] == [3.0, 4.0, 5.0]
    assert rows[5]["feature_values"][0] == 0.0 and math.isnan(rows[5]["feature_values"][1])
    assert [r["scored_time"].timestamp() for r in rows] == [1.5, 1.5, 2.5, 2.5, 2.5, 1.5]
    assert [dict(r["segments"])["channel"] for r in rows] == ["app", "web", *["pos"] * 3, "app"]
