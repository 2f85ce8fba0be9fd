"""The checkpoint order: partials produced → every output acknowledged → offsets committed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.background import PartitionProgress
from stream.deploy.state import initial_state
from stream.engine.outputs import OutputWriter
from stream.engine.runtime import build_runtime
from stream.engine.scoring import ScoringEngine
from stream.errors import DeliveryError
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.settings import PipelineConfig
from tests.unit.fakes import FakeProducer, FakeRecord
from tests.unit.test_scorer import records, serdes

V1 = ModelKey(name="payments-fraud", version="1")
PIPELINE = PipelineConfig.model_validate(
    {"name": "payments", "model": {"name": "payments-fraud", "version": "1"}, "review_threshold": 0}
)


class Journal(FakeProducer):
    """A producer that writes what happens, in order, to a shared journal."""

    def __init__(self, journal: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.journal = journal

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.journal.append(f"produce {topic}")
        super().produce(topic, *args, **kwargs)

    def flush(self, timeout: float = 0) -> int:
        self.journal.append("flush")
        return super().flush(timeout)


class JournalConsumer:
    def __init__(self, journal: list[str], error: int | None = None) -> None:
        self.journal = journal
        self.error = error
        self.committed: list[TopicPartition] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if self.error is not None:
            raise KafkaException(KafkaError(self.error))
        self.journal.append(
            "commit "
            + ",".join(sorted(f"{tp.partition}@{tp.offset}" for tp in offsets))
            + (" (not waiting)" if asynchronous else "")
        )
        self.committed.extend(offsets)


def make_engine(registry: ModelRegistry, pipeline: PipelineConfig) -> ScoringEngine:
    # The producer and consumer are replaced by journals; nothing connects to this address.
    runtime = build_runtime(pipeline, initial_state("payments", V1).current, registry)
    return ScoringEngine(
        pipeline, runtime, serdes(), {"bootstrap.servers": "127.0.0.1:9", "log_level": 0}
    )


@pytest.fixture
def engine(registry: ModelRegistry) -> ScoringEngine:
    return make_engine(registry, PIPELINE)


def valid_records(n: int, offset: int) -> list[FakeRecord]:
    recs, _ = records(n)
    return [FakeRecord(r.value(), r.key(), _offset=offset + i) for i, r in enumerate(recs)]


def wire(engine: ScoringEngine, producer: FakeProducer, consumer: JournalConsumer) -> None:
    engine.writer = OutputWriter(producer)
    engine.scorer.writer = engine.writer
    engine._partials = engine.writer
    engine._consumer = consumer  # type: ignore[assignment]
    engine._owned = {("payments.events", 0)}


def test_partials_then_acknowledgement_then_commit(engine: ScoringEngine) -> None:
    journal: list[str] = []
    wire(engine, Journal(journal), JournalConsumer(journal))
    recs = [FakeRecord(b"\x02\xff", b"k", _offset=7), *valid_records(1, offset=8)]
    engine.scorer.score(recs)
    engine._offsets[("payments.events", 0)] = 9
    engine.checkpoint()
    assert journal == [
        "produce payments.deadletter",
        "produce payments.predictions",
        "produce payments.log",  # the prediction log: an output like the predictions
        "produce payments.monitor",
        "flush",
        "commit 0@9",
    ]
    assert engine._offsets == {}


def test_no_commit_when_an_output_was_not_delivered(engine: ScoringEngine) -> None:
    journal: list[str] = []
    consumer = JournalConsumer(journal)
    wire(engine, Journal(journal, fail_topics={"payments.deadletter"}), consumer)
    engine.scorer.score([FakeRecord(b"\x02\xff", b"k", _offset=7)])
    engine._offsets[("payments.events", 0)] = 8
    with pytest.raises(DeliveryError):
        engine.checkpoint()
    assert consumer.committed == []


def test_commit_during_rebalance_is_deferred(engine: ScoringEngine) -> None:
    journal: list[str] = []
    consumer = JournalConsumer(journal, error=KafkaError.REBALANCE_IN_PROGRESS)
    wire(engine, Journal(journal), consumer)
    engine._offsets[("payments.events", 0)] = 8
    engine.checkpoint()
    assert engine._offsets == {("payments.events", 0): 8}
    consumer.error = None
    engine.checkpoint()
    assert [tp.offset for tp in consumer.committed] == [8]


def test_other_commit_errors_stop_the_engine(engine: ScoringEngine) -> None:
    journal: list[str] = []
    wire(engine, Journal(journal), JournalConsumer(journal, error=KafkaError._TRANSPORT))
    engine._offsets[("payments.events", 0)] = 8
    with pytest.raises(KafkaException):
        engine.checkpoint()


def test_revoke_checkpoints_then_forgets_the_partitions(engine: ScoringEngine) -> None:
    journal: list[str] = []
    consumer = JournalConsumer(journal)
    wire(engine, Journal(journal), consumer)
    engine._offsets[("payments.events", 0)] = 8
    engine._on_revoke(consumer, [TopicPartition("payments.events", 0)])  # type: ignore[arg-type]
    assert journal[-1] == "commit 0@8"
    assert engine._owned == set()


@dataclass
class Answered:
    """A partition as ``on_commit`` gets it (a TopicPartition's error cannot be set)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


def answer(offsets: dict[int, int], error: int | None = None) -> list[Any]:
    """What the consumer hands ``on_commit``: each partition, and its error if any."""
    return [
        Answered("payments.events", p, o, None if error is None else KafkaError(error))
        for p, o in offsets.items()
    ]


def sent_without_waiting(engine: ScoringEngine, offsets: dict[int, int]) -> list[str]:
    """The engine wired to journals, with ``offsets`` scored and their commit sent."""
    journal: list[str] = []
    wire(engine, Journal(journal), JournalConsumer(journal))
    engine._owned = {("payments.events", p) for p in offsets}
    engine._offsets = {("payments.events", p): o for p, o in offsets.items()}
    engine.checkpoint(wait=False)
    return journal


def test_the_periodic_checkpoint_sends_its_commit_after_the_acknowledgement_without_waiting(
    engine: ScoringEngine,
) -> None:
    journal: list[str] = []
    wire(engine, Journal(journal), JournalConsumer(journal))
    engine.scorer.score(valid_records(1, offset=8))
    engine._offsets[("payments.events", 0)] = 9
    engine.checkpoint(wait=False)
    assert journal[-2:] == ["flush", "commit 0@9 (not waiting)"]
    assert engine._offsets == {}
    assert engine.counters.commits == 0  # not until the broker answers
    engine._on_commit(None, answer({0: 9}))
    assert engine.counters.commits == 1
    assert engine._unanswered == {}


def test_a_commit_that_failed_in_a_rebalance_goes_into_the_next_checkpoint(
    engine: ScoringEngine,
) -> None:
    journal = sent_without_waiting(engine, {0: 9, 1: 20})
    engine._offsets[("payments.events", 1)] = 25  # scored further meanwhile
    engine._on_commit(
        KafkaError(KafkaError.REBALANCE_IN_PROGRESS),
        answer({0: 9, 1: 20}, KafkaError.REBALANCE_IN_PROGRESS),
    )
    assert engine._offsets == {("payments.events", 0): 9, ("payments.events", 1): 25}
    assert engine.counters.commits == 0
    engine.checkpoint(wait=False)
    assert journal[-1] == "commit 0@9,1@25 (not waiting)"


def test_a_failed_commit_answered_after_a_later_one_was_sent_is_not_sent_again(
    engine: ScoringEngine,
) -> None:
    sent_without_waiting(engine, {0: 9})
    engine._offsets[("payments.events", 0)] = 15
    engine.checkpoint(wait=False)  # sent before the first one's answer came
    engine._on_commit(
        KafkaError(KafkaError.REBALANCE_IN_PROGRESS),
        answer({0: 9}, KafkaError.REBALANCE_IN_PROGRESS),
    )
    assert engine._offsets == {}  # 9 would move the group back from 15
    assert engine._unanswered == {("payments.events", 0): 15}


def test_other_failures_of_a_commit_not_waited_for_stop_the_engine_at_its_next_checkpoint(
    engine: ScoringEngine,
) -> None:
    sent_without_waiting(engine, {0: 9})
    engine._on_commit(KafkaError(KafkaError._TRANSPORT), answer({0: 9}))
    with pytest.raises(KafkaException):
        engine.checkpoint(wait=False)


def test_a_revoke_waits_for_its_commit_and_repeats_those_unanswered(
    engine: ScoringEngine,
) -> None:
    journal = sent_without_waiting(engine, {0: 9})
    engine._owned.add(("payments.events", 1))
    engine._offsets = {("payments.events", 1): 30}
    engine._on_revoke(engine._consumer, [TopicPartition("payments.events", 0)])  # type: ignore[arg-type]
    assert journal[-1] == "commit 0@9,1@30"
    assert engine._unanswered == {}
    assert engine.counters.commits == 1


class TransactionalJournal(Journal):
    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], meta: Any, t: float
    ) -> None:
        self.journal.append(
            "send offsets " + ",".join(f"{o.partition}@{o.offset}" for o in offsets)
        )

    def commit_transaction(self, timeout: float) -> None:
        self.journal.append("commit transaction")

    def begin_transaction(self) -> None:
        self.journal.append("begin transaction")

    def abort_transaction(self, timeout: float) -> None:
        self.journal.append("abort transaction")


