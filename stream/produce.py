"""A paced producer of synthetic events: the demo's traffic and an example of a producer."""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Producer

from stream.demo.data import events
from stream.serde import JsonSerde, Serde, SerdeContext
from stream.serde.registry import writer_serde
from stream.settings import PipelineConfig, Settings


@dataclass
class ProduceReport:
    produced: int = 0
    malformed: int = 0
    failed: int = 0
    seconds: float = 0.0
    malformed_kinds: dict[str, int] = field(default_factory=dict)


MALFORMED_KINDS = ("random_bytes", "truncated", "empty", "not_finite")


def malformed_payload(
    event: dict[str, Any], serde: Serde, ctx: SerdeContext, rng: np.random.Generator
) -> tuple[str, bytes]:
    """One kind of broken event, chosen at random, made from a valid one."""
    kind = MALFORMED_KINDS[int(rng.integers(0, len(MALFORMED_KINDS)))]
    if kind == "random_bytes":
        return kind, rng.bytes(int(rng.integers(1, 64)))
    if kind == "empty":
        return kind, b""
    if kind == "not_finite":
        return kind, serde.serialize({**event, "amount": float("nan")}, ctx)
    valid = serde.serialize(event, ctx)
    return kind, valid[: max(1, len(valid) // 3)]


EventSource = Callable[[int, np.random.Generator, int, str, int], Iterator[dict[str, Any]]]
"""(n, rng, now_ms, run_id, first_index) → ``n`` events: another workload than the demo's."""


@dataclass
class DeliveryFailures:
    """The producer's delivery callback: counts what Kafka did not take.

    The callback holds this, not the object that owns the producer: a bound
    method would make a cycle, and the producer (still connected) would
    outlive its owner until the next collection.
    """

    count: int = 0

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.count += 1


class PacedProducer:
    """Publishes ``count`` events at ``rate`` per second (0: as fast as possible).

    The events are the demo's payments, or what ``source`` makes (without drift
    or labels, which belong to the payments).
    """

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topic: str,
        serde: Serde,
        source: EventSource | None = None,
    ) -> None:
        self.topic = topic
        self.serde = serde
        self._source = source
        self._ctx = SerdeContext(topic)
        self._failures = DeliveryFailures()
        self._producer = Producer(
            {
                **kafka_config,
                # librdkafka's default. An event's time is taken when it is produced, so
                # the linger is part of its end-to-end latency: with 10 ms the bench's
                # median was about 4 ms higher; with 1 ms its p99 rose, as the broker
                # took more, smaller requests (docs/performance.md).
                "linger.ms": 5,
                "compression.type": "lz4",
                "enable.idempotence": True,
                # Reports of failures only: no Python call per event that Kafka took.
                "on_delivery": self._failures,
                "delivery.report.only.error": True,
            }
        )

    def run(
        self,
        count: int,
        rate: float,
        seed: int = 1,
        drift: Mapping[str, float] | None = None,
        drift_from: int | None = None,
        malformed_share: float = 0.0,
        progress: Callable[[int], None] | None = None,
        truth: list[tuple[str, str]] | None = None,
        concept: bool = False,
    ) -> ProduceReport:
        """Produce ``count`` events at ``rate`` a second (0: as fast as Kafka takes them).

        ``truth``, when given, receives every event's id and true label, in order;
        with ``concept`` those labels follow the changed fraud mechanism (concept drift).
        """
        report = ProduceReport()
        chunks = self._payloads(
            count, seed, drift, drift_from, malformed_share, report, truth, concept
        )
        return self._send(chunks, rate, report, progress)

    def prepare(self, count: int, seed: int = 1) -> list[list[tuple[bytes, bytes]]]:
        """(key, payload) chunks made up front, so ``send`` costs little more than produce."""
        return list(self._payloads(count, seed, None, None, 0.0, ProduceReport()))

    def send(self, chunks: list[list[tuple[bytes, bytes]]], rate: float) -> ProduceReport:
        return self._send(chunks, rate, ProduceReport(), None)

    def _payloads(
        self,
        count: int,
        seed: int,
        drift: Mapping[str, float] | None,
        drift_from: int | None,
        malformed_share: float,
        report: ProduceReport,
        truth: list[tuple[str, str]] | None = None,
        concept: bool = False,
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        rng = np.random.default_rng(seed)
        if self._source is not None:
            if drift or truth is not None or concept:
                raise ValueError("drift, labels and concept drift need the demo's payments")
            chunks = self._source_chunks(self._source, count, 200, rng)
        else:
            chunks = self._chunks(count, 200, rng, drift, drift_from, truth, concept)
        for events_chunk in chunks:
            chunk = []
            for event in events_chunk:
                if malformed_share and rng.random() < malformed_share:
                    kind, payload = malformed_payload(event, self.serde, self._ctx, rng)
                    report.malformed += 1
                    report.malformed_kinds[kind] = report.malformed_kinds.get(kind, 0) + 1
                else:
                    payload = self.serde.serialize(event, self._ctx)
                chunk.append((event["event_id"].encode(), payload))
            yield chunk

    def _send(
        self,
        chunks: Iterable[list[tuple[bytes, bytes]]],
        rate: float,
        report: ProduceReport,
        progress: Callable[[int], None] | None,
    ) -> ProduceReport:
        started = time.monotonic()
        sent = 0
        for chunk in chunks:
            for key, payload in chunk:
                self._produce(key, payload)
            sent += len(chunk)
            self._producer.poll(0)
            if progress:
                progress(len(chunk))
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        self._producer.flush(60)
        report.produced = sent
        report.failed = self._failures.count
        report.seconds = time.monotonic() - started
        return report

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key)
                return
            except BufferError:
                self._producer.poll(0.05)

    @staticmethod
    def _source_chunks(
        source: EventSource, count: int, chunk: int, rng: np.random.Generator
    ) -> Iterator[list[dict[str, Any]]]:
        run_id = uuid.uuid4().hex[:8]
        for done in range(0, count, chunk):
            now_ms = int(time.time() * 1000)
            yield list(source(min(chunk, count - done), rng, now_ms, run_id, done))

    @staticmethod
    def _chunks(
        count: int,
        chunk: int,
        rng: np.random.Generator,
        drift: Mapping[str, float] | None,
        drift_from: int | None,
        truth: list[tuple[str, str]] | None = None,
        concept: bool = False,
    ) -> Iterator[list[dict[str, Any]]]:
        run_id = uuid.uuid4().hex[:8]
        done = 0
        while done < count:
            n = min(chunk, count - done)
            if drift and drift_from is not None and done + n > drift_from > done:
                n = drift_from - done  # split the chunk where drift starts
            drifting = bool(drift) and (drift_from is None or done >= drift_from)
            now_ms = int(time.time() * 1000)
            shift = drift if drifting else None
            yield list(events(n, rng, now_ms, shift, run_id, done, truth, concept))
            done += n


class LabelSender:
    """True labels to a pipeline's feedback topic, each ``delay`` seconds after its event.

    ``schedule`` takes the events just sent (id, label); a thread of its own
    publishes each one when it is due, as JSON records of ``{p}.feedback``
    with the time of publishing as ``label_time``. ``close`` waits until every
    scheduled label is published and acknowledged, and says how many were.
    """

    def __init__(
        self, kafka_config: dict[str, Any], topic: str, delay: float, share: float = 1.0
    ) -> None:
        self.topic = topic
        self.delay = delay
        self._share = share
        self._producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 20})
        self._due: deque[tuple[float, list[tuple[str, str]]]] = deque()
        self._lock = threading.Condition()
        self._closing = False
        self._failures = DeliveryFailures()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="labels", daemon=True)
        self._thread.start()

    def schedule(self, labels: list[tuple[str, str]]) -> None:
        if self._share < 1.0:
            # The same events every run: a share of the event ids' hash space.
            bound = int(self._share * 2**32)
            labels = [(i, label) for i, label in labels if zlib.crc32(i.encode()) < bound]
        with self._lock:
            self._due.append((time.monotonic() + self.delay, labels))
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due and not self._closing:
                    self._lock.wait()
                if not self._due:
                    return
                due, labels = self._due[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                self._due.popleft()
            self._send(labels)

    def _send(self, labels: list[tuple[str, str]]) -> None:
        now_ms = int(time.time() * 1000)
        for event_id, label in labels:
            record = {"event_id": event_id, "label": label, "label_time": now_ms}
            while True:
                try:
                    self._producer.produce(
                        self.topic, json.dumps(record).encode(), event_id.encode(),
                        on_delivery=self._failures,
                    )  # fmt: skip
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self.sent += 1
        self._producer.poll(0)

    def close(self) -> int:
        """Publish what is still scheduled (after its delay); return how many Kafka took."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        remaining = self._producer.flush(60)
        return self.sent - self._failures.count - remaining


def publish_labels(kafka_config: dict[str, Any], topic: str, labels: dict[str, str]) -> int:
    """Labels (event id → true label) to a pipeline's feedback topic now; how many Kafka took."""
    sender = LabelSender(kafka_config, topic, delay=0.0)
    sender.schedule(list(labels.items()))
    return sender.close()


def event_serde(settings: Settings, pipeline: PipelineConfig, registry: Any = None) -> Serde:
    """The serializer of the pipeline's events: JSON, or Avro with its schema (in the Confluent
    wire format, the schema registered, when a Schema Registry client is given)."""
    if pipeline.input.format == "json":
        return JsonSerde()
    return writer_serde(settings, pipeline.input.schema_file, pipeline.events_topic, registry)
