"""``stream demo``: the whole mission on one machine, read back from Kafka and ClickHouse."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stream import report as pages
from stream.demo.data import train_demo_model
from stream.errors import ServiceError
from stream.models.registry import ModelRegistry
from stream.monitor.histograms import latency_quantile
from stream.produce import PacedProducer, publish_labels
from stream.serde import AvroSerde, load_schema
from stream.services.kafka import KafkaBroker
from stream.services.readback import end_offsets, read_topics
from stream.services.topics import ensure_topics, wait_for_broker
from stream.services.worker_process import WorkerProcess
from stream.settings import PROJECT_ROOT, PipelineConfig, Settings, load_pipeline
from stream.sinks.clickhouse import connect, migrate

DEMO_PIPELINE = PROJECT_ROOT / "pipelines" / "payments.yaml"
DEFAULT_DRIFT = {"amount": 1.0, "ip_risk_score": 1.0, "distance_from_home_km": 1.0}


@dataclass(frozen=True)
class DemoOptions:
    events: int = 50_000
    seconds: float = 55.0
    window_seconds: float = 10.0
    malformed_share: float = 0.005
    drift: tuple[tuple[str, float], ...] = tuple(DEFAULT_DRIFT.items())


def ensure_demo_model(registry: ModelRegistry, pipeline: PipelineConfig, console: Console) -> None:
    name, version = pipeline.model.name, pipeline.model.version
    if registry.exists(name, version):
        console.print(f"model [bold]{name}:{version}[/] found in {registry.root}")
        return
    with console.status(f"training {name}:{version} on synthetic payments…"):
        onnx_bytes, manifest = train_demo_model(name, version)
        registry.register(onnx_bytes, manifest)
    console.print(f"trained {name}:{version} (holdout AUC {manifest.training['holdout_auc']})")


@contextlib.contextmanager
def kafka(settings: Settings, console: Console) -> Iterator[str]:
    """The configured broker, or a local one started (and stopped) for the demo."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    broker = KafkaBroker(settings.home / "kafka")
    try:  # started inside: a stop signal right after its start still stops it
        with console.status("starting a local Kafka broker (KRaft)…"):
            broker.start()
        console.print(f"Kafka broker on {broker.bootstrap} (pid {broker.pid})")
        yield broker.bootstrap
    finally:
        broker.stop()


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> None:
    base = load_pipeline(DEMO_PIPELINE)
    pipeline = base.with_overrides(
        monitor={**base.monitor.model_dump(), "window_seconds": options.window_seconds}
    )
    demo_dir = settings.home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    pipeline_file = demo_dir / "payments.yaml"
    pipeline_file.write_text(yaml.safe_dump(pipeline.model_dump(by_alias=True), sort_keys=False))
    registry = ModelRegistry(settings.registry_path)
    ensure_demo_model(registry, pipeline, console)
    # Fail early, with one line, if the ClickHouse folder is busy or the DSN is wrong.
    connect(settings.dsn, settings.clickhouse_database).close()

    with kafka(settings, console) as bootstrap:
        kafka_config = settings.kafka_config(bootstrap)
        wait_for_broker(kafka_config)
        ensure_topics(kafka_config, [pipeline], settings.replication_factor)
        starts = {
            t: end_offsets(kafka_config, t)
            for t in (pipeline.predictions_topic, pipeline.deadletter_topic, pipeline.review_topic)
        }
        worker = WorkerProcess(
            pipeline_file,
            {"STREAM_KAFKA_BOOTSTRAP": bootstrap, "STREAM_HOME": str(settings.home),
             "STREAM_CLICKHOUSE_DSN": settings.dsn, "STREAM_REGISTRY": str(registry.root)},
            demo_dir / "worker.log",
        )  # fmt: skip
        try:
            with console.status("starting a worker…"):
                worker.start().wait_ready()
            console.print(f"worker pid {worker.pid} is consuming {pipeline.events_topic}")
            run = _produce_and_account(kafka_config, settings, pipeline, options, starts, console)
            _label(kafka_config, pipeline, worker, run, console)
            with console.status("waiting for the last window to close…"):
                last_window_end = (
                    run["last_scored_ms"] // int(options.window_seconds * 1000) + 1
                ) * int(options.window_seconds * 1000)
                worker.wait_until(
                    lambda s: _closed_until(s, pipeline) >= last_window_end,
                    options.window_seconds + pipeline.monitor.grace_seconds + 30,
                    "closed window",
                )
        finally:
            code = worker.stop()
        if code not in (0, None):
            raise ServiceError(f"worker exited with code {code}; see {worker.log_path}")
    _report(settings, pipeline, run, console)