class GroupConsumer(JournalConsumer):
    def consumer_group_metadata(self) -> object:
        return object()


def test_exactly_once_commits_outputs_and_offsets_together_then_partials(
    registry: ModelRegistry,
) -> None:
    engine = make_engine(registry, PIPELINE.with_overrides(processing_guarantee="exactly_once"))
    journal: list[str] = []
    producer = TransactionalJournal(journal)
    wire(engine, producer, GroupConsumer(journal))
    engine._producer = producer  # type: ignore[assignment]
    engine._partials = OutputWriter(Journal(journal))
    engine.scorer.score(valid_records(1, offset=4))
    engine._offsets[("payments.events", 0)] = 5
    engine.checkpoint()
    assert journal == [
        "produce payments.predictions",
        "produce payments.log",  # in the transaction, with the predictions
        "flush",
        "send offsets 0@5",
        "commit transaction",
        "begin transaction",
        "produce payments.monitor",
        "flush",
    ]
    journal.clear()
    engine.checkpoint(last=True)
    assert "begin transaction" not in journal


class StuckConsumer:
    """Partition 0 keeps its position while records arrive behind it."""

    def __init__(self) -> None:
        self.high = 100

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 40) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        self.high += 50
        return 0, self.high


def test_a_partition_that_makes_no_progress_while_lag_grows_is_engine_trouble(
    engine: ScoringEngine,
) -> None:
    now = [0.0]
    engine.progress = PartitionProgress(stall_after=120, clock=lambda: now[0])
    engine._consumer = StuckConsumer()  # type: ignore[assignment]
    engine._owned = {("payments.events", 0)}
    for second in range(0, 200, 10):
        now[0] = second
        engine._measure_lag()
    assert engine.counters.lag == {"payments.events[0]": 1060}
    trouble = engine.trouble()
    assert trouble == (
        "engine-payments: no progress on payments.events[0] (1060 records waiting, 190s)"
    )
