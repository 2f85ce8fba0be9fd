from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from stream.errors import SettingsError, ValueDecodeError
from stream.serde import AvroSerde, JsonSerde, SerdeContext, load_schema
from stream.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
CTX = SerdeContext("payments.events")


def payment(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_time": 1_700_000_000_000,
        "customer_id": "c1",
        "channel": "web",
        "country": "DE",
        "card_type": "debit",
    }
    schema = json.loads((SCHEMAS / "payments_event.avsc").read_text())
    for field in schema["fields"]:
        if field["name"] not in event:
            event[field["name"]] = 1.5
    event.update(changes)
    return event


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(load_schema(SCHEMAS, "payments_event.avsc"))


def test_avro_round_trip(serde: AvroSerde) -> None:
    event = payment(distance_from_home_km=None)
    assert serde.deserialize(serde.serialize(event, CTX), CTX) == event


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00", "truncated"),
        (b"\x02\xff\xfe", "not valid Avro"),
    ],
)
def test_avro_rejects_bad_bytes(serde: AvroSerde, payload: bytes, message: str) -> None:
    with pytest.raises(ValueDecodeError, match=message):
        serde.deserialize(payload, CTX)


def test_avro_rejects_truncated_record(serde: AvroSerde) -> None:
    data = serde.serialize(payment(), CTX)
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueDecodeError):
            serde.deserialize(data[:cut], CTX)


def test_avro_rejects_trailing_bytes(serde: AvroSerde) -> None:
    with pytest.raises(ValueDecodeError, match="trailing"):
        serde.deserialize(serde.serialize(payment(), CTX) + b"\x00\x01", CTX)


def test_every_schema_parses() -> None:
    for path in SCHEMAS.glob("*.avsc"):
        assert load_schema(SCHEMAS, path.name)["type"] == "record"


def test_missing_schema_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"input\.schema"):
        load_schema(tmp_path, "nope.avsc")


class _Registered:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema_str = json.dumps(schema)


class _Registry:
    """Answers schema ids like a Schema Registry; counts look-ups."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.lookups = 0

    def get_schema(self, schema_id: int) -> _Registered:
        self.lookups += 1
        if schema_id not in self.schemas:
            raise KeyError(schema_id)
        return _Registered(self.schemas[schema_id])


def test_confluent_wire_format_resolves_writer_schema() -> None:
    reader = json.loads((SCHEMAS / "payments_event.avsc").read_text())
    # An older writer schema without the nullable field: resolution fills its default.
    writer = {**reader, "fields": [f for f in reader["fields"] if f["name"] != "device_age_days"]}
    registry = _Registry({7: writer})
    serde = AvroSerde(load_schema(SCHEMAS, "payments_event.avsc"), registry)
    event = payment()
    del event["device_age_days"]
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 7))  # magic byte, schema id: built by hand
    schemaless_writer(buf, writer, event)
    for _ in range(3):
        decoded = serde.deserialize(buf.getvalue(), CTX)
    assert decoded["device_age_days"] is None
    assert decoded["amount"] == 1.5
    assert registry.lookups == 1


def test_wire_format_errors() -> None:
    serde = AvroSerde(load_schema(SCHEMAS, "payments_event.avsc"), _Registry({}))
    with pytest.raises(ValueDecodeError, match="magic byte"):
        serde.deserialize(b"\x01\x00\x00\x00\x07abc", CTX)
    with pytest.raises(ValueDecodeError, match="schema id 9"):
        serde.deserialize(struct.pack(">bI", 0, 9) + b"abc", CTX)


def test_wire_format_on_output() -> None:
    serde = AvroSerde(load_schema(SCHEMAS, "payments_event.avsc"), schema_id=42)
    data = serde.serialize(payment(), CTX)
    assert data[:5] == struct.pack(">bI", 0, 42)


@pytest.mark.parametrize("payload", [b"{", b"[1, 2]", b"\xff\xfe", b"null", b"[" * 100_000])
def test_json_rejects_non_objects(payload: bytes) -> None:
    with pytest.raises(ValueDecodeError):
        JsonSerde().deserialize(payload, CTX)


def test_json_round_trip() -> None:
    event = payment()
    assert JsonSerde().deserialize(JsonSerde().serialize(event, CTX), CTX) == event
