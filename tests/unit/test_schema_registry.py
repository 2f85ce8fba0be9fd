"""The Confluent Schema Registry path against confluent-kafka's own mock registry client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.demo.data import events
from stream.produce import event_serde
from stream.serde import SerdeContext
from stream.serde.avro import COLUMNS_FROM
from stream.serde.base import records_of
from stream.serde.columnar import EventColumns
from stream.settings import PROJECT_ROOT, PipelineConfig, Settings
from stream.worker import build_serdes

SCHEMAS = PROJECT_ROOT / "schemas"
PIPELINE = PipelineConfig.model_validate(
    {"name": "payments", "model": {"name": "payments-fraud", "version": "1"}}
)


def registry(name: str) -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{name}"})


def event_schema(change: Any) -> str:
    raw = json.loads((SCHEMAS / "payments_event.avsc").read_text())
    change(raw["fields"])
    return json.dumps(raw)


# Before device_age_days existed (the reader fills in its default, null); and a
# producer already writing a field this reader does not know (it is skipped).
OLDER = event_schema(lambda fields: fields.remove(
    next(f for f in fields if f["name"] == "device_age_days")
))  # fmt: skip
NEWER = event_schema(lambda fields: fields.append(
    {"name": "merchant_name", "type": "string", "default": "", "doc": "Merchant."}
))  # fmt: skip


def test_events_of_any_registered_version_are_read_and_outputs_registered(
    tmp_path: Path,
) -> None:
    client = registry("events")
    serdes = build_serdes(Settings(home=tmp_path), PIPELINE, client)
    subjects = set(client.get_subjects())
    assert {"payments.predictions-value", "payments.review-value"} <= subjects

    current = (SCHEMAS / "payments_event.avsc").read_text()
    event = next(events(1, np.random.default_rng(1), now_ms=1_000))
    ctx = SerializationContext("payments.events", MessageField.VALUE)
    on_topic = SerdeContext("payments.events")
    for schema, written in (
        (current, event),
        (OLDER, {k: v for k, v in event.items() if k != "device_age_days"}),
        (NEWER, {**event, "merchant_name": "corner shop"}),
    ):
        # auto.register.schemas: each version gets its own id under payments.events-value
        read = serdes.events.deserialize(AvroSerializer(client, schema)(written, ctx), on_topic)
        expected = {**event, "device_age_days": None} if schema is OLDER else event
        assert read == expected
    assert len(client.get_versions("payments.events-value")) == 3

    prediction: dict[str, Any] = {
        "event_id": "e1", "key": None, "pipeline": "payments", "model_name": "m",
        "model_version": "1", "variant": "champion", "label": "fraud", "score": 0.9,
        "probabilities": [0.1, 0.9], "confidence": 0.9, "event_time": 1, "scored_time": 2,
        "latency_ms": 1.0, "inference_ms": 0.01,
    }  # fmt: skip
    wire = serdes.predictions.serialize(prediction, SerdeContext("payments.predictions"))
    reader = AvroDeserializer(client)
    decoded = reader(wire, SerializationContext("payments.predictions", MessageField.VALUE))
    assert decoded == prediction
    registered = client.get_latest_version("payments.predictions-value").schema
    assert isinstance(registered, Schema)
    assert "__fastavro" not in registered.schema_str, "the schema as written, not fastavro's form"


def test_the_producer_writes_what_the_pipeline_reads_through_the_registry(
    tmp_path: Path,
) -> None:
    client = registry("producer")
    settings = Settings(home=tmp_path)
    writer = event_serde(settings, PIPELINE, client)
    assert "payments.events-value" in client.get_subjects()
    event = next(events(1, np.random.default_rng(2), now_ms=1_000))
    wire = writer.serialize(event, SerdeContext("payments.events"))
    assert wire[0] == 0, "Confluent wire format: magic byte, then the schema id"
    reader = build_serdes(settings, PIPELINE, client).events
    assert reader.deserialize(wire, SerdeContext("payments.events")) == event
    ctx = SerializationContext("payments.events", MessageField.VALUE)
    assert AvroDeserializer(client)(wire, ctx) == event, "and any Confluent consumer"


def test_a_batch_through_the_registry_is_read_a_column_at_a_time_only_in_the_readers_schema(
    tmp_path: Path,
) -> None:
    client = registry("batches")
    serdes = build_serdes(Settings(home=tmp_path), PIPELINE, client)
    ctx = SerializationContext("payments.events", MessageField.VALUE)
    on_topic = SerdeContext("payments.events")
    batch = list(events(COLUMNS_FROM, np.random.default_rng(2), now_ms=1_000))
    current = (SCHEMAS / "payments_event.avsc").read_text()
    older = [{k: v for k, v in e.items() if k != "device_age_days"} for e in batch]
    written = {
        "current": [AvroSerializer(client, current)(e, ctx) for e in batch],
        "older": [AvroSerializer(client, OLDER)(e, ctx) for e in older],
    }
    read, failures = serdes.events.deserialize_many(written["current"], on_topic)
    assert isinstance(read, EventColumns), "written with the reader's schema: columns"
    assert ([dict(e) for e in read], failures) == (batch, [])
    read, failures = serdes.events.deserialize_many(written["older"], on_topic)
    assert not isinstance(read, EventColumns), "another writer schema: resolved per record"
    assert (list(read), failures) == ([{**e, "device_age_days": None} for e in batch], [])
    mixed = written["current"][:-1] + written["older"][-1:]
    read, _ = serdes.events.deserialize_many(mixed, on_topic)
    assert list(read) == [*batch[:-1], {**batch[-1], "device_age_days": None}]

    columns = {
        "event_id": [e["event_id"] for e in batch], "key": [None] * len(batch),
        "variant": ["champion"] * len(batch), "label": ["fraud"] * len(batch),
        "score": np.full(len(batch), 0.9), "probabilities": np.tile([0.1, 0.9], (len(batch), 1)),
        "confidence": np.full(len(batch), 0.9), "event_time": np.arange(len(batch)),
        "latency_ms": np.ones(len(batch)),
    }  # fmt: skip
    constants = {
        "pipeline": "payments", "model_name": "m", "model_version": "1", "scored_time": 2,
        "inference_ms": 0.01,
    }  # fmt: skip
    wires = serdes.predictions.serialize_many(
        columns, constants, len(batch), SerdeContext("payments.predictions")
    )
    reader = AvroDeserializer(client)
    at = SerializationContext("payments.predictions", MessageField.VALUE)
    assert [reader(w, at) for w in wires] == records_of(columns, constants, len(batch))
