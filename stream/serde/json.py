from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stream.errors import ValueDecodeError
from stream.serde.base import SerdeContext, one_by_one, records_of


class JsonSerde:
    """UTF-8 JSON objects. Non-finite numbers are rejected on the way out."""

    def serialize(self, obj: dict[str, Any], ctx: SerdeContext) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def serialize_many(
        self, columns: Mapping[str, Any], constants: Mapping[str, Any], rows: int,
        ctx: SerdeContext,
    ) -> list[bytes]:  # fmt: skip
        return [self.serialize(r, ctx) for r in records_of(columns, constants, rows)]

    def deserialize(self, data: bytes, ctx: SerdeContext) -> dict[str, Any]:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueDecodeError(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise ValueDecodeError("JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise ValueDecodeError(f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def deserialize_many(
        self, payloads: Sequence[bytes], ctx: SerdeContext
    ) -> tuple[Sequence[Mapping[str, Any]], list[tuple[int, ValueDecodeError]]]:
        return one_by_one(self.deserialize, payloads, ctx)
