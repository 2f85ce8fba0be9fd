"""Faults on purpose: the broker goes away and comes back while events flow."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from stream.deploy.commands import change_deployment
from stream.deploy.control import CONTROL_TOPIC
from stream.errors import ServiceError
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.services.kafka import KafkaBroker
from stream.services.readback import read_to_end, read_topics
from stream.services.topics import create_topics
from stream.services.worker_process import WorkerProcess
from stream.settings import Settings
from stream.sinks.clickhouse import connect, migrate
from tests.integration.conftest import PipelineHarness, engine

pytestmark = pytest.mark.integration

V2 = ModelKey(name="payments-fraud", version="2")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, so restarting it does not disturb other tests."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_new_broker_is_ready_for_idempotent_producers(
    own_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Ready means the broker hands out producer ids: the first idempotent producer on it
    gets one at once, without librdkafka's "coordinator load in progress" warning."""
    config = {"bootstrap.servers": own_broker.bootstrap}
    create_topics(config, [NewTopic("ids", 1, 1)])
    librdkafka = logging.getLogger("tests.librdkafka")
    with caplog.at_level(logging.DEBUG, logger=librdkafka.name):
        producer = Producer({**config, "enable.idempotence": True, "logger": librdkafka})
        producer.produce("ids", b"value", key=b"key")
        assert producer.flush(30) == 0
    said = [r.getMessage() for r in caplog.records if r.name == librdkafka.name]
    assert not [m for m in said if "PID" in m or "oordinator" in m], said


