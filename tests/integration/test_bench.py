"""`stream bench` in smoke mode: every engine runs end to end on a tiny workload.

Behaviour only: that each engine reads every event and the report has its
fields. The figures themselves belong to the benchmark, not to a test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from stream.bench.engines import ENGINES, PEERS_DIR
from stream.bench.run import BenchOptions, run_bench
from stream.settings import Settings

pytestmark = pytest.mark.integration


def test_bench_smoke_runs_every_engine_and_writes_its_report(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap)
    peers_before = sorted(PEERS_DIR.iterdir())
    out = io.StringIO()
    report = run_bench(
        settings,
        BenchOptions(
            events=1000, runs=1, partitions=2, trees=10, latency=(0.5,), latency_seconds=2,
            latency_warmup=1, compare_seconds=1, scale=2, timeout=300,
            json_path=tmp_path / "bench.json",
        ),
        Console(file=out, width=200),
    )  # fmt: skip
    for engine in ENGINES:
        entry = report["engines"][engine]
        assert "error" not in entry, entry.get("error")
        (run,) = entry["runs"]
        assert run["events"] > 0 and run["events_per_s"] > 0, engine
        assert run["cpu_s_per_1k"] is None or run["cpu_s_per_1k"] > 0, engine
        if not run["steady"]:
            # 1,000 events are mostly scored while the worker starts: said, with no CPU figure.
            assert engine.startswith("pipeline") and run["cpu_s_per_1k"] is None, engine
            assert entry["not_steady"]["runs"] == 1, engine
            assert f"{entry['title']}: 1 of 1 runs had scored" in out.getvalue()
        assert entry["ratio_to_bare"] > 0
        # Its latency at the one rate every engine is fed at: an output for every event.
        assert "latency_error" not in entry, entry.get("latency_error")
        (compared,) = entry["latency"]["runs"]
        assert compared["events"] == compared["sent"] > 0, engine
        assert compared["measured_events"] > 0, engine
        assert 0 <= compared["p50_ms"] <= compared["p99_ms"] <= compared["max_ms"], engine
    assert report["engines"]["bare"]["ratio_to_bare"] == 1.0
    assert report["engines"]["bare"]["p99_ratio_to_bare"] == 1.0
    assert report["compare"]["rate"] > 0 and report["compare"]["seconds"] == 1
    (latency,) = report["latency"]
    assert latency["events"] == latency["sent"] > 0, "a latency for every event sent"
    first = latency["warmup"]
    assert first["seconds"] == 1 and first["events"] > 0 and latency["measured_events"] > 0
    assert first["events"] + latency["measured_events"] == latency["events"]
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert first["p50_ms"] <= first["p99_ms"] <= first["max_ms"]
    assert latency["rss_mib"] and latency["rss_mib"][0][1] > 0, "the worker's RSS, sampled"
    seconds = latency["by_second"]
    assert seconds[0][0] == 0 and sum(row[3] for row in seconds) == latency["events"]
    # Every target judged; the ones a short run cannot measure are said to be so.
    judged = {v["target"]: v["met"] for v in report["targets"]}
    assert len(judged) == 7
    steady = "not_steady" not in report["engines"]["pipeline"]
    # Judged only on pipeline runs timed in steady state; 1,000 events are mostly not.
    assert all((judged[t] is not None) == steady for t in judged if t.startswith("pipeline ≥"))
    assert judged["p99 < 250 ms at 80% of the maximum"] is None
    assert judged["worker RSS flat over 10 minutes"] is None
    one, two = report["scaling"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert len(two["events_per_worker"]) == 2 and all(two["events_per_worker"]), "both scored"
    assert sum(two["events_per_worker"]) >= 1000 and two["events_per_s"] > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "this pipeline, every feature on" in out.getvalue()
    # The peers' state (faust's data folder, Quix Streams' state/) stays in the run's folder.
    assert sorted(PEERS_DIR.iterdir()) == peers_before


def test_bench_takes_a_number_of_float_features(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap)
    report = run_bench(
        settings,
        BenchOptions(
            events=1000, runs=1, partitions=2, trees=10, features=40, latency=(),
            compare_seconds=0, engines=("pipeline", "bare", "quix"), timeout=300,
        ),
        Console(file=io.StringIO(), width=200),
    )  # fmt: skip
    assert report["workload"]["features"] == 40
    for engine in ("pipeline", "bare", "quix"):
        entry = report["engines"][engine]
        assert "error" not in entry, entry.get("error")
        assert entry["runs"][0]["events"] == 1000, engine
