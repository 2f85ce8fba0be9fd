"""The closed loop on the demo: concept drift, labels, retrain, the gate, shadow, promotion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.deploy.commands import current_state
from stream.models.registry import ModelRegistry
from stream.produce import publish_labels
from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.services.readback import read_to_end
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.integration.conftest import PipelineHarness, closed_until, engine, window_end

pytestmark = pytest.mark.integration

READER = AvroSerde(load_schema(PROJECT_ROOT / "schemas", "prediction.avsc"))


def stream_cli(harness: PipelineHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STREAM_KAFKA_BOOTSTRAP": harness.bootstrap,
        "STREAM_CLICKHOUSE_DSN": harness.dsn,
        "STREAM_REGISTRY": str(harness.registry.root),
        "STREAM_HOME": str(harness.tmp / "home"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=PROJECT_ROOT,
    )  # fmt: skip


def drifted_traffic(
    harness: PipelineHarness, pipeline: PipelineConfig, count: int, seed: int
) -> list[str]:
    """``count`` events labeled by the changed fraud mechanism, and every label published."""
    truth: list[tuple[str, str]] = []
    report = harness.producer(pipeline).run(count, rate=0, seed=seed, truth=truth, concept=True)
    assert report.produced == count and report.failed == 0
    assert publish_labels(harness.kafka_config, pipeline.feedback_topic, dict(truth)) == count
    return [event_id for event_id, _ in truth]


def logged(pipeline: PipelineConfig, predictions: int, labels: int) -> Callable[[Any], bool]:
    def check(status: dict[str, Any]) -> bool:
        counts = status["pipelines"][pipeline.name]["logger"]
        return bool(counts["predictions"] >= predictions and counts["labels"] >= labels)

    return check


def own_registry(harness: PipelineHarness) -> ModelRegistry:
    """A registry of the test's own with the champion only: retraining adds 2, 3, …"""
    root = harness.tmp / "registry"
    shutil.copytree(harness.registry.folder("payments-fraud", "1"), root / "payments-fraud" / "1")
    harness.registry = ModelRegistry(root)
    return harness.registry


QUALITY = {"segments": ["channel"], "min_accuracy": 0.85, "min_labels": 100}
RETRAIN = {"min_rows": 1000, "holdout_share": 0.3, "min_segment_labels": 200,
           "max_segment_regression": 0.03, "shadow_on_pass": True}  # fmt: skip


def test_concept_drift_is_retrained_validated_shadowed_and_promoted(
    harness: PipelineHarness, figures: Callable[[str], None]
) -> None:
    registry = own_registry(harness)
    pipeline, path = harness.pipeline(
        quality=QUALITY,
        retrain=RETRAIN,
        # The test's champion has 20 trees, the demo trainer's candidates 100: slower, not broken.
        promotion={"min_labeled": 1000, "max_latency_ratio": 20, "max_cost_ratio": 20},
    )  # fmt: skip
    champion = "payments-fraud:1"

    # 1. The fraud mechanism changes; labels come back; the champion's accuracy alerts.
    worker = harness.worker(path)
    worker.wait_ready()
    ids = drifted_traffic(harness, pipeline, 4000, seed=41)
    worker.wait_until(logged(pipeline, 4000, 4000), timeout=90, what="4,000 labeled predictions")
    worker.wait_until(
        lambda s: s["pipelines"][pipeline.name]["monitor"]["quality_runs"] >= 2,
        timeout=60, what="quality computed",
    )  # fmt: skip
    assert worker.stop() == 0
    alerts = [
        json.loads(m.value())
        for m in read_to_end(harness.kafka_config, [pipeline.alerts_topic])[pipeline.alerts_topic]
    ]
    quality_alerts = [a for a in alerts if a["metric"] == "quality" and a["state"] == "firing"]
    assert quality_alerts, "the champion's accuracy under the new mechanism alerts"

    # 2. Retrain on the logged features and labels: the candidate beats the champion
    #    offline and is deployed as a shadow by the pipeline's policy.
    done = stream_cli(harness, "models", "retrain", str(path), "--reason", "accuracy alerts")
    assert done.returncode == 0, done.stdout + done.stderr
    candidate = registry.manifest("payments-fraud", "2")
    assert candidate.validation is not None and candidate.validation.status == "passed"
    assert candidate.validation.champion == champion
    assert candidate.training["rows"] + candidate.validation.holdout_rows == 4000
    assert candidate.validation.candidate_value > candidate.validation.champion_value
    state = current_state(harness.kafka_config, pipeline).current
    assert [str(k) for k in state.shadows] == ["payments-fraud:2"]

    # 3. A trainer that learned the labels upside down: registered, rejected, not deployable.
    bad = stream_cli(harness, "models", "retrain", str(path),
                     "--trainer", "tests.integration.trainers:inverted")  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "rejected" in bad.stdout
    assert registry.manifest("payments-fraud", "3").rejected
    refused = stream_cli(harness, "models", "deploy", str(path), "payments-fraud:3", "--shadow")
    assert refused.returncode != 0
    assert "rejected by the retraining gate" in refused.stdout + refused.stderr

    # 4. Shadow traffic: both versions score the same events.
    worker = harness.worker(path)
    worker.wait_ready()
    ids += drifted_traffic(harness, pipeline, 3000, seed=42)
    status = worker.wait_until(logged(pipeline, 6000, 3000), 90, "shadow predictions logged")
    window_ms = int(pipeline.monitor.window_seconds * 1000)
    end = window_end(engine(status, pipeline.name)["last_scored_ms"], window_ms)
    worker.wait_until(
        lambda s: closed_until(s, pipeline.name) >= end, 60, "the shadow's windows written"
    )
    assert worker.stop() == 0

    # 5. Promotion: the shadow evidence holds, the candidate takes all traffic.
    promoted = stream_cli(harness, "models", "promote", str(path), "payments-fraud:2",
                          "--reason", "beats v1 on shadow traffic")  # fmt: skip
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    state = current_state(harness.kafka_config, pipeline).current
    assert [str(w.model) for w in state.serving] == ["payments-fraud:2"] and not state.shadows

    # 6. Workers serve the candidate; nothing was lost on the way.
    worker = harness.worker(path)
    worker.wait_ready()
    last = drifted_traffic(harness, pipeline, 1000, seed=43)
    out = harness.outcomes(pipeline, {i.encode() for i in ids + last})
    ctx = SerdeContext(pipeline.predictions_topic)
    versions = {
        p["event_id"]: p["model_version"]
        for p in (READER.deserialize(m.value(), ctx) for m in out[pipeline.predictions_topic])
    }
    assert {versions[i] for i in last} == {"2"}
    worker.wait_until(logged(pipeline, 1000, 1000), timeout=60, what="the last predictions")
    assert worker.stop() == 0

    steps, validations = harness.sql(
        pipeline,
        "SELECT kind, actor, reason FROM model_events FINAL "
        "WHERE pipeline = {p:String} AND actor != '' ORDER BY at",
        "SELECT model_version, segment, segment_value, candidate_value, champion_value, passed "
        "FROM model_validations FINAL WHERE pipeline = {p:String} AND metric = 'accuracy' "
        "AND rule != '' ORDER BY model_version, segment, segment_value",
    )
    kinds = [k for k, _, _ in steps]
    record = "\n".join(f"{k} by {a}: {r}" for k, a, r in steps)  # whole, where a repr is cut
    for kind in ("retrained", "passed_gate", "failed_gate", "changed", "promoted"):
        assert kind in kinds, f"{kind} is on the record:\n{record}"
    assert any(a == "policy:retrain.shadow_on_pass" for _, a, _ in steps), record
    assert any(r == "accuracy alerts" for _, _, r in steps), record
    by_version = {v: [r for r in validations if r[0] == v] for v in ("2", "3")}
    assert all(r[5] == 1 for r in by_version["2"]) and len(by_version["2"]) == 4
    assert any(r[5] == 0 for r in by_version["3"])
    overall = next(r for r in by_version["2"] if r[1] == "all")
    figures(
        f"closed loop: champion accuracy {overall[4]:.3f} under concept drift, retrained "
        f"candidate {overall[3]:.3f} on {candidate.validation.holdout_rows:,} held-out events; "
        f"promoted after {len(versions):,} predictions, none lost"
    )


