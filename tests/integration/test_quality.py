"""Quality from labels: feedback before and after its predictions, joined in ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.services.readback import read_to_end
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.integration.conftest import PipelineHarness, monitor

pytestmark = pytest.mark.integration

READER = AvroSerde(load_schema(PROJECT_ROOT / "schemas", "prediction.avsc"))
HORIZON_S = 30


def send_feedback(harness: PipelineHarness, pipeline: PipelineConfig, values: list[Any]) -> None:
    producer = Producer(harness.kafka_config)
    for value in values:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(pipeline.feedback_topic, raw, key=b"label")
    assert producer.flush(30) == 0


def test_labels_before_and_after_their_predictions_give_quality_by_segment(
    harness: PipelineHarness, figures: Callable[[str], None]
) -> None:
    pipeline, path = harness.pipeline(
        quality={"segments": ["channel"], "label_horizon_seconds": HORIZON_S}
    )
    worker = harness.worker(path)
    worker.wait_ready()
    producer = harness.producer(pipeline)
    chunks = producer.prepare(1000, seed=31)
    ids = [key.decode() for chunk in chunks for key, _ in chunk]

    # 100 labels arrive before their events exist; 3 feedback records are broken.
    early = [{"event_id": i, "label": "fraud"} for i in ids[:100]]
    broken = [b"not json", {"event_id": "x"}, {"event_id": "", "label": "fraud"}]
    send_feedback(harness, pipeline, [*early, *broken])
    producer.send(chunks, rate=0)
    out = harness.outcomes(pipeline, {i.encode() for i in ids})
    ctx = SerdeContext(pipeline.predictions_topic)
    scored = {
        p["event_id"]: p
        for p in (READER.deserialize(m.value(), ctx) for m in out[pipeline.predictions_topic])
    }
    assert len(scored) == 1000

    # The rest after: right for even positions, wrong for odd ones; every 10th late.
    other = {"fraud": "legit", "legit": "fraud"}
    records = []
    late = set()
    for n, event_id in enumerate(ids[100:800]):
        p = scored[event_id]
        label = p["label"] if n % 2 == 0 else other[p["label"]]
        offset = 500
        if n % 10 == 9:
            late.add(event_id)
            offset = HORIZON_S * 1000 + 1000
        records.append(
            {"event_id": event_id, "label": label, "label_time": p["scored_time"] + offset}
        )
    send_feedback(harness, pipeline, records)
    labels = {r["event_id"]: r["label"] for r in [*early, *records]}
    on_time = [i for i in labels if i not in late]
    accuracy = sum(scored[i]["label"] == labels[i] for i in on_time) / len(on_time)

    def logged(s: dict[str, Any]) -> bool:
        counts = s["pipelines"][pipeline.name]["logger"]
        return counts["labels"] >= len(labels) and counts["predictions"] >= 1000

    status = worker.wait_until(logged, timeout=60, what="labels and predictions logged")
    runs = monitor(status, pipeline.name)["quality_runs"]
    worker.wait_until(
        lambda s: monitor(s, pipeline.name)["quality_runs"] >= runs + 2,
        timeout=30,
        what="quality computed after the labels",
    )
    assert worker.stop() == 0

    (rows,) = harness.sql(
        pipeline,
        "SELECT segment, segment_value, sum(predictions), sum(labeled), sum(late_labels), "
        "sum(accuracy * labeled) / sum(labeled) FROM quality_windows FINAL "
        "WHERE pipeline = {p:String} GROUP BY segment, segment_value",
    )
    overall = {r[0]: r for r in rows}["all"]
    figures(
        f"{len(labels)} labels ({len(early)} before their events, {len(late)} late) for 1,000 "
        f"predictions: labeled {overall[3]}, late {overall[4]}, accuracy {overall[5]:.3f}"
    )
    assert overall[2:5] == (1000, len(on_time), len(late))
    assert overall[5] == pytest.approx(accuracy)
    channels = [r for r in rows if r[0] == "channel"]
    assert {r[1] for r in channels} == {"web", "app", "pos"}
    assert sum(r[2] for r in channels) == 1000 and sum(r[3] for r in channels) == len(on_time)

    dead = read_to_end(harness.kafka_config, [pipeline.deadletter_topic])[pipeline.deadletter_topic]
    headers = [dict(m.headers()) for m in dead]
    from_feedback = [h for h in headers if h["source.topic"] == pipeline.feedback_topic.encode()]
    assert len(from_feedback) == 3
    assert {h["error.reason"] for h in from_feedback} == {b"invalid"}


def test_produce_publishes_each_label_after_its_event(harness: PipelineHarness) -> None:
    pipeline, path = harness.pipeline()
    result = subprocess.run(
        [sys.executable, "-m", "stream", "produce", str(path), "--count", "400", "--rate", "0",
         "--labels", "0.5", "--label-share", "0.5"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "STREAM_KAFKA_BOOTSTRAP": harness.bootstrap},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = read_to_end(harness.kafka_config, [pipeline.events_topic, pipeline.feedback_topic])
    sent = {m.key(): m.timestamp()[1] for m in out[pipeline.events_topic]}
    labels = [json.loads(m.value()) for m in out[pipeline.feedback_topic]]
    assert len(sent) == 400 and 150 < len(labels) < 250, "about half of them"
    assert f"published {len(labels)} labels" in result.stdout
    for label in labels:
        assert label["label"] in ("fraud", "legit")
        assert label["label_time"] >= sent[label["event_id"].encode()] + 500
