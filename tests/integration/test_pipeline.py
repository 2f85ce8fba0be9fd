"""The pipeline end to end against the real broker and the real ClickHouse engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.demo.data import FEATURES
from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.services.readback import read_to_end
from stream.settings import PROJECT_ROOT
from tests.integration.conftest import (
    PipelineHarness,
    closed_until,
    engine,
    monitor,
    window_end,
)

pytestmark = pytest.mark.integration

SCHEMAS = PROJECT_ROOT / "schemas"
DRIFTED = "merchant_risk_score"


def _keys(messages: list[Any]) -> list[bytes]:
    return [m.key() for m in messages]


def test_scores_every_event_once_and_writes_windows(harness: PipelineHarness) -> None:
    pipeline, path = harness.pipeline()
    window_ms = int(pipeline.monitor.window_seconds * 1000)
    worker = harness.worker(path)
    worker.wait_ready()
    producer = harness.producer(pipeline)
    keys: set[bytes] = set()
    malformed = 0
    outcomes: dict[str, list[Any]] = {}
    # Clean traffic first, then drifted traffic in windows of its own.
    for seed, drift in ((1, None), (2, {DRIFTED: 1.0})):
        before = set(keys)
        report = producer.run(1500, rate=0, seed=seed, drift=drift, malformed_share=0.02)
        malformed += report.malformed
        outcomes = harness.outcomes(pipeline, _all_keys(harness, pipeline, before, report.produced))
        keys = {m.key() for t in outcomes.values() for m in t}
        now = worker.wait_until(lambda s: True, timeout=10, what="status")
        end = window_end(engine(now, pipeline.name)["last_scored_ms"], window_ms)
        worker.wait_until(
            lambda s, end=end: closed_until(s, pipeline.name) >= end,
            timeout=30,
            what="closed window",
        )
    # The drifted windows' alerts were published and copied into ClickHouse.
    status = worker.wait_until(
        lambda s: (
            0
            < monitor(s, pipeline.name)["alerts_published"]
            <= monitor(s, pipeline.name)["alerts_copied"]
        ),
        timeout=15,
        what="alerts copied",
    )
    assert worker.page("/stream/health/") == {"healthy": True, "troubles": [], "degraded": []}
    metrics = prometheus(worker.text("/metrics"), pipeline.name)
    ready = worker.page("/stream/ready/")
    assert ready is not None and ready["ready"] is True
    lag = ready["lag"][pipeline.name]
    assert set(lag) == {f"{pipeline.events_topic}[0]", f"{pipeline.events_topic}[1]"}
    assert sum(lag.values()) == 0, "caught up"
    assert worker.stop() == 0

    predictions = outcomes[pipeline.predictions_topic]
    dead = outcomes[pipeline.deadletter_topic]
    all_keys = _keys(predictions) + _keys(dead)
    assert len(all_keys) == len(set(all_keys)) == 3000, "exactly one outcome per event"
    assert len(dead) == malformed
    for message in dead:
        headers = dict(message.headers())
        assert headers["error.reason"] in (b"value_decode", b"invalid")
        assert headers["source.topic"] == pipeline.events_topic.encode()
    reader = AvroSerde(load_schema(SCHEMAS, "prediction.avsc"))
    ctx = SerdeContext(pipeline.predictions_topic)
    for message in predictions:
        prediction = reader.deserialize(message.value(), ctx)
        assert prediction["event_id"].encode() == message.key()
        assert prediction["model_version"] == "1"
    assert harness.review_count(pipeline) == engine(status, pipeline.name)["reviews"]
    # The same counts on /metrics, as Prometheus reads them.
    assert metrics["stream_predictions_total"] == len(predictions)
    assert metrics["stream_events_consumed_total"] == 3000
    assert metrics["stream_dead_letters_total"] == malformed
    assert metrics["stream_end_to_end_latency_seconds_count"] == len(predictions)
    assert metrics["stream_batch_size_sum"] == len(predictions)
    assert metrics["stream_consumer_lag"] == 0 and metrics["stream_consumer_lag#series"] == 2
    assert metrics["stream_clickhouse_write_seconds_count"] > 0
    assert metrics["stream_windows_written_total"] >= 2

    (((count, windows, cpu, runs),), drift, alert_rows) = harness.sql(
        pipeline,
        "SELECT sum(count), count(), sum(cpu_seconds), sum(model_runs) FROM latency_windows "
        "FINAL WHERE pipeline = {p:String}",
        "SELECT feature, kind, countIf(status = 'alert'), max(psi) FROM drift_windows FINAL "
        "WHERE pipeline = {p:String} GROUP BY feature, kind",
        "SELECT alert_id, state, severity, metric, subject, message FROM alerts FINAL "
        "WHERE pipeline = {p:String}",
    )
    assert count == len(predictions)
    assert windows >= 2
    assert cpu > 0 and 0 < runs <= count, "cost per window: CPU time and model runs"
    flagged = {feature: n for feature, kind, n, _ in drift if n and kind != "prediction"}
    assert set(flagged) == {DRIFTED}, f"drift flagged on {flagged}"
    assert {feature for feature, *_ in drift} == {
        *FEATURES,
        "prediction.score",
        "prediction.confidence",
    }
    # One alert for the drifted feature (it stays open: no clean window follows);
    # the model's scores may drift with it, nothing else may.
    on_features = [a for a in alert_rows if a[4] in FEATURES]
    assert [(state, metric, subject) for _, state, _, metric, subject, _ in on_features] == [
        ("firing", "drift", DRIFTED)
    ]
    assert {a[4] for a in alert_rows} <= {DRIFTED, "prediction.score", "prediction.confidence"}
    message = on_features[0][5]
    assert message.startswith(f"Feature {DRIFTED} drifted strongly (PSI ")
    kafka = read_to_end(harness.kafka_config, [pipeline.alerts_topic])[pipeline.alerts_topic]
    assert {json.loads(m.value())["alert_id"] for m in kafka} == {a[0] for a in alert_rows}

    # The report reads the same tables: a summary, and a page with every chart.
    page = harness.tmp / "report.html"
    shown = subprocess.run(
        [sys.executable, "-m", "stream", "report", "--pipeline", pipeline.name, "--since", "1h",
         "--out", str(page)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "STREAM_CLICKHOUSE_DSN": harness.dsn, "COLUMNS": "120"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{len(predictions):,} in" in shown.stdout and DRIFTED in shown.stdout
    assert page.read_text().count('<figure class="chart"') == 3, "no labels: no quality chart"


def prometheus(text: str, pipeline: str) -> dict[str, float]:
    """Each sample name's total over the pipeline's series (and ``NAME#series``: how many)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pipeline", pipeline) != pipeline or "le" in sample.labels:
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            totals[f"{sample.name}#series"] = totals.get(f"{sample.name}#series", 0) + 1
    return totals


def _all_keys(
    harness: PipelineHarness, pipeline: Any, before: set[bytes], produced: int
) -> set[bytes]:
    """The keys of every event produced so far: read them back from the events topic."""
    from stream.services.readback import read_topics

    out = read_topics(
        harness.kafka_config,
        {pipeline.events_topic: None},
        lambda o: len(o[pipeline.events_topic]) >= len(before) + produced,
        timeout=30,
    )
    return {m.key() for m in out[pipeline.events_topic]}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_worker_killed_mid_stream_loses_nothing(harness: PipelineHarness, guarantee: str) -> None:
    pipeline, path = harness.pipeline(partitions=4, processing_guarantee=guarantee)
    first = harness.worker(path)
    first.wait_ready()
    with harness.traffic(pipeline, 6000, rate=1500, seed=5) as reports:
        status = first.wait_until(
            lambda s: engine(s, pipeline.name)["predictions"] >= 3000,
            timeout=60,
            what="3000 predictions",
        )
        first.kill()  # SIGKILL: no checkpoint, no goodbye to the group
        second = harness.worker(path)
        second.wait_ready()
    (report,) = reports
    assert report.produced == 6000 and report.failed == 0
    keys = _all_keys(harness, pipeline, set(), 6000)
    assert len(keys) == 6000
    outcomes = harness.outcomes(pipeline, keys)
    scored = _keys(outcomes[pipeline.predictions_topic]) + _keys(
        outcomes[pipeline.deadletter_topic]
    )
    duplicates = len(scored) - len(set(scored))
    print(
        f"\nkill -9 mid-stream ({guarantee}): 6000 events, none lost, {duplicates} scored "
        f"twice as read_committed consumers see it "
        f"({engine(status, pipeline.name)['commits']} checkpoints before the kill)"
    )
    assert set(scored) == keys
    if guarantee == "exactly_once":
        assert duplicates == 0
    else:
        # Replays reach back at most to the last checkpoint: about one interval of traffic.
        assert duplicates <= 2 * 1500 * pipeline.monitor.flush_interval_seconds
    assert second.stop() == 0


def test_monitor_state_survives_a_restart(harness: PipelineHarness) -> None:
    """Open windows live in a changelog-backed table: a restarted worker finishes them exactly."""
    pipeline, path = harness.pipeline(monitor={"window_seconds": 20, "grace_seconds": 1})
    first = harness.worker(path)
    first.wait_ready()
    producer = harness.producer(pipeline)
    # Start early in a window, so it is still open when the first worker stops.
    window_ms = int(pipeline.monitor.window_seconds * 1000)
    left_ms = window_ms - int(time.time() * 1000) % window_ms
    if left_ms < 10_000:
        time.sleep(left_ms / 1000 + 0.1)
    producer.run(1000, rate=0, seed=9)
    status = first.wait_until(
        lambda s: sum(s["pipelines"][pipeline.name]["monitor"]["open_events"].values()) == 1000,
        timeout=30,
        what="1000 events in open windows",
    )
    assert closed_until(status, pipeline.name) == 0, "the window must still be open"
    assert first.stop() == 0

    second = harness.worker(path)
    second.wait_ready()
    last = engine(status, pipeline.name)["last_scored_ms"]
    end = window_end(last, window_ms)
    second.wait_until(
        lambda s: closed_until(s, pipeline.name) >= end, timeout=60, what="the window to close"
    )
    assert second.stop() == 0
    (((count,),),) = harness.sql(
        pipeline, "SELECT sum(count) FROM latency_windows FINAL WHERE pipeline = {p:String}"
    )
    assert count == 1000
