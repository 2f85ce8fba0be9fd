"""ScoringEngine: batch consume → decode → validate → one ONNX run → produce → commit.

It runs on a thread of its own with a confluent-kafka consumer and producer;
see DESIGN.md for why the hot path is not a faust agent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.engine.batching import BatchPolicy, Record
from stream.engine.features import EventRow, FeatureBuilder
from stream.engine.outputs import OutputWriter, dead_letter_headers
from stream.engine.partials import PartialAccumulator
from stream.errors import EventContext, EventError, ModelError, ValidationError, ValueDecodeError
from stream.models.runtime import OnnxModel, Prediction
from stream.serde import Serde, SerdeContext
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)

# Commit errors that mean "the group is rebalancing", not "something is broken".
_REBALANCING = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
}


@dataclass
class EngineCounters:
    consumed: int = 0
    predictions: int = 0
    reviews: int = 0
    dead_letters: int = 0
    batches: int = 0
    commits: int = 0
    last_scored_ms: int = 0
    assigned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineSerdes:
    events: Serde
    predictions: Serde
    review: Serde


class BatchScorer:
    """Scores one batch of records and hands every outcome to the writer.

    Every record ends as exactly one prediction or one dead letter (plus a
    review item when its confidence is low). Kafka-free, so it is unit-tested
    with a fake writer.
    """

    def __init__(
        self,
        pipeline: PipelineConfig,
        model: OnnxModel,
        serdes: EngineSerdes,
        writer: OutputWriter,
        accumulator: PartialAccumulator,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.model = model
        self.serdes = serdes
        self.writer = writer
        self.accumulator = accumulator
        self.features = FeatureBuilder(
            model.manifest, pipeline.input.event_id_field, pipeline.input.event_time_field
        )
        self.counters = EngineCounters()
        self._clock = clock
        self._labels = model.manifest.output.labels
        self._events_ctx = SerdeContext(pipeline.events_topic)
        self._pred_ctx = SerdeContext(pipeline.predictions_topic)
        self._review_ctx = SerdeContext(pipeline.review_topic)

    def score(self, records: list[Record]) -> None:
        accepted: list[tuple[Record, EventRow]] = []
        for record in records:
            try:
                accepted.append((record, self._decode(record)))
            except EventError as exc:
                self.dead_letter(record, exc)
        self.counters.consumed += len(records)
        self.counters.batches += 1
        if not accepted:
            return
        raw, model_input = self.features.matrix([row.values for _, row in accepted])
        started = time.perf_counter()
        try:
            prediction = self.model.predict(model_input)
        except Exception as exc:
            log.warning("model %s failed on a batch of %d: %r", self.model.key, len(accepted), exc)
            self._score_one_by_one(accepted, raw, model_input)
            return
        inference_ms = (time.perf_counter() - started) * 1000.0 / len(accepted)
        self._emit(accepted, raw, prediction, inference_ms)

    def _decode(self, record: Record) -> EventRow:
        ctx = EventContext(record.topic() or "", record.partition() or 0, record.offset() or 0)
        value = record.value()
        try:
            if not value:
                raise ValueDecodeError("empty payload")
            limit = self.pipeline.input.max_event_bytes
            if len(value) > limit:
                raise ValidationError(
                    f"payload of {len(value)} bytes exceeds input.max_event_bytes={limit}"
                )
            return self.features.row(self.serdes.events.deserialize(value, self._events_ctx))
        except EventError as exc:
            exc.ctx = ctx
            raise

    def _score_one_by_one(
        self, accepted: list[tuple[Record, EventRow]], raw: np.ndarray, model_input: np.ndarray
    ) -> None:
        """After a batch failed: find the events the model fails on; score the rest."""
        manifest = self.model.manifest
        for i, (record, row) in enumerate(accepted):
            started = time.perf_counter()
            try:
                prediction = self.model.predict(model_input[i : i + 1])
            except Exception as exc:
                self.dead_letter(
                    record,
                    ModelError(
                        f"{type(exc).__name__}: {exc}",
                        model=manifest.name,
                        version=manifest.version,
                    ),
                )
                continue
            inference_ms = (time.perf_counter() - started) * 1000.0
            self._emit([(record, row)], raw[i : i + 1], prediction, inference_ms)

    def _emit(
        self,
        accepted: list[tuple[Record, EventRow]],
        raw: np.ndarray,
        prediction: Prediction,
        inference_ms: float,
    ) -> None:
        manifest = self.model.manifest
        now_ms = int(self._clock() * 1000)
        threshold = self.pipeline.review_threshold
        latencies = np.empty(len(accepted), dtype=np.float64)
        reviews = 0
        for i, (record, row) in enumerate(accepted):
            event_time = row.event_time_ms
            if event_time is None:
                event_time = record.timestamp()[1]
            latency_ms = float(max(now_ms - event_time, 0))
            latencies[i] = latency_ms
            label_index = int(prediction.label_index[i])
            score = float(prediction.score[i])
            confidence = float(prediction.confidence[i])
            label = self._labels[label_index] if label_index >= 0 else repr(score)
            out = {
                "event_id": row.event_id,
                "key": record.key(),
                "pipeline": self.pipeline.name,
                "model_name": manifest.name,
                "model_version": manifest.version,
                "label": label,
                "score": score,
                "probabilities": prediction.probabilities[i].tolist(),
                "confidence": confidence,
                "event_time": event_time,
                "scored_time": now_ms,
                "latency_ms": latency_ms,
                "inference_ms": inference_ms,
            }
            self.writer.produce(
                self.pipeline.predictions_topic,
                self.serdes.predictions.serialize(out, self._pred_ctx),
                key=record.key(),
            )
            if confidence < threshold:
                reviews += 1
                item = {
                    "event_id": row.event_id,
                    "pipeline": self.pipeline.name,
                    "model_name": manifest.name,
                    "model_version": manifest.version,
                    "label": label,
                    "score": score,
                    "confidence": confidence,
                    "threshold": threshold,
                    "reason": "low_confidence",
                    "scored_time": now_ms,
                    "event": record.value() or b"",
                }
                self.writer.produce(
                    self.pipeline.review_topic,
                    self.serdes.review.serialize(item, self._review_ctx),
                    key=record.key(),
                )
        self.accumulator.layout.fold(
            self.accumulator.window(now_ms),
            raw,
            latencies,
            inference_ms,
            prediction.label_index,
            prediction.score,
            prediction.confidence,
            reviews,
        )
        self.counters.predictions += len(accepted)
        self.counters.reviews += reviews
        self.counters.last_scored_ms = now_ms

    def dead_letter(self, record: Record, error: EventError) -> None:
        self.writer.produce(
            self.pipeline.deadletter_topic,
            record.value() or b"",
            key=record.key(),
            headers=dead_letter_headers(record, error),
        )
        self.counters.dead_letters += 1


class ScoringEngine:
    """The hot path of one pipeline in one worker process, on its own thread.

    Checkpoint order (the one place it is written down, see ``checkpoint``):
    partial aggregates produced → producer flushed, every output acknowledged →
    consumed offsets committed. A crash anywhere before the commit replays the
    events since the last checkpoint (at-least-once, duplicates bounded by one
    checkpoint interval).
    """

    def __init__(
        self,
        pipeline: PipelineConfig,
        model: OnnxModel,
        serdes: EngineSerdes,
        kafka_config: dict[str, Any],
        worker_id: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._kafka_config = kafka_config
        self._producer = Producer(
            {
                **kafka_config,
                "linger.ms": 5,
                "compression.type": "lz4",
                "enable.idempotence": True,
                "queue.buffering.max.messages": 500_000,
                "client.id": f"{self.worker_id}-engine",
            }
        )
        self.writer = OutputWriter(self._producer)
        self.accumulator = PartialAccumulator(
            pipeline.name,
            model.manifest,
            int(pipeline.monitor.window_seconds * 1000),
            self.worker_id,
        )
        self.scorer = BatchScorer(pipeline, model, serdes, self.writer, self.accumulator)
        self.policy = BatchPolicy(pipeline.batch.max_size, pipeline.batch.max_wait_ms / 1000.0)
        self._offsets: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{pipeline.name}", daemon=True
        )
        self.failure: BaseException | None = None
        self._broken = False
        self._owned: set[tuple[str, int]] = set()
        self.ready = threading.Event()

    @property
    def counters(self) -> EngineCounters:
        return self.scorer.counters

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._consume()
        except BaseException as exc:
            log.exception("scoring engine of %s stopped on an error", self.pipeline.name)
            self.failure = exc

    def _consume(self) -> None:
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": self.pipeline.engine_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "client.id": f"{self.worker_id}-engine",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
            }
        )
        self._consumer = consumer
        consumer.subscribe(
            [self.pipeline.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        interval = self.pipeline.monitor.flush_interval_seconds
        next_checkpoint = time.monotonic() + interval
        try:
            while not self._stop.is_set():
                batch = self.policy.collect(consumer.consume)
                # A rebalance inside collect() may have revoked partitions of records
                # already fetched: their new owner reads them from the committed offset.
                records = [
                    m
                    for m in batch
                    if self._usable(m) and (m.topic(), m.partition()) in self._owned
                ]
                if records:
                    self.scorer.score(records)
                    for m in records:
                        self._offsets[(m.topic(), m.partition())] = m.offset() + 1
                self.writer.poll()
                if time.monotonic() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + interval
            self.checkpoint()
        except BaseException:
            # Outputs of the uncommitted events may be lost: never commit them,
            # not even from the revoke that closing the consumer triggers.
            self._broken = True
            self._offsets.clear()
            raise
        finally:
            consumer.close()
            self._consumer = None

    @staticmethod
    def _usable(message: Any) -> bool:
        err = message.error()
        if err is None:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)
        return False

    def checkpoint(self) -> None:
        """Partials produced, then every output acknowledged, then offsets committed."""
        now_ms = int(time.time() * 1000)
        for value in self.accumulator.drain(now_ms):
            self.writer.produce(self.pipeline.monitor_topic, value, key=self.accumulator.key)
        self.writer.acknowledge()
        if self._offsets and self._consumer is not None:
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() not in _REBALANCING:
                    raise
                # The group is rebalancing: keep the offsets for the next checkpoint
                # (or the revoke). Events the next owner re-reads are scored again.
                log.warning("commit deferred, group is rebalancing: %s", exc.args[0].str())
                return
            self._offsets.clear()
            self.counters.commits += 1

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned = {(p.topic, p.partition) for p in partitions}
        self.counters.assigned = sorted(f"{p.topic}[{p.partition}]" for p in partitions)
        log.info("%s engine assigned %s", self.pipeline.name, self.counters.assigned)
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info(
            "%s engine revoked %d partitions; checkpointing", self.pipeline.name, len(partitions)
        )
        if not self._broken:
            self.checkpoint()
        for tp in partitions:
            self._offsets.pop((tp.topic, tp.partition), None)
            self._owned.discard((tp.topic, tp.partition))
        self.counters.assigned = []
