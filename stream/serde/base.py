from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stream.errors import ValueDecodeError


@dataclass(frozen=True)
class SerdeContext:
    """What a serializer may need to know about the record: its topic and headers."""

    topic: str
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Serde(Protocol):
    def serialize(self, obj: dict[str, Any], ctx: SerdeContext) -> bytes: ...

    def serialize_many(
        self, columns: Mapping[str, Any], constants: Mapping[str, Any], rows: int,
        ctx: SerdeContext,
    ) -> list[bytes]:  # fmt: skip
        """A batch of records given as columns (a value per row: a sequence or a numpy
        array) and constants (one value for every row): the payload of each row."""
        ...

    def deserialize(self, data: bytes, ctx: SerdeContext) -> dict[str, Any]: ...

    def deserialize_many(
        self, payloads: Sequence[bytes], ctx: SerdeContext
    ) -> tuple[Sequence[Mapping[str, Any]], list[tuple[int, ValueDecodeError]]]:
        """A batch of payloads: the events of those that decode, in their order, and the
        position and error of each that does not."""
        ...


def one_by_one(
    deserialize: Callable[[bytes, SerdeContext], dict[str, Any]],
    payloads: Sequence[bytes],
    ctx: SerdeContext,
) -> tuple[list[dict[str, Any]], list[tuple[int, ValueDecodeError]]]:
    """``Serde.deserialize_many`` by calling ``deserialize`` on each payload."""
    events: list[dict[str, Any]] = []
    failures: list[tuple[int, ValueDecodeError]] = []
    for i, payload in enumerate(payloads):
        try:
            events.append(deserialize(payload, ctx))
        except ValueDecodeError as exc:
            failures.append((i, exc))
    return events, failures


def records_of(
    columns: Mapping[str, Any], constants: Mapping[str, Any], rows: int
) -> list[dict[str, Any]]:
    """The records of a batch given as columns and constants (``Serde.serialize_many``)."""
    names = list(columns)
    values = [_plain(columns[name]) for name in names]
    records = [dict(constants) for _ in range(rows)]
    for name, column in zip(names, values, strict=True):
        for record, value in zip(records, column, strict=True):
            record[name] = value
    return records


def _plain(column: Any) -> list[Any]:
    return column.tolist() if isinstance(column, np.ndarray) else list(column)
