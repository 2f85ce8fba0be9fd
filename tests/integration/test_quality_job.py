"""The quality job's windows: each prediction counted once, each event's newest label."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry
from stream.monitor.windows import utc_from_ms
from stream.quality import logbatch
from stream.quality.job import QualityJob
from stream.quality.rows import FEEDBACK_COLUMNS, feedback_row
from stream.settings import PipelineConfig, Settings
from stream.sinks.clickhouse import ClickHouse, ClickHouseSink, connect, migrate

pytestmark = pytest.mark.integration

PIPELINE = PipelineConfig.model_validate(
    {
        "name": "payments",
        "model": {"name": "payments-fraud", "version": "1"},
        "monitor": {"window_seconds": 60},
        "quality": {"segments": ["channel"]},
    }
)


@pytest.fixture
def clickhouse(clickhouse_dsn: str) -> Iterator[ClickHouse]:
    ch = connect(clickhouse_dsn, "quality_job")
    try:
        migrate(ch, Settings().migrations_dir)
        yield ch
    finally:
        ch.close()


def scored(
    manifest: ModelManifest,
    ids: list[str],
    labels: list[str],
    scored_ms: int,
    pipeline: PipelineConfig = PIPELINE,
) -> bytes:
    """One log message: ``ids`` scored by v1 at ``scored_ms``, all in the web channel."""
    batch = logbatch.PredictionLogBatch(pipeline)
    n = len(ids)
    score = np.array([0.9 if label == "fraud" else 0.1 for label in labels])
    batch.add(
        manifest.name, "1", [i.encode() for i in ids], ids, ["champion"] * n, labels, score,
        np.maximum(score, 1 - score), np.full(n, scored_ms - 100), scored_ms, np.full(n, 100.0),
        manifest.feature_names, np.zeros((n, len(manifest.feature_names))),
        [{"channel": "web"}] * n,
    )  # fmt: skip
    (message,) = batch.drain()
    return message


def test_copies_of_a_prediction_count_once_and_the_newest_label_counts(
    clickhouse: ClickHouse, registry: ModelRegistry, manifest: ModelManifest
) -> None:
    now = datetime.now(UTC)
    first = int((now - timedelta(minutes=10)).timestamp()) // 60 * 60_000
    second = first + 60_000
    sink = ClickHouseSink(clickhouse)
    ids = [f"e{i}" for i in range(100)]
    predicted = ["fraud" if i < 50 else "legit" for i in range(100)]
    once = scored(manifest, ids, predicted, first + 1_000)
    sink.insert_arrow("prediction_log", logbatch.COLUMNS, once, 100)
    sink.insert_arrow("prediction_log", logbatch.COLUMNS, once, 100)  # an insert retried
    # The first ten scored again later in the same window (a restart's replay).
    again = scored(manifest, ids[:10], predicted[:10], first + 30_000)
    sink.insert_arrow("prediction_log", logbatch.COLUMNS, again, 10)
    later = [f"l{i}" for i in range(40)]
    sink.insert_arrow(
        "prediction_log", logbatch.COLUMNS, scored(manifest, later, ["legit"] * 40, second), 40
    )
    # Every event labeled as predicted, then e0..e9 corrected to the other label.
    labels = [
        feedback_row("payments", {"event_id": i, "label": p, "label_time": first + 5_000},
                     0, now - timedelta(minutes=5))
        for i, p in zip(ids, predicted, strict=True)
    ]  # fmt: skip
    labels += [
        feedback_row("payments", {"event_id": i, "label": "legit", "label_time": first + 6_000},
                     0, now - timedelta(minutes=4))
        for i in ids[:10]
    ]  # fmt: skip
    sink.insert("feedback", FEEDBACK_COLUMNS, labels)

    QualityJob(PIPELINE, registry).run(clickhouse.client, now)

    rows = clickhouse.client.query(
        "SELECT toUnixTimestamp64Milli(window_start), segment, segment_value, predictions, "
        "labeled, accuracy FROM quality_windows FINAL WHERE pipeline = 'payments' "
        "ORDER BY window_start, segment"
    ).result_rows
    assert rows == [
        (first, "all", "", 100, 100, pytest.approx(0.9)),
        (first, "channel", "web", 100, 100, pytest.approx(0.9)),
        (second, "all", "", 40, 0, pytest.approx(float("nan"), nan_ok=True)),
        (second, "channel", "web", 40, 0, pytest.approx(float("nan"), nan_ok=True)),
    ]


class Recording:
    """The client, with the parameters of every command it ran."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.commands: list[dict[str, Any]] = []

    def command(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.commands.append(parameters)
        return self._client.command(sql, parameters=parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_windows_far_apart_are_computed_apart(
    clickhouse: ClickHouse, registry: ModelRegistry, manifest: ModelManifest
) -> None:
    """The window that just closed and the one whose horizon just passed (an hour
    before it) are two computations: neither reads the log of the hour between."""
    pipeline = PIPELINE.model_copy(update={"name": "apart"})
    w = int(pipeline.monitor.window_seconds * 1000)
    horizon = int(pipeline.quality.label_horizon_seconds * 1000)
    grace = int(pipeline.monitor.grace_seconds * 1000)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    newest = (now_ms - grace) // w * w - w  # the newest closed window
    oldest = (now_ms - w - horizon) // w * w  # its horizon passed since the last run
    between = oldest + 30 * w
    sink = ClickHouseSink(clickhouse)
    for start in (oldest, between, newest):
        ids = [f"{start}-{i}" for i in range(10)]
        message = scored(manifest, ids, ["legit"] * 10, start + 1_000, pipeline)
        sink.insert_arrow("prediction_log", logbatch.COLUMNS, message, 10)
    job = QualityJob(pipeline, registry, computed_until=newest,
                     labels_until=now, last_run_ms=oldest + w + horizon - 1)  # fmt: skip
    client = Recording(clickhouse.client)

    job.run(client, now)  # type: ignore[arg-type]

    assert [(c["lo"], c["hi"]) for c in client.commands] == [
        (utc_from_ms(oldest), utc_from_ms(oldest + w)),
        (utc_from_ms(newest), utc_from_ms(newest + w)),
    ]
    rows = clickhouse.client.query(
        "SELECT toUnixTimestamp64Milli(window_start), predictions FROM quality_windows FINAL "
        "WHERE pipeline = 'apart' AND segment = 'all' ORDER BY window_start"
    ).result_rows
    assert rows == [(oldest, 10), (newest, 10)]


def test_each_versions_manifest_is_read_once(
    clickhouse: ClickHouse,
    registry: ModelRegistry,
    manifest: ModelManifest,
    manifests_parsed: list[Path],
) -> None:
    """Every run computes windows, but a version's output spec comes from its manifest
    once: reading it runs a YAML parser on the worker's writer thread."""
    pipeline = PIPELINE.model_copy(update={"name": "manifests"})
    now = datetime.now(UTC)
    start = int((now - timedelta(minutes=10)).timestamp()) // 60 * 60_000
    sink = ClickHouseSink(clickhouse)
    ids = [f"m{i}" for i in range(10)]
    message = scored(manifest, ids, ["legit"] * 10, start + 1_000, pipeline)
    sink.insert_arrow("prediction_log", logbatch.COLUMNS, message, 10)
    job = QualityJob(pipeline, ModelRegistry(registry.root))

    runs = [job.run(clickhouse.client, now + timedelta(seconds=s)) for s in (0, 1, 2)]

    assert [r.written for r in runs] == [1, 1, 1]
    assert len(manifests_parsed) == 1
