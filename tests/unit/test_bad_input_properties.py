"""Property-based tests: whatever arrives, each event ends as one prediction or one dead letter."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.deploy.state import initial_state
from stream.engine.outputs import OutputWriter
from stream.engine.runtime import Runtime, build_runtime
from stream.engine.scorer import BatchScorer, EngineSerdes
from stream.models.registry import ModelRegistry
from stream.serde import AvroSerde, JsonSerde, SerdeContext, load_schema
from stream.settings import PROJECT_ROOT, PipelineConfig
from tests.unit.fakes import FakeProducer, FakeRecord
from tests.unit.test_scorer import V1, records

SCHEMAS = PROJECT_ROOT / "schemas"
AVRO = PipelineConfig.model_validate(
    {"name": "payments", "model": {"name": "payments-fraud", "version": "1"}}
)
JSON = AVRO.with_overrides(input={"format": "json"})
TRIED = {"inputs": 0}
# `make fuzz` runs the same properties at scale: STREAM_FUZZ_EXAMPLES examples per test.
EXAMPLES = settings(
    max_examples=int(os.environ.get("STREAM_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def runtime(registry: ModelRegistry) -> Runtime:
    return build_runtime(AVRO, initial_state("payments", V1).current, registry)


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    print(f"\nbad-input properties: {TRIED['inputs']} generated events, each exactly one outcome")


def one_outcome_each(runtime: Runtime, pipeline: PipelineConfig, recs: list[FakeRecord]) -> None:
    serdes = EngineSerdes(
        events=JsonSerde()
        if pipeline.input.format == "json"
        else AvroSerde(load_schema(SCHEMAS, "payments_event.avsc")),
        predictions=AvroSerde(load_schema(SCHEMAS, "prediction.avsc")),
        review=AvroSerde(load_schema(SCHEMAS, "review.avsc")),
    )
    producer = FakeProducer()
    scorer = BatchScorer(pipeline, runtime, serdes, OutputWriter(producer), "prop")
    scorer.score(recs)
    TRIED["inputs"] += len(recs)
    outcomes = producer.on("payments.predictions") + producer.on("payments.deadletter")
    assert sorted(o.key or b"" for o in outcomes) == sorted(r.key() or b"" for r in recs)
    for dead in producer.on("payments.deadletter"):
        assert dead.headers["error.reason"] in (b"value_decode", b"invalid", b"model_error")
        assert dead.headers["error.message"]
    for p in producer.on("payments.predictions"):
        prediction = serdes.predictions.deserialize(p.value, SerdeContext("p"))
        assert math.isfinite(prediction["score"]) and 0.0 <= prediction["confidence"] <= 1.0


@EXAMPLES
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=40)), min_size=1, max_size=20)
)
def test_arbitrary_bytes(runtime: Runtime, items: list[tuple[bytes, bytes]]) -> None:
    recs = [FakeRecord(value, key + b"#%d" % i, _offset=i) for i, (value, key) in enumerate(items)]
    one_outcome_each(runtime, AVRO, recs)
    one_outcome_each(runtime, JSON, recs)


@EXAMPLES
@given(st.data())
def test_truncated_and_flipped_avro(runtime: Runtime, data: st.DataObject) -> None:
    recs, _ = records(5, seed=data.draw(st.integers(0, 10_000)))
    broken = []
    for i, rec in enumerate(recs):
        value = rec.value() or b""
        cut = data.draw(st.integers(0, len(value)))
        flip = data.draw(st.integers(0, max(len(value) - 1, 0)))
        mutated = bytearray(value[:cut] if data.draw(st.booleans()) else value)
        if mutated and data.draw(st.booleans()):
            mutated[min(flip, len(mutated) - 1)] ^= 0xFF
        broken.append(FakeRecord(bytes(mutated), b"k%d" % i, _offset=i))
    one_outcome_each(runtime, AVRO, broken)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@EXAMPLES
@given(st.data())
def test_json_events_with_arbitrary_field_values(runtime: Runtime, data: st.DataObject) -> None:
    _, evs = records(4, seed=data.draw(st.integers(0, 10_000)))
    fields = list(evs[0])
    mutated = []
    for i, event in enumerate(evs):
        changed: dict[str, Any] = dict(event)
        for name in data.draw(st.lists(st.sampled_from(fields), max_size=4)):
            if data.draw(st.booleans()):
                changed.pop(name, None)
            else:
                changed[name] = data.draw(json_values)
        payload = json.dumps(changed, allow_nan=True).encode()
        mutated.append(FakeRecord(payload, b"j%d" % i, _offset=i))
    one_outcome_each(runtime, JSON, mutated)


def test_numbers_at_the_edges(runtime: Runtime) -> None:
    _, evs = records(1)
    values = [0.0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63), float(np.float32(3.4e38))]
    recs = [
        FakeRecord(json.dumps({**evs[0], "amount": v}).encode(), b"n%d" % i, _offset=i)
        for i, v in enumerate(values)
    ]
    one_outcome_each(runtime, JSON, recs)


def test_event_times_at_the_edges(runtime: Runtime) -> None:
    _, evs = records(1)
    values = [0, 2**63 - 1, 2**63, 2**64, 10**30]
    recs = [
        FakeRecord(json.dumps({**evs[0], "event_time": v}).encode(), b"t%d" % i, _offset=i)
        for i, v in enumerate(values)
    ]
    one_outcome_each(runtime, JSON, recs)
