"""The worker process's faust worker: a stop signal during start-up is a clean stop."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest

from stream.worker import Worker


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
