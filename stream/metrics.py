"""Prometheus metrics of a worker, served on ``/metrics`` (prometheus-client).

The scoring engine keeps no Prometheus objects on its hot path: it counts in
plain integers (``EngineCounters``) and folds histograms with numpy, and adds
the histograms of each drained window to ``ModelTotals`` about once a second.
A collector turns those into metric families when Prometheus scrapes. What
happens rarely (ClickHouse writes) is observed with prometheus-client's own
histogram and counter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from stream.monitor.histograms import BATCH_BOUNDS, LATENCY_BOUNDS_MS, WindowStats

if TYPE_CHECKING:
    from stream.engine.scoring import ScoringEngine
    from stream.monitor.agent import MonitorAgent
    from stream.quality.logger import PredictionLogger
    from stream.retrain.runner import RetrainJobs

# Every eighth latency bound: 12 Prometheus buckets, each four times the one before.
_LATENCY_PICK = np.arange(7, LATENCY_BOUNDS_MS.size, 8)
_LATENCY_LE_SECONDS = [float(b) / 1000.0 for b in LATENCY_BOUNDS_MS[_LATENCY_PICK]]


class ModelTotals:
    """Every window's statistics added up since the process started, per model version.

    The engine thread adds each window as it drains it; a scrape reads a copy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str, str], WindowStats] = {}

    def add(self, pipeline: str, model: str, version: str, stats: WindowStats) -> None:
        with self._lock:
            totals = self._totals.get((pipeline, model, version))
            if totals is None:
                self._totals[(pipeline, model, version)] = WindowStats.from_dict(stats.to_dict())
            else:
                totals.merge(stats)

    def snapshot(self) -> dict[tuple[str, str, str], WindowStats]:
        with self._lock:
            return {key: WindowStats.from_dict(t.to_dict()) for key, t in self._totals.items()}


