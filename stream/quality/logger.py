"""The prediction logger: copies what quality needs into ClickHouse, off the hot path.

A consumer of its own (group ``stream.{p}.log``) reads ``{p}.predictions``,
``{p}.shadow``, ``{p}.feedback`` and, for segments and features,
``{p}.events``; it writes ``prediction_log``, ``event_log`` and ``feedback``
and commits its offsets only after ClickHouse took the rows (at-least-once; a
row written twice replaces itself). The scoring engine never waits for it:
when ClickHouse is away the logger falls behind and catches up from Kafka.

Why a consumer and not a faust table joining labels with predictions: a
table holding every prediction writes one changelog record per event and
would hold the pipeline to faust's speed. Here ClickHouse does the join
(``stream.quality.job``), and the cost per event is one more read of each
record, off the engine's thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.background import BackgroundLoop
from stream.engine.outputs import OutputWriter, dead_letter_headers
from stream.engine.scorer import EngineSerdes
from stream.errors import EventContext, EventError, SinkUnavailable, ValidationError
from stream.quality.rows import (
    EVENT_LOG_COLUMNS,
    FEEDBACK_COLUMNS,
    PREDICTION_LOG_COLUMNS,
    Sampler,
    event_row,
    feedback_row,
    prediction_row,
)
from stream.serde import SerdeContext
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)

BATCH = 2000


class PredictionLogger(BackgroundLoop):
    def __init__(
        self,
        pipeline: PipelineConfig,
        serdes: EngineSerdes,
        kafka_config: dict[str, Any],
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        worker_id: str,
        stall_after: float = 120.0,
    ) -> None:
        super().__init__(f"logger-{pipeline.name}", stall_after)
        self.pipeline = pipeline
        self.serdes = serdes
        self.sink = sink
        self._writer = writer
        self._kafka_config = kafka_config
        self._worker_id = worker_id
        self._sampler = Sampler(pipeline.quality.log_sample_rate)
        self._dead = OutputWriter(
            Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
        )
        quality = pipeline.quality
        self.topics = [pipeline.predictions_topic, pipeline.shadow_topic, pipeline.feedback_topic]
        if quality.log_features or quality.segments:
            self.topics.append(pipeline.events_topic)
        self.counts = {"predictions": 0, "events": 0, "labels": 0, "bad_labels": 0, "skipped": 0}
        self._owned: set[tuple[str, int]] = set()

    def _loop(self) -> None:
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": self.pipeline.log_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "client.id": f"{self._worker_id}-logger",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
            }
        )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping:
                self.beat()
                batch = consumer.consume(BATCH, 0.5)
                records = [m for m in batch if self._usable(m)]
                records = [m for m in records if (m.topic(), m.partition()) in self._owned]
                if not records:
                    continue
                tables = self._rows(records)
                if not self._write(tables):
                    return  # stopping while ClickHouse was away: nothing committed
                self._dead.acknowledge()
                self._commit(consumer, records)
        finally:
            consumer.close()

    @staticmethod
    def _usable(message: Any) -> bool:
        err = message.error()
        if err is None:
            return True
        if err.fatal():
            raise KafkaException(err)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("logger consumer error: %s", err)
        return False

    def _rows(self, records: list[Any]) -> dict[str, list[list[Any]]]:
        p = self.pipeline
        predictions: list[list[Any]] = []
        events: list[list[Any]] = []
        labels: list[list[Any]] = []
        now = datetime.now(UTC)
        for m in records:
            topic = m.topic()
            if topic == p.feedback_topic:
                labels.extend(self._label(m, now))
                continue
            if not self._sampler.keeps(m.key()):
                self.counts["skipped"] += 1
                continue
            try:
                value = m.value() or b""
                if topic == p.events_topic:
                    decoded = self.serdes.events.deserialize(value, SerdeContext(topic))
                    row = event_row(p, decoded, m.timestamp()[1])
                    if row is not None:
                        events.append(row)
                else:
                    decoded = self.serdes.predictions.deserialize(value, SerdeContext(topic))
                    predictions.append(prediction_row(p.name, decoded))
            except (EventError, KeyError, TypeError, ValueError):
                # The engine dead-lettered what it could not read; nothing to log.
                self.counts["skipped"] += 1
        self.counts["predictions"] += len(predictions)
        self.counts["events"] += len(events)
        self.counts["labels"] += len(labels)
        return {"prediction_log": predictions, "event_log": events, "feedback": labels}

    def _label(self, message: Any, now: datetime) -> list[list[Any]]:
        try:
            try:
                record = json.loads(message.value() or b"")
            except ValueError as exc:
                raise ValidationError(f"feedback: not JSON ({exc})") from None
            return [feedback_row(self.pipeline.name, record, message.timestamp()[1], now)]
        except ValidationError as exc:
            exc.ctx = EventContext(message.topic(), message.partition(), message.offset())
            self._dead.produce(
                self.pipeline.deadletter_topic,
                message.value() or b"",
                key=message.key(),
                headers=dead_letter_headers(message, exc),
            )
            self.counts["bad_labels"] += 1
            return []

    def _write(self, tables: dict[str, list[list[Any]]]) -> bool:
        """Insert every table's rows, waiting out ClickHouse outages; False when stopping."""
        columns: dict[str, Sequence[str]] = {
            "prediction_log": PREDICTION_LOG_COLUMNS,
            "event_log": EVENT_LOG_COLUMNS,
            "feedback": FEEDBACK_COLUMNS,
        }
        for table, rows in tables.items():
            while True:
                try:
                    future = self._writer.submit(self.sink.insert, table, columns[table], rows)
                    future.result()
                    break
                except SinkUnavailable:
                    if self.stopping:
                        return False
                    self.beat()  # waiting for ClickHouse is progress of a kind: not a hang
                    time.sleep(min(max(self.sink.wait_seconds(), 0.1), 1.0))
        return True

    def _commit(self, consumer: Consumer, records: list[Any]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for m in records:
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # A rebalance or a broker away: the next owner reads these again and
            # their rows replace themselves.
            log.warning("logger commit deferred: %s", exc.args[0].str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned = {(p.topic, p.partition) for p in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard((tp.topic, tp.partition))

    def status(self) -> dict[str, Any]:
        return {**self.counts, "topics": self.topics}
