from __future__ import annotations

import json
from typing import Any

from stream.errors import ValueDecodeError
from stream.serde.base import SerdeContext


class JsonSerde:
    """UTF-8 JSON objects. Non-finite numbers are rejected on the way out."""

    def serialize(self, obj: dict[str, Any], ctx: SerdeContext) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

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
