"""What the benchmark reports about a run, apart from running one."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.bench.engines import MIN_CPU_EVENTS, RunResult, Workbench
from stream.bench.run import EngineResults
from stream.settings import PipelineConfig, Settings


def test_cpu_per_1k_events_over_the_timed_events() -> None:
    run = RunResult(events=100_000, seconds=2.0, cpu_seconds=3.0, peak_rss_mib=500.0)
    assert run.cpu_per_1k == pytest.approx(0.03)
    part = RunResult(100_000, 2.0, 0.9, 500.0, cpu_events=30_000)
    assert part.cpu_per_1k == pytest.approx(0.03)
    assert part.as_dict()["cpu_s_per_1k"] == 0.03


def test_too_few_timed_events_give_no_cpu_figure_rather_than_a_wrong_one() -> None:
    # A small run the engine finished while its app was starting: almost nothing was timed.
    few = RunResult(20_000, 1.0, 0.0, 400.0, cpu_events=MIN_CPU_EVENTS - 1)
    assert few.cpu_per_1k is None
    assert few.as_dict()["cpu_s_per_1k"] is None
    results = EngineResults("pipeline", [few, RunResult(1_000, 1.0, 0.4, 400.0)])
    assert results.median_cpu() == pytest.approx(0.4)
    assert EngineResults("pipeline", [few]).median_cpu() is None


def _bench(tmp_path: Path, server: str | None) -> Workbench:
    pipeline = PipelineConfig.model_validate({"name": "b", "model": {"name": "m", "version": "1"}})
    return Workbench(
        "127.0.0.1:9092", tmp_path, pipeline, {}, tmp_path / "registry", tmp_path / "spec.json",
        1000, 100, 60.0, 20, tmp_path / "schemas", None, server,
    )  # fmt: skip


def test_each_bench_worker_has_an_embedded_engine_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An embedded DSN in the bench's environment would put the workers of a scaling run,
    # which run side by side, on one folder: the engine allows one process per folder.
    monkeypatch.setenv("STREAM_CLICKHOUSE_DSN", f"chdb://{tmp_path / 'shared'}")
    bench = _bench(tmp_path, None)
    seen = []
    for home in (tmp_path / "w0", tmp_path / "w1"):
        with monkeypatch.context() as env:
            for name, value in bench.worker_env(home).items():
                env.setenv(name, value)  # over the inherited environment, as a worker gets it
            seen.append(Settings().dsn)
    assert seen == [f"chdb://{(tmp_path / w / 'clickhouse').resolve()}" for w in ("w0", "w1")]


def test_bench_workers_share_a_clickhouse_server(tmp_path: Path) -> None:
    server = "http://default:secret@clickhouse:8123/stream"
    bench = _bench(tmp_path, server)
    assert bench.worker_env(tmp_path / "w0")["STREAM_CLICKHOUSE_DSN"] == server
