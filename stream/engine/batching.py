"""Batches of records: as many as are there, up to a size, with a bounded linger."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class Record(Protocol):
    """The part of a consumed Kafka message the engine reads (confluent_kafka.Message)."""

    def error(self) -> Any: ...

    def value(self) -> bytes | None: ...

    def key(self) -> bytes | None: ...

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def timestamp(self) -> tuple[int, int]: ...

    def headers(self) -> list[tuple[str, bytes]] | None: ...


# How long one collect blocks while nothing arrives, so the engine's loop keeps turning.
IDLE_WAIT_S = 0.1


class BatchPolicy:
    """Batches as large as the traffic makes them, up to ``max_size``.

    ``consume(n, timeout)`` is any batch-consume call (confluent-kafka's
    Consumer.consume: it returns when it has ``n`` records or the timeout
    passed). A batch starts with what the consumer has already fetched, so
    under load batches are full and nothing waits. When nothing is there it
    waits up to ``idle_wait_s`` for the first record. After the first record
    it tops the batch up for at most ``max_wait_s`` (a linger: larger batches
    at moderate rates, for at most that much added latency).
    """

    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        idle_wait_s: float = IDLE_WAIT_S,
    ) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.idle_wait_s = idle_wait_s
        self._clock = clock

    def collect(self, consume: Callable[[int, float], list[Any]]) -> list[Any]:
        batch = list(consume(self.max_size, 0.0))
        if not batch:
            batch = list(consume(1, self.idle_wait_s))
            if not batch:
                return []
        deadline = self._clock() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            got = consume(self.max_size - len(batch), remaining)
            if not got:
                break
            batch.extend(got)
        return batch
