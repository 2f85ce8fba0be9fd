from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SerdeContext:
    """What a serializer may need to know about the record: its topic and headers."""

    topic: str
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Serde(Protocol):
    def serialize(self, obj: dict[str, Any], ctx: SerdeContext) -> bytes: ...

    def deserialize(self, data: bytes, ctx: SerdeContext) -> dict[str, Any]: ...
