"""Topics into ClickHouse from consumers of the worker's own, committing after the insert.

``SinkLoop`` is the part every such copy shares: ClickHouse writes on the
worker's one ClickHouse thread, waiting out outages with the consumer's
partitions paused (what is not yet read waits in Kafka, not in memory), and
offsets committed only once ClickHouse took the rows: at-least-once, and a
row written twice replaces itself by its table's keys. The prediction logger
(``stream.quality.logger``) is one; ``TopicCopier`` copies the small JSON
topics (alerts, model events) with it.

Why not faust agents for the small topics: faust commits an agent's offsets
on its own schedule, from its acknowledgements, and around a rebalance or a
restart its committed offset can pass a record the agent did not write (a
retrain step that was in Kafka never reached ``model_events`` so, once); a
copy has no state of its own that could notice and read it again. Here the
offset committed is the one after the rows ClickHouse took.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.background import BackgroundLoop
from stream.errors import SinkUnavailable
from stream.services.consumers import group_consumer, usable
from stream.sinks.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)


class SinkLoop(BackgroundLoop):
    """A background loop whose consumer's records end up in ClickHouse (see the module)."""

    def __init__(
        self,
        name: str,
        topics: Sequence[str],
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        stall_after: float,
    ) -> None:
        super().__init__(name, stall_after)
        self.topics = list(topics)
        self.sink = sink
        self._writer = writer
        self._owned: set[tuple[str, int]] = set()
        self._held = False  # partitions paused while ClickHouse is away

    def _consumer(self) -> Consumer:
        """A consumer of the loop's group (``group_consumer``), not yet subscribed."""
        raise NotImplementedError

    def _collect(self, consumer: Consumer) -> list[Any]:
        """The next batch of records (``usable`` ones)."""
        raise NotImplementedError

    def _write(self, consumer: Consumer, records: list[Any]) -> bool:
        """Put the records' rows in ClickHouse (with ``_insert``); False when stopping."""
        raise NotImplementedError

    def _loop(self) -> None:
        consumer = self._consumer()
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping:
                self.beat()
                records = self._owned_records(self._collect(consumer))
                if not records:
                    continue
                if not self._write(consumer, records):
                    return  # stopping while ClickHouse was away: nothing committed
                self._commit(consumer, records)
        finally:
            consumer.close()

    def _owned_records(self, records: Sequence[Any]) -> list[Any]:
        """The records from partitions this member still owns (a rebalance can come
        while a batch is collected: the new owner reads the others)."""
        return [m for m in records if (m.topic(), m.partition()) in self._owned]

    def _insert(self, consumer: Consumer, work: Sequence[Callable[[], None]]) -> bool:
        """Run each insert on the ClickHouse thread, waiting out outages; False when stopping.

        While ClickHouse is away the consumer's partitions are paused, which
        drops what it fetched ahead and fetches nothing more, and the consumer
        is still polled, so the group keeps this member however long the wait.
        """
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

    def _commit(self, consumer: Consumer, records: Sequence[Any]) -> None:
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
            log.warning("%s commit deferred: %s", self.name, exc.args[0].str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned = {(p.topic, p.partition) for p in partitions}
        if self._held:  # assigned while ClickHouse is away: paused from the start
            consumer.assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard((tp.topic, tp.partition))


@dataclass(frozen=True)
class CopyRoute:
    """Records of ``topic`` (JSON) become rows of ``table`` by ``to_row``."""

    topic: str
    table: str
    columns: Sequence[str]
    to_row: Callable[[dict[str, Any]], list[Any]]


# Records are few (alerts, model events): a write at most every FLUSH_SECONDS.
MAX_RECORDS = 500
FLUSH_SECONDS = 1.0


class TopicCopier(SinkLoop):
    """Copies topics of JSON records into ClickHouse tables, a route per topic.

    A record that ``to_row`` cannot turn into a row is logged and skipped; the
    others are written. ``copied`` counts the rows written per topic.
    """

    def __init__(
        self,
        kafka_config: dict[str, Any],
        group: str,
        worker_id: str,
        routes: Sequence[CopyRoute],
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        stall_after: float = 120.0,
    ) -> None:
        super().__init__("copier", [r.topic for r in routes], sink, writer, stall_after)
        self._kafka_config = kafka_config
        self.group = group
        self._worker_id = worker_id
        self.routes = {r.topic: r for r in routes}
        self.copied = dict.fromkeys(self.routes, 0)
        self.skipped = 0

    def _consumer(self) -> Consumer:
        return group_consumer(self._kafka_config, self.group, f"{self._worker_id}-copier")

    def _write(self, consumer: Consumer, records: list[Any]) -> bool:
        rows = self._rows(records)
        work = [
            partial(self.sink.insert, route.table, route.columns, rows[topic])
            for topic, route in self.routes.items()
            if rows[topic]
        ]
        if not self._insert(consumer, work):
            return False
        for topic, written in rows.items():
            self.copied[topic] += len(written)
        return True

    def _collect(self, consumer: Consumer) -> list[Any]:
        """Records until MAX_RECORDS, or FLUSH_SECONDS passed."""
        records: list[Any] = []
        deadline = time.monotonic() + FLUSH_SECONDS
        while len(records) < MAX_RECORDS and not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = consumer.consume(MAX_RECORDS - len(records), min(remaining, 0.5))
            records += [m for m in messages if usable(m, self.name)]
        return records

    def _rows(self, records: Sequence[Any]) -> dict[str, list[list[Any]]]:
        rows: dict[str, list[list[Any]]] = {topic: [] for topic in self.routes}
        for m in records:
            route = self.routes[m.topic()]
            try:
                rows[route.topic].append(route.to_row(json.loads(m.value() or b"")))
            except (ValueError, KeyError, TypeError) as exc:
                self.skipped += 1
                log.warning(
                    "skipping a malformed record for %s at %s[%d]@%d: %r",
                    route.table, m.topic(), m.partition(), m.offset(), exc,
                )  # fmt: skip
        return rows

    def status(self) -> dict[str, Any]:
        return {"group": self.group, "copied": dict(self.copied), "skipped": self.skipped}
