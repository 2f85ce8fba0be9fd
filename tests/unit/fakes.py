"""Kafka-free stand-ins for unit tests of the engine (integration tests use the real broker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeRecord:
    """Looks like a consumed confluent_kafka.Message."""

    _value: bytes | None
    _key: bytes | None = None
    _offset: int = 0
    _partition: int = 0
    _topic: str = "payments.events"
    _timestamp: int = 1_000
    _headers: list[tuple[str, bytes]] | None = None

    def error(self) -> Any:
        return None

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


@dataclass
class Produced:
    topic: str
    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


@dataclass
class FakeProducer:
    """Records what was produced; acknowledges everything unless told to fail."""

    produced: list[Produced] = field(default_factory=list)
    fail_topics: set[str] = field(default_factory=set)
    _pending: list[Any] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Any = None,
    ) -> None:
        self.produced.append(Produced(topic, value or b"", key, dict(headers or [])))
        self._pending.append((topic, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return self.flush(timeout)

    def flush(self, timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for topic, callback in pending:
            if callback is not None:
                err = "broker said no" if topic in self.fail_topics else None
                callback(err, _Msg(topic))
        return 0

    def on(self, topic: str) -> list[Produced]:
        return [p for p in self.produced if p.topic == topic]


@dataclass
class _Msg:
    _topic: str

    def topic(self) -> str:
        return self._topic
