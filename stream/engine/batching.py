"""Batches of records bounded by size and by time."""

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


class BatchPolicy:
    """Collect up to ``max_size`` records, waiting at most ``max_wait_s`` for more.

    ``consume(n, timeout)`` is any batch-consume call (confluent-kafka's
    Consumer.consume). The first call waits up to the whole budget; later calls
    take what arrives until the batch is full or the budget is spent, so a
    quiet topic does not hold a partly filled batch back longer than max_wait.
    """

    def __init__(
        self, max_size: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._clock = clock

    def collect(self, consume: Callable[[int, float], list[Any]]) -> list[Any]:
        deadline = self._clock() + self.max_wait_s
        batch: list[Any] = []
        while len(batch) < self.max_size:
            remaining = deadline - self._clock()
            if remaining <= 0 and batch:
                break
            got = consume(self.max_size - len(batch), max(remaining, 0.0))
            batch.extend(got)
            if not got and self._clock() >= deadline:
                break
        return batch