def retrain_status(status: dict[str, Any], pipeline: PipelineConfig) -> dict[str, Any]:
    return dict(status["pipelines"][pipeline.name]["retrain"])


def jobs_finished(pipeline: PipelineConfig) -> Callable[[dict[str, Any]], int]:
    def count(status: dict[str, Any]) -> int:
        jobs = retrain_status(status, pipeline)
        return int(jobs["passed"] + jobs["rejected"] + jobs["failed"])

    return count


def test_an_accuracy_alert_that_stays_open_retrains_in_the_worker(
    harness: PipelineHarness, figures: Callable[[str], None]
) -> None:
    """The trigger and the worker's retrain jobs, with the embedded engine held by the worker."""
    registry = own_registry(harness)
    trigger = {"metric": "quality", "subject": "all events", "windows": 2}
    pipeline, path = harness.pipeline(quality=QUALITY, retrain={**RETRAIN, "trigger": trigger})
    worker = harness.worker(path, STREAM_RETRAIN_JOBS="true")
    worker.wait_ready()
    finished = jobs_finished(pipeline)
    started = time.monotonic()
    drifted_traffic(harness, pipeline, 4000, seed=51)
    status = worker.wait_until(
        lambda s: finished(s) == 1, 120, "a retraining asked for by the accuracy alert"
    )
    took = time.monotonic() - started
    assert retrain_status(status, pipeline)["passed"] == 1, retrain_status(status, pipeline)
    assert registry.manifest("payments-fraud", "2").validation is not None
    state = current_state(harness.kafka_config, pipeline).current
    assert [str(k) for k in state.shadows] == ["payments-fraud:2"]

    # A person asks too, while the worker holds the embedded ClickHouse folder.
    asked = stream_cli(harness, "models", "retrain", str(path), "--request", "--reason", "manual")
    assert asked.returncode == 0, asked.stdout + asked.stderr

    status = worker.wait_until(lambda s: finished(s) == 2, 120, "the requested retraining")
    assert retrain_status(status, pipeline)["passed"] == 2, retrain_status(status, pipeline)
    assert registry.manifest("payments-fraud", "3").validation is not None
    jobs = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(worker.text("/metrics"))
        for s in family.samples
        if s.name == "stream_retrain_jobs_total"
    }
    assert jobs == {"passed": 2, "rejected": 0, "failed": 0}
    assert worker.stop() == 0

    (steps,) = harness.sql(
        pipeline,
        "SELECT kind, actor, reason FROM model_events FINAL "
        "WHERE pipeline = {p:String} AND actor != '' ORDER BY at",
    )
    by_trigger = [(k, r) for k, a, r in steps if a == "policy:retrain.trigger"]
    assert [k for k, _ in by_trigger] == ["retrained", "passed_gate"]
    assert "Still open 2 windows after it opened" in by_trigger[0][1]
    assert ("retrained", "manual") in [(k, r) for k, _, r in steps]
    figures(
        f"retrain trigger: accuracy alert → request → candidate trained, judged and shadowed "
        f"by the worker {took:.0f} s after the drifted traffic began"
    )
