"""What the benchmark reports about a run, apart from running one."""

from __future__ import annotations

import pytest

from stream.bench.engines import MIN_CPU_EVENTS, RunResult
from stream.bench.run import EngineResults


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
