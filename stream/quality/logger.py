"""The prediction logger: the prediction log and the labels into ClickHouse, off the hot path.

A consumer of its own (group ``stream.{p}.log``) reads ``{p}.log`` (Arrow
record batches the engine writes, see ``stream.quality.logbatch``) and
``{p}.feedback`` (labels); it writes ``prediction_log`` and ``feedback`` and
commits its offsets only after ClickHouse took the rows (at-least-once; a row
written twice replaces itself). The scoring engine never waits for it: when
ClickHouse is away the logger holds the one batch it has, pauses its
partitions (the rest waits in Kafka, not in memory) and catches up from
Kafka when ClickHouse is back.

Why not a faust table joining labels with predictions: a table holding every
prediction writes one changelog record per event and would hold the pipeline
to faust's speed. Here ClickHouse does the join (``stream.quality.job``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from stream.background import BackgroundLoop
from stream.engine.outputs import OutputWriter, dead_letter_headers
from stream.errors import EventContext, SinkUnavailable, ValidationError
from stream.quality import logbatch
from stream.quality.rows import FEEDBACK_COLUMNS, feedback_row
from stream.services.consumers import group_consumer, usable
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)

# A write holds at most about this many log rows (a log message has up to 1,000)
# or labels, or what came in FLUSH_SECONDS: memory stays bounded, parts stay few.
# Up to 100,000 rows a second is one insert a second (what ClickHouse advises);
# inserts of 46,000 rows cost 14-20% more CPU than of 92,000, merges included.
MAX_ROWS = 100_000
MAX_LABELS = 20_000
FLUSH_SECONDS = 1.0
# Records taken from the consumer per call. A call copies its records' values into
# Python while it holds the interpreter lock, which the scoring thread then waits
# for: 8-15 ms for calls of about 36 log messages of 250 KB, about 1 ms for 4.
MESSAGES_PER_CALL = 4


class PredictionLogger(BackgroundLoop):
    def __init__(
        self,
        pipeline: PipelineConfig,
        kafka_config: dict[str, Any],
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        worker_id: str,
        stall_after: float = 120.0,
    ) -> None:
        super().__init__(f"logger-{pipeline.name}", stall_after)
        self.pipeline = pipeline
        self.sink = sink
        self._writer = writer
        self._kafka_config = kafka_config
        self._worker_id = worker_id
        self._dead = OutputWriter(
            Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
        )
        self.topics = [pipeline.log_topic, pipeline.feedback_topic]
        self.counts = {"predictions": 0, "labels": 0, "bad_labels": 0, "bad_batches": 0}
        self._owned: set[tuple[str, int]] = set()
        self._held = False  # partitions paused while ClickHouse is away

    def _loop(self) -> None:
        # Log messages are large (up to 1,000 rows): a small prefetch.
        consumer = group_consumer(
            self._kafka_config,
            self.pipeline.log_group,
            f"{self._worker_id}-logger",
            **{"queued.max.messages.kbytes": 16_384},
        )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping:
                self.beat()
                records = self._collect(consumer)
                records = [m for m in records if (m.topic(), m.partition()) in self._owned]
                if not records:
                    continue
                log_stream, rows, labels = self._read(records)
                if not self._write(consumer, log_stream, rows, labels):
                    return  # stopping while ClickHouse was away: nothing committed
                self._dead.acknowledge()
                self._commit(consumer, records)
                self.counts["predictions"] += rows
                self.counts["labels"] += len(labels)
        finally:
            consumer.close()

    def _collect(self, consumer: Consumer) -> list[Any]:
        """Records until MAX_ROWS log rows or MAX_LABELS labels, or FLUSH_SECONDS passed."""
        records: list[Any] = []
        rows = labels = 0
        deadline = time.monotonic() + FLUSH_SECONDS
        while rows < MAX_ROWS and labels < MAX_LABELS and not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for m in consumer.consume(MESSAGES_PER_CALL, min(remaining, 0.5)):
                if not usable(m, self.name):
                    continue
                records.append(m)
                if m.topic() == self.pipeline.feedback_topic:
                    labels += 1
                else:
                    rows += logbatch.MAX_ROWS  # at most; counting exactly would decode twice
        return records

    def _read(self, records: list[Any]) -> tuple[bytes | None, int, list[list[Any]]]:
        """The log batches as one Arrow stream (and its rows), and the label rows."""
        tables: list[pa.Table] = []
        labels: list[list[Any]] = []
        now = datetime.now(UTC)
        for m in records:
            if m.topic() == self.pipeline.feedback_topic:
                labels.extend(self._label(m, now))
                continue
            try:
                tables.append(logbatch.decode([m.value() or b""]))
            except ValueError as exc:
                # Only engines write this topic; a stranger's record is logged and left.
                self.counts["bad_batches"] += 1
                log.warning("%s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), exc)
        if not tables:
            return None, 0, labels
        table = pa.concat_tables(tables)
        return logbatch.encode(table), table.num_rows, labels

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

    def _write(
        self, consumer: Consumer, log_stream: bytes | None, rows: int, labels: list[list[Any]]
    ) -> bool:
        """Insert the log and the labels, waiting out ClickHouse outages; False when stopping.

        While ClickHouse is away the consumer's partitions are paused, which
        drops what it fetched ahead and fetches nothing more, and the consumer
        is still polled, so the group keeps this member however long the wait.
        """
        work: list[Callable[[], None]] = []
        if log_stream is not None:
            work.append(
                partial(
                    self.sink.insert_arrow, "prediction_log", logbatch.COLUMNS, log_stream, rows
                )
            )
        if labels:
            work.append(partial(self.sink.insert, "feedback", FEEDBACK_COLUMNS, labels))
        for insert in work:
            while True:
                try:
                    self._writer.submit(insert).result()
                    break
                except SinkUnavailable:
                    if self.stopping:
                        return False
                    if not self._held:
                        self._held = True
                        consumer.pause(consumer.assignment())
                    self.beat()  # waiting for ClickHouse is progress of a kind: not a hang
                    wait = min(max(self.sink.wait_seconds(), 0.1), 1.0)
                    stray: list[Any] = consumer.consume(1, wait)
                    for m in stray:
                        if usable(m, self.name):  # not expected: paused partitions deliver nothing
                            back = TopicPartition(m.topic(), m.partition(), m.offset())
                            consumer.pause([back])
                            consumer.seek(back)  # read again after the wait, not lost
        if self._held:
            self._held = False
            consumer.resume(consumer.assignment())
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
        if self._held:  # assigned while ClickHouse is away: paused from the start
            consumer.assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard((tp.topic, tp.partition))

    def status(self) -> dict[str, Any]:
        return {**self.counts, "topics": self.topics, "paused": self._held}
