"""Faults on purpose: the broker goes away and comes back while events flow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.models.registry import ModelRegistry
from stream.services.kafka import KafkaBroker
from stream.services.readback import read_to_end
from tests.integration.conftest import PipelineHarness, engine

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, so restarting it does not disturb other tests."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_restart_while_producing_and_consuming(
    own_broker: KafkaBroker, clickhouse_dsn: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    harness = PipelineHarness(own_broker.bootstrap, clickhouse_dsn, registry, tmp_path)
    try:
        pipeline, path = harness.pipeline()
        worker = harness.worker(path)
        worker.wait_ready()
        pid = worker.pid
        reports: list[Any] = []
        thread = threading.Thread(
            target=lambda: reports.append(harness.producer(pipeline).run(4000, rate=500, seed=31))
        )
        thread.start()
        try:
            worker.wait_until(
                lambda s: engine(s, pipeline.name)["predictions"] >= 1000, 60, "traffic"
            )
            down = time.monotonic()
            own_broker.stop()
            own_broker.start(fresh=False)
            print(f"\nbroker down and back in {time.monotonic() - down:.1f}s")
        finally:
            thread.join()
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
