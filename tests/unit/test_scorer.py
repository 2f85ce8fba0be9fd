from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from stream.demo.data import events
from stream.deploy.state import Router, Snapshot, Weighted, initial_state
from stream.engine.features import FeatureBuilder
from stream.engine.outputs import OutputWriter
from stream.engine.runtime import Runtime, ServingModel, build_runtime
from stream.engine.scorer import BatchScorer, CpuLedger, EngineSerdes
from stream.errors import DeliveryError
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.models.runtime import OnnxModel, Prediction
from stream.monitor.histograms import batch_bucket
from stream.quality.logbatch import MAX_ROWS, decode
from stream.serde import AvroSerde, JsonSerde, SerdeContext, load_schema
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.unit.fakes import FakeProducer, FakeRecord

SCHEMAS = PROJECT_ROOT / "schemas"
PIPELINE = PipelineConfig.model_validate(
    {"name": "payments", "model": {"name": "payments-fraud", "version": "1"}}
)
V1 = ModelKey(name="payments-fraud", version="1")
V2 = ModelKey(name="payments-fraud", version="2")


def serdes() -> EngineSerdes:
    return EngineSerdes(
        events=AvroSerde(load_schema(SCHEMAS, "payments_event.avsc")),
        predictions=AvroSerde(load_schema(SCHEMAS, "prediction.avsc")),
        review=AvroSerde(load_schema(SCHEMAS, "review.avsc")),
    )


def make_scorer(
    runtime: Runtime, pipeline: PipelineConfig = PIPELINE
) -> tuple[BatchScorer, FakeProducer]:
    producer = FakeProducer()
    scorer = BatchScorer(
        pipeline, runtime, serdes(), OutputWriter(producer), "test", clock=lambda: 100.0
    )
    return scorer, producer


def records(n: int, seed: int = 3) -> tuple[list[FakeRecord], list[dict[str, Any]]]:
    serde = serdes().events
    evs = list(events(n, np.random.default_rng(seed), now_ms=99_000))
    ctx = SerdeContext("payments.events")
    recs = [
        FakeRecord(serde.serialize(e, ctx), e["event_id"].encode(), _offset=i)
        for i, e in enumerate(evs)
    ]
    return recs, evs


def decoded(producer: FakeProducer, topic: str) -> list[dict[str, Any]]:
    return [
        serdes().predictions.deserialize(p.value, SerdeContext(topic)) for p in producer.on(topic)
    ]


@pytest.fixture(scope="module")
def runtime(registry: ModelRegistry) -> Runtime:
    return build_runtime(PIPELINE, initial_state("payments", V1).current, registry)


def test_every_record_gets_exactly_one_outcome(runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime)
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
    assert scorer.accumulators[V1].window(100_000).count == 297


