"""``stream bench``: every engine, back to back, on the same data and machine.

Throughput: the events are produced once; each engine then reads them all,
``runs`` times, and the table gives the median with the spread (min-max).
Latency: the pipeline alone, fed at fixed shares of its measured maximum for
a fixed time; end-to-end latency is the prediction's Kafka timestamp minus
the event's. Each latency run is a fresh pipeline (new topics, consumer
groups and ClickHouse tables), whose first events pay for creating them; the
run's first ``latency_warmup`` seconds of traffic, at the same rate, are
reported apart from the measured time after them. Then every engine, the
peers too, is fed at one rate they all keep up with, for the throughput
table's latency columns.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from stream.bench.engines import (
    ENGINES,
    PIPELINE_VARIANTS,
    TITLES,
    RunResult,
    Workbench,
    peer_command,
    peer_group_id,
    peer_home,
    peer_python,
    run_peer,
    run_pipeline,
)
from stream.bench.targets import P99_UNDER_MS, judge, median_rate
from stream.bench.workload import SCHEMA_FILE, float_events, schemas_folder, train_float_model
from stream.demo.data import train_demo_model
from stream.demo.run import kafka
from stream.errors import ServiceError, StreamError
from stream.models.registry import ModelRegistry
from stream.produce import PacedProducer, ProduceReport, event_serde
from stream.serde import load_schema
from stream.services.readback import iter_to_end
from stream.services.stopping import uninterrupted
from stream.services.topics import (
    create_topics,
    ensure_topics,
    pipeline_topics,
    wait_for_broker,
)
from stream.settings import PipelineConfig, Settings


@dataclass(frozen=True)
class BenchOptions:
    events: int = 300_000
    runs: int = 3
    partitions: int = 4
    trees: int = 100
    depth: int = 4
    features: int = 0  # 0: the demo's payments (19 features); N: N float features
    batch: int = 1000
    format: Literal["avro", "json"] = "avro"
    engines: tuple[str, ...] = ENGINES
    latency: tuple[float, ...] = (0.1, 0.5, 0.8)
    latency_seconds: float = 30.0
    latency_warmup: float = 5.0
    scale: int = 0  # scaling mode: 1 … scale worker processes on the same partitions
    # Every engine's latency at one input rate (0: none); the rate, 0: COMPARE_SHARE of
    # the slowest engine's median events/s, which every engine keeps up with.
    compare_seconds: float = 10.0
    compare_rate: float = 0.0
    timeout: float = 900.0
    json_path: Path | None = None


# The share of the slowest engine's maximum at which every engine's latency is compared.
COMPARE_SHARE = 0.5


@dataclass
class EngineResults:
    engine: str
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None
    # Its runs at the comparison's rate: percentiles of the measured seconds' latencies.
    latency: list[dict[str, Any]] = field(default_factory=list)
    latency_error: str | None = None

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in self.runs))

    def median_cpu(self) -> float | None:
        """Median CPU seconds per 1,000 events of the runs that could time enough events."""
        known = [r.cpu_per_1k for r in self.runs if r.cpu_per_1k is not None]
        return float(statistics.median(known)) if known else None

    def not_steady(self) -> list[RunResult]:
        """The runs timed with the worker's start-up (too few events for the speed)."""
        return [r for r in self.runs if not r.steady]

    def spread(self, attribute: str) -> tuple[float, float]:
        values = [float(getattr(r, attribute)) for r in self.runs]
        return min(values), max(values)


def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    unknown = set(options.engines) - set(ENGINES)
    if unknown:
        raise StreamError(f"--engines: unknown {sorted(unknown)}; choose from {list(ENGINES)}")
    folder = settings.home / "bench" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    if options.features:
        schemas = schemas_folder(settings.schemas_dir, folder, options.features)
        settings = settings.model_copy(update={"schemas_dir": schemas})
    with kafka(settings, console) as bootstrap:
        wait_for_broker({"bootstrap.servers": bootstrap})
        bench = _prepare(settings, options, bootstrap, folder, console)
        results = _throughput(bench, options, console)
        latency = _latency(settings, bench, options, results, console)
        compare = _compare(settings, bench, options, results, console)
        scaling = [_scaling_run(settings, bench, n, console) for n in range(1, options.scale + 1)]
    report = _report(bench, options, results, latency, scaling, compare)
    _print(report, console)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(report, indent=2))
        chart = options.json_path.with_suffix(".png")
        _chart(report, chart)
        console.print(f"results in {options.json_path}, chart in {chart}")
    return report


