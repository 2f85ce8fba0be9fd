"""One real Kafka broker and one ClickHouse data folder per test session.

Workers run as ``stream worker`` child processes, as in production; the test
process reads ClickHouse only while no worker holds the embedded data folder.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.models.registry import ModelRegistry
from stream.produce import PacedProducer, ProduceReport
from stream.serde import AvroSerde, load_schema
from stream.services.kafka import KafkaBroker
from stream.services.readback import end_offsets, read_to_end, read_topics
from stream.services.topics import ensure_topics
from stream.services.worker_process import WorkerProcess
from stream.settings import PipelineConfig, Settings
from stream.sinks.clickhouse import connect, migrate


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("STREAM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


class PipelineHarness:
    """Pipelines with unique names, their workers, and what they wrote."""

    def __init__(self, bootstrap: str, dsn: str, registry: ModelRegistry, tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.dsn = dsn
        self.registry = registry
        self.tmp = tmp
        self.kafka_config: dict[str, Any] = {"bootstrap.servers": bootstrap}
        self.workers: list[WorkerProcess] = []

    def pipeline(self, **overrides: Any) -> tuple[PipelineConfig, Path]:
        name = f"it-{uuid.uuid4().hex[:8]}"
        raw: dict[str, Any] = {
            "name": name,
            "model": {"name": "payments-fraud", "version": "1"},
            "partitions": 2,
            "batch": {"max_size": 500, "max_wait_ms": 50},
            "monitor": {"window_seconds": 2, "grace_seconds": 1, "min_samples": 100},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        pipeline = PipelineConfig.model_validate(raw)
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(pipeline.model_dump(by_alias=True)))
        ensure_topics(self.kafka_config, [pipeline])
        return pipeline, path

    def producer(self, pipeline: PipelineConfig) -> PacedProducer:
        """Synthetic payments (Avro) for the pipeline's events topic."""
        serde = AvroSerde(load_schema(Settings().schemas_dir, pipeline.input.schema_file))
        return PacedProducer(self.kafka_config, pipeline.events_topic, serde)

    @contextlib.contextmanager
    def traffic(
        self, pipeline: PipelineConfig, count: int, rate: float, seed: int
    ) -> Iterator[list[ProduceReport]]:
        """Produce on a thread while the body runs; the report is in the list afterwards."""
        reports: list[ProduceReport] = []
        producer = self.producer(pipeline)
        thread = threading.Thread(
            target=lambda: reports.append(producer.run(count, rate=rate, seed=seed))
        )
        thread.start()
        try:
            yield reports
        finally:
            thread.join()

    def worker(self, path: Path, **overrides: str) -> WorkerProcess:
        """A `stream worker` child process; ``overrides`` are STREAM_* variables."""
        env = {
            "STREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "STREAM_CLICKHOUSE_DSN": self.dsn,
            "STREAM_REGISTRY": str(self.registry.root),
            "STREAM_HOME": str(self.tmp / "home"),
            "STREAM_APP_ID": f"stream-test-{path.stem}",
            "STREAM_LOG_LEVEL": "INFO",
            # Watchdogs much tighter than production's, so a false alarm fails a test.
            "STREAM_STALL_SECONDS": "20",
            **overrides,
        }
        worker = WorkerProcess(path, env, self.tmp / f"{path.stem}-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker.start()

    def outcomes(
        self, pipeline: PipelineConfig, expected_keys: set[bytes], timeout: float = 90.0
    ) -> dict[str, list[Any]]:
        """Read predictions and dead letters until every expected key has one."""
        topics = [pipeline.predictions_topic, pipeline.deadletter_topic]

        def done(out: dict[str, list[Any]]) -> bool:
            seen = {m.key() for t in topics for m in out[t]}
            return expected_keys <= seen

        read_topics(self.kafka_config, {t: None for t in topics}, done, timeout)
        out = read_to_end(self.kafka_config, topics)
        missing = expected_keys - {m.key() for t in topics for m in out[t]}
        assert not missing, f"{len(missing)} events have neither a prediction nor a dead letter"
        return out

    def review_count(self, pipeline: PipelineConfig) -> int:
        return sum(end_offsets(self.kafka_config, pipeline.review_topic).values())

    def sql(self, pipeline: PipelineConfig, *queries: str) -> list[list[Any]]:
        """Rows of each query, ``{p:String}`` bound to the pipeline's name.

        Opens the embedded ClickHouse folder for the queries only: no worker may
        hold it then.
        """
        ch = connect(self.dsn, "stream")
        try:
            migrate(ch, Settings().migrations_dir)
            return [
                list(ch.client.query(q, parameters={"p": pipeline.name}).result_rows)
                for q in queries
            ]
        finally:
            ch.close()

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the tail of each of its workers' logs."""
    report: pytest.TestReport = yield
    harness = getattr(item, "funcargs", {}).get("harness")
    if report.when == "call" and report.failed and isinstance(harness, PipelineHarness):
        for worker in harness.workers:
            report.sections.append((f"log of {worker.log_path.name}", worker.log_tail(40)))
    return report


@pytest.fixture
def harness(
    kafka_bootstrap: str, clickhouse_dsn: str, registry: ModelRegistry, tmp_path: Path
) -> Iterator[PipelineHarness]:
    h = PipelineHarness(kafka_bootstrap, clickhouse_dsn, registry, tmp_path)
    try:
        yield h
    finally:
        h.stop_all()


def window_end(ms: int, window_ms: int) -> int:
    return (ms // window_ms + 1) * window_ms


def closed_until(status: dict[str, Any], pipeline: str) -> int:
    return max(status["pipelines"][pipeline]["monitor"]["closed_until"].values(), default=0)


def monitor(status: dict[str, Any], pipeline: str) -> dict[str, Any]:
    return dict(status["pipelines"][pipeline]["monitor"])


def engine(status: dict[str, Any], pipeline: str) -> dict[str, Any]:
    return dict(status["pipelines"][pipeline]["engine"])


Check = Callable[[dict[str, Any]], bool]
