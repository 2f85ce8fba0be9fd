"""Producing outputs and knowing whether Kafka acknowledged every one of them."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from confluent_kafka import Producer

from stream.engine.batching import Record
from stream.errors import DeliveryError, EventError, ModelError

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 1000


class KafkaProducer(Protocol):
    """The part of confluent_kafka.Producer the engine uses."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class OutputWriter:
    """Wraps a producer: waits when its queue is full, records delivery failures.

    ``acknowledge`` raises DeliveryError if anything produced since the last
    call was not acknowledged; offsets must not be committed after that.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        flush_timeout_s: float = 30.0,
        callback_per_output: bool = True,
    ) -> None:
        self._producer = producer
        self._flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self.produced = 0
        self._send = producer.produce  # looked up once: produce() runs once per output
        self._callback = self._on_delivery if callback_per_output else None

    @classmethod
    def create(
        cls, config: dict[str, Any], flush_timeout_s: float = 30.0
    ) -> tuple[OutputWriter, Producer]:
        """A producer whose default delivery callback is the writer's, and the writer.

        Outputs then pass no callback of their own, which makes each produce call cheaper.
        """
        writers: list[OutputWriter] = []
        producer = Producer(
            {**config, "on_delivery": lambda err, msg: writers[0]._on_delivery(err, msg)}
        )
        writers.append(cls(producer, flush_timeout_s, callback_per_output=False))
        return writers[0], producer

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._send_waiting(topic, value, key, headers)
        self.produced += 1

    def produce_all(self, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
        """``produce`` each value with its key, in order."""
        send, callback = self._send, self._callback
        for value, key in zip(values, keys, strict=True):
            try:
                if callback is None:
                    send(topic, value, key)
                else:
                    send(topic, value, key, on_delivery=callback)
            except BufferError:
                self._send_waiting(topic, value, key, None)
        self.produced += len(values)

    def _send_waiting(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        while True:
            try:
                if self._callback is None:
                    self._send(topic, value, key, headers=headers)
                else:
                    self._send(topic, value, key, headers=headers, on_delivery=self._callback)
                return
            except BufferError:
                # librdkafka's queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                if len(self._failures) < 10:
                    self._failures.append(f"{msg.topic()}: {err}")
                else:
                    self._failures[-1] = f"{msg.topic()}: {err} (and more)"

    def poll(self) -> None:
        self._producer.poll(0)

    def acknowledge(self) -> None:
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            raise DeliveryError(
                f"{remaining} outputs not acknowledged within {self._flush_timeout_s}s"
            )
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError("outputs were not delivered: " + "; ".join(failures))


def dead_letter_headers(record: Record, error: EventError) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: why it failed and where it came from, after the originals."""
    headers = list(record.headers() or [])
    headers += [
        ("error.class", type(error).__name__.encode()),
        ("error.reason", error.reason.encode()),
        ("error.message", error.message[:MAX_ERROR_MESSAGE].encode("utf-8", "replace")),
        ("source.topic", (record.topic() or "").encode()),
        ("source.partition", str(record.partition()).encode()),
        ("source.offset", str(record.offset()).encode()),
    ]
    if isinstance(error, ModelError):
        headers += [("model.name", error.model.encode()), ("model.version", error.version.encode())]
    return headers
