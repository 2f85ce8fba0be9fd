"""The ``stream`` command. Configures logging; turns StreamErrors into one line and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stream.cli.closed_loop import models  # the models group, with retrain and promote
from stream.cli.common import configure, console, output_file, pipeline_path
from stream.errors import SettingsError, StreamError
from stream.services.stopping import unwind_on_stop_signals
from stream.settings import load_pipeline

app = typer.Typer(
    help="Real-time ONNX inference on Kafka event streams, monitored in ClickHouse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db = typer.Typer(help="ClickHouse schema.", no_args_is_help=True)
app.add_typer(db, name="db")
schemas = typer.Typer(help="The Avro schemas in schemas/.", no_args_is_help=True)


@app.callback()
def options(
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Logs as JSON lines (STREAM_LOG_FORMAT=json).")
    ] = False,
) -> None:
    """Real-time ONNX inference on Kafka event streams, monitored in ClickHouse."""
    if log_json:
        # Through the environment: child processes (workers of the demo) log so too.
        os.environ["STREAM_LOG_FORMAT"] = "json"


app.add_typer(schemas, name="schemas")
app.add_typer(models, name="models")


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=100, help="How many events to produce.")] = 50_000,
    seconds: Annotated[float, typer.Option(min=1, help="Spread the events over this long.")] = 55.0,
    window: Annotated[float, typer.Option(min=1, help="Monitor window length, seconds.")] = 10.0,
    malformed: Annotated[float, typer.Option(min=0, max=1, help="Share of broken events.")] = 0.005,
) -> None:
    """Train (or reuse) the demo model, start Kafka and a worker, stream payments, report."""
    from stream.demo.run import DemoOptions, run_demo

    settings = configure()
    logging.getLogger().setLevel(logging.WARNING)
    run_demo(
        settings,
        DemoOptions(
            events=events, seconds=seconds, window_seconds=window, malformed_share=malformed
        ),
        console,
    )


@app.command()
def worker(
    pipeline: Annotated[
        list[Path], typer.Option("--pipeline", "-p", help="Pipeline file (repeat for several).")
    ],
) -> None:
    """Run one worker process: scoring engines plus the faust monitor app."""
    from stream.worker import run_worker

    run_worker(configure(), pipeline)


@app.command()
def produce(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name or pipeline file.")],
    count: Annotated[int, typer.Option(min=1, help="Events to produce.")] = 10_000,
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second; 0 = as fast as possible.")
    ] = 1000.0,
    drift: Annotated[
        list[str] | None, typer.Option(help="FEATURE=SHIFT in standard deviations (repeatable).")
    ] = None,
    drift_from: Annotated[int, typer.Option("--from", help="Event index where drift starts.")] = 0,
    malformed: Annotated[float, typer.Option(min=0, max=1, help="Share of broken events.")] = 0.0,
    labels: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Also publish each event's true label to {pipeline}.feedback this many "
            "seconds after the event.",
        ),
    ] = None,
    label_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of events that get a label.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic payments.")] = 1,
    concept_drift: Annotated[
        bool,
        typer.Option(
            "--concept-drift",
            help="Label the events by a changed fraud mechanism (same features, new labels).",
        ),
    ] = False,
) -> None:
    """Publish synthetic demo payments to {pipeline}.events (and their labels, with --labels).

    Also the documented example of a producer: see stream/produce.py.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from stream.produce import LabelSender, PacedProducer, event_serde
    from stream.serde.registry import schema_registry

    settings = configure()
    config = load_pipeline(pipeline_path(pipeline))
    shifts = {}
    for item in drift or []:
        name, _, value = item.partition("=")
        try:
            shifts[name] = float(value)
        except ValueError:
            raise SettingsError("--drift", f"expected FEATURE=SHIFT, got {item!r}") from None
    kafka_config = settings.kafka_config()
    serde = event_serde(settings, config, schema_registry(settings))
    producer = PacedProducer(kafka_config, config.events_topic, serde)
    sender = (
        None
        if labels is None
        else LabelSender(kafka_config, config.feedback_topic, labels, label_share)
    )
    truth: list[tuple[str, str]] = []
    scheduled = 0
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} events/s"),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(config.events_topic, total=count, rate=0.0)

        def advance(n: int) -> None:
            nonlocal scheduled
            done = progress.tasks[task].completed + n
            progress.update(task, completed=done, rate=done / max(time.monotonic() - started, 1e-6))
            if sender is not None:
                sender.schedule(truth[scheduled:])
                scheduled = len(truth)

        report = producer.run(
            count, rate, seed=seed, drift=shifts, drift_from=drift_from,
            malformed_share=malformed, progress=advance, truth=truth, concept=concept_drift,
        )  # fmt: skip
    console.print(
        f"produced {report.produced:,} events ({report.malformed} malformed, "
        f"{report.failed} failed) in {report.seconds:.1f}s"
    )
    failed = report.failed
    if sender is not None:
        with console.status(f"publishing the last labels ({labels:g}s after their events)…"):
            sent = sender.close()
        console.print(f"published {sent:,} labels to {config.feedback_topic}")
        failed += sender.sent - sent
    if failed:
        raise typer.Exit(1)


