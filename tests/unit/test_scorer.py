from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from stream.demo.data import events
from stream.engine.outputs import OutputWriter
from stream.engine.partials import PartialAccumulator
from stream.engine.scoring import BatchScorer, EngineSerdes
from stream.errors import DeliveryError
from stream.models.registry import ModelRegistry
from stream.models.runtime import OnnxModel, Prediction
from stream.serde import AvroSerde, SerdeContext, load_schema
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.unit.fakes import FakeProducer, FakeRecord

SCHEMAS = PROJECT_ROOT / "schemas"
PIPELINE = PipelineConfig.model_validate(
    {"name": "payments", "model": {"name": "payments-fraud", "version": "1"}}
)


def serdes() -> EngineSerdes:
    return EngineSerdes(
        events=AvroSerde(load_schema(SCHEMAS, "payments_event.avsc")),
        predictions=AvroSerde(load_schema(SCHEMAS, "prediction.avsc")),
        review=AvroSerde(load_schema(SCHEMAS, "review.avsc")),
    )


def make_scorer(
    model: OnnxModel, pipeline: PipelineConfig = PIPELINE
) -> tuple[BatchScorer, FakeProducer, PartialAccumulator]:
    producer = FakeProducer()
    acc = PartialAccumulator(pipeline.name, model.manifest, 60_000, "test")
    scorer = BatchScorer(
        pipeline, model, serdes(), OutputWriter(producer), acc, clock=lambda: 100.0
    )
    return scorer, producer, acc


def records(n: int, seed: int = 3) -> tuple[list[FakeRecord], list[dict[str, Any]]]:
    serde = serdes().events
    evs = list(events(n, np.random.default_rng(seed), now_ms=99_000))
    ctx = SerdeContext("payments.events")
    recs = [
        FakeRecord(serde.serialize(e, ctx), e["event_id"].encode(), _offset=i)
        for i, e in enumerate(evs)
    ]
    return recs, evs


@pytest.fixture(scope="module")
def model(registry: ModelRegistry) -> OnnxModel:
    return registry.load("payments-fraud", "1")


def test_every_record_gets_exactly_one_outcome(model: OnnxModel) -> None:
    scorer, producer, acc = make_scorer(model)
    recs, _ = records(300)
    recs[10] = FakeRecord(b"\x02\xff", b"bad-1", _offset=10)
    recs[20] = FakeRecord(b"", b"bad-2", _offset=20)
    recs[30] = FakeRecord(b"x" * 70_000, b"bad-3", _offset=30)
    scorer.score(recs)
    predictions = producer.on("payments.predictions")
    dead = producer.on("payments.deadletter")
    assert len(predictions) == 297
    assert {d.key for d in dead} == {b"bad-1", b"bad-2", b"bad-3"}
    keys = [p.key for p in predictions] + [d.key for d in dead]
    assert sorted(keys) == sorted(r.key() for r in recs)
    assert scorer.counters.consumed == 300
    assert acc.window(100_000).count == 297


def test_prediction_record_contents(model: OnnxModel) -> None:
    scorer, producer, _ = make_scorer(model)
    recs, evs = records(5)
    scorer.score(recs)
    decoded = [
        serdes().predictions.deserialize(p.value, SerdeContext("payments.predictions"))
        for p in producer.on("payments.predictions")
    ]
    assert [d["event_id"] for d in decoded] == [e["event_id"] for e in evs]
    for d in decoded:
        assert d["pipeline"] == "payments"
        assert (d["model_name"], d["model_version"]) == ("payments-fraud", "1")
        assert d["label"] in ("legit", "fraud")
        assert d["scored_time"] == 100_000
        assert d["latency_ms"] == 1_000.0
        assert sum(d["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert d["confidence"] == pytest.approx(max(d["probabilities"]), abs=1e-6)


def test_low_confidence_goes_to_review(model: OnnxModel) -> None:
    everything = PIPELINE.with_overrides(review_threshold=1.0)
    scorer, producer, _ = make_scorer(model, everything)
    recs, _ = records(20)
    scorer.score(recs)
    assert len(producer.on("payments.review")) == 20
    item = serdes().review.deserialize(
        producer.on("payments.review")[0].value, SerdeContext("payments.review")
    )
    assert item["reason"] == "low_confidence"
    assert item["event"] == recs[0].value()
    nothing = PIPELINE.with_overrides(review_threshold=0.0)
    scorer, producer, _ = make_scorer(model, nothing)
    scorer.score(recs)
    assert producer.on("payments.review") == []


def test_dead_letter_headers_say_why_and_where(model: OnnxModel) -> None:
    scorer, producer, _ = make_scorer(model)
    scorer.score([FakeRecord(b"\x02\xff", b"k", _offset=41, _partition=3, _headers=[("h", b"v")])])
    (dead,) = producer.on("payments.deadletter")
    assert dead.value == b"\x02\xff"
    assert dead.headers["h"] == b"v"
    assert dead.headers["error.class"] == b"ValueDecodeError"
    assert dead.headers["error.reason"] == b"value_decode"
    assert b"not valid Avro" in dead.headers["error.message"]
    assert dead.headers["source.topic"] == b"payments.events"
    assert dead.headers["source.partition"] == b"3"
    assert dead.headers["source.offset"] == b"41"


class PoisonedModel(OnnxModel):
    """Fails on any batch holding a row whose first feature is 13.0."""

    def predict(self, batch: np.ndarray) -> Prediction:
        if (batch[:, 0] == 13.0).any():
            raise RuntimeError("poisoned row")
        return super().predict(batch)


def test_model_error_dead_letters_only_the_failing_events(
    registry: ModelRegistry, model: OnnxModel
) -> None:
    poisoned = PoisonedModel(model.manifest, model.onnx_path)
    poisoned.load()
    scorer, producer, _ = make_scorer(poisoned)
    serde = serdes().events
    recs, evs = records(10)
    evs[4]["amount"] = 13.0
    recs[4] = FakeRecord(serde.serialize(evs[4], SerdeContext("t")), b"poison", _offset=4)
    scorer.score(recs)
    (dead,) = producer.on("payments.deadletter")
    assert dead.key == b"poison"
    assert dead.headers["error.class"] == b"ModelError"
    assert dead.headers["model.name"] == b"payments-fraud"
    assert dead.headers["model.version"] == b"1"
    assert len(producer.on("payments.predictions")) == 9


def test_unacknowledged_outputs_block_the_commit() -> None:
    producer = FakeProducer(fail_topics={"payments.predictions"})
    writer = OutputWriter(producer)
    writer.produce("payments.predictions", b"x")
    with pytest.raises(DeliveryError, match="broker said no"):
        writer.acknowledge()
    writer.produce("payments.review", b"y")
    writer.acknowledge()


def test_partials_drain_with_heartbeat(model: OnnxModel) -> None:
    scorer, _, acc = make_scorer(model)
    recs, _ = records(50)
    scorer.score(recs)
    (partial,) = [json.loads(v) for v in acc.drain(100_500)]
    assert partial["stats"]["count"] == 50
    assert partial["window_start"] == 60_000
    assert partial["emitted_at"] == 100_500
    (heartbeat,) = [json.loads(v) for v in acc.drain(130_000)]
    assert heartbeat["stats"]["count"] == 0
    assert heartbeat["window_start"] == 120_000
