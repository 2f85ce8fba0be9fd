"""ScoringEngine: batch consume → decode → validate → one ONNX run → produce → commit.

It runs on a thread of its own with a confluent-kafka consumer and producer;
see DESIGN.md for why the hot path is not a faust agent.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.background import BackgroundLoop
from stream.deploy.control import EVENTS_TOPIC, model_event
from stream.engine.batching import BatchPolicy
from stream.engine.outputs import OutputWriter
from stream.engine.runtime import Runtime
from stream.engine.scorer import BatchScorer, EngineCounters, EngineSerdes
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)

# Commit errors that mean "the group is rebalancing", not "something is broken".
_REBALANCING = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
}


class ScoringEngine(BackgroundLoop):
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
        runtime: Runtime,
        serdes: EngineSerdes,
        kafka_config: dict[str, Any],
        worker_id: str | None = None,
    ) -> None:
        super().__init__(f"engine-{pipeline.name}")
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
        self.scorer = BatchScorer(pipeline, runtime, serdes, self.writer, self.worker_id)
        # A loaded revision waiting for the next batch boundary; starts with the first one.
        self._pending: Runtime | None = runtime
        self._pending_lock = threading.Lock()
        self.policy = BatchPolicy(pipeline.batch.max_size, pipeline.batch.max_wait_ms / 1000.0)
        self._offsets: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._broken = False
        self._owned: set[tuple[str, int]] = set()
        self.ready = threading.Event()

    @property
    def counters(self) -> EngineCounters:
        return self.scorer.counters

    @property
    def runtime(self) -> Runtime:
        """The newest loaded revision: pending if one waits, else the serving one."""
        with self._pending_lock:
            return self._pending or self.scorer.runtime

    def offer(self, runtime: Runtime) -> None:
        """Serve ``runtime`` from the next batch on (called from the control thread)."""
        with self._pending_lock:
            self._pending = runtime

    def _swap_if_pending(self) -> None:
        with self._pending_lock:
            runtime, self._pending = self._pending, None
        if runtime is None:
            return
        self.scorer.swap(runtime)
        event = model_event(
            self.pipeline.name,
            runtime.revision,
            self.worker_id,
            "applied",
            runtime.snapshot.describe(),
            ",".join(sorted(str(k) for k in runtime.models)),
        )
        self.writer.produce(
            EVENTS_TOPIC, json.dumps(event).encode(), key=self.pipeline.name.encode()
        )
        log.info(
            "%s serves revision %d: %s", self.pipeline.name, runtime.revision, event["message"]
        )

    def _loop(self) -> None:
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
            while not self.stopping:
                self._swap_if_pending()
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
        serving = self.scorer.runtime.models
        for key, acc in list(self.scorer.accumulators.items()):
            if key not in serving and not acc.windows:
                del self.scorer.accumulators[key]  # retired by a deployment, nothing left
                continue
            for value in acc.drain(now_ms):
                self.writer.produce(self.pipeline.monitor_topic, value, key=acc.key)
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