@schemas.command("check")
def schemas_check(
    against: Annotated[
        str, typer.Option(help="The previous versions: a git revision or a folder of .avsc files.")
    ] = "HEAD",
) -> None:
    """Check every schema is backward and forward compatible with its previous version."""
    from stream.schemas import check, previous_versions

    settings = configure()
    results = check(settings.schemas_dir, previous_versions(against, settings.schemas_dir))
    table = Table("schema", "against " + against, "backward", "forward")
    for r in results:
        sure = r.status in ("new", "unchanged")
        table.add_row(
            r.name, r.status, "" if sure else "yes" if r.backward else "NO",
            "" if sure else "yes" if r.forward else "NO",
        )  # fmt: skip
    console.print(table)
    broken = [r for r in results if r.status == "incompatible"]
    for r in broken:
        console.print(f"[red]{r.name}[/]: {r.detail}")
    if broken:
        raise typer.Exit(1)


@db.command("migrate")
def db_migrate() -> None:
    """Apply the SQL migrations in ops/clickhouse/ that were not applied yet, and retention."""
    from stream.sinks.clickhouse import apply_retention, connect, migrate

    settings = configure()
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        applied = migrate(ch, settings.migrations_dir)
        retention = apply_retention(
            ch, settings.clickhouse_retention_days, settings.clickhouse_log_retention_days
        )
    finally:
        ch.close()
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    if retention:
        console.print(
            f"retention: {settings.clickhouse_retention_days} days for windows and alerts, "
            f"{settings.clickhouse_log_retention_days} days for the prediction log and labels "
            f"(0: kept for ever); changed on {', '.join(retention)}"
        )


@app.command()
def query(sql: Annotated[str, typer.Argument(help="A ClickHouse SQL query.")]) -> None:
    """Print the result of a ClickHouse query as a table."""
    from stream.sinks.clickhouse import connect

    settings = configure()
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        result = ch.client.query(sql)
    except Exception as exc:
        raise StreamError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        ch.close()
    table = Table(*result.column_names)
    for row in result.result_rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
    console.print(f"{len(result.result_rows)} rows")


@app.command()
def report(
    pipeline: Annotated[
        str | None,
        typer.Option(help="Pipeline name; by default the only one ClickHouse has windows of."),
    ] = None,
    since: Annotated[str, typer.Option(help="From when: 30m, 24h, 7d or an ISO time.")] = "24h",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the page (one HTML file) here.")
    ] = None,
) -> None:
    """Latency, drift, quality, cost and alerts from ClickHouse: a summary, and a page."""
    from datetime import UTC, datetime

    from stream import report as pages
    from stream.sinks.clickhouse import connect

    if out is not None:
        output_file("--out", out)
    settings = configure()
    now = datetime.now(UTC)
    start = pages.parse_since(since, now)
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        known = pages.pipelines(ch.client)
        if pipeline is None:
            if len(known) != 1:
                raise SettingsError(
                    "--pipeline", f"choose one of {known}" if known else "no windows in ClickHouse"
                )
            pipeline = known[0]
        elif pipeline not in known:
            raise SettingsError("--pipeline", f"no windows of {pipeline!r} (there are: {known})")
        data = pages.load(ch.client, pipeline, start, now)
    finally:
        ch.close()
    pages.summary(data, console)
    if out is not None:
        out.write_text(pages.render(data))
        console.print(f"report in {out}")


