"""Swapping, splitting, shadowing and rolling back models on a live stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest

from stream.deploy.commands import change_deployment, current_state
from stream.models.key import ModelKey
from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.services.readback import read_to_end
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.integration.conftest import (
    PipelineHarness,
    closed_until,
    engine,
    monitor,
    window_end,
)

pytestmark = pytest.mark.integration

V1 = ModelKey(name="payments-fraud", version="1")
V2 = ModelKey(name="payments-fraud", version="2")
READER = AvroSerde(load_schema(PROJECT_ROOT / "schemas", "prediction.avsc"))


def predictions(harness: PipelineHarness, topic: str, messages: list[Any]) -> list[dict[str, Any]]:
    ctx = SerdeContext(topic)
    return [{**READER.deserialize(m.value(), ctx), "_partition": m.partition()} for m in messages]


def cli(harness: PipelineHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STREAM_KAFKA_BOOTSTRAP": harness.bootstrap,
        "STREAM_REGISTRY": str(harness.registry.root),
    }
    return subprocess.run(
        [sys.executable, "-m", "stream", "models", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def produce_keys(
    harness: PipelineHarness, pipeline: PipelineConfig, count: int, seed: int
) -> set[bytes]:
    before = {
        m.key()
        for m in read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    }
    harness.producer(pipeline).run(count, rate=0, seed=seed)
    after = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    return {m.key() for m in after} - before


def test_hot_swap_under_load(harness: PipelineHarness) -> None:
    pipeline, path = harness.pipeline()
    worker = harness.worker(path)
    worker.wait_ready()
    pid = worker.pid
    with harness.traffic(pipeline, 6000, rate=1500, seed=21):
        worker.wait_until(
            lambda s: engine(s, pipeline.name)["predictions"] >= 1500, timeout=60, what="traffic"
        )
        result = change_deployment(
            harness.kafka_config, pipeline, lambda s: s.deploy(V2), harness.registry
        )
    assert result.complete, result.answers
    keys = {
        m.key()
        for m in read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    }
    assert len(keys) == 6000
    out = harness.outcomes(pipeline, keys)
    scored = predictions(harness, pipeline.predictions_topic, out[pipeline.predictions_topic])
    assert out[pipeline.deadletter_topic] == []
    ids = [p["event_id"] for p in scored]
    assert len(ids) == len(set(ids)) == 6000, "every event scored exactly once"
    by_partition: dict[int, list[str]] = defaultdict(list)
    for p in scored:
        by_partition[p["_partition"]].append(p["model_version"])
    for versions in by_partition.values():
        first_v2 = versions.index("2")
        assert set(versions[first_v2:]) == {"2"}, "after the switch, only v2"
        assert set(versions[:first_v2]) == {"1"}
    status = worker.status()
    assert status is not None and engine(status, pipeline.name)["revision"] == 1
    assert worker.pid == pid and worker.returncode is None, "the worker never restarted"
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("version", "reason"), [("corrupt", "checksum mismatch"), ("wrong-shape", "does not match")]
)
def test_bad_model_is_rejected_and_v1_keeps_serving(
    harness: PipelineHarness, version: str, reason: str
) -> None:
    bad = ModelKey(name="payments-fraud", version=version)  # see the registry fixture
    pipeline, path = harness.pipeline()
    worker = harness.worker(path)
    worker.wait_ready()

    refused = cli(harness, "deploy", str(path), str(bad))
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert reason in refused.stderr
    assert current_state(harness.kafka_config, pipeline).current.revision == 0, "nothing published"

    # Published anyway (as a worker with a broken volume would see it): the worker refuses.
    result = change_deployment(harness.kafka_config, pipeline, lambda s: s.deploy(bad), None)
    (answer,) = result.answers.values()
    assert answer["kind"] == "rejected" and reason in answer["message"]
    alerts = read_to_end(harness.kafka_config, [pipeline.alerts_topic])[pipeline.alerts_topic]
    (alert,) = [json.loads(m.value()) for m in alerts]
    assert alert["kind"] == "model_rejected" and alert["revision"] == 1

    keys = produce_keys(harness, pipeline, 300, seed=22)
    out = harness.outcomes(pipeline, keys)
    scored = predictions(harness, pipeline.predictions_topic, out[pipeline.predictions_topic])
    assert {p["model_version"] for p in scored} == {"1"}
    assert len(scored) == 300
    worker.wait_until(
        lambda s: monitor(s, pipeline.name)["alerts_copied"] >= 1, timeout=15, what="alert copied"
    )
    assert worker.stop() == 0
    ((row,),) = harness.sql(
        pipeline, "SELECT state, metric, message FROM alerts FINAL WHERE pipeline = {p:String}"
    )
    assert row[:2] == ("notice", "model_rejected") and reason in row[2]


def test_ab_split_through_the_cli(harness: PipelineHarness) -> None:
    pipeline, path = harness.pipeline()
    worker = harness.worker(path)
    worker.wait_ready()
    deployed = cli(harness, "deploy", str(path), str(V2), "--weight", "10")
    assert deployed.returncode == 0, deployed.stderr
    assert "applied" in deployed.stdout
    keys = produce_keys(harness, pipeline, 3000, seed=23)
    out = harness.outcomes(pipeline, keys)
    scored = predictions(harness, pipeline.predictions_topic, out[pipeline.predictions_topic])
    variants = {(p["model_version"], p["variant"]) for p in scored}
    assert variants == {("1", "champion"), ("2", "challenger")}
    share = sum(p["model_version"] == "2" for p in scored) / len(scored)
    print(f"\nA/B 90/10 on the live stream: {100 * share:.1f}% of 3000 events on v2")
    assert 0.07 <= share <= 0.13
    status = cli(harness, "status", str(path))
    assert status.returncode == 0 and "revision 1" in status.stdout
    assert worker.stop() == 0


def test_shadow_then_rollback_and_a_late_worker(harness: PipelineHarness) -> None:
    pipeline, path = harness.pipeline()
    first = harness.worker(path)
    first.wait_ready()
    result = change_deployment(
        harness.kafka_config, pipeline, lambda s: s.deploy(V2, shadow=True), harness.registry
    )
    assert result.complete
    keys = produce_keys(harness, pipeline, 1000, seed=24)
    out = harness.outcomes(pipeline, keys)
    live = predictions(harness, pipeline.predictions_topic, out[pipeline.predictions_topic])
    assert {p["model_version"] for p in live} == {"1"}
    shadow_topic = read_to_end(harness.kafka_config, [pipeline.shadow_topic])[pipeline.shadow_topic]
    shadow = predictions(harness, pipeline.shadow_topic, shadow_topic)
    assert {(p["model_version"], p["variant"]) for p in shadow} == {("2", "shadow")}
    assert {p["event_id"] for p in shadow} == {p["event_id"] for p in live}

    rolled = cli(harness, "rollback", str(path))
    assert rolled.returncode == 0, rolled.stderr
    state = current_state(harness.kafka_config, pipeline)
    assert state.current.revision == 2 and state.current.shadows == []
    last_scored = engine(first.wait_until(lambda s: True, 5, "status"), pipeline.name)[
        "last_scored_ms"
    ]
    assert first.stop() == 0

    late = harness.worker(path)  # started after the changes: comes up with revision 2
    status = late.wait_ready()
    assert engine(status, pipeline.name)["revision"] == 2
    more = produce_keys(harness, pipeline, 100, seed=25)
    out = harness.outcomes(pipeline, keys | more)
    assert len(out[pipeline.predictions_topic]) == 1100, "no event scored twice"
    again = read_to_end(harness.kafka_config, [pipeline.shadow_topic])[pipeline.shadow_topic]
    assert len(again) == len(shadow_topic), "no shadow scoring after the rollback"
    now = late.wait_until(lambda s: True, 5, "status")
    last_scored = max(last_scored, engine(now, pipeline.name)["last_scored_ms"])
    end = window_end(last_scored, int(pipeline.monitor.window_seconds * 1000))
    late.wait_until(lambda s: closed_until(s, pipeline.name) >= end, 30, "closed windows")
    assert late.stop() == 0

    rows, events = harness.sql(
        pipeline,
        "SELECT model_version, variant, sum(count) FROM latency_windows FINAL "
        "WHERE pipeline = {p:String} GROUP BY model_version, variant ORDER BY model_version",
        "SELECT revision, kind FROM model_events FINAL WHERE pipeline = {p:String} "
        "ORDER BY revision",
    )
    compared = subprocess.run(
        [sys.executable, "-m", "stream", "models", "compare", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "STREAM_CLICKHOUSE_DSN": harness.dsn, "COLUMNS": "200"},
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    expected = ("payments-fraud:1", "payments-fraud:2", "shadow", "1,100", "1,000", "latency p99",
                "CPU s per 1,000", "no labels")  # fmt: skip
    for word in expected:
        assert word in compared.stdout, compared.stdout
    counts = {(v, variant): n for v, variant, n in rows}
    assert counts[("2", "shadow")] == 1000, "a shadow prediction for every event in ClickHouse"
    assert counts[("1", "champion")] == 1100
    assert {(0, "applied"), (1, "applied"), (2, "applied")} <= set(events)