def test_prediction_record_contents(runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime)
    recs, evs = records(5)
    scorer.score(recs)
    out = decoded(producer, "payments.predictions")
    assert [d["event_id"] for d in out] == [e["event_id"] for e in evs]
    for d in out:
        assert d["pipeline"] == "payments"
        assert (d["model_name"], d["model_version"], d["variant"]) == (
            "payments-fraud",
            "1",
            "champion",
        )
        assert d["label"] in ("legit", "fraud")
        assert d["scored_time"] == 100_000
        assert d["latency_ms"] == 1_000.0
        assert sum(d["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert d["confidence"] == pytest.approx(max(d["probabilities"]), abs=1e-6)


def test_low_confidence_goes_to_review(runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime, PIPELINE.with_overrides(review_threshold=1.0))
    recs, _ = records(20)
    scorer.score(recs)
    assert len(producer.on("payments.review")) == 20
    item = serdes().review.deserialize(
        producer.on("payments.review")[0].value, SerdeContext("payments.review")
    )
    assert item["reason"] == "low_confidence"
    assert item["event"] == recs[0].value()
    scorer, producer = make_scorer(runtime, PIPELINE.with_overrides(review_threshold=0.0))
    scorer.score(recs)
    assert producer.on("payments.review") == []


def test_dead_letter_headers_say_why_and_where(runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime)
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


def poisoned_runtime(runtime: Runtime, snapshot: Snapshot) -> Runtime:
    good = runtime.models[V1].model
    poisoned = PoisonedModel(good.manifest, good.onnx_path)
    poisoned.load()
    models = {
        V1: ServingModel(V1, poisoned, FeatureBuilder(good.manifest, "event_id", "event_time"))
    }
    if snapshot.fallback is not None:
        fallback = runtime.models.get(V2) or runtime.models[V1]
        models[V2] = ServingModel(V2, fallback.model, fallback.features)
    return Runtime(snapshot, Router(snapshot), models)


def poison_batch(n: int) -> list[FakeRecord]:
    serde = serdes().events
    recs, evs = records(n)
    evs[4]["amount"] = 13.0
    recs[4] = FakeRecord(serde.serialize(evs[4], SerdeContext("t")), b"poison", _offset=4)
    return recs


def test_model_error_dead_letters_only_the_failing_events(runtime: Runtime) -> None:
    snapshot = initial_state("payments", V1).current
    scorer, producer = make_scorer(poisoned_runtime(runtime, snapshot))
    scorer.score(poison_batch(10))
    (dead,) = producer.on("payments.deadletter")
    assert dead.key == b"poison"
    assert dead.headers["error.class"] == b"ModelError"
    assert dead.headers["model.name"] == b"payments-fraud"
    assert dead.headers["model.version"] == b"1"
    assert len(producer.on("payments.predictions")) == 9


def test_model_error_goes_to_the_fallback(registry: ModelRegistry, runtime: Runtime) -> None:
    snapshot = initial_state("payments", V1).current.model_copy(update={"fallback": V2})
    full = build_runtime(PIPELINE, snapshot, registry)
    scorer, producer = make_scorer(poisoned_runtime(full, snapshot))
    scorer.score(poison_batch(10))
    assert producer.on("payments.deadletter") == []
    by_id = {d["key"]: d for d in decoded(producer, "payments.predictions")}
    assert len(by_id) == 10
    assert (by_id[b"poison"]["model_version"], by_id[b"poison"]["variant"]) == ("2", "fallback")
    assert scorer.counters.fallbacks == 1


def test_weighted_split_and_shadow(registry: ModelRegistry) -> None:
    state = initial_state("payments", V1).deploy(V2, weight=30)
    runtime = build_runtime(PIPELINE, state.current, registry)
    scorer, producer = make_scorer(runtime)
    recs, _ = records(1000)
    scorer.score(recs)
    versions = [d["model_version"] for d in decoded(producer, "payments.predictions")]
    assert len(versions) == 1000
    assert 0.25 < versions.count("2") / 1000 < 0.35
    assert producer.on("payments.shadow") == []

    shadowed = build_runtime(
        PIPELINE, initial_state("payments", V1).deploy(V2, shadow=True).current, registry
    )
    scorer, producer = make_scorer(shadowed, PIPELINE.with_overrides(review_threshold=1.0))
    scorer.score(recs[:50])
    live = decoded(producer, "payments.predictions")
    shadow = decoded(producer, "payments.shadow")
    assert {d["model_version"] for d in live} == {"1"}
    assert {(d["model_version"], d["variant"]) for d in shadow} == {("2", "shadow")}
    assert len(live) == len(shadow) == 50
    assert len(producer.on("payments.review")) == 50, "shadows never send events to review"
    assert scorer.counters.shadow_predictions == 50
    assert scorer.accumulators[V2].variant == "shadow"


def test_rules_route_by_field_value(registry: ModelRegistry) -> None:
    state = initial_state("payments", V1).deploy(V2, route=("country", "DE"))
    scorer, producer = make_scorer(build_runtime(PIPELINE, state.current, registry))
    recs, evs = records(300)
    scorer.score(recs)
    by_id = {d["event_id"]: d for d in decoded(producer, "payments.predictions")}
    assert len(by_id) == 300
    for e in evs:
        d = by_id[e["event_id"]]
        if e["country"] == "DE":
            assert (d["model_version"], d["variant"]) == ("2", "rule:country=DE")
        else:
            assert (d["model_version"], d["variant"]) == ("1", "champion")


def test_unacknowledged_outputs_block_the_commit() -> None:
    producer = FakeProducer(fail_topics={"payments.predictions"})
    writer = OutputWriter(producer)
    writer.produce("payments.predictions", b"x")
    with pytest.raises(DeliveryError, match="broker said no"):
        writer.acknowledge()
    writer.produce("payments.review", b"y")
    writer.acknowledge()


def test_a_created_writer_hears_of_failures_without_a_callback_per_output() -> None:
    # No broker there: the message times out, which librdkafka reports to the default callback.
    config = {
        "bootstrap.servers": "127.0.0.1:9",
        "message.timeout.ms": 200,
        "delivery.report.only.error": True,
        "log_level": 0,
    }
    writer, _ = OutputWriter.create(config, flush_timeout_s=10)
    writer.produce_all("payments.predictions", [b"x", b"y"], [b"1", None])
    assert writer.produced == 2
    with pytest.raises(DeliveryError, match=r"payments\.predictions: .*timed out") as failed:
        writer.acknowledge()
    assert str(failed.value).count("payments.predictions:") == 2
    # Both failures were reported once: nothing is left to wait for or to report again.
    # (The producer's own queue may still hold a broker error event, so its length is not asked.)
    writer.acknowledge()


class QueueFullEveryThird(FakeProducer):
    """Full at every third message until polled, as librdkafka's queue is when full."""

    taken: int = 0
    full: bool = False
    refused: int = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        if self.full:
            self.refused += 1
            raise BufferError("queue full")
        super().produce(*args, **kwargs)
        self.taken += 1
        self.full = self.taken % 3 == 0

    def poll(self, timeout: float = 0) -> int:
        self.full = False
        return super().poll(timeout)


def test_a_full_queue_delays_outputs_and_loses_none() -> None:
    producer = QueueFullEveryThird()
    writer = OutputWriter(producer)
    values = [b"%d" % i for i in range(10)]
    writer.produce_all("payments.predictions", values, [b"k"] * 10)
    writer.produce("payments.review", b"r")
    assert [p.value for p in producer.on("payments.predictions")] == values
    assert writer.produced == 11 and producer.refused >= 3  # full three times, waited out
    writer.acknowledge()


def test_partials_drain_with_heartbeat(runtime: Runtime) -> None:
    scorer, _ = make_scorer(runtime)
    recs, _ = records(50)
    scorer.score(recs)
    acc = scorer.accumulators[V1]
    (partial,) = [json.loads(v) for v in acc.drain(100_500)]
    assert partial["stats"]["count"] == 50
    assert partial["window_start"] == 60_000
    assert partial["emitted_at"] == 100_500
    assert partial["variant"] == "champion"
    (heartbeat,) = [json.loads(v) for v in acc.drain(130_000)]
    assert heartbeat["stats"]["count"] == 0
    assert heartbeat["window_start"] == 120_000


def test_swap_changes_the_serving_version(registry: ModelRegistry, runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime)
    recs, _ = records(20)
    scorer.score(recs[:10])
    state = initial_state("payments", V1).deploy(V2)
    scorer.swap(build_runtime(PIPELINE, state.current, registry, previous=runtime))
    scorer.score(recs[10:])
    versions = [d["model_version"] for d in decoded(producer, "payments.predictions")]
    assert versions == ["1"] * 10 + ["2"] * 10
    assert scorer.counters.revision == 1
    assert Weighted(model=V2, weight=100) in state.current.serving


def test_unknown_categories_are_dead_letters_and_counted_per_feature(runtime: Runtime) -> None:
    # JSON input: the Avro schema's enums would not even encode these values.
    scorer, producer = make_scorer(runtime)
    scorer.serdes = dataclasses.replace(scorer.serdes, events=JsonSerde())
    evs = list(events(40, np.random.default_rng(4), now_ms=99_000))
    for e in evs[:3]:
        e["country"] = "ZZ"
    evs[3]["channel"] = "fax"
    scorer.score([FakeRecord(json.dumps(e).encode(), b"k", _offset=i) for i, e in enumerate(evs)])
    assert len(producer.on("payments.deadletter")) == 4
    stats = scorer.accumulators[V1].window(100_000)
    names = runtime.models[V1].model.manifest.feature_names
    assert stats.count == 36
    assert {names[j]: int(n) for j, n in enumerate(stats.unseen) if n} == {
        "country": 3,
        "channel": 1,
    }


def test_cpu_time_is_shared_by_the_versions_a_batch_scored(registry: ModelRegistry) -> None:
    readings = iter([10.0, 12.0, 15.0])  # process CPU seconds at each reading
    ledger = CpuLedger(clock=lambda: next(readings))  # first reading: 10.0
    state = initial_state("payments", V1).deploy(V2, shadow=True)
    runtime = build_runtime(PIPELINE, state.current, registry)
    scorer = BatchScorer(
        PIPELINE, runtime, serdes(), OutputWriter(FakeProducer()), "t", lambda: 100.0, ledger
    )
    recs, _ = records(300)
    scorer.score(recs)  # 2 CPU seconds since the start: 300 events on v1, 300 on the shadow v2
    v1, v2 = (scorer.accumulators[k].window(100_000) for k in (V1, V2))
    assert v1.cpu_seconds == pytest.approx(1.0) and v2.cpu_seconds == pytest.approx(1.0)
    scorer.score([FakeRecord(b"", b"bad", _offset=0)])  # scored nothing: takes no CPU
    scorer.score(recs[:100])  # takes the 3 seconds since the last take
    assert v1.cpu_seconds == pytest.approx(2.5) and v2.cpu_seconds == pytest.approx(2.5)
    # one model run of 300 and one of 100 per version
    assert v1.batches.sum() == 2
    assert v1.batches[batch_bucket(300)] == 1 and v1.batches[batch_bucket(100)] == 1
    assert batch_bucket(256) == 8 and batch_bucket(257) == 9


def test_every_prediction_and_shadow_prediction_is_logged_by_the_checkpoint(
    registry: ModelRegistry,
) -> None:
    state = initial_state("payments", V1).deploy(V2, shadow=True)
    pipeline = PIPELINE.with_overrides(quality={"segments": ["channel"]})
    scorer, producer = make_scorer(build_runtime(pipeline, state.current, registry), pipeline)
    recs, evs = records(50)
    scorer.score(recs)
    assert producer.on("payments.log") == [], "held until MAX_ROWS rows or the checkpoint"
    scorer.flush_log()  # what the engine's checkpoint does first
    (message,) = producer.on("payments.log")
    rows = decode([message.value]).to_pylist()
    assert sorted((r["model_version"], r["variant"]) for r in rows) == sorted(
        [("1", "champion")] * 50 + [("2", "shadow")] * 50
    )
    by_id = {r["event_id"]: r for r in rows if r["variant"] == "champion"}
    for e in evs:
        row = by_id[e["event_id"]]
        assert dict(row["segments"]) == {"channel": e["channel"]}
        features = dict(zip(json.loads(row["feature_names"]), row["feature_values"], strict=True))
        assert features["amount"] == pytest.approx(e["amount"])


def test_the_log_is_produced_every_max_rows_rows(runtime: Runtime) -> None:
    scorer, producer = make_scorer(runtime)
    recs, _ = records(MAX_ROWS + 200)
    scorer.score(recs[: MAX_ROWS - 100])
    assert producer.on("payments.log") == []
    scorer.score(recs[MAX_ROWS - 100 :])  # past MAX_ROWS: produced at once, in full batches
    messages = producer.on("payments.log")
    assert [decode([m.value]).num_rows for m in messages] == [MAX_ROWS, 200]
    rows = decode([m.value for m in messages]).column("event_id").to_pylist()
    assert rows == [r.key().decode() for r in recs]
    scorer.flush_log()
    assert len(producer.on("payments.log")) == 2, "nothing left to produce"
