"""What the benchmark reports about a run, apart from running one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

from stream.bench.engines import MIN_CPU_EVENTS, RunResult, Workbench
from stream.bench.run import BenchOptions, EngineResults, _print, _report
from stream.settings import PipelineConfig, Settings


def test_cpu_per_1k_events_over_the_timed_events() -> None:
    run = RunResult(events=100_000, seconds=2.0, cpu_seconds=3.0, peak_rss_mib=500.0)
    assert run.cpu_per_1k == pytest.approx(0.03)
    assert run.as_dict()["cpu_s_per_1k"] == 0.03
    assert run.as_dict()["steady"] is True


def test_too_few_timed_events_give_no_cpu_figure_rather_than_a_wrong_one() -> None:
    few = RunResult(MIN_CPU_EVENTS - 1, 1.0, 0.1, 400.0)
    assert few.cpu_per_1k is None
    assert few.as_dict()["cpu_s_per_1k"] is None
    results = EngineResults("pipeline", [few, RunResult(1_000, 1.0, 0.4, 400.0)])
    assert results.median_cpu() == pytest.approx(0.4)
    assert EngineResults("pipeline", [few]).median_cpu() is None


def test_a_run_timed_with_the_workers_start_up_is_reported_as_such() -> None:
    # The engine had scored 95,000 of 100,000 events when the faust app was up: the run is
    # timed from the partition assignment, and the CPU after that is mostly catching up.
    late = RunResult(100_000, 1.6, 0.4, 600.0, steady=False, done_at_start=95_000)
    assert late.cpu_per_1k is None
    assert late.as_dict()["steady"] is False
    steady = RunResult(70_000, 0.8, 0.84, 550.0, done_at_start=30_000)
    results = {"pipeline": EngineResults("pipeline", [late, steady, late])}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [], [])
    entry = report["engines"]["pipeline"]
    assert entry["not_steady"] == {"runs": 2, "events_for_steady": 300_000}
    assert entry["median"]["cpu_s_per_1k"] == pytest.approx(0.012)
    console = Console(record=True, width=200)
    _print(report, console)
    printed = " ".join(console.export_text().split())
    assert "2 of 3 runs" in printed
    assert "--events 300,000 or more" in printed
    only_steady = {"pipeline": EngineResults("pipeline", [steady])}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), only_steady, [], [])
    assert "not_steady" not in report["engines"]["pipeline"]


@dataclass
class _Bench:
    features: int


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
