"""Serializers: small classes passed per topic, with serialize/deserialize(…, ctx)."""

from stream.serde.avro import AvroSerde, load_schema
from stream.serde.base import Serde, SerdeContext
from stream.serde.json import JsonSerde

__all__ = ["AvroSerde", "JsonSerde", "Serde", "SerdeContext", "load_schema"]
