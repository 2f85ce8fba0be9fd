"""ScoringEngine: batch consume → decode → validate → one ONNX run → produce → commit.

It runs on a thread of its own with a confluent-kafka consumer and producer;
see DESIGN.md for why the hot path is not a faust agent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from stream.background import BackgroundLoop, PartitionProgress
from stream.deploy.control import EVENTS_TOPIC, model_event
from stream.deploy.control import worker_id as this_worker
from stream.engine.batching import BatchPolicy
from stream.engine.outputs import OutputWriter
from stream.engine.runtime import Runtime
from stream.engine.scorer import BatchScorer, EngineCounters, EngineSerdes
from stream.metrics import ModelTotals
from stream.services.consumers import group_consumer, usable
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)

# Commit errors that mean "the group is rebalancing", not "something is broken".
_REBALANCING = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
}


def _deferrable(err: KafkaError) -> bool:
    """A commit error that passes: a rebalance, or the coordinator away (broker restart)."""
    return err.code() in _REBALANCING or err.retriable()


def _partitions(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """The next offset to consume of each (topic, partition), as a commit takes them."""
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


class ScoringEngine(BackgroundLoop):
    """The hot path of one pipeline in one worker process, on its own thread.

    Checkpoint order (the one place it is written down, see ``checkpoint``):

    - both: the prediction log's rows not yet produced are produced (the
      scorer produces them every ``MAX_ROWS`` rows, and here the rest).
    - at-least-once: partial aggregates produced → producer flushed, every
      output acknowledged (predictions, review items, dead letters, shadow
      predictions, the prediction log's batches) → consumed offsets
      committed. A crash anywhere before the commit replays the events since
      the last commit the broker took (duplicates bounded by about one
      checkpoint interval).
      The periodic checkpoint sends the commit and goes on scoring: the
      outputs it covers are already acknowledged, and a commit that fails is
      sent again with the next one. A revoke and the last checkpoint wait for
      theirs, and include any commit still unanswered.
    - exactly-once: outputs and consumed offsets are committed together in one
      Kafka transaction → then the partial aggregates are produced (outside it,
      so the monitor never reads aborted data). A crash before the commit
      aborts the transaction and the events are scored again, invisibly to
      ``read_committed`` consumers; a crash between the two loses at most one
      interval of aggregates, never a prediction.
    """

    def __init__(
        self,
        pipeline: PipelineConfig,
        runtime: Runtime,
        serdes: EngineSerdes,
        kafka_config: dict[str, Any],
        worker_id: str | None = None,
        stall_after: float = 120.0,
    ) -> None:
        super().__init__(f"engine-{pipeline.name}", stall_after)
        self.progress = PartitionProgress(stall_after)
        self.pipeline = pipeline
        self.worker_id = worker_id or this_worker()
        self._kafka_config = kafka_config
        self.transactional = pipeline.processing_guarantee == "exactly_once"
        producer_config = {
            **kafka_config,
            "linger.ms": 5,
            "compression.type": "lz4",
            "enable.idempotence": True,
            # A Python callback for failures only; success is what flush() waits for.
            "delivery.report.only.error": True,
            "queue.buffering.max.messages": 500_000,
            "client.id": f"{self.worker_id}-engine",
        }
        if self.transactional:
            producer_config["transactional.id"] = f"{pipeline.engine_group}-{self.worker_id}"
            # A crashed worker's open transaction blocks read_committed consumers of the
            # outputs until the broker aborts it: keep that short (checkpoints are ~1 s).
            producer_config["transaction.timeout.ms"] = 10_000
            self._partials = OutputWriter(
                Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
            )
        self.writer, self._producer = OutputWriter.create(producer_config)
        if not self.transactional:
            self._partials = self.writer
        self.scorer = BatchScorer(pipeline, runtime, serdes, self.writer, self.worker_id)
        # A loaded revision waiting for the next batch boundary; starts with the first one.
        self._pending: Runtime | None = runtime
        self._pending_lock = threading.Lock()
        self.policy = BatchPolicy(pipeline.batch.max_size, pipeline.batch.max_wait_ms / 1000.0)
        self._offsets: dict[tuple[str, int], int] = {}
        # Offsets committed without waiting and not yet answered (see _on_commit).
        self._unanswered: dict[tuple[str, int], int] = {}
        self._commit_failure: KafkaException | None = None
        self._consumer: Consumer | None = None
        self._broken = False
        self._owned: set[tuple[str, int]] = set()
        self.ready = threading.Event()
        self.totals = ModelTotals()  # histograms since the start, for /metrics

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
        self.counters.revisions_applied += 1
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
        consumer = group_consumer(
            self._kafka_config,
            self.pipeline.engine_group,
            f"{self.worker_id}-engine",
            on_commit=self._on_commit,
        )
        self._consumer = consumer
        consumer.subscribe(
            [self.pipeline.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        interval = self.pipeline.monitor.flush_interval_seconds
        next_checkpoint = time.monotonic() + interval
        if self.transactional:
            self._producer.init_transactions(30)
            self._producer.begin_transaction()
        try:
            while not self.stopping:
                self.beat()
                self._swap_if_pending()
                batch = self.policy.collect(consumer.consume)
                # A rebalance inside collect() may have revoked partitions of records
                # already fetched: their new owner reads them from the committed offset.
                records = [
                    m
                    for m in batch
                    if usable(m, self.name) and (m.topic(), m.partition()) in self._owned
                ]
                if records:
                    self.scorer.score(records)
                    for m in records:
                        self._offsets[(m.topic(), m.partition())] = m.offset() + 1
                self.writer.poll()
                if time.monotonic() >= next_checkpoint:
                    self.checkpoint(wait=False)
                    self._measure_lag()
                    next_checkpoint = time.monotonic() + interval
            self.checkpoint(last=True)
        except BaseException:
            # Outputs of the uncommitted events may be lost: never commit them,
            # not even from the revoke that closing the consumer triggers.
            self._broken = True
            self._offsets.clear()
            self._unanswered.clear()
            if self.transactional:
                self._abort()
            raise
        finally:
            consumer.close()
            self._consumer = None

    def checkpoint(self, last: bool = False, wait: bool = True) -> None:
        """Commit what was scored since the last checkpoint, in the order the class doc gives.

        ``wait=False`` (at-least-once only): send the commit and return; its
        answer comes to ``_on_commit`` during a later consume call.
        """
        if self._commit_failure is not None:
            raise self._commit_failure
        self.scorer.flush_log()
        if self.transactional:
            self._commit_transaction(begin_next=not last)
            self._produce_partials()
            self._partials.acknowledge()
            return
        self._produce_partials()
        self.writer.acknowledge()
        # Waiting, the commit also repeats those still unanswered: a revoke's or the
        # last one must cover everything scored.
        offsets = self._offsets if not wait else {**self._unanswered, **self._offsets}
        if not offsets or self._consumer is None:
            return
        partitions = _partitions(offsets)
        try:
            if wait:
                self._consumer.commit(offsets=partitions, asynchronous=False)
            else:
                self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            if not _deferrable(exc.args[0]):
                raise
            # A rebalance, or the coordinator is away (broker restart): keep the
            # offsets for the next checkpoint (or the revoke). Events a next owner
            # re-reads are scored again.
            log.warning("commit deferred: %s", exc.args[0].str())
            return
        if wait:
            self._unanswered.clear()
            self.counters.commits += 1
        else:
            self._unanswered.update(self._offsets)
        self._offsets.clear()

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The answer to a commit sent without waiting.

        A commit that failed for a reason that passes (a rebalance, the
        coordinator away) goes back into the next checkpoint's offsets, unless
        that partition was scored further since (a later offset is waiting to
        be committed, or already sent); any other failure stops the engine at
        its next checkpoint, as a failed commit that waited does.
        """
        errors = [tp.error for tp in partitions if tp.error is not None]
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if self._unanswered.get(key) == tp.offset:
                del self._unanswered[key]
        if err is None and not errors:
            self.counters.commits += 1
            return
        error = err if err is not None else errors[0]
        if not _deferrable(error):
            self._commit_failure = KafkaException(error)
            return
        log.warning("commit deferred: %s", error.str())
        for tp in partitions:
            key = (tp.topic, tp.partition)
            failed = err is not None or tp.error is not None
            if failed and key in self._owned and key not in self._unanswered:
                self._offsets.setdefault(key, tp.offset)

    def _measure_lag(self) -> None:
        """Records behind the end of each owned partition (from cached watermarks: no request)."""
        if self._consumer is None:
            return
        lag = {}
        positions = {}
        for tp in self._consumer.position([TopicPartition(t, p) for t, p in self._owned]):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                name = f"{tp.topic}[{tp.partition}]"
                lag[name] = max(high - tp.offset, 0)
                positions[name] = (tp.offset, lag[name])
        self.counters.lag = lag
        self.progress.observe(positions)

    def trouble(self) -> str | None:
        """The loop's own trouble, or partitions that make no progress while records wait."""
        trouble = super().trouble()
        if trouble is None and (stuck := self.progress.describe()):
            return f"{self.name}: {stuck}"
        return trouble

    def _produce_partials(self) -> None:
        now_ms = int(time.time() * 1000)
        serving = self.scorer.runtime.models
        for key, acc in list(self.scorer.accumulators.items()):
            if key not in serving and not acc.windows:
                del self.scorer.accumulators[key]  # retired by a deployment, nothing left
                continue
            for stats in acc.windows.values():
                self.totals.add(self.pipeline.name, acc.manifest.name, acc.manifest.version, stats)
            for value in acc.drain(now_ms):
                self._partials.produce(self.pipeline.monitor_topic, value, key=acc.key)

    def _commit_transaction(self, begin_next: bool) -> None:
        """Outputs and consumed offsets become visible together, or not at all."""
        self.writer.acknowledge()
        if self._offsets and self._consumer is not None:
            try:
                self._producer.send_offsets_to_transaction(
                    _partitions(self._offsets), self._consumer.consumer_group_metadata(), 30
                )
            except KafkaException as exc:
                if exc.args[0].code() not in _REBALANCING:
                    raise
                log.warning("transaction aborted, group is rebalancing: %s", exc.args[0].str())
                self._abort()
                self._rewind()
                if begin_next:
                    self._producer.begin_transaction()
                return
        self._commit_with_retries()
        if self._offsets:
            self._offsets.clear()
            self.counters.commits += 1
        if begin_next:
            self._producer.begin_transaction()

    def _commit_with_retries(self, attempts: int = 10) -> None:
        for attempt in range(attempts):
            try:
                self._producer.commit_transaction(30)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or attempt == attempts - 1:
                    raise
                log.warning("retrying the transaction commit: %s", err.str())

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(10)
        except KafkaException as exc:
            log.error("could not abort the transaction: %s", exc)

    def _rewind(self) -> None:
        """After an abort: score the aborted events again, and forget their aggregates."""
        if self._consumer is not None and self._offsets:
            committed = self._consumer.committed(
                [TopicPartition(t, p) for (t, p) in self._offsets], timeout=10
            )
            for tp in committed:
                if (tp.topic, tp.partition) not in self._owned:
                    continue
                tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                try:
                    self._consumer.seek(tp)
                except KafkaException as exc:  # being revoked: its next owner starts there
                    log.info("not rewinding %s[%d]: %s", tp.topic, tp.partition, exc)
        self._offsets.clear()
        for acc in self.scorer.accumulators.values():
            acc.windows = {}

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned = {(p.topic, p.partition) for p in partitions}
        self.counters.assigned = sorted(f"{p.topic}[{p.partition}]" for p in partitions)
        self.counters.assigned_at = time.time()
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
            self._unanswered.pop((tp.topic, tp.partition), None)
            self._owned.discard((tp.topic, tp.partition))
        self.counters.assigned = []
