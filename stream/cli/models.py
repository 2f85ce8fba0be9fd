"""``stream models …``: the registry and deployments."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from stream.cli.common import configure, console, pipeline_path
from stream.deploy.state import DeploymentState, Snapshot
from stream.errors import ModelLoadError, SettingsError
from stream.models.key import ModelKey

if TYPE_CHECKING:
    from stream.deploy.commands import ChangeResult

models = typer.Typer(help="The model registry and deployments.", no_args_is_help=True)


@models.command("list")
def models_list() -> None:
    """Every model version in the registry, and (with Kafka reachable) where it serves."""
    from stream.deploy.control import read_states
    from stream.models.registry import ModelRegistry

    settings = configure()
    registry = ModelRegistry(settings.registry_path)
    serving: dict[str, list[str]] = {}
    if settings.kafka_bootstrap:
        states, _ = read_states(settings.kafka_config())
        for state in states.values():
            for role in _roles(state.current):
                serving.setdefault(role[0], []).append(f"{state.pipeline}: {role[1]}")
    table = Table("model", "version", "features", "output", "trained on", "gate", "serves")
    names = sorted(p.name for p in registry.root.iterdir()) if registry.root.is_dir() else []
    for name in names:
        for version in registry.versions(name):
            m = registry.manifest(name, version)
            table.add_row(
                name, version, str(len(m.features)),
                f"{m.output.kind} {'/'.join(m.output.labels)}", str(m.training.get("rows", "?")),
                f"{m.validation.status} vs {m.validation.champion}" if m.validation else "-",
                "\n".join(serving.get(f"{name}:{version}", [])) or "-",
            )  # fmt: skip
    console.print(table)
    console.print(f"registry: {registry.root}")
    if not settings.kafka_bootstrap:
        console.print("set STREAM_KAFKA_BOOTSTRAP to see where each version serves")


def _roles(snapshot: Snapshot) -> list[tuple[str, str]]:
    total = sum(w.weight for w in snapshot.serving)
    roles = [
        (str(w.model), f"{'champion' if i == 0 else 'challenger'} {100 * w.weight / total:.0f}%")
        for i, w in enumerate(snapshot.serving)
    ]
    roles += [(str(s), "shadow") for s in snapshot.shadows]
    roles += [(str(r.model), r.variant) for r in snapshot.rules]
    if snapshot.fallback is not None:
        roles.append((str(snapshot.fallback), "fallback"))
    return roles


@models.command("train-demo")
def models_train_demo(
    name: Annotated[str, typer.Option(help="Model name.")] = "payments-fraud",
    version: Annotated[str, typer.Option(help="Version to register.")] = "1",
) -> None:
    """Train the demo fraud model on synthetic payments and register it (needs the train extra)."""
    from stream.demo.data import train_demo_model
    from stream.models.registry import ModelRegistry

    registry = ModelRegistry(configure().registry_path)
    if registry.exists(name, version):
        console.print(f"{name}:{version} is already in {registry.root}")
        return
    onnx_bytes, manifest = train_demo_model(name, version)
    folder = registry.register(onnx_bytes, manifest)
    console.print(f"registered {name}:{version} in {folder}")


Pipeline = Annotated[str, typer.Argument(help="Pipeline name (under pipelines/) or file.")]
Model = Annotated[str, typer.Argument(help="Model version as NAME:VERSION.")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the workers' answers.")]
Reason = Annotated[str, typer.Option(help="Why, for the record (model_events).")]


def _change(
    pipeline_ref: str,
    change: Callable[[DeploymentState], DeploymentState],
    timeout: float,
    verify: bool = True,
    reason: str = "",
    force: bool = False,
) -> None:
    from stream.deploy.commands import change_deployment
    from stream.models.registry import ModelRegistry
    from stream.settings import load_pipeline

    settings = configure()
    pipeline = load_pipeline(pipeline_path(pipeline_ref))
    registry = ModelRegistry(settings.registry_path) if verify else None
    result = change_deployment(
        settings.kafka_config(), pipeline, change, registry, timeout, reason=reason, force=force
    )
    report_change(result, timeout)


def report_change(result: ChangeResult, timeout: float) -> None:
    """Print what a deployment change did and exit 1 unless every worker applied it."""
    print_change(result, timeout)
    if not result.complete:
        raise typer.Exit(1)


def print_change(result: ChangeResult, timeout: float) -> None:
    current = result.after.current
    console.print(f"[bold]{result.after.pipeline}[/] revision {current.revision}: {current.change}")
    console.print(f"  before: {result.before.current.describe()}")
    console.print(f"  now:    {current.describe()}")
    if not result.workers:
        console.print("no worker is running; workers apply it when they start")
        return
    for worker in sorted(result.workers):
        answer = result.answers.get(worker)
        if answer is None:
            console.print(f"  {worker}: [yellow]no answer within {timeout:g}s[/]")
        elif answer["kind"] == "applied":
            console.print(f"  {worker}: [green]applied[/]")
        else:
            console.print(f"  {worker}: [red]{answer['kind']}[/]: {answer['message']}")


@models.command("deploy")
def models_deploy(
    pipeline: Pipeline,
    model: Model,
    weight: Annotated[
        float | None, typer.Option(help="Share of traffic in percent (A/B); default: all.")
    ] = None,
    shadow: Annotated[bool, typer.Option("--shadow", help="Score on the side only.")] = False,
    route: Annotated[
        str | None, typer.Option(help="FIELD=VALUE: events with that value go to this model.")
    ] = None,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="Score events the serving model fails on.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Deploy a candidate the retraining gate rejected.")
    ] = False,
    reason: Reason = "",
    timeout: Timeout = 30.0,
) -> None:
    """Deploy a model version to a running pipeline; waits until the workers answer."""
    key = ModelKey.parse(model)
    rule = None
    if route is not None:
        field, sep, value = route.partition("=")
        if not sep or not field:
            raise SettingsError("--route", f"expected FIELD=VALUE, got {route!r}")
        rule = (field, value)
    if sum([weight is not None, shadow, rule is not None, fallback]) > 1:
        raise SettingsError("deploy", "use one of --weight, --shadow, --route, --fallback")
    _change(
        pipeline,
        lambda s: s.deploy(key, weight=weight, shadow=shadow, route=rule, fallback=fallback),
        timeout,
        reason=reason,
        force=force,
    )


@models.command("undeploy")
def models_undeploy(
    pipeline: Pipeline, model: Model, reason: Reason = "", timeout: Timeout = 30.0
) -> None:
    """Take a model version out of a pipeline (serving, shadow, rules and fallback)."""
    key = ModelKey.parse(model)
    _change(pipeline, lambda s: s.undeploy(key), timeout, verify=False, reason=reason)


@models.command("rollback")
def models_rollback(pipeline: Pipeline, reason: Reason = "", timeout: Timeout = 30.0) -> None:
    """Go back to the deployment before the current one."""
    _change(pipeline, lambda s: s.rollback(), timeout, reason=reason, force=True)


@models.command("status")
def models_status(pipeline: Pipeline) -> None:
    """The current deployment, its recent history, and what each worker serves."""
    from stream.deploy.commands import current_state, worker_answers
    from stream.deploy.control import engine_workers
    from stream.settings import load_pipeline

    settings = configure()
    config = load_pipeline(pipeline_path(pipeline))
    kafka_config = settings.kafka_config()
    state = current_state(kafka_config, config)
    current = state.current
    console.print(
        f"[bold]{config.name}[/] revision {current.revision} ({current.changed_at or '-'})"
    )
    console.print(f"  {current.describe()}")
    history = Table("revision", "when", "change")
    for snap in [current, *state.history][:6]:
        history.add_row(str(snap.revision), snap.changed_at or "-", snap.change)
    console.print(history)
    running = engine_workers(kafka_config, config.name)
    workers = Table("worker", "running", "revision", "answer", "at")
    answers = worker_answers(kafka_config, config.name)
    for worker in sorted(set(answers) | running):
        a = answers.get(worker, {})
        workers.add_row(
            worker, "yes" if worker in running else "no", str(a.get("revision", "-")),
            a.get("kind", "-"), a.get("at", "-"),
        )  # fmt: skip
    console.print(workers)


@models.command("compare")
def models_compare(
    pipeline: Pipeline,
    minutes: Annotated[float, typer.Option(help="Compare over the last this many minutes.")] = 60,
) -> None:
    """Each model version side by side on the same traffic, from ClickHouse windows."""
    from stream.deploy.compare import compare_variants
    from stream.settings import load_pipeline
    from stream.sinks.clickhouse import connect

    settings = configure()
    config = load_pipeline(pipeline_path(pipeline))
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        rows = compare_variants(ch.client, config.name, minutes)
    finally:
        ch.close()
    if not rows:
        console.print(f"no windows of {config.name} in the last {minutes:g} minutes")
        return
    table = Table("", *(f"{r.model}:{r.version}\n{r.variant}" for r in rows))
    for label, getter in (
        ("events", lambda r: f"{r.count:,}"),
        (f"predicted {rows[0].positive_label!r}", lambda r: f"{r.positive_rate:.2%}"),
        ("mean score", lambda r: f"{r.mean_score:.3f}"),
        ("mean confidence", lambda r: f"{r.mean_confidence:.3f}"),
        ("sent to review", lambda r: f"{r.review_rate:.2%}"),
        ("latency p50", lambda r: f"{r.latency_p50:.1f} ms"),
        ("latency p99", lambda r: f"{r.latency_p99:.1f} ms"),
        ("inference p99", lambda r: f"{r.inference_p99:.3f} ms"),
        ("CPU s per 1,000", lambda r: f"{r.cpu_seconds_per_1k:.3f}"),
        ("labeled events", lambda r: f"{r.labeled:,}"),
        ("accuracy", lambda r: f"{r.accuracy:.3f}" if r.labeled else "no labels"),
        ("Brier score", lambda r: f"{r.brier:.4f}" if r.labeled else "no labels"),
    ):
        table.add_row(label, *(getter(r) for r in rows))
    console.print(table)


@models.command("register")
def models_register(
    onnx_file: Annotated[Path, typer.Argument(help="The ONNX model file.", exists=True)],
    name: Annotated[str, typer.Option(help="Model name.")],
    reference: Annotated[
        Path, typer.Option(help="Training data sample (.csv or .parquet) for reference histograms.")
    ],
    features: Annotated[
        str,
        typer.Option(
            help="Input columns in model order, comma-separated. NAME:categorical for a "
            "category column (encoded as its index in sorted order), or "
            "NAME:categorical=a|b|c for that order."
        ),
    ],
    version: Annotated[str | None, typer.Option(help="Version; default: the next number.")] = None,
    labels: Annotated[str, typer.Option(help="Class labels in output order.")] = "0,1",
    positive: Annotated[str | None, typer.Option(help="Positive label (binary).")] = None,
    threshold: Annotated[float, typer.Option(help="Decision threshold (binary).")] = 0.5,
    regressor: Annotated[bool, typer.Option("--regressor", help="A regression model.")] = False,
    output: Annotated[
        str | None, typer.Option(help="ONNX output with probabilities (or the value).")
    ] = None,
) -> None:
    """Register an ONNX file with a manifest computed from reference data, then verify it."""
    from stream.models.reference import build_manifest
    from stream.models.registry import ModelRegistry

    registry = ModelRegistry(configure().registry_path)
    if version is None:
        version = registry.next_version(name)
    if registry.exists(name, version):
        raise SettingsError("--version", f"{name}:{version} is already registered")
    onnx_bytes = onnx_file.read_bytes()
    manifest = build_manifest(
        onnx_bytes, name, version, reference, [f.strip() for f in features.split(",") if f.strip()],
        labels=[] if regressor else [x.strip() for x in labels.split(",")],
        positive=positive, threshold=threshold, output=output,
    )  # fmt: skip
    folder = registry.register(onnx_bytes, manifest)
    try:
        registry.load(name, version).unload()
    except ModelLoadError:
        shutil.rmtree(folder)
        raise
    console.print(f"registered {name}:{version} in {folder} ({len(manifest.features)} features)")