def _label(
    kafka_config: dict[str, Any],
    pipeline: PipelineConfig,
    worker: WorkerProcess,
    run: dict[str, Any],
    console: Console,
) -> None:
    """Labels come back for every other scored event, as a fraud team's would."""
    scored = run.pop("scored_ids")
    every_other = run.pop("truth")[::2]
    labels = {event_id: label for event_id, label in every_other if event_id in scored}
    with console.status(f"publishing {len(labels):,} labels to {pipeline.feedback_topic}…"):
        run["labels"] = publish_labels(kafka_config, pipeline.feedback_topic, labels)

        def logged(s: dict[str, Any]) -> bool:
            return int(s["pipelines"][pipeline.name]["logger"]["labels"]) >= run["labels"]

        status = worker.wait_until(logged, 60, "labels in ClickHouse")
        runs = int(status["pipelines"][pipeline.name]["monitor"]["quality_runs"])
        # The next quality run may have started before the last labels: wait for two.
        worker.wait_until(
            lambda s: int(s["pipelines"][pipeline.name]["monitor"]["quality_runs"]) >= runs + 2,
            3 * pipeline.monitor.window_seconds + 30,
            "quality computed",
        )


def _closed_until(status: dict[str, Any], pipeline: PipelineConfig) -> int:
    closed = status["pipelines"][pipeline.name]["monitor"]["closed_until"]
    return max(closed.values(), default=0)


def _produce_and_account(
    kafka_config: dict[str, Any],
    settings: Settings,
    pipeline: PipelineConfig,
    options: DemoOptions,
    starts: dict[str, dict[int, int]],
    console: Console,
) -> dict[str, Any]:
    serde = AvroSerde(load_schema(settings.schemas_dir, pipeline.input.schema_file))
    producer = PacedProducer(kafka_config, pipeline.events_topic, serde)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} events/s"), TimeElapsedColumn(),
    )  # fmt: skip
    drift = dict(options.drift)
    console.print(
        f"producing {options.events:,} events over ~{options.seconds:.0f}s; from the halfway "
        f"point, drift on {', '.join(f'{k} (+{v:g} std)' for k, v in drift.items())}"
    )
    started = time.monotonic()
    truth: list[tuple[str, str]] = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("produced", total=options.events, rate=0.0)

        def advance(n: int) -> None:
            done = progress.tasks[task].completed + n
            progress.update(task, completed=done, rate=done / max(time.monotonic() - started, 1e-6))

        report = producer.run(
            options.events,
            rate=options.events / options.seconds,
            drift=drift,
            drift_from=options.events // 2,
            malformed_share=options.malformed_share,
            progress=advance,
            truth=truth,
        )
        scored = progress.add_task("accounted", total=report.produced, rate=0.0)
        topics = [pipeline.predictions_topic, pipeline.deadletter_topic]

        def accounted(out: dict[str, list[Any]]) -> bool:
            n = sum(len(out[t]) for t in topics)
            progress.update(scored, completed=n, rate=n / max(time.monotonic() - started, 1e-6))
            return n >= report.produced

        outputs = read_topics(kafka_config, {t: starts[t] for t in topics}, accounted, timeout=120)
    if report.failed:
        raise ServiceError(f"{report.failed} events were not acknowledged by Kafka")
    predictions = outputs[pipeline.predictions_topic]
    dead = outputs[pipeline.deadletter_topic]
    accounted_for = len(predictions) + len(dead)
    if accounted_for < report.produced:
        raise ServiceError(
            f"only {accounted_for} of {report.produced} events have a prediction or dead letter"
        )
    reasons = Counter(dict(m.headers() or []).get("error.reason", b"?").decode() for m in dead)
    scored_times = [m.timestamp()[1] for m in predictions]
    reviews = end_offsets(kafka_config, pipeline.review_topic)
    return {
        "produced": report.produced,
        "malformed": report.malformed,
        "predictions": len(predictions),
        "dead_letters": len(dead),
        "dead_letter_reasons": dict(reasons),
        "reviews": sum(reviews.values()) - sum(starts[pipeline.review_topic].values()),
        "first_scored_ms": min(scored_times, default=0),
        "last_scored_ms": max(scored_times, default=0),
        "produce_seconds": report.seconds,
        "truth": truth,
        "scored_ids": {(m.key() or b"").decode() for m in predictions},
    }


