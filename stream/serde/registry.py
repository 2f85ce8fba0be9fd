"""Confluent Schema Registry: the client, and serializers of schemas registered under a topic."""

from __future__ import annotations

from typing import Any

from stream.serde.avro import AvroSerde, load_schema
from stream.settings import Settings


def schema_registry(settings: Settings) -> Any:
    """A Confluent Schema Registry client when STREAM_SCHEMA_REGISTRY_URL is set, else None."""
    if not settings.schema_registry_url:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    # new_client: a mock:// URL gives confluent-kafka's in-memory registry (for tests).
    return SchemaRegistryClient.new_client({"url": settings.schema_registry_url})


def writer_serde(settings: Settings, schema_file: str, topic: str, registry: Any) -> AvroSerde:
    """Writes ``schema_file``: plain Avro, or with a registry, in the Confluent wire format with
    the schema registered under ``{topic}-value``."""
    schema = load_schema(settings.schemas_dir, schema_file)
    if registry is None:
        return AvroSerde(schema)
    from confluent_kafka.schema_registry import Schema

    # The file as written: the parsed form carries fastavro's own keys.
    text = (settings.schemas_dir / schema_file).read_text()
    schema_id = registry.register_schema(f"{topic}-value", Schema(text, "AVRO"))
    return AvroSerde(schema, schema_id=schema_id)
