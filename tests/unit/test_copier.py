"""The topic copier: rows written before offsets are committed, malformed records skipped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from stream.deploy.control import EVENTS_TOPIC, MODEL_EVENT_COLUMNS, model_event, model_event_row
from stream.sinks import copier as copier_module
from stream.sinks.copier import CopyRoute, TopicCopier
from tests.unit.fakes import FakeRecord
from tests.unit.test_sink_outage import Clock, FlakyClient, sink_of

ALERTS = "p.alerts"


class QueueConsumer:
    """Hands out the queued records once, then nothing; owns every partition it is given."""

    def __init__(self, records: list[FakeRecord]) -> None:
        self.records = records
        self.commits: list[list[tuple[str, int, int]]] = []
        self.paused = 0
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any) -> None:
        on_assign(self, [TopicPartition(t, 0) for t in topics])

    def consume(self, num: int, timeout: float) -> list[FakeRecord]:
        taken, self.records = self.records[:num], self.records[num:]
        if not taken:
            time.sleep(min(timeout, 0.01))
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(sorted((o.topic, o.partition, o.offset) for o in offsets))

    def assignment(self) -> list[TopicPartition]:
        return []

    def pause(self, _partitions: Any) -> None:
        self.paused += 1

    def resume(self, _partitions: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def writer() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def alert_route_row(record: dict[str, Any]) -> list[Any]:
    return [record["alert_id"], record["state"]]


def run_copier(
    monkeypatch: pytest.MonkeyPatch,
    records: list[FakeRecord],
    client: FlakyClient,
    writer: ThreadPoolExecutor,
    between: Callable[[QueueConsumer], None] = lambda _: None,
) -> tuple[TopicCopier, QueueConsumer]:
    """Run the copier's loop on its thread until it committed past every record."""
    consumer = QueueConsumer(records)
    last = {(m.topic(), m.partition()): m.offset() + 1 for m in records}
    monkeypatch.setattr(copier_module, "group_consumer", lambda *_a, **_k: consumer)
    routes = [
        CopyRoute(EVENTS_TOPIC, "model_events", MODEL_EVENT_COLUMNS, model_event_row),
        CopyRoute(ALERTS, "alerts", ["alert_id", "state"], alert_route_row),
    ]
    sink = sink_of(client, min_wait=0.01, max_wait=0.01, clock=Clock())
    copier = TopicCopier({}, "app.copier", "host-1", routes, sink, writer, stall_after=30.0)
    copier.start()
    try:
        between(consumer)
        deadline = time.monotonic() + 10
        committed: dict[tuple[str, int], int] = {}
        while committed != last and time.monotonic() < deadline:
            committed = {(t, p): o for batch in consumer.commits for t, p, o in batch}
            time.sleep(0.01)
        assert committed == last, "the copier committed past every record"
    finally:
        copier.stop()
    assert not copier.alive and copier.failure is None
    return copier, consumer


def test_rows_of_each_topic_go_to_their_table_and_the_offsets_after_them(
    monkeypatch: pytest.MonkeyPatch, writer: ThreadPoolExecutor
) -> None:
    step = model_event("p", 3, "", "retrained", "p:2 trained", "p:2", "a@h", "accuracy alerts")
    records = [
        FakeRecord(json.dumps(step).encode(), _topic=EVENTS_TOPIC, _offset=7),
        FakeRecord(b"{not json", _topic=EVENTS_TOPIC, _offset=8),
        FakeRecord(json.dumps({"state": "firing"}).encode(), _topic=ALERTS, _offset=1),
        FakeRecord(json.dumps({"alert_id": "a1", "state": "firing"}).encode(), _topic=ALERTS,
                   _offset=2),
    ]  # fmt: skip
    client = FlakyClient()
    copier, consumer = run_copier(monkeypatch, records, client, writer)

    assert client.rows["model_events"] == [model_event_row(step)]
    assert client.rows["model_events"][0][7] == "accuracy alerts"
    assert client.rows["alerts"] == [["a1", "firing"]]
    # A malformed record is skipped, counted, and committed past: reading it again
    # would not make it a row.
    assert copier.status() == {
        "group": "app.copier",
        "copied": {EVENTS_TOPIC: 1, ALERTS: 1},
        "skipped": 2,
    }
    assert consumer.commits == [[(ALERTS, 0, 3), (EVENTS_TOPIC, 0, 9)]]
    assert consumer.closed


def test_nothing_is_committed_until_clickhouse_takes_the_rows(
    monkeypatch: pytest.MonkeyPatch, writer: ThreadPoolExecutor
) -> None:
    step = model_event("p", 1, "", "promoted", "p:2 serves", "p:2", "a@h")
    records = [FakeRecord(json.dumps(step).encode(), _topic=EVENTS_TOPIC, _offset=40)]
    client = FlakyClient(up=False)

    def outage_then_back(consumer: QueueConsumer) -> None:
        deadline = time.monotonic() + 10
        while client.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.calls >= 2, "the copier tried again while ClickHouse was away"
        assert consumer.commits == [], "no commit while ClickHouse is away"
        assert consumer.paused >= 1, "the partitions wait in Kafka while ClickHouse is away"
        client.up = True

    copier, consumer = run_copier(monkeypatch, records, client, writer, outage_then_back)

    assert client.rows["model_events"] == [model_event_row(step)]
    assert consumer.commits == [[(EVENTS_TOPIC, 0, 41)]]
    assert copier.copied[EVENTS_TOPIC] == 1