def _report(
    settings: Settings, pipeline: PipelineConfig, run: dict[str, Any], console: Console
) -> None:
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        migrate(ch, settings.migrations_dir)
        window_ms = int(pipeline.monitor.window_seconds * 1000)
        first_window = run["first_scored_ms"] // window_ms * window_ms
        since = datetime.fromtimestamp(first_window / 1000, tz=UTC)
        params = {"p": pipeline.name, "since": since}
        latency = ch.client.query(
            "SELECT count(), sum(count), sumForEach(latency_buckets), "
            "sumForEach(inference_buckets) FROM latency_windows FINAL "
            "WHERE pipeline = {p:String} AND window_end > {since:DateTime64(3)}",
            parameters=params,
        ).result_rows[0]
        drift = ch.client.query(
            "SELECT window_start, feature, psi, ks FROM drift_windows FINAL "
            "WHERE pipeline = {p:String} AND window_end > {since:DateTime64(3)} "
            "AND status = 'alert' "
            "ORDER BY window_start, psi DESC",
            parameters=params,
        ).result_rows
        data = pages.load(ch.client, pipeline.name, since, datetime.now(UTC))
    finally:
        ch.close()
    page = settings.home / "demo" / "report.html"
    page.write_text(pages.render(data))
    windows, windowed_events, lat_buckets, inf_buckets = latency
    span_s = max((run["last_scored_ms"] - run["first_scored_ms"]) / 1000.0, 1e-3)

    summary = Table(title=f"demo: pipeline {pipeline.name}", show_header=False)
    summary.add_row(
        "events produced", f"{run['produced']:,} ({run['malformed']} malformed on purpose)"
    )
    summary.add_row("predictions (Kafka)", f"{run['predictions']:,}")
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(run["dead_letter_reasons"].items()))
    summary.add_row("dead letters (Kafka)", f"{run['dead_letters']:,} ({reasons or 'none'})")
    summary.add_row("review items (Kafka)", f"{run['reviews']:,}")
    summary.add_row(
        "throughput",
        f"{run['predictions'] / span_s:,.0f} events/s over {span_s:.1f}s "
        f"(input paced at {run['produced'] / run['produce_seconds']:,.0f}/s)",
    )
    summary.add_row("windows in ClickHouse", f"{windows} holding {windowed_events:,} scored events")
    if windowed_events:
        lat = np.asarray(lat_buckets)
        inf = np.asarray(inf_buckets)
        summary.add_row(
            "end-to-end latency",
            " · ".join(
                f"p{int(q * 100)} {latency_quantile(lat, q):.1f} ms" for q in (0.5, 0.95, 0.99)
            ),
        )
        summary.add_row(
            "inference per event",
            " · ".join(f"p{int(q * 100)} {latency_quantile(inf, q):.3f} ms" for q in (0.5, 0.99)),
        )
    overall = [r for r in data.quality if r[2] == "all"]
    for version, variant, _, _, labeled, predicted, accuracy in overall:
        summary.add_row(
            f"quality of v{version} ({variant})",
            f"accuracy {float(accuracy):.3f} on {int(labeled):,} labeled of {int(predicted):,} "
            f"({run['labels']:,} labels published)",
        )
    for model, version, _, per_1k, batch in data.cost:
        summary.add_row(
            f"cost of {model}:{version}",
            f"{float(per_1k):.3f} CPU s per 1,000 predictions (mean batch {float(batch):.0f})",
        )
    firing = [a for a in data.alerts if a[1] == "firing"]
    summary.add_row(
        "alerts (ClickHouse alerts)",
        f"{len(firing)} fired, {sum(a[1] == 'resolved' for a in data.alerts)} resolved",
    )
    console.print(summary)

    table = Table(title="drift alerts (PSI ≥ alert threshold), from ClickHouse drift_windows")
    for col in ("window start (UTC)", "feature", "PSI", "KS"):
        table.add_column(col)
    for start, feature, value, ks in drift:
        table.add_row(start.strftime("%H:%M:%S"), feature, f"{value:.3f}", f"{ks:.3f}")
    if not drift:
        table.add_row("-", "no feature drifted", "", "")
    console.print(table)
    flagged = sorted({row[1] for row in drift})
    console.print(f"drifted features: {', '.join(flagged) or 'none'}")
    for alert in firing:
        console.print(f"[bold]alert[/] ({alert[2]}): {alert[5]}")
    console.print(f"report with charts: {page} (again any time: stream report --out FILE)")
    console.print(
        'query more with: stream query "SELECT window_start, feature, psi, status '
        'FROM drift_windows FINAL ORDER BY window_start, feature" (examples: docs/queries.md)'
    )
