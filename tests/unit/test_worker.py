"""The worker process: a stop signal during start-up, readiness, a start that fails."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import pytest

import stream.worker
from stream.app import EngineService
from stream.errors import SinkUnavailable
from stream.settings import Settings
from stream.worker import Worker, run_worker


async def start_that_trips_over_the_stop(self: faust.Worker) -> None:
    # What faust's start-up raised when a SIGTERM cancelled a topic creation it awaited.
    raise asyncio.InvalidStateError("invalid state")


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Worker:
    monkeypatch.setattr(faust.Worker, "start", start_that_trips_over_the_stop)
    return Worker(faust.App("stream-test-signals", autodiscover=False), quiet=True)


def test_a_failure_while_starting_is_a_failure(worker: Worker) -> None:
    with pytest.raises(asyncio.InvalidStateError):
        asyncio.run(worker.start())


def test_a_failure_while_starting_after_a_stop_signal_is_the_stop(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    worker._on_sigterm()  # what faust's SIGTERM handler runs; the stop itself is not started here
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        asyncio.run(worker.start())
    assert "faust stopped while it was starting: InvalidStateError" in caplog.text


def test_the_root_logger_keeps_the_configured_level(worker: Worker) -> None:
    """faust's start-up spinner would set the root logger to DEBUG at WARNING and above."""
    root = logging.getLogger()
    before = root.level, list(root.handlers)
    try:
        root.setLevel(logging.WARNING)
        worker.on_setup_root_logger(root, logging.WARNING)
        assert root.level == logging.WARNING
        assert root.handlers == before[1]
        assert not root.isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]


@dataclass
class Engine:
    alive: bool = True
    ready: threading.Event = field(default_factory=threading.Event)


def test_the_worker_is_ready_once_faust_has_started_and_every_engine_has_partitions() -> None:
    first, second = Engine(), Engine()
    service = EngineService(cast(Any, [first, second]), cast(Any, None), [], 20.0, loop=None)
    first.ready.set()
    second.ready.set()
    assert not service.ready(), "faust has not started the service yet"
    asyncio.run(service.on_start())
    gc.unfreeze()  # on_start freezes what the test process holds
    assert service.ready()
    second.ready.clear()  # its partitions revoked
    assert not service.ready()
    second.ready.set()
    second.alive = False
    assert not service.ready()


def test_a_worker_that_cannot_open_clickhouse_leaves_no_writer_thread_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    def refuse(dsn: str, database: str) -> Any:
        raise SinkUnavailable("ClickHouse at http://nowhere: connection refused")

    for name in ("wait_for_broker", "ensure_topics", "ensure_control_topics"):
        monkeypatch.setattr(stream.worker, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(stream.worker, "read_states", lambda config: ({}, 0))
    monkeypatch.setattr(stream.worker, "connect", refuse)
    with pytest.raises(SinkUnavailable):
        run_worker(Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:9"), [])
    writers = [t for t in threading.enumerate() if t.name.startswith("clickhouse-sink")]
    assert writers == []