def test_broker_restart_while_producing_and_consuming(
    own_broker: KafkaBroker, clickhouse_dsn: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    harness = PipelineHarness(own_broker.bootstrap, clickhouse_dsn, registry, tmp_path)
    try:
        pipeline, path = harness.pipeline()
        worker = harness.worker(path)
        worker.wait_ready()
        pid = worker.pid
        with harness.traffic(pipeline, 4000, rate=500, seed=31) as reports:
            worker.wait_until(
                lambda s: engine(s, pipeline.name)["predictions"] >= 1000, 60, "traffic"
            )
            down = time.monotonic()
            own_broker.stop()
            own_broker.start(fresh=False)
            print(f"\nbroker down and back in {time.monotonic() - down:.1f}s")
        (report,) = reports
        assert report.failed == 0
        events = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
        keys = {m.key() for m in events}
        assert len(keys) == 4000
        caught_up = time.monotonic()
        out = harness.outcomes(pipeline, keys, timeout=120)
        scored = [m.key() for t in out.values() for m in t]
        print(
            f"worker caught up {time.monotonic() - caught_up:.1f}s after the producer finished; "
            f"4000 events, none lost, {len(scored) - len(set(scored))} scored twice"
        )
        assert set(scored) == keys
        status = worker.status()
        assert status is not None and engine(status, pipeline.name)["alive"]
        assert worker.pid == pid and worker.returncode is None, "no restart needed"
        assert worker.stop() == 0
    finally:
        harness.stop_all()


def test_two_workers_one_killed_the_survivor_takes_over(
    harness: PipelineHarness, tmp_path: Path
) -> None:
    """Each worker owns an embedded ClickHouse folder of its own (one process per folder)."""
    pipeline, path = harness.pipeline(partitions=4)
    first = harness.worker(path)
    survivor = harness.worker(path, STREAM_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'ch-survivor'}")
    first.wait_ready()
    survivor.wait_ready()

    def owns(status: dict[str, Any]) -> int:
        return len(engine(status, pipeline.name)["assigned"])

    first.wait_until(lambda s: owns(s) == 2, 60, "a share of the partitions")
    with harness.traffic(pipeline, 5000, rate=1000, seed=41):
        first.wait_until(lambda s: engine(s, pipeline.name)["predictions"] >= 1000, 60, "traffic")
        first.kill()
        killed = time.monotonic()
        survivor.wait_until(lambda s: owns(s) == 4, 60, "all partitions")
        took_over = time.monotonic() - killed
    events = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    keys = {m.key() for m in events}
    out = harness.outcomes(pipeline, keys)
    scored = [m.key() for t in out.values() for m in t]
    print(
        f"\ntwo workers, one killed: survivor owned all partitions after {took_over:.1f}s "
        f"(session timeout 10 s); 5000 events, none lost, {len(scored) - len(set(scored))} "
        "scored twice"
    )
    assert set(scored) == keys and len(keys) == 5000
    assert took_over < 30
    assert survivor.stop() == 0


def test_malformed_control_record_is_refused_and_the_worker_keeps_serving(
    harness: PipelineHarness,
) -> None:
    pipeline, path = harness.pipeline()
    worker = harness.worker(path)
    worker.wait_ready()
    producer = Producer(harness.kafka_config)
    for garbage in (b"not json", b'{"pipeline": "%s", "current": 7}' % pipeline.name.encode()):
        producer.produce(CONTROL_TOPIC, key=pipeline.name.encode(), value=garbage)
    producer.flush(10)
    result = change_deployment(
        harness.kafka_config, pipeline, lambda s: s.deploy(V2), harness.registry
    )
    assert result.complete, "a valid change after the malformed ones still applies"
    assert result.after.current.revision == 1
    status = worker.status()
    assert status is not None and engine(status, pipeline.name)["revision"] == 1
    assert worker.stop() == 0
    log = worker.log_path.read_text()
    assert log.count(f"ignoring an unreadable record on {CONTROL_TOPIC}") == 2


def test_model_file_disappears_while_serving(harness: PipelineHarness, tmp_path: Path) -> None:
    """The serving model lives in memory; only a deployment that needs the file again fails."""
    registry = ModelRegistry(tmp_path / "registry")
    for version in ("1", "2"):
        folder = harness.registry.folder("payments-fraud", version)
        registry.register(
            (folder / "model.onnx").read_bytes(),
            harness.registry.manifest("payments-fraud", version),
        )
    pipeline, path = harness.pipeline()
    worker = harness.worker(path, STREAM_REGISTRY=str(registry.root))
    worker.wait_ready()
    for version in ("1", "2"):
        (registry.folder("payments-fraud", version) / "model.onnx").unlink()

    harness.producer(pipeline).run(500, rate=0, seed=51)
    events = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    out = harness.outcomes(pipeline, {m.key() for m in events})
    assert len(out[pipeline.predictions_topic]) == 500, "still scoring from memory"

    result = change_deployment(harness.kafka_config, pipeline, lambda s: s.deploy(V2), None)
    (answer,) = result.answers.values()
    assert answer["kind"] == "rejected" and "no model file" in answer["message"]
    status = worker.status()
    assert status is not None and engine(status, pipeline.name)["alive"]
    assert engine(status, pipeline.name)["revision"] == 0, "v1 keeps serving"
    assert worker.stop() == 0


def _state_events(value: bytes) -> int:
    """Events in the windows of one monitor state record (faust's JSON changelog value)."""
    state = json.loads(value)
    entries = [*state["open"].values(), *state["closed"].values()]
    return sum(int(e["stats"]["count"]) for e in entries if e["stats"])


def _windows(dsn: str, pipeline: str) -> dict[Any, tuple[int, int]]:
    """window start → (revision, events) of the pipeline's rows in one ClickHouse folder."""
    ch = connect(dsn, "stream")
    try:
        migrate(ch, Settings().migrations_dir)
        rows = ch.client.query(
            "SELECT window_start, revision, count FROM latency_windows FINAL "
            "WHERE pipeline = {p:String}",
            parameters={"p": pipeline},
        ).result_rows
    finally:
        ch.close()
    return {start: (revision, count) for start, revision, count in rows}


def _changelog(path: Path, pipeline: str) -> str:
    return f"stream-test-{path.stem}-{pipeline}-monitor-windows-changelog"


def _wait_for_state_events(harness: PipelineHarness, changelog: str, events: int) -> int:
    """Events in the newest state record once it holds ``events`` (or after 60 s)."""
    out = read_topics(
        harness.kafka_config,
        {changelog: None},
        lambda out: bool(out[changelog]) and _state_events(out[changelog][-1].value()) == events,
        timeout=60,
    )
    return _state_events(out[changelog][-1].value()) if out[changelog] else 0


def test_monitor_reads_again_what_its_recovered_state_lacks(
    harness: PipelineHarness, tmp_path: Path
) -> None:
    """A changelog behind the committed offset: the agent rewinds to where its state ends.

    Around a rebalance faust can commit the monitor's offset past partials whose
    merge never reached the changelog. Staged here: after the first worker stopped
    (its offsets committed through every partial), an older state record is put
    back at the end of the changelog, as if the newest ones had not been written.
    """
    pipeline, path = harness.pipeline(monitor={"window_seconds": 5, "grace_seconds": 90})
    first = harness.worker(path)
    first.wait_until(
        lambda s: s["pipelines"][pipeline.name]["monitor"]["owns_topic"], 90, "the monitor topic"
    )  # the changelog exists from here on
    changelog = _changelog(path, pipeline.name)
    for events, seed in ((1000, 81), (2000, 82)):
        harness.producer(pipeline).run(1000, rate=0, seed=seed)
        assert _wait_for_state_events(harness, changelog, events) == events
        if events == 1000:
            stale = read_to_end(harness.kafka_config, [changelog])[changelog][-1]
    assert first.stop() == 0

    producer = Producer(harness.kafka_config)
    producer.produce(changelog, stale.value(), key=stale.key(), partition=0)
    producer.flush(10)

    second = harness.worker(path)

    def merged_all(s: dict[str, Any]) -> bool:
        monitor = s["pipelines"][pipeline.name]["monitor"]
        return sum(monitor["open_events"].values()) == 2000

    status = second.wait_until(merged_all, 90, "the monitor holding all 2000 events again")
    monitor = status["pipelines"][pipeline.name]["monitor"]
    print(
        f"\nstate recovered with 1000 of 2000 events, offsets committed past all: "
        f"{monitor['rewinds']} rewind(s), {sum(monitor['open_events'].values())} events held"
    )
    assert monitor["rewinds"] >= 1
    assert second.stop() == 0


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_monitor_owner_killed_the_survivor_recovers_the_windows_from_the_changelog(
    harness: PipelineHarness, tmp_path: Path, store: str
) -> None:
    """The monitor state of a killed worker lives on in its changelog, with either store."""
    # A long grace keeps the windows open past the kill (on a slow machine the kill has
    # come a minute after the events), so their events reach the survivor through the
    # changelog alone.
    pipeline, path = harness.pipeline(monitor={"window_seconds": 5, "grace_seconds": 90})
    dsn = {name: f"chdb://{tmp_path / f'ch-{name}'}" for name in ("a", "b")}

    def start(name: str) -> WorkerProcess:
        return harness.worker(
            path,
            STREAM_CLICKHOUSE_DSN=dsn[name],
            STREAM_HOME=str(tmp_path / f"home-{name}"),  # RocksDB folders are per process
            STREAM_TABLE_STORE=store,
        )

    workers = {name: start(name) for name in dsn}
    for worker in workers.values():
        worker.wait_ready()

    def owner() -> str | None:
        owns = [
            name
            for name, worker in workers.items()
            if (s := worker.status()) and s["pipelines"][pipeline.name]["monitor"]["owns_topic"]
        ]
        return owns[0] if len(owns) == 1 else None

    harness.producer(pipeline).run(2000, rate=0, seed=71)
    events = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    harness.outcomes(pipeline, {m.key() for m in events})
    # The changelog, not any one worker's memory, is what a survivor recovers from
    # (the monitor topic may have changed hands while the workers joined).
    changelog = _changelog(path, pipeline.name)
    assert _wait_for_state_events(harness, changelog, 2000) == 2000
    deadline = time.monotonic() + 60
    while (killed := owner()) is None:
        assert time.monotonic() < deadline, "no single owner of the monitor topic"
        time.sleep(0.2)
    workers[killed].kill()
    (name,) = set(workers) - {killed}
    survivor = workers[name]

    def all_closed(s: dict[str, Any]) -> bool:
        monitor = s["pipelines"][pipeline.name]["monitor"]
        open_events = monitor["open_events"]
        return bool(monitor["owns_topic"] and open_events and not sum(open_events.values()))

    # As a supervisor would: a survivor that gave up (its watchdog found the monitor
    # stuck, e.g. in a recovery that never ends) is started again, up to twice.
    restarts = 0
    while True:
        try:
            status = survivor.wait_until(all_closed, 180, "the survivor closing every window")
            break
        except ServiceError:
            if survivor.returncode in (None, 0) or restarts == 2:
                raise
            restarts += 1
            survivor = start(name)
    assert survivor.stop() == 0

    # Each worker wrote to a ClickHouse folder of its own: the survivor what it recovered,
    # the killed owner what closed before the kill (nothing, unless the test ran slowly).
    by_survivor = _windows(dsn[name], pipeline.name)
    written = _windows(dsn[killed], pipeline.name)
    for start, row in by_survivor.items():
        written[start] = max(written.get(start, row), row)  # the newer revision wins
    recovered = sum(count for _, count in by_survivor.values())
    print(
        f"\n{store} store: monitor owner killed with 2000 events in its windows; the survivor "
        f"recovered {recovered} from the changelog and wrote them; "
        f"{sum(c for _, c in written.values())} in all; survivor restarted {restarts} time(s)"
    )
    assert status["pipelines"][pipeline.name]["monitor"]["late_partials"] == 0
    assert sum(count for _, count in written.values()) == 2000