def _buckets(counts: np.ndarray, pick: np.ndarray, bounds: list[float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs at the picked bounds, and +Inf."""
    cumulative = np.cumsum(counts)
    out = [(repr(bound), float(cumulative[i])) for i, bound in zip(pick, bounds, strict=True)]
    return [*out, ("+Inf", float(cumulative[-1]))]


class WorkerCollector(Collector):
    def __init__(
        self,
        engines: Callable[[], Iterable[ScoringEngine]],
        monitors: Callable[[], Iterable[MonitorAgent]],
        loggers: Callable[[], Iterable[PredictionLogger]],
        jobs: Callable[[], Iterable[RetrainJobs]] = lambda: [],
    ) -> None:
        self._engines = engines
        self._monitors = monitors
        self._loggers = loggers
        self._jobs = jobs

    def collect(self) -> Iterator[Any]:
        yield from self._engine_metrics()
        yield from self._histograms()
        yield from self._monitor_metrics()

    def _engine_metrics(self) -> Iterator[Any]:
        names = {
            "consumed": ("stream_events_consumed", "Events read from {p}.events"),
            "predictions": ("stream_predictions", "Predictions published to {p}.predictions"),
            "shadow_predictions": ("stream_shadow_predictions", "Predictions to {p}.shadow"),
            "reviews": ("stream_review_items", "Low-confidence events sent to {p}.review"),
            "fallbacks": ("stream_fallbacks", "Events the fallback model scored"),
            "batches": ("stream_batches", "Batches the scoring engine scored"),
            "commits": ("stream_commits", "Offset commits (checkpoints) of the scoring engine"),
        }
        families = {
            key: CounterMetricFamily(name, help_, labels=["pipeline"])
            for key, (name, help_) in names.items()
        }
        dead = CounterMetricFamily(
            "stream_dead_letters", "Events sent to {p}.deadletter, by reason",
            labels=["pipeline", "reason"],
        )  # fmt: skip
        revisions = CounterMetricFamily(
            "stream_model_revisions",
            "Deployment revisions this worker applied or rejected (a model failed to load)",
            labels=["pipeline", "outcome"],
        )
        lag = GaugeMetricFamily(
            "stream_consumer_lag", "Events behind the end of each owned partition of {p}.events",
            labels=["pipeline", "topic", "partition"],
        )  # fmt: skip
        revision = GaugeMetricFamily(
            "stream_model_revision", "Deployment revision the engine serves", labels=["pipeline"]
        )
        for engine in self._engines():
            p = engine.pipeline.name
            counters = engine.counters
            for key, family in families.items():
                family.add_metric([p], float(getattr(counters, key)))
            for reason, n in sorted(counters.dead_letter_reasons.items()):
                dead.add_metric([p, reason], float(n))
            revisions.add_metric([p, "applied"], float(counters.revisions_applied))
            revisions.add_metric([p, "rejected"], float(counters.revisions_rejected))
            revision.add_metric([p], float(counters.revision))
            for name, behind in sorted(counters.lag.items()):
                topic, _, partition = name.rstrip("]").rpartition("[")
                lag.add_metric([p, topic, partition], float(behind))
        yield from families.values()
        yield from (dead, revisions, revision, lag)

    def _histograms(self) -> Iterator[Any]:
        labels = ["pipeline", "model", "version"]
        latency = HistogramMetricFamily(
            "stream_end_to_end_latency_seconds",
            "Event time to scoring, per scored event", labels=labels,
        )  # fmt: skip
        inference = HistogramMetricFamily(
            "stream_inference_seconds",
            "Model run time per event (batch run time / batch size)", labels=labels,
        )  # fmt: skip
        batch = HistogramMetricFamily("stream_batch_size", "Events per model run", labels=labels)
        batch_bounds = [float(b) for b in BATCH_BOUNDS]
        batch_pick = np.arange(BATCH_BOUNDS.size)
        for engine in self._engines():
            for (p, model, version), t in engine.totals.snapshot().items():
                key = [p, model, version]
                latency.add_metric(
                    key, _buckets(t.latency, _LATENCY_PICK, _LATENCY_LE_SECONDS),
                    t.latency_sum_ms / 1000.0,
                )  # fmt: skip
                inference.add_metric(
                    key, _buckets(t.inference, _LATENCY_PICK, _LATENCY_LE_SECONDS),
                    t.inference_sum_ms / 1000.0,
                )  # fmt: skip
                batch.add_metric(key, _buckets(t.batches, batch_pick, batch_bounds), t.count)
        yield from (latency, inference, batch)

    def _monitor_metrics(self) -> Iterator[Any]:
        windows = CounterMetricFamily(
            "stream_windows_written", "Monitor windows written to ClickHouse", labels=["pipeline"]
        )
        unwritten = GaugeMetricFamily(
            "stream_windows_unwritten", "Closed windows waiting for ClickHouse",
            labels=["pipeline"],
        )  # fmt: skip
        alerts = CounterMetricFamily(
            "stream_alerts_published", "Alert records published to {p}.alerts",
            labels=["pipeline"],
        )  # fmt: skip
        open_alerts = GaugeMetricFamily(
            "stream_alerts_open", "Alerts open now", labels=["pipeline"]
        )
        logged = CounterMetricFamily(
            "stream_prediction_log_rows", "Rows the logger wrote to prediction_log and feedback",
            labels=["pipeline", "table"],
        )  # fmt: skip
        for monitor in self._monitors():
            p = monitor.pipeline.name
            status = monitor.status()
            windows.add_metric([p], float(status["windows_written"]))
            unwritten.add_metric([p], float(status["unwritten_windows"]))
            alerts.add_metric([p], float(status["alerts_published"]))
            open_alerts.add_metric([p], float(status["open_alerts"]))
        for logger in self._loggers():
            p = logger.pipeline.name
            logged.add_metric([p, "prediction_log"], float(logger.counts["predictions"]))
            logged.add_metric([p, "feedback"], float(logger.counts["labels"]))
        retrainings = CounterMetricFamily(
            "stream_retrain_jobs", "Retraining jobs this worker ran, by outcome "
            "(passed or rejected by the gate, or failed)", labels=["pipeline", "outcome"],
        )  # fmt: skip
        for jobs in self._jobs():
            for outcome in ("passed", "rejected", "failed"):
                retrainings.add_metric([jobs.pipeline.name, outcome], float(jobs.counts[outcome]))
        yield from (windows, unwritten, alerts, open_alerts, logged, retrainings)


class WorkerMetrics:
    """The worker's registry: the collector above, and ClickHouse write timings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.clickhouse_seconds = Histogram(
            "stream_clickhouse_write_seconds", "Duration of ClickHouse inserts, by table",
            ["table"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )  # fmt: skip
        self.clickhouse_failures = Counter(
            "stream_clickhouse_write_failures", "ClickHouse inserts that failed, by table",
            ["table"], registry=self.registry,
        )  # fmt: skip

    def observe_write(self, table: str, seconds: float, ok: bool) -> None:
        if ok:
            self.clickhouse_seconds.labels(table).observe(seconds)
        else:
            self.clickhouse_failures.labels(table).inc()

    def watch(self, collector: WorkerCollector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
