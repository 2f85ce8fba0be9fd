"""What the benchmark reports about a run, apart from running one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from rich.console import Console

from stream.bench.engines import MIN_CPU_EVENTS, RunResult, Workbench
from stream.bench.run import (
    BenchOptions,
    EngineResults,
    _chart,
    _print,
    _report,
    _RssSampler,
    by_second,
)
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


def _latency_row(
    share: float, p99: float, seconds: float = 30.0, rss: list[list[float]] | None = None
) -> dict[str, Any]:
    samples = rss if rss is not None else [[0.0, 480.0], [seconds, 520.0]]
    return {
        "share": share, "seconds": seconds, "achieved_rate": 40_000 * share,
        "p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": p99, "max_ms": p99 + 10,
        "warmup": {"seconds": 5.0, "p99_ms": 40.0, "max_ms": 50.0},
        "rss_start_mib": samples[0][1], "rss_end_mib": samples[-1][1], "rss_mib": samples,
        "by_second": [],
    }  # fmt: skip


def _runs(rate: float) -> list[RunResult]:
    return [RunResult(int(rate), 1.0, rate / 50_000, 400.0)]


def test_the_report_judges_each_target_from_what_the_run_measured() -> None:
    results = {
        engine: EngineResults(engine, _runs(rate))
        for engine, rate in (
            ("pipeline", 80_000), ("pipeline-eos", 56_000), ("bare", 50_000),
            ("quix", 20_000), ("faust", 10_000),
        )
    }  # fmt: skip
    # Ten minutes at 30%: a merge's peak in the middle third, level otherwise (flat);
    # then a worker whose memory keeps growing (not flat).
    level = [[t * 10.0, 600.0 + (400.0 if t == 30 else t % 3)] for t in range(61)]
    growing = [[t * 10.0, 500.0 + 4.0 * t] for t in range(61)]
    latency = [
        _latency_row(0.5, 45.0), _latency_row(0.8, 300.0),
        _latency_row(0.3, 25.0, 600.0, level),
    ]  # fmt: skip
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, latency, [])
    verdicts = {v["target"]: (v["met"], v["measured"]) for v in report["targets"]}
    assert verdicts["pipeline ≥ 0.8x the bare loop"][0] is True
    assert verdicts["pipeline ≥ 0.8x the bare loop"][1].startswith("1.60x")
    assert verdicts["pipeline ≥ 2.5x Quix Streams"][0] is True
    assert verdicts["pipeline ≥ 10x the faust agent"] == (
        False, "8.00x (80,000 against 10,000 events/s)"
    )  # fmt: skip
    eos = verdicts["exactly-once costs ≤ 25% of at-least-once's events/s"]
    assert eos == (False, "56,000 against 80,000 events/s: 30% less")
    assert verdicts["p99 < 50 ms at 50% of the maximum"] == (True, "45 ms at 20,000 events/s")
    assert verdicts["p99 < 250 ms at 80% of the maximum"][0] is False
    flat = verdicts["worker RSS flat over 10 minutes"]
    assert flat[0] is True and "(+0%)" in flat[1]
    latency[2] = _latency_row(0.3, 25.0, 600.0, growing)
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, latency, [])
    flat = next(v for v in report["targets"] if v["target"].startswith("worker RSS"))
    assert flat["met"] is False
    assert "median 700 MiB in the last third, 618 in the middle (+13%)" in flat["measured"]
    console = Console(record=True, width=250)
    _print(report, console)
    printed = console.export_text()
    assert "targets" in printed and "missed" in printed and " met" in printed
    # A worker gone early leaves too few samples: not judged, and the report still made.
    latency[2] = _latency_row(0.3, 25.0, 600.0, [[0.0, 500.0], [5.0, 510.0]])
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, latency, [])
    flat = next(v for v in report["targets"] if v["target"].startswith("worker RSS"))
    assert flat == {
        "target": "worker RSS flat over 10 minutes",
        "measured": "30%: 2 RSS samples, too few",
        "met": None,
    }


def test_a_target_the_run_did_not_measure_is_never_reported_as_met() -> None:
    results = {"pipeline": EngineResults("pipeline", _runs(80_000))}
    short = [_latency_row(0.1, 30.0)]
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, short, [])
    assert all(v["met"] is None for v in report["targets"])
    said = {v["target"]: v["measured"] for v in report["targets"]}
    assert said["pipeline ≥ 2.5x Quix Streams"] == "not measured: --engines with pipeline and quix"
    assert said["p99 < 50 ms at 50% of the maximum"] == "not measured: --latency with 0.5"
    assert said["worker RSS flat over 10 minutes"] == (
        "480 → 520 MiB over 30 s; not measured: --latency-seconds 600"
    )
    console = Console(record=True, width=250)
    _print(report, console)
    assert "not measured" in console.export_text()


def test_pipeline_runs_timed_with_the_start_up_judge_no_target() -> None:
    # The latency shares are of the pipeline's median, too low when its runs were timed
    # with the worker's start-up; and so are its ratios.
    late = RunResult(100_000, 1.6, 0.4, 600.0, steady=False, done_at_start=95_000)
    results = {
        "pipeline": EngineResults("pipeline", [late]),
        "bare": EngineResults("bare", _runs(50_000)),
    }
    latency = [_latency_row(0.5, 45.0)]
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, latency, [])
    verdicts = {v["target"]: (v["met"], v["measured"]) for v in report["targets"]}
    assert verdicts["pipeline ≥ 0.8x the bare loop"] == (
        None,
        "1.25x (62,500 against 50,000 events/s); pipeline runs timed with the worker's "
        "start-up: --events 300,000 or more",
    )
    met, said = verdicts["p99 < 50 ms at 50% of the maximum"]
    assert met is None and said.startswith("45 ms at 20,000 events/s; pipeline runs timed")


def test_rss_is_sampled_until_the_load_ends_or_the_worker_is_gone() -> None:
    readings = iter([500.0, 510.0, 520.0])

    def memory_mib() -> dict[str, float]:
        try:
            return {"rss": next(readings)}
        except StopIteration:
            raise FileNotFoundError("/proc/1/status") from None

    with _RssSampler(memory_mib, time.monotonic(), every_s=0.01) as rss:
        deadline = time.monotonic() + 10
        while len(rss.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [mib for _, mib in rss.samples] == [500.0, 510.0, 520.0]
    times = [t for t, _ in rss.samples]
    assert times == sorted(times)


def test_the_throughput_table_and_the_targets_print_the_same_ratio() -> None:
    # 70,601 against 40,000 events/s is 1.765025x: 1.77 in both, not 1.76 from the
    # report's ratio rounded to three places (1.765) and then to two.
    results = {
        "pipeline": EngineResults("pipeline", _runs(70_601)),
        "bare": EngineResults("bare", _runs(40_000)),
    }
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [], [])
    assert report["engines"]["pipeline"]["ratio_to_bare"] == 1.765
    verdict = next(v for v in report["targets"] if v["target"].endswith("the bare loop"))
    assert verdict["measured"].startswith("1.77x")
    console = Console(record=True, width=200)
    _print(report, console)
    row = next(line for line in console.export_text().splitlines() if "70,601" in line)
    assert "1.77" in row.split() and "1.76" not in row


def test_latency_by_second_groups_each_event_by_the_second_it_was_sent_in() -> None:
    # Read back in the order the predictions came, not the order the events were sent.
    sent = [10_000, 10_999, 12_500, 10_400, 12_001, 10_700]
    latency = [20, 40, 900, 30, 700, 10]
    rows = by_second(sent, latency)
    assert [row[0] for row in rows] == [0, 2], "a second with nothing sent has no row"
    assert rows[0][3] == 4 and rows[1][3] == 2
    assert rows[0][1] == 25.0, "the median of 10, 20, 30 and 40"
    assert rows[1][1] == 800.0 and 890.0 < rows[1][2] < 900.0
    assert by_second([], []) == []


def test_the_latency_table_names_the_worst_second_after_the_warm_up() -> None:
    row = _latency_row(0.8, 300.0)
    # The warm-up's 5 s had the highest p99 of all; after them, second 7.
    row["by_second"] = [[0, 20.0, 900.0, 100], [5, 20.0, 60.0, 100], [7, 80.0, 310.0, 100]]
    results = {"pipeline": EngineResults("pipeline", _runs(50_000))}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [row], [])
    console = Console(record=True, width=250)
    _print(report, console)
    line = next(line for line in console.export_text().splitlines() if "80%" in line)
    assert "310 (7)" in line and "900" not in line


def test_the_chart_has_the_latency_by_second_when_the_run_measured_it(tmp_path: Path) -> None:
    results = {"pipeline": EngineResults("pipeline", _runs(50_000))}
    row = _latency_row(0.5, 45.0)
    row["by_second"] = [[s, 20.0, 40.0 + s, 100] for s in range(35)]
    for latency, name in (([], "throughput.png"), ([row], "both.png")):
        report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, latency, [])
        _chart(report, tmp_path / name)
    throughput, both = (Image.open(tmp_path / n) for n in ("throughput.png", "both.png"))
    assert both.height > throughput.height, "a panel below the engines' bars"
    # Every engine's latency at one rate goes beside its bar: the same size, other pixels.
    results["pipeline"].latency = [_compared(18, 30)]
    compare = {"rate": 1_050.0, "seconds": 10.0, "warmup_seconds": 5.0}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [], [], compare)
    _chart(report, tmp_path / "compared.png")
    compared = Image.open(tmp_path / "compared.png")
    assert compared.size == throughput.size
    assert compared.tobytes() != throughput.tobytes()


def _compared(p50: float | None, p99: float | None) -> dict[str, Any]:
    return {"sent": 3_000, "events": 3_000, "measured_events": 2_000, "p50_ms": p50,
            "p95_ms": p99, "p99_ms": p99, "max_ms": p99}  # fmt: skip


def test_every_engines_latency_at_one_rate_is_in_the_throughput_table() -> None:
    results = {
        "pipeline": EngineResults(
            "pipeline", _runs(70_000), latency=[_compared(18, 30), _compared(20, 26)]
        ),
        "bare": EngineResults("bare", _runs(40_000), latency=[_compared(70, 110)]),
        "quix": EngineResults(
            "quix", _runs(14_000), latency_error="quix: exited with code 1 before joining"
        ),
    }
    compare = {"rate": 1_050.0, "seconds": 10.0, "warmup_seconds": 5.0}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [], [], compare)
    assert report["compare"] == compare
    pipeline = report["engines"]["pipeline"]
    assert pipeline["latency"]["median"] == {
        "p50_ms": 19.0, "p50_ms_min": 18, "p50_ms_max": 20,
        "p99_ms": 28.0, "p99_ms_min": 26, "p99_ms_max": 30,
    }  # fmt: skip
    assert pipeline["p99_ratio_to_bare"] == round(28 / 110, 3)
    assert report["engines"]["bare"]["p99_ratio_to_bare"] == 1.0
    assert "latency" not in report["engines"]["quix"]
    assert report["engines"]["quix"]["latency_error"].startswith("quix: exited")
    console = Console(record=True, width=250)
    _print(report, console)
    text = console.export_text()
    assert "latency of each engine at 1,050 events/s" in text
    row = next(line for line in text.splitlines() if "70,000" in line)
    assert "19 (18-20)" in row and "28 (26-30)" in row and "0.25" in row.split()
    row = next(line for line in text.splitlines() if "14,000" in line)
    assert "before joining" in row, "an engine whose run failed says why"


def test_a_run_with_no_comparison_prints_no_latency_columns() -> None:
    results = {"pipeline": EngineResults("pipeline", _runs(70_000))}
    report = _report(cast(Any, _Bench(features=20)), BenchOptions(), results, [], [])
    assert report["compare"] is None and "latency" not in report["engines"]["pipeline"]
    console = Console(record=True, width=250)
    _print(report, console)
    assert "p99 x bare" not in console.export_text()
