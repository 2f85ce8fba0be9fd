"""ClickHouse stops taking writes for 30 s while events flow.

Embedded engine: the worker's ClickHouse folder lies on a small tmpfs of the
test's own; a ballast file fills it (ClickHouse answers NOT_ENOUGH_SPACE, as
on a full disk in production) and deleting the ballast brings it back.

Server DSN: the worker writes over HTTP to a ClickHouse process of the
test's own (``tests.chserver``), which is killed (connections refused) and
started again on the same data folder.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream.services.kafka import free_port
from stream.services.worker_process import WorkerProcess
from stream.settings import PipelineConfig
from tests.chserver import ClickHouseServer
from tests.integration.conftest import PipelineHarness, closed_until, engine, window_end

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30
BOUND = 3


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs; skipped where this machine does not let the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    chunk = b"\0" * (1 << 20)
    with ballast.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return ballast


def monitor(status: dict[str, Any], pipeline: str) -> dict[str, Any]:
    return dict(status["pipelines"][pipeline]["monitor"])


@dataclass
class Outage:
    """What a worker did while ClickHouse was away, and after it came back."""

    scored_during: int
    samples: list[dict[str, Any]]  # once a second during the outage
    before: dict[str, float]  # memory before it
    peak: float
    health: dict[str, Any] | None
    last_error: str
    caught_up: float  # seconds from its end until every waiting window was written
    predictions: int
    paused_seconds: float
    failed_to_produce: int

    @property
    def most_waiting(self) -> int:
        return max(s["unwritten_windows"] for s in self.samples)

    @property
    def rss(self) -> list[float]:
        return [s["rss"] for s in self.samples]

    def figures(self) -> str:
        rss = self.rss
        return (
            f"{self.scored_during} events scored meanwhile; at most {self.most_waiting} closed "
            f"windows waited (bound {BOUND}); monitor paused {self.paused_seconds:.1f}s; all "
            f"written {self.caught_up:.1f}s after it ended; RSS {self.before['rss']:.0f} MiB "
            f"before, {rss[0]:.0f} MiB as it began and {rss[-1]:.0f} MiB as it ended (peak "
            f"{self.peak:.0f} MiB)"
        )


def outage(
    harness: PipelineHarness,
    pipeline: PipelineConfig,
    worker: WorkerProcess,
    begin: Callable[[], None],
    end: Callable[[], None],
    seed: int,
) -> Outage:
    """500 events/s; ``begin`` takes ClickHouse away for OUTAGE_SECONDS, ``end`` brings it back."""
    window_ms = int(pipeline.monitor.window_seconds * 1000)
    samples: list[dict[str, Any]] = []
    with harness.traffic(pipeline, 500 * (OUTAGE_SECONDS + 20), rate=500, seed=seed) as reports:
        worker.wait_until(
            lambda s: monitor(s, pipeline.name)["windows_written"] >= 2, 60, "windows written"
        )
        before = worker.memory_mib()
        begin()
        down = worker.wait_until(
            lambda s: not s["clickhouse"]["available"], 30, "a failed ClickHouse write"
        )
        scored_at_start = engine(down, pipeline.name)["predictions"]
        health = worker.page("/stream/health/")
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            status = worker.wait_until(lambda s: True, 10, "status")
            logger = status["pipelines"][pipeline.name]["logger"]
            samples.append(
                {
                    **monitor(status, pipeline.name),
                    **worker.memory_mib(),
                    "logger_paused": logger["paused"],
                }
            )
            time.sleep(1)  # sampling the outage as it lasts, not waiting for a state
        peak = worker.memory_mib()["peak"]
        scored_during = engine(status, pipeline.name)["predictions"] - scored_at_start
        last_error = str(status["clickhouse"]["last_error"])
        end()
        back = time.monotonic()
        worker.wait_until(lambda s: s["clickhouse"]["available"], 60, "ClickHouse writes again")
        worker.wait_until(
            lambda s: (
                monitor(s, pipeline.name)["unwritten_windows"] == 0
                and not monitor(s, pipeline.name)["paused"]
            ),
            60,
            "the waiting windows written",
        )
        caught_up = time.monotonic() - back
    (report,) = reports
    status = worker.wait_until(lambda s: True, 10, "status")
    last = window_end(engine(status, pipeline.name)["last_scored_ms"], window_ms)
    status = worker.wait_until(
        lambda s: closed_until(s, pipeline.name) >= last, 60, "the last window written"
    )
    return Outage(
        scored_during=scored_during,
        samples=samples,
        before=before,
        peak=peak,
        health=health,
        last_error=last_error,
        caught_up=caught_up,
        predictions=engine(status, pipeline.name)["predictions"],
        paused_seconds=monitor(status, pipeline.name)["paused_seconds"],
        failed_to_produce=report.failed,
    )


def assert_degraded_bounded_and_written_once(seen: Outage, in_windows: int) -> None:
    assert seen.failed_to_produce == 0
    assert seen.health is not None and seen.health["healthy"] is True, "degrades, not kills"
    assert any("ClickHouse does not take writes" in d for d in seen.health["degraded"])
    assert seen.scored_during > 1000, "scoring does not stop for ClickHouse"
    assert any(s["paused"] for s in seen.samples), "past the bound the monitor stops reading"
    assert seen.samples[-1]["logger_paused"], "the logger leaves the log in Kafka meanwhile"
    assert seen.most_waiting <= BOUND + 1
    assert seen.rss[-1] - seen.rss[0] < 16, "memory stays flat while ClickHouse is away"
    assert in_windows == seen.predictions, "every scored event is in exactly one written window"


WINDOWS = (
    "SELECT sum(count), count() FROM latency_windows FINAL WHERE pipeline = {p:String}",
    "SELECT count() FROM latency_windows WHERE pipeline = {p:String}",
)


def test_clickhouse_full_disk_for_30s_buffers_with_a_bound_then_writes_every_window_once(
    harness: PipelineHarness, small_disk: Path
) -> None:
    harness.dsn = f"chdb://{small_disk / 'clickhouse'}"
    pipeline, path = harness.pipeline(monitor={"max_unwritten_windows": BOUND})
    worker = harness.worker(path)
    worker.wait_ready()
    ballast: list[Path] = []
    seen = outage(
        harness,
        pipeline,
        worker,
        begin=lambda: ballast.append(fill(small_disk)),
        end=lambda: ballast[0].unlink(),
        seed=61,
    )
    assert worker.stop() == 0
    (((count, windows),), ((rows,),)) = harness.sql(pipeline, *WINDOWS)
    print(
        f"\nClickHouse disk full for {OUTAGE_SECONDS}s at 500 events/s: {seen.figures()}; "
        f"{windows} windows hold {count} of {seen.predictions} predictions, {rows - windows} "
        "rows written twice before merging"
    )
    assert_degraded_bounded_and_written_once(seen, count)


@pytest.fixture
def clickhouse_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(tmp_path / "server", free_port(), tmp_path / "chserver.log")
    try:
        yield server.start()
    finally:
        server.kill()


LOGGED = "SELECT count(), uniqExact(event_id) FROM prediction_log FINAL WHERE pipeline = {p:String}"


def test_clickhouse_server_refusing_connections_for_30s_then_every_row_is_written_once(
    harness: PipelineHarness, clickhouse_server: ClickHouseServer
) -> None:
    harness.dsn = clickhouse_server.dsn
    pipeline, path = harness.pipeline(monitor={"max_unwritten_windows": BOUND})
    worker = harness.worker(path)
    worker.wait_ready()
    seen = outage(
        harness,
        pipeline,
        worker,
        begin=clickhouse_server.kill,
        end=clickhouse_server.start,
        seed=67,
    )
    deadline = time.monotonic() + 60
    while harness.sql(pipeline, LOGGED)[0][0][0] < seen.predictions:
        assert time.monotonic() < deadline, "the prediction log caught up"
        time.sleep(0.5)  # the logger writes on its own schedule; polled with a deadline
    assert worker.stop() == 0
    (((count, windows),), ((rows,),), ((logged, events),)) = harness.sql(pipeline, *WINDOWS, LOGGED)
    print(
        f"\nClickHouse server refusing connections for {OUTAGE_SECONDS}s at 500 events/s "
        f"({seen.last_error[:40]}...): {seen.figures()}; {windows} windows hold {count} of "
        f"{seen.predictions} predictions, {rows - windows} rows written twice before merging; "
        f"prediction log {logged} rows for {events} events"
    )
    assert_degraded_bounded_and_written_once(seen, count)
    assert logged == events == seen.predictions, "every scored event is logged once"