def _prepare(
    settings: Settings, options: BenchOptions, bootstrap: str, folder: Path, console: Console
) -> Workbench:
    registry = ModelRegistry(folder / "registry")
    with console.status(
        f"training the benchmark model ({options.trees} trees of depth {options.depth})…"
    ):
        if options.features:
            onnx_bytes, manifest = train_float_model(
                "bench-model", "1", options.features, options.trees, options.depth
            )
        else:
            onnx_bytes, manifest = train_demo_model(
                "bench-model", "1", trees=options.trees, depth=options.depth
            )
        registry.register(onnx_bytes, manifest)
    schema_file = SCHEMA_FILE if options.features else "payments_event.avsc"
    name = f"bench-{uuid.uuid4().hex[:6]}"
    pipeline = PipelineConfig.model_validate(
        {
            "name": name,
            "model": {"name": "bench-model", "version": "1"},
            "partitions": options.partitions,
            "input": {"format": options.format, "schema": schema_file},
            "batch": {"max_size": options.batch},
            "monitor": {"window_seconds": 10, "grace_seconds": 2},
        }
    )
    files = {}
    for engine, changes in PIPELINE_VARIANTS.items():
        path = folder / f"{engine}.yaml"
        config = {**pipeline.model_dump(by_alias=True), **changes}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        files[engine] = path
    spec = folder / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "pipeline": name,
                "model": manifest.name,
                "version": manifest.version,
                "format": options.format,
                "onnx": str(registry.folder(manifest.name, manifest.version) / "model.onnx"),
                "input_name": manifest.input_name,
                "output_name": manifest.output.probabilities,
                "features": [
                    {"name": f.name, "fill": f.fill, "categories": f.categories}
                    for f in manifest.features
                ],
                "event_schema": load_schema(settings.schemas_dir, schema_file),
                "prediction_schema": load_schema(settings.schemas_dir, "prediction.avsc"),
            }
        )
    )
    kafka_config = {"bootstrap.servers": bootstrap}
    source = float_events(options.features) if options.features else None
    ensure_topics(kafka_config, [pipeline], settings.replication_factor)
    create_topics(
        kafka_config,
        [
            NewTopic(f"{name}.bench-{engine}", options.partitions, settings.replication_factor)
            for engine in ENGINES
            if not engine.startswith("pipeline")
        ],
    )
    with console.status(f"producing {options.events:,} events to {pipeline.events_topic}…"):
        report = PacedProducer(
            kafka_config, pipeline.events_topic, event_serde(settings, pipeline), source
        ).run(options.events, rate=0, seed=1)
    if report.failed:
        raise ServiceError(f"{report.failed} benchmark events were not acknowledged")
    console.print(
        f"{options.events:,} events in {pipeline.events_topic} ({options.partitions} partitions, "
        f"{options.format}); model: {options.trees} trees of depth {options.depth}, "
        f"{len(manifest.features)} features"
    )
    server = None if settings.clickhouse_embedded else settings.dsn
    return Workbench(
        bootstrap, folder, pipeline, files, registry.root, spec, options.events, options.batch,
        options.timeout, len(manifest.features), settings.schemas_dir, source, server,
    )  # fmt: skip


def _throughput(
    bench: Workbench, options: BenchOptions, console: Console
) -> dict[str, EngineResults]:
    results = {engine: EngineResults(engine) for engine in options.engines}
    for run in range(options.runs):
        for engine in options.engines:
            outcome = results[engine]
            if outcome.error is not None:
                continue
            with console.status(f"run {run + 1}/{options.runs}: {TITLES[engine]}…"):
                try:
                    if engine.startswith("pipeline"):
                        result = run_pipeline(bench, engine, run)
                    else:
                        result = run_peer(bench, engine, peer_python(engine), run)
                except ServiceError as exc:
                    outcome.error = str(exc)
                    console.print(f"[red]{engine} failed:[/] {exc}")
                    continue
            outcome.runs.append(result)
            behind = result.log_behind_s
            console.print(
                f"run {run + 1}/{options.runs} {engine:<14} {result.events_per_s:>10,.0f} events/s"
                f"  {_cpu(result.cpu_per_1k)} CPU s/1k  {result.peak_rss_mib:.0f} MiB"
                + ("" if behind is None else f"  prediction log {behind:.1f}s behind at the end")
                + ("" if result.steady else "  (timed with the worker's start-up)")
            )
    return results


