"""ClickHouse stops taking writes for 30 s while events flow: its disk is full.

The worker's embedded ClickHouse folder lies on a small tmpfs of the test's
own; a ballast file fills it (ClickHouse answers NOT_ENOUGH_SPACE, as on a
full disk in production) and deleting the ballast brings it back.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def test_clickhouse_full_disk_for_30s_buffers_with_a_bound_then_writes_every_window_once(
    harness: PipelineHarness, small_disk: Path
) -> None:
    harness.dsn = f"chdb://{small_disk / 'clickhouse'}"
    pipeline, path = harness.pipeline(monitor={"max_unwritten_windows": BOUND})
    window_ms = int(pipeline.monitor.window_seconds * 1000)
    worker = harness.worker(path)
    worker.wait_ready()
    samples: list[dict[str, Any]] = []
    with harness.traffic(pipeline, 500 * (OUTAGE_SECONDS + 20), rate=500, seed=61) as reports:
        worker.wait_until(
            lambda s: monitor(s, pipeline.name)["windows_written"] >= 2, 60, "windows written"
        )
        before = worker.memory_mib()
        ballast = fill(small_disk)
        down = worker.wait_until(
            lambda s: not s["clickhouse"]["available"], 30, "a failed ClickHouse write"
        )
        scored_at_start = engine(down, pipeline.name)["predictions"]
        health = worker.page("/stream/health/")
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            status = worker.wait_until(lambda s: True, 10, "status")
            samples.append({**monitor(status, pipeline.name), **worker.memory_mib()})
            time.sleep(1)  # sampling the outage as it lasts, not waiting for a state
        during = worker.memory_mib()
        scored_during = engine(status, pipeline.name)["predictions"] - scored_at_start
        ballast.unlink()
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
    end = window_end(engine(status, pipeline.name)["last_scored_ms"], window_ms)
    status = worker.wait_until(
        lambda s: closed_until(s, pipeline.name) >= end, 60, "the last window written"
    )
    predictions = engine(status, pipeline.name)["predictions"]
    paused_seconds = monitor(status, pipeline.name)["paused_seconds"]
    assert worker.stop() == 0

    most_waiting = max(s["unwritten_windows"] for s in samples)
    rss = [s["rss"] for s in samples]
    (((count, windows),), ((rows,),)) = harness.sql(
        pipeline,
        "SELECT sum(count), count() FROM latency_windows FINAL WHERE pipeline = {p:String}",
        "SELECT count() FROM latency_windows WHERE pipeline = {p:String}",
    )
    print(
        f"\nClickHouse disk full for {OUTAGE_SECONDS}s at 500 events/s: {scored_during} events "
        f"scored meanwhile; at most {most_waiting} closed windows waited (bound {BOUND}); "
        f"monitor paused {paused_seconds:.1f}s; all written {caught_up:.1f}s after space "
        f"came back; RSS {before['rss']:.0f} MiB before, {rss[0]:.0f} MiB as it began and "
        f"{rss[-1]:.0f} MiB as it ended (peak {during['peak']:.0f} MiB); {windows} windows "
        f"hold {count} of {predictions} predictions, {rows - windows} rows written twice "
        "before merging"
    )
    assert report.failed == 0
    assert health is not None and health["healthy"] is True, "an outage degrades, not kills"
    assert any("ClickHouse does not take writes" in d for d in health["degraded"])
    assert scored_during > 1000, "scoring does not stop for ClickHouse"
    assert any(s["paused"] for s in samples), "past the bound the monitor stops reading"
    assert most_waiting <= BOUND + 1
    assert rss[-1] - rss[0] < 16, "memory stays flat while ClickHouse is away"
    assert count == predictions, "every scored event is in exactly one written window"
