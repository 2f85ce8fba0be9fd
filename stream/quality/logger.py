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
from confluent_kafka import Consumer, Producer

from stream.engine.outputs import OutputWriter, dead_letter_headers
from stream.errors import EventContext, ValidationError
from stream.quality import logbatch
from stream.quality.rows import FEEDBACK_COLUMNS, feedback_row
from stream.services.consumers import group_consumer, usable
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouseSink
from stream.sinks.copier import SinkLoop

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


class PredictionLogger(SinkLoop):
    def __init__(
        self,
        pipeline: PipelineConfig,
        kafka_config: dict[str, Any],
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        worker_id: str,
        stall_after: float = 120.0,
    ) -> None:
        super().__init__(
            f"logger-{pipeline.name}",
            [pipeline.log_topic, pipeline.feedback_topic],
            sink,
            writer,
            stall_after,
        )
        self.pipeline = pipeline
        self._kafka_config = kafka_config
        self._worker_id = worker_id
        self._dead = OutputWriter(
            Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
        )
        self.counts = {"predictions": 0, "labels": 0, "bad_labels": 0, "bad_batches": 0}

    def _consumer(self) -> Consumer:
        # Log messages are large (up to 1,000 rows): a small prefetch.
        return group_consumer(
            self._kafka_config,
            self.pipeline.log_group,
            f"{self._worker_id}-logger",
            **{"queued.max.messages.kbytes": 16_384},
        )

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

    def _write(self, consumer: Consumer, records: list[Any]) -> bool:
        """Insert the log and the labels, waiting out ClickHouse outages; False when stopping."""
        log_stream, rows, labels = self._read(records)
        work: list[Callable[[], None]] = []
        if log_stream is not None:
            work.append(
                partial(
                    self.sink.insert_arrow, "prediction_log", logbatch.COLUMNS, log_stream, rows
                )
            )
        if labels:
            work.append(partial(self.sink.insert, "feedback", FEEDBACK_COLUMNS, labels))
        if not self._insert(consumer, work):
            return False
        self._dead.acknowledge()  # bad labels' dead letters, before their offsets are committed
        self.counts["predictions"] += rows
        self.counts["labels"] += len(labels)
        return True

    def status(self) -> dict[str, Any]:
        return {**self.counts, "topics": self.topics, "paused": self._held}