def _latency(
    settings: Settings,
    bench: Workbench,
    options: BenchOptions,
    results: dict[str, EngineResults],
    console: Console,
) -> list[dict[str, Any]]:
    measured = results.get("pipeline")
    if not options.latency or measured is None or not measured.runs:
        return []
    top = measured.median("events_per_s")
    rows = []
    for share in options.latency:
        rate = top * share
        with console.status(f"latency at {share:.0%} of {top:,.0f} events/s…"):
            rows.append(
                _latency_run(
                    settings, bench, rate, share, options.latency_seconds, options.latency_warmup
                )
            )
        row = rows[-1]
        console.print(
            f"latency at {share:.0%} ({row['rate']:,.0f}/s asked, {row['achieved_rate']:,.0f}/s "
            f"sent): p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms; "
            f"first {options.latency_warmup:g} s: p99 {_ms(row['warmup']['p99_ms'])} ms"
        )
    return rows


def _fresh_pipeline(
    settings: Settings,
    bench: Workbench,
    suffix: str,
    changes: dict[str, Any] | None = None,
    append_time: bool = False,
) -> tuple[PipelineConfig, Path]:
    """The bench pipeline under a new name, so with empty topics of its own, and its file.

    ``append_time``: its predictions are stamped by the broker when appended
    (what every engine's outputs get in the comparison, whatever its client sets).
    """
    pipeline = bench.pipeline.with_overrides(
        name=f"{bench.pipeline.name}-{suffix}", **(changes or {})
    )
    path = bench.folder / f"{pipeline.name}.yaml"
    path.write_text(yaml.safe_dump(pipeline.model_dump(by_alias=True), sort_keys=False))
    topics = pipeline_topics(pipeline, settings.replication_factor)
    if append_time:
        topics = [_append_time(t) if t.topic == pipeline.predictions_topic else t for t in topics]
    create_topics({"bootstrap.servers": bench.bootstrap}, topics)
    return pipeline, path


def _append_time(topic: NewTopic) -> NewTopic:
    return NewTopic(
        topic.topic, topic.num_partitions, topic.replication_factor,
        config={"message.timestamp.type": "LogAppendTime"},
    )  # fmt: skip


