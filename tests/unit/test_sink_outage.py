"""ClickHouse that does not take writes: the sink holds tries back, the monitor holds partials."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import pytest

from stream.errors import SinkUnavailable
from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry
from stream.monitor.agent import MonitorAgent
from stream.monitor.histograms import HistogramLayout
from stream.monitor.windows import Partial
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouse, ClickHouseSink


@dataclass
class FlakyClient:
    """Takes inserts while ``up``; otherwise fails like a full disk does."""

    up: bool = True
    rows: dict[str, list[list[Any]]] = field(default_factory=dict)
    calls: int = 0

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        self.calls += 1
        if not self.up:
            raise OSError("Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)")
        self.rows.setdefault(table, []).extend(rows)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sink_of(client: FlakyClient, **kwargs: Any) -> ClickHouseSink:
    return ClickHouseSink(ClickHouse(cast(Any, client), "fake"), **kwargs)


def test_sink_holds_tries_back_doubling_and_reports_the_outage() -> None:
    client, clock = FlakyClient(up=False), Clock()
    sink = sink_of(client, min_wait=0.5, max_wait=2.0, clock=clock)
    waits = []
    for _ in range(4):
        with pytest.raises(SinkUnavailable, match="NOT_ENOUGH_SPACE"):
            sink.insert("latency_windows", ["a"], [[1]])
        waits.append(sink.wait_seconds())
        clock.now += sink.wait_seconds()
    assert waits == [0.5, 1.0, 2.0, 2.0]
    status = sink.status()
    assert status["available"] is False
    assert status["down_seconds"] == 5.5  # 0.5 + 1 + 2 + 2
    assert status["failed_inserts"] == 4
    assert "NOT_ENOUGH_SPACE" in status["last_error"]

    client.up = True
    sink.insert("latency_windows", ["a"], [[1], [2]])
    assert sink.available and sink.wait_seconds() == 0
    assert sink.status()["rows_written"] == 2


@pytest.fixture
def writer() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink")
    yield pool
    pool.shutdown(wait=True)


def partial(manifest: ModelManifest, pipeline: str, start: int, n: int, seq: int) -> bytes:
    stats = HistogramLayout.of(manifest).empty()
    stats.count = n
    stats.latency[10] = n
    p = Partial(
        pipeline, "payments-fraud", "1", window_start=start, window_ms=1000,
        emitted_at=start + 500, stats=stats, worker="w1", seq=seq,
    )  # fmt: skip
    return json.dumps(
        {
            "pipeline": p.pipeline, "model": p.model, "version": p.version,
            "window_start": p.window_start, "window_ms": p.window_ms,
            "emitted_at": p.emitted_at, "stats": p.stats.to_dict(),
            "worker": p.worker, "seq": p.seq,
        }
    ).encode()  # fmt: skip


def test_monitor_stops_taking_partials_past_the_bound_and_writes_each_window_once(
    registry: ModelRegistry, writer: ThreadPoolExecutor
) -> None:
    pipeline = PipelineConfig.model_validate(
        {
            "name": "outage",
            "model": {"name": "payments-fraud", "version": "1"},
            "monitor": {"grace_seconds": 0, "min_samples": 0, "max_unwritten_windows": 2},
        }
    )
    manifest = registry.manifest("payments-fraud", "1")
    client = FlakyClient(up=False)
    sink = sink_of(client, min_wait=0.01, max_wait=0.05)
    app = faust.App("unit-outage", broker="kafka://127.0.0.1:1", store="memory://")
    agent = MonitorAgent(app, pipeline, registry, sink, writer, {})
    agent.table = cast(Any, {})  # the table's faust changelog needs a running app
    key = "outage|payments-fraud|1"

    async def scenario() -> None:
        # Partial n closes window n-1: windows 0 and 1 wait, within the bound of 2.
        for n in range(3):
            await agent.process(key, partial(manifest, pipeline.name, n * 1000, 10, n + 1))
        assert agent.status()["unwritten_windows"] == 2
        assert not agent.status()["paused"]
        # A third closed window is past the bound: the agent holds this partial.
        held = asyncio.ensure_future(
            agent.process(key, partial(manifest, pipeline.name, 3000, 10, 4))
        )
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.paused_since is not None:
                break
        assert agent.status()["paused"] and not held.done()
        tries = client.calls
        await asyncio.sleep(0.3)
        assert client.calls > tries, "it keeps trying while it holds"
        assert not held.done()
        client.up = True
        await asyncio.wait_for(held, 5)

    asyncio.run(scenario())
    status = agent.status()
    assert status["unwritten_windows"] == 0 and not status["paused"]
    assert status["paused_seconds"] > 0.3
    assert status["windows_written"] == 3
    starts = [row[4].timestamp() for row in client.rows["latency_windows"]]
    assert sorted(starts) == [0.0, 1.0, 2.0], "each window written once, none lost"
    assert sum(row[6] for row in client.rows["latency_windows"]) == 30
