"""Avro with fastavro: schemaless by default, Confluent wire format with a registry."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from stream.errors import SettingsError, ValueDecodeError
from stream.serde.base import SerdeContext, one_by_one, records_of
from stream.serde.columnar import ColumnReader, ColumnWriter, Unsupported

_MAGIC = 0
_WIRE_HEADER = struct.Struct(">bI")

AvroSchema = dict[str, Any]
# Batches from this many records are read and written a column at a time; below it,
# the columns' fixed cost per batch (about 0.2 ms) is more than fastavro's per record.
COLUMNS_FROM = 32


def load_schema(schemas_dir: Path, name: str) -> AvroSchema:
    """Parse ``schemas_dir/name``; a missing or broken file is a settings error."""
    path = schemas_dir / name
    try:
        return cast(AvroSchema, parse_schema(json.loads(path.read_text())))
    except FileNotFoundError:
        raise SettingsError("input.schema", f"no Avro schema at {path}") from None
    except (json.JSONDecodeError, ValueError, KeyError) as exc:
        raise SettingsError("input.schema", f"{path} is not a valid Avro schema: {exc}") from None


class SchemaLookup(Protocol):
    """The part of a Schema Registry client that decoding needs."""

    def get_schema(self, schema_id: int) -> Any: ...


class AvroSerde:
    """Reads and writes one record schema.

    Without a registry the payload is schemaless Avro written with the same
    schema. With a registry, payloads start with the Confluent wire header
    (magic byte 0 and a 4-byte schema id); the writer schema is fetched once
    per id and resolved against this reader schema.
    """

    def __init__(
        self,
        schema: AvroSchema,
        registry: SchemaLookup | None = None,
        schema_id: int | None = None,
    ) -> None:
        self.schema = schema
        self._registry = registry
        self._schema_id = schema_id
        self._writers: dict[int, AvroSchema] = {}
        header = b"" if schema_id is None else _WIRE_HEADER.pack(_MAGIC, schema_id)
        self._columns = ColumnWriter.of(schema, header)
        self._reader = ColumnReader.of(schema)
        self._canonical = to_parsing_canonical_form(schema)
        self._same_writer: dict[int, bool] = {}  # schema id: written with this very schema

    def serialize(self, obj: dict[str, Any], ctx: SerdeContext) -> bytes:
        buf = io.BytesIO()
        if self._schema_id is not None:
            buf.write(_WIRE_HEADER.pack(_MAGIC, self._schema_id))
        schemaless_writer(buf, self.schema, obj)
        return buf.getvalue()

    def serialize_many(
        self, columns: Mapping[str, Any], constants: Mapping[str, Any], rows: int,
        ctx: SerdeContext,
    ) -> list[bytes]:  # fmt: skip
        if self._columns is not None and rows >= COLUMNS_FROM:
            try:
                return self._columns.write(columns, constants, rows)
            except Unsupported:
                pass  # fastavro writes these, or says what is wrong with them
        return [self.serialize(r, ctx) for r in records_of(columns, constants, rows)]

    def deserialize(self, data: bytes, ctx: SerdeContext) -> dict[str, Any]:
        writer = self.schema
        buf = io.BytesIO(data)
        if self._registry is not None:
            writer = self._writer_schema(data)
            buf.seek(_WIRE_HEADER.size)
        # Same writer and reader schema: no resolution to do (fastavro is much faster so).
        reader = None if writer is self.schema else self.schema
        try:
            record = schemaless_reader(buf, writer, reader)
        except (EOFError, StopIteration):
            raise ValueDecodeError("truncated Avro payload") from None
        except Exception as exc:  # fastavro raises many types for bad bytes
            raise ValueDecodeError(f"not valid Avro for {self.schema['name']}: {exc!r}") from None
        if buf.tell() != len(data):
            raise ValueDecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro record")
        if not isinstance(record, dict):
            raise ValueDecodeError("Avro payload is not a record")
        return record

    def deserialize_many(
        self, payloads: Sequence[bytes], ctx: SerdeContext
    ) -> tuple[Sequence[Mapping[str, Any]], list[tuple[int, ValueDecodeError]]]:
        """Read a column at a time where the batch allows (``ColumnReader``); fastavro
        says why a payload cannot be read, record by record."""
        bodies = None
        if self._reader is not None and len(payloads) >= COLUMNS_FROM:
            bodies = self._column_bodies(payloads)
        if self._reader is not None and bodies is not None:
            events, bad = self._reader.read(bodies)
            if not bad.any():
                return events, []
            failures: list[tuple[int, ValueDecodeError]] = []
            for i in np.flatnonzero(bad).tolist():
                try:
                    self.deserialize(payloads[i], ctx)
                except ValueDecodeError as exc:
                    failures.append((i, exc))
                    continue
                break  # fastavro reads what the column reader would not: record by record
            else:
                return events.take(np.flatnonzero(~bad)), failures
        return one_by_one(self.deserialize, payloads, ctx)

    def _column_bodies(self, payloads: Sequence[bytes]) -> Sequence[bytes] | None:
        """The payloads without their headers when all were written with this schema
        (always, without a registry); None when they were not."""
        if self._registry is None:
            return payloads
        heads = {bytes(p[: _WIRE_HEADER.size]) for p in payloads}
        if len(heads) != 1:
            return None
        head = heads.pop()
        if len(head) < _WIRE_HEADER.size or head[0] != _MAGIC:
            return None
        _, schema_id = _WIRE_HEADER.unpack(head)
        same = self._same_writer.get(schema_id)
        if same is None:
            try:
                writer = self._writer_schema(head)
            except ValueDecodeError:
                return None
            same = self._same_writer[schema_id] = (
                to_parsing_canonical_form(writer) == self._canonical
            )
        return [p[_WIRE_HEADER.size :] for p in payloads] if same else None

    def _writer_schema(self, data: bytes) -> AvroSchema:
        if len(data) < _WIRE_HEADER.size or data[0] != _MAGIC:
            raise ValueDecodeError("missing Confluent wire-format header (magic byte 0)")
        _, schema_id = _WIRE_HEADER.unpack_from(data)
        writer = self._writers.get(schema_id)
        if writer is None:
            assert self._registry is not None
            try:
                registered = self._registry.get_schema(schema_id)
            except Exception as exc:
                raise ValueDecodeError(
                    f"schema id {schema_id} not in the registry: {exc}"
                ) from None
            writer = cast(AvroSchema, parse_schema(json.loads(registered.schema_str)))
            self._writers[schema_id] = writer
        return writer