def _latency_run(
    settings: Settings,
    bench: Workbench,
    rate: float,
    share: float,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    pipeline, path = _fresh_pipeline(settings, bench, f"l{int(share * 100)}")
    worker = bench.worker(path, bench.folder / pipeline.name)
    try:
        worker.start()
        # Payloads made before the clock starts (while the worker starts): the load
        # generator shares the machine's cores with the worker and the broker, so it
        # should take as little as it can.
        producer = bench.producer(settings, pipeline)
        chunks, warming = _paced_events(producer, rate, seconds, warmup, seed=2)
        worker.wait_ready()
        rss_start = worker.memory_mib()["rss"]
        started = time.monotonic()
        with _RssSampler(worker.memory_mib, started) as rss:
            sent = producer.send(chunks, rate)
        elapsed = time.monotonic() - started
        del chunks  # a long run's payloads are gigabytes: not held while it is read back
        worker.wait_until(
            lambda s: s["pipelines"][pipeline.name]["engine"]["predictions"] >= sent.produced,
            bench.timeout,
            "every event scored",
        )
        rss_end = worker.memory_mib()["rss"]
    finally:
        worker.stop()
    sent_ms, latency_ms, in_warmup = _read_latencies(
        bench, pipeline.events_topic, pipeline.predictions_topic, warming, sent.produced
    )
    latency, warm = np.asarray(latency_ms), np.asarray(in_warmup, dtype=bool)
    first, measured = latency[warm], latency[~warm]
    return {
        "share": share,
        "seconds": seconds,
        "rate": round(rate, 1),
        "achieved_rate": round(sent.produced / elapsed, 1),
        "sent": sent.produced,
        "events": len(first) + len(measured),
        **_percentiles(measured),
        "measured_events": len(measured),
        "warmup": {"seconds": warmup, "events": len(first), **_percentiles(first)},
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_mib": rss.samples,
        "by_second": by_second(sent_ms, latency_ms),
    }


def _paced_events(
    producer: PacedProducer, rate: float, seconds: float, warmup: float, seed: int
) -> tuple[list[list[tuple[bytes, bytes]]], set[bytes]]:
    """The payloads of ``warmup`` and then ``seconds`` at ``rate``, and the warm-up's keys."""
    warmup_events = int(rate * warmup)
    chunks = producer.prepare(warmup_events + max(1, int(rate * seconds)), seed=seed)
    warming = {key for key, _ in itertools.islice(itertools.chain(*chunks), warmup_events)}
    return chunks, warming


def _read_latencies(
    bench: Workbench, events_topic: str, output_topic: str, warming: set[bytes], sent: int
) -> tuple[array[int], array[int], array[int]]:
    """Per output, in the order read: its event's send time, its latency, warm-up or not.

    Every event and every output: minutes of them at a high rate take a while,
    and tens of millions of records, so only each event's time is kept.
    """
    kafka_config = {"bootstrap.servers": bench.bootstrap}
    timeout = max(60.0, sent / 10_000)
    events = iter_to_end(kafka_config, [events_topic], timeout)
    sent_at = {m.key(): m.timestamp()[1] for m in events}
    sent_ms = array("q")
    latency_ms = array("q")
    in_warmup = array("b")
    for m in iter_to_end(kafka_config, [output_topic], timeout):
        key = m.key()
        sent_ms.append(sent_at[key])
        latency_ms.append(m.timestamp()[1] - sent_ms[-1])
        in_warmup.append(key in warming)
    return sent_ms, latency_ms, in_warmup


def _compare(
    settings: Settings,
    bench: Workbench,
    options: BenchOptions,
    results: dict[str, EngineResults],
    console: Console,
) -> dict[str, Any] | None:
    """Every engine that ran, fed at one rate on topics of its own, ``runs`` times.

    The rate is one the slowest engine keeps up with, so each engine's latency
    is its own, not a backlog's. An output's time is the broker's append
    (``LogAppendTime`` on the runs' output topics), the same for every engine
    whatever its client sets: Quix Streams, for one, gives an output its
    input's timestamp.
    """
    ran = [engine for engine, outcome in results.items() if outcome.runs]
    if not options.compare_seconds or not ran:
        return None
    rate = options.compare_rate or COMPARE_SHARE * min(
        results[engine].median("events_per_s") for engine in ran
    )
    warmup = options.latency_warmup
    for run in range(options.runs):
        for engine in ran:
            outcome = results[engine]
            if outcome.latency_error is not None:
                continue
            with console.status(f"latency at {rate:,.0f} events/s, run {run + 1}: {engine}…"):
                try:
                    feed = _Feed(rate, options.compare_seconds, warmup, run)
                    row = _compare_run(settings, bench, engine, feed)
                except ServiceError as exc:
                    outcome.latency_error = str(exc)
                    console.print(f"[red]{engine} at {rate:,.0f} events/s failed:[/] {exc}")
                    continue
            outcome.latency.append(row)
            console.print(
                f"run {run + 1}/{options.runs} {engine:<14} at {rate:,.0f} events/s: "
                f"p50 {_ms(row['p50_ms'])} ms, p99 {_ms(row['p99_ms'])} ms"
            )
    return {"rate": round(rate, 1), "seconds": options.compare_seconds, "warmup_seconds": warmup}


@dataclass(frozen=True)
class _Feed:
    """One run at the comparison's rate: ``warmup`` and then ``seconds`` of events."""

    rate: float
    seconds: float
    warmup: float
    run: int


def _compare_run(settings: Settings, bench: Workbench, engine: str, feed: _Feed) -> dict[str, Any]:
    """One engine at the rate: its events sent once it owns every partition, read back."""
    if engine.startswith("pipeline"):
        pipeline, path = _fresh_pipeline(
            settings, bench, f"c{feed.run}-{engine}", PIPELINE_VARIANTS[engine], append_time=True
        )
        events_topic, output_topic = pipeline.events_topic, pipeline.predictions_topic
        producer = bench.producer(settings, pipeline)
        chunks, warming = _paced_events(producer, feed.rate, feed.seconds, feed.warmup, seed=4)
        worker = bench.worker(path, bench.folder / pipeline.name)
        try:
            worker.start().wait_ready()
            sent = producer.send(chunks, feed.rate)
            worker.wait_until(
                lambda s: s["pipelines"][pipeline.name]["engine"]["predictions"] >= sent.produced,
                bench.timeout,
                "every event scored",
            )
        finally:
            worker.stop()
    else:
        sent, events_topic, output_topic, warming = _compare_peer(settings, bench, engine, feed)
    _, latency_ms, in_warmup = _read_latencies(
        bench, events_topic, output_topic, warming, sent.produced
    )
    latency, warm = np.asarray(latency_ms), np.asarray(in_warmup, dtype=bool)
    return {
        "sent": sent.produced,
        "events": len(latency),
        "measured_events": int((~warm).sum()),
        **_percentiles(latency[~warm]),
    }


def _compare_peer(
    settings: Settings, bench: Workbench, engine: str, feed: _Feed
) -> tuple[ProduceReport, str, str, set[bytes]]:
    """A peer script on topics of its own; it exits once it has scored every event sent."""
    events_topic = f"{bench.pipeline.name}.c{feed.run}-{engine}"
    output_topic = f"{events_topic}-out"
    partitions, replication = bench.pipeline.partitions, settings.replication_factor
    create_topics(
        {"bootstrap.servers": bench.bootstrap},
        [
            NewTopic(events_topic, partitions, replication),
            _append_time(NewTopic(output_topic, partitions, replication)),
        ],
    )
    producer = bench.producer(settings, bench.pipeline, events_topic)
    chunks, warming = _paced_events(producer, feed.rate, feed.seconds, feed.warmup, seed=4)
    count = sum(len(chunk) for chunk in chunks)
    group = f"bench-{engine}-{uuid.uuid4().hex[:8]}"
    command = peer_command(
        bench, engine, peer_python(engine), events_topic, output_topic, group, count
    )
    log = bench.folder / f"{engine}-c{feed.run}.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with uninterrupted(), log.open("wb") as err:
            process = subprocess.Popen(
                command, cwd=peer_home(bench, engine, f"c{feed.run}"), stdout=subprocess.DEVNULL,
                stderr=err, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _wait_assigned(bench, peer_group_id(engine, group), events_topic, process, log)
        sent = producer.send(chunks, feed.rate)
        if sent.failed:
            raise ServiceError(f"{engine}: {sent.failed} events were not acknowledged")
        try:
            code = process.wait(bench.timeout)
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"{engine}: {count} events not scored after {bench.timeout:.0f}s; see {log}"
            ) from None
        if code != 0:
            raise ServiceError(f"{engine}: exited with code {code}; see {log}")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    return sent, events_topic, output_topic, warming


def _wait_assigned(
    bench: Workbench, group: str, topic: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Until ``group`` is stable with every partition of ``topic`` assigned."""
    admin = AdminClient({"bootstrap.servers": bench.bootstrap, "log_level": 0})
    deadline = time.monotonic() + bench.timeout
    while True:
        if process.poll() is not None:
            raise ServiceError(f"exited with code {process.returncode} before joining; see {log}")
        try:
            (description,) = (
                future.result()
                for future in admin.describe_consumer_groups([group], request_timeout=10).values()
            )
        except KafkaException:
            description = None
        if description is not None and description.state == ConsumerGroupState.STABLE:
            owned = {
                tp.partition
                for member in description.members
                for tp in member.assignment.topic_partitions
                if tp.topic == topic
            }
            if len(owned) == bench.pipeline.partitions:
                return
        if time.monotonic() > deadline:
            raise ServiceError(f"not assigned {topic} after {bench.timeout:.0f}s; see {log}")
        time.sleep(0.2)


class _RssSampler:
    """The worker's RSS every ``every_s`` seconds of a latency run, as ``[t_s, mib]`` pairs.

    On a thread of its own, so that the load generator keeps its pace; reading
    /proc a few times a minute takes nothing from it.
    """

    def __init__(
        self, memory_mib: Callable[[], dict[str, float]], started: float, every_s: float = 5.0
    ) -> None:
        self.samples: list[list[float]] = []
        self._memory_mib = memory_mib
        self._started = started
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            t = time.monotonic() - self._started
            try:
                rss = self._memory_mib()["rss"]
            except OSError:  # the worker is gone: the run reports why
                return
            self.samples.append([round(t, 1), round(rss, 1)])
            if self._stop.wait(self._every_s):
                return


def _percentiles(latency_ms: np.ndarray) -> dict[str, float | None]:
    """p50, p95, p99 and max of end-to-end latencies in ms (None for none)."""
    if latency_ms.size == 0:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "max_ms"))
    values = latency_ms.astype(np.float64)
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }


def by_second(sent_ms: Sequence[int], latency_ms: Sequence[int]) -> list[list[float]]:
    """``[second, p50, p99, events]`` for each second of sending, the first one 0.

    Each event counts in the second it was sent in, so a worker that falls
    behind shows as a latency that grows from one second to the next, and a
    stall as the seconds whose events waited for it.
    """
    if not sent_ms:
        return []
    sent = np.asarray(sent_ms, dtype=np.int64)
    latency = np.asarray(latency_ms, dtype=np.float64)
    second = (sent - sent.min()) // 1000
    order = np.argsort(second, kind="stable")
    second, latency = second[order], latency[order]
    starts = np.flatnonzero(np.diff(second)) + 1
    rows = []
    for s, values in zip(second[np.r_[0, starts]], np.split(latency, starts), strict=True):
        p50, p99 = np.percentile(values, (50, 99))
        rows.append([int(s), float(p50), float(p99), int(values.size)])
    return rows


def _scaling_run(
    settings: Settings, bench: Workbench, workers: int, console: Console
) -> dict[str, Any]:
    """``workers`` processes share a fresh topic; the events go in once all own partitions.

    Timed from the first event produced to the last one scored, so that no
    worker starts early while the others still join the group.
    """
    pipeline, path = _fresh_pipeline(settings, bench, f"x{workers}")
    producer = bench.producer(settings, pipeline)
    chunks = producer.prepare(bench.events, seed=3)
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    processes = [
        bench.worker(path, bench.folder / pipeline.name / str(i), app_id) for i in range(workers)
    ]
    wanted = min(workers, pipeline.partitions)

    def engine(status: dict[str, Any]) -> dict[str, Any]:
        return dict(status["pipelines"][pipeline.name]["engine"])

    def statuses() -> list[dict[str, Any]]:
        return [w.wait_until(lambda s: True, bench.timeout, "status") for w in processes]

    try:
        for worker in processes:
            worker.start()
        with console.status(f"scaling: {workers} workers joining…"):
            deadline = time.monotonic() + bench.timeout
            while True:
                owned = [len(engine(s)["assigned"]) for s in statuses()]
                if sum(owned) == pipeline.partitions and sum(1 for n in owned if n) == wanted:
                    break
                if time.monotonic() > deadline:
                    raise ServiceError(f"scaling: {workers} workers did not share the partitions")
                time.sleep(0.2)
        with console.status(f"scaling: {workers} workers scoring {bench.events:,} events…"):
            started = time.monotonic()
            producer.send(chunks, rate=0)
            while True:
                done = [engine(s)["predictions"] + engine(s)["dead_letters"] for s in statuses()]
                if sum(done) >= bench.events:
                    break
                if time.monotonic() - started > bench.timeout:
                    raise ServiceError(f"scaling: {sum(done)} of {bench.events} events scored")
                time.sleep(0.05)
            seconds = time.monotonic() - started
    finally:
        for worker in processes:
            worker.stop()
    rate = bench.events / seconds
    console.print(
        f"scaling: {workers} workers {rate:,.0f} events/s ({rate / workers:,.0f} per process)"
    )
    return {
        "workers": workers,
        "events": bench.events,
        "seconds": round(seconds, 3),
        "events_per_s": round(rate, 1),
        "events_per_s_per_worker": round(rate / workers, 1),
        "events_per_worker": done,
    }


def _report(
    bench: Workbench,
    options: BenchOptions,
    results: dict[str, EngineResults],
    latency: list[dict[str, Any]],
    scaling: list[dict[str, Any]],
    compare: dict[str, Any] | None = None,
) -> dict[str, Any]:
    bare = results.get("bare")
    bare_rate = bare.median("events_per_s") if bare and bare.runs else None
    bare_p99 = _latency_medians(bare)["p99_ms"] if bare else None
    engines: dict[str, Any] = {}
    for engine, outcome in results.items():
        entry: dict[str, Any] = {
            "title": TITLES[engine],
            "runs": [r.as_dict() for r in outcome.runs],
        }
        if outcome.error:
            entry["error"] = outcome.error
        if outcome.runs:
            low, high = outcome.spread("events_per_s")
            rate = outcome.median("events_per_s")
            entry["median"] = {
                "events_per_s": round(rate, 1),
                "events_per_s_min": round(low, 1),
                "events_per_s_max": round(high, 1),
                "cpu_s_per_1k": None if (cpu := outcome.median_cpu()) is None else round(cpu, 4),
                "peak_rss_mib": round(outcome.median("peak_rss_mib"), 1),
            }
            entry["ratio_to_bare"] = round(rate / bare_rate, 3) if bare_rate else None
            if unsteady := outcome.not_steady():
                entry["not_steady"] = {
                    "runs": len(unsteady),
                    "events_for_steady": _events_for_steady(unsteady),
                }
        if outcome.latency_error:
            entry["latency_error"] = outcome.latency_error
        if outcome.latency:
            entry["latency"] = {"runs": outcome.latency, "median": _latency_medians(outcome)}
            p99 = entry["latency"]["median"]["p99_ms"]
            entry["p99_ratio_to_bare"] = (
                round(p99 / bare_p99, 3) if p99 is not None and bare_p99 else None
            )
        engines[engine] = entry
    report: dict[str, Any] = {
        "workload": {
            "events": options.events, "runs": options.runs, "partitions": options.partitions,
            "trees": options.trees, "depth": options.depth, "batch": options.batch,
            "format": options.format,
            "features": bench.features,
        },
        "engines": engines,
        "compare": compare,
        "latency": latency,
        "scaling": scaling,
    }  # fmt: skip
    report["targets"] = [asdict(verdict) for verdict in judge(report)]
    return report


def _latency_medians(outcome: EngineResults) -> dict[str, float | None]:
    """p50 and p99 of the comparison's runs: the median with the spread (min-max)."""
    medians: dict[str, float | None] = {}
    for key in ("p50_ms", "p99_ms"):
        values = [row[key] for row in outcome.latency if row[key] is not None]
        medians[key] = float(statistics.median(values)) if values else None
        medians[f"{key}_min"] = min(values) if values else None
        medians[f"{key}_max"] = max(values) if values else None
    return medians


def _events_for_steady(runs: list[RunResult]) -> int:
    """Enough events that the worker is fully up before half of them are scored."""
    most = max(r.done_at_start or r.events for r in runs)
    return math.ceil(2.5 * most / 100_000) * 100_000


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _worst_second(seconds: list[list[float]], warmup: float) -> str:
    """The highest p99 of a second after the warm-up's, and which second it was."""
    after = [row for row in seconds if row[0] >= warmup]
    if not after:
        return "n/a"
    second, _, p99, _ = max(after, key=lambda row: row[2])
    return f"{p99:.0f} ({second:.0f})"


def _cpu(per_1k: float | None) -> str:
    return "n/a" if per_1k is None else f"{per_1k:.3f}"


def _latency_cells(entry: dict[str, Any], bare_p99: float | None) -> list[str]:
    """p50, p99 (min-max) and p99 against the bare loop's, or why there are none."""
    if "latency" not in entry:
        return [entry.get("latency_error", "n/a"), "", ""]
    median = entry["latency"]["median"]
    cells = []
    for key in ("p50_ms", "p99_ms"):
        value, low, high = median[key], median[f"{key}_min"], median[f"{key}_max"]
        cells.append("n/a" if value is None else f"{value:.0f} ({low:.0f}-{high:.0f})")
    p99 = median["p99_ms"]
    # From the medians, as the events/s ratio is: not the report's ratio rounded twice.
    return [*cells, f"{p99 / bare_p99:.2f}" if p99 is not None and bare_p99 else ""]


def _print(report: dict[str, Any], console: Console) -> None:
    compare = report.get("compare")
    title = "throughput: median of the runs (min-max)"
    columns = ["engine", "events/s", "x bare", "CPU s / 1k events", "peak RSS MiB"]
    if compare:
        title += (
            f"; latency of each engine at {compare['rate']:,.0f} events/s, after its first "
            f"{compare['warmup_seconds']:g} s (to the broker's append of each output)"
        )
        columns += ["p50 ms", "p99 ms", "p99 x bare"]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    # From the medians as the targets take them, so both tables print the same ratio.
    bare = median_rate(report["engines"], "bare")
    bare_latency = report["engines"].get("bare", {}).get("latency")
    bare_p99 = bare_latency["median"]["p99_ms"] if bare_latency else None
    for entry in report["engines"].values():
        median = entry.get("median")
        if median is None:
            table.add_row(entry["title"], entry.get("error", "no runs"))
            continue
        ratio = median["events_per_s"] / bare if bare else None
        cells = [
            entry["title"],
            f"{median['events_per_s']:,.0f} ({median['events_per_s_min']:,.0f}-"
            f"{median['events_per_s_max']:,.0f})",
            "" if ratio is None else f"{ratio:.2f}",
            _cpu(median["cpu_s_per_1k"]),
            f"{median['peak_rss_mib']:.0f}",
        ]
        if compare:
            cells += _latency_cells(entry, bare_p99)
        table.add_row(*cells)
    console.print(table)
    for entry in report["engines"].values():
        if unsteady := entry.get("not_steady"):
            console.print(
                f"{entry['title']}: {unsteady['runs']} of {len(entry['runs'])} runs had scored "
                "over half the events when the worker was fully up; they are timed from the "
                "partition assignment, start-up included, with no CPU figure. "
                f"--events {unsteady['events_for_steady']:,} or more times them in steady state."
            )
    if report["latency"]:
        warmup = report["latency"][0]["warmup"]["seconds"]
        lat = Table(
            title="end-to-end latency of the pipeline at a fixed input rate, "
            f"after its first {warmup:g} s"
        )
        shares = ("share of max", "events/s sent", "p50 ms", "p95 ms", "p99 ms", "max ms")
        for column in (
            *shares, "worst second p99 ms (at s)", f"first {warmup:g} s: p99/max ms",
            "RSS MiB start/end",
        ):  # fmt: skip
            lat.add_column(column, justify="right")
        for row in report["latency"]:
            first = row["warmup"]
            lat.add_row(
                f"{row['share']:.0%}", f"{row['achieved_rate']:,.0f}",
                *(_ms(row[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
                _worst_second(row["by_second"], first["seconds"]),
                f"{_ms(first['p99_ms'])}/{_ms(first['max_ms'])}",
                f"{row['rss_start_mib']:.0f}/{row['rss_end_mib']:.0f}",
            )  # fmt: skip
        console.print(lat)
    if report["scaling"]:
        scale = Table(title="scaling: worker processes on the same partitions")
        for column in ("workers", "events/s", "events/s per process", "events per process"):
            scale.add_column(column, justify="right")
        for row in report["scaling"]:
            scale.add_row(
                str(row["workers"]), f"{row['events_per_s']:,.0f}",
                f"{row['events_per_s_per_worker']:,.0f}",
                " / ".join(f"{n:,}" for n in row["events_per_worker"]),
            )  # fmt: skip
        console.print(scale)
    targets = Table(title="targets")
    for column in ("target", "measured", ""):
        targets.add_column(column)
    for verdict in report["targets"]:
        met = verdict["met"]
        targets.add_row(
            verdict["target"],
            verdict["measured"],
            "not measured" if met is None else "[green]met" if met else "[red]missed",
        )
    console.print(targets)


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in report["engines"].values() if "median" in e]
    names = [e["title"] for e in entries]
    rates = [e["median"]["events_per_s"] for e in entries]
    low = [r - e["median"]["events_per_s_min"] for r, e in zip(rates, entries, strict=True)]
    high = [e["median"]["events_per_s_max"] - r for r, e in zip(rates, entries, strict=True)]
    latency = [row for row in report["latency"] if row["by_second"]]
    height = 0.6 * len(names) + 1.5
    if latency:
        fig, (ax, by_second_ax) = plt.subplots(
            2, 1, figsize=(9, height + 4), gridspec_kw={"height_ratios": [height, 4]}
        )
        _latency_chart(by_second_ax, latency)
    else:
        fig, ax = plt.subplots(figsize=(9, height))
    bars = ax.barh(names, rates, xerr=[low, high], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("events/s (median, min-max)")
    if compare := report.get("compare"):
        # Each engine's latency at the one rate, beside its bar's error bar.
        ends = [rate + above for rate, above in zip(rates, high, strict=True)]
        for bar, end, entry in zip(bars, ends, entries, strict=True):
            median = entry.get("latency", {}).get("median", {})
            if median.get("p99_ms") is None:
                continue
            ax.text(
                end + 0.01 * max(ends), bar.get_y() + bar.get_height() / 2,
                f"p50 {median['p50_ms']:.0f} / p99 {median['p99_ms']:.0f} ms",
                va="center", fontsize=8,
            )  # fmt: skip
        ax.set_xlim(0, 1.3 * max(ends))
        ax.set_xlabel(
            f"events/s (median, min-max)\nbeside each bar: its latency at {compare['rate']:,.0f} "
            "events/s, to each output's append"
        )
    workload = report["workload"]
    ax.set_title(
        f"{workload['events']:,} events, {workload['runs']} runs, {workload['trees']} trees "
        f"of depth {workload['depth']}, "
        f"batch {workload['batch']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency_chart(ax: Any, latency: list[dict[str, Any]]) -> None:
    """p99 of each second of each latency run, with the targets' bounds."""
    from matplotlib.ticker import FuncFormatter

    for row in latency:
        seconds = row["by_second"]
        ax.plot(
            [r[0] for r in seconds],
            [max(r[2], 1.0) for r in seconds],  # a log scale has no 0 ms
            label=f"{row['share']:.0%} ({row['achieved_rate']:,.0f} events/s)",
        )
    for share, bound in P99_UNDER_MS:
        ax.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"target at {share:.0%}", (0, bound), fontsize=8, color="grey")
    ax.axvline(latency[0]["warmup"]["seconds"], color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Between the powers of ten, only 20, 50, 200, 500…: all eight crowd the axis.
    ax.yaxis.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")
    )
    ax.set_xlabel("second of the latency run (the warm-up's before the dotted line)")
    ax.set_ylabel("p99 ms of the events sent that second")
    ax.legend(fontsize=8)