@app.command()
def broker() -> None:
    """Run a local single-node Kafka broker in the foreground until Ctrl-C."""
    import signal

    from stream.services.kafka import KafkaBroker

    settings = configure()
    kafka = KafkaBroker(settings.home / "kafka")
    try:  # started inside: a stop signal while it starts, or right after, still stops it
        kafka.start()
        console.print(f"Kafka broker on {kafka.bootstrap} (pid {kafka.pid}); Ctrl-C stops it")
        console.print(f"export STREAM_KAFKA_BOOTSTRAP={kafka.bootstrap}")
        # Once it runs, a stop signal is how this command ends, so it is waited for, not
        # raised (stream.services.stopping): the broker stops and the command exits 0.
        # sigwait takes the signals only while they are blocked.
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    finally:
        kafka.stop()


def main() -> None:
    unwind_on_stop_signals()
    try:
        app()
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, SettingsError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)


@app.command()
def bench(
    events: Annotated[
        int, typer.Option(min=100, help="Events each engine reads per run.")
    ] = 300_000,
    runs: Annotated[int, typer.Option(min=1, help="Runs per engine.")] = 3,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of the events topic.")] = 4,
    trees: Annotated[int, typer.Option(min=1, help="Trees of the gradient boosting model.")] = 100,
    depth: Annotated[int, typer.Option(min=1, help="Depth of each tree.")] = 4,
    features: Annotated[
        int,
        typer.Option(
            min=0, help="N float features per event; 0: the demo's payments (19 features)."
        ),
    ] = 0,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the batching engines.")] = 1000,
    format: Annotated[str, typer.Option(help="Event encoding: avro or json.")] = "avro",
    engines: Annotated[
        str,
        typer.Option(help="Comma-separated: pipeline,pipeline-eos,pipeline-nolog,bare,quix,faust."),
    ] = "pipeline,pipeline-eos,pipeline-nolog,bare,quix,faust",
    latency: Annotated[
        str,
        typer.Option(help="Shares of the pipeline's max rate for the latency runs; '' for none."),
    ] = "0.1,0.5,0.8",
    latency_seconds: Annotated[
        float, typer.Option(min=1, help="Measured length of each latency run.")
    ] = 30,
    latency_warmup: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds of traffic at the same rate before the measured time of each latency "
            "run and each run at the common rate, reported apart (each starts on new topics).",
        ),
    ] = 5,
    compare_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="Measured length of each engine's runs at one common input rate, for the "
            "throughput table's p50/p99 columns (after --latency-warmup); 0 for none.",
        ),
    ] = 10,
    compare_rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="That common rate in events/s; 0: half the slowest engine's median events/s.",
        ),
    ] = 0,
    scale: Annotated[
        int, typer.Option(min=0, help="Scaling mode: 1 … N worker processes; 0 for none.")
    ] = 0,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the results here, and a PNG chart beside.")
    ] = None,
) -> None:
    """This pipeline against a bare librdkafka loop, Quix Streams and a faust agent."""
    from stream.bench.run import BenchOptions, run_bench

    if format not in ("avro", "json"):
        raise SettingsError("--format", f"avro or json, not {format!r}")
    try:
        shares = tuple(float(x) for x in latency.split(",") if x.strip())
    except ValueError:
        raise SettingsError("--latency", f"comma-separated numbers, not {latency!r}") from None
    if any(not 0 < s <= 1 for s in shares):
        raise SettingsError("--latency", "each share must lie in (0, 1]")
    if json_file is not None:
        if json_file.suffix.lower() == ".png":
            raise SettingsError("--json", f"{json_file}: the chart is written beside it as .png")
        output_file("--json", json_file)
    settings = configure()
    logging.getLogger().setLevel(logging.WARNING)
    run_bench(
        settings,
        BenchOptions(
            events=events, runs=runs, partitions=partitions, trees=trees, depth=depth,
            features=features, batch=batch,
            format=format,  # type: ignore[arg-type]
            engines=tuple(e.strip() for e in engines.split(",") if e.strip()),
            latency=shares, latency_seconds=latency_seconds, latency_warmup=latency_warmup,
            compare_seconds=compare_seconds, compare_rate=compare_rate,
            scale=scale, json_path=json_file,
        ),
        console,
    )  # fmt: skip
